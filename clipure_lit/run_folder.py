"""The run folder's lifecycle, the same for an evaluation (``eval.py``) and a training run (``train.py``).

In order, a run calls :func:`make_run_dir` (``cfg.run_dir``, else a folder under ``<cfg.output_root>/<cfg.name>/``
that every process of a multi-process run agrees on; a launch of another size than ``trainer.devices`` x
``trainer.num_nodes`` (:func:`check_launch_size`) and a folder that cannot be written are one-paragraph errors),
holds :func:`exclusive_run_folder` (one run per folder) and :func:`run_log` (the full log of the run, ``log.txt``,
whatever the console shows) for the rest, :func:`write_config` (the fully resolved ``config.yaml``, before any
work), :func:`write_environment` (``environment.json``: Python, platform, package versions, git commit, plus what
the caller adds, e.g. :func:`checkpoint_hashes`), and, whether the job succeeded or not, :func:`close_logger`
(which records in the logger's run how the job ended).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterator

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from clipure_lit.clip.tokenizers import callable_source, is_callable_spec
from clipure_lit.config.loader import to_yaml
from clipure_lit.errors import ConfigError
from clipure_lit.loggers import RunEnd, finish_wandb_run, log_sync_hint, run_end_for, wandb_agent_run
from clipure_lit.purifiers.registry import chosen_sections
from clipure_lit.results import write_json
from clipure_lit.utils.console import log_to_file
from clipure_lit.utils.distributed import (launched_without_job_id, launcher_job_name, launcher_rank_is_zero,
                                          slurm_job_folder)
from clipure_lit.utils.paths import find_path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"  # held by the process running in the folder
# Set by a run's first process for the processes Lightning starts for it on the same node (which re-run the same
# command line): the run folder that first process chose.
RUN_DIR_ENV = "CLIPURE_LIT_RUN_DIR"

_VERSIONED = ("torch", "torchvision", "pytorch-lightning", "open_clip_torch", "dalle2-pytorch", "pyautoattack", "wandb",
              "omegaconf", "clip-benchmark", "diffusers")


def _devices_per_node(trainer_cfg) -> tuple[int | None, str]:
    """``(number of devices per node that Lightning makes of trainer.devices, how it reads)``; the number is None
    when it depends on something this check does not know (an accelerator other than CPU or CUDA, ``-1`` on CPU).
    ``-1`` and ``auto`` count the visible CUDA devices for ``gpu``/``cuda`` (and ``auto`` with CUDA present), ``auto``
    is 1 on CPU; a list or ``"0,1"`` counts its ids; a number is itself."""
    devices, accelerator = trainer_cfg.devices, str(trainer_cfg.get("accelerator", "auto")).lower()
    shown = f"trainer.devices={devices}"
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices), shown
    text = str(devices).strip().lower()
    if "," in text:
        return len([x for x in text.split(",") if x.strip()]), shown
    if text not in ("-1", "auto"):
        try:
            return int(text), shown
        except ValueError:
            return None, shown
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        count = torch.cuda.device_count()
        return (count, f"{shown} ({count} visible CUDA devices)") if count else (None, shown)
    if accelerator in ("cpu", "auto") and text == "auto":
        return 1, shown
    return None, shown


def _env_int(name: str) -> int | None:
    """The leading integer of environment variable ``name`` (SLURM writes ``4(x2)`` for 4 tasks on each of 2
    nodes), or None."""
    match = re.match(r"\s*(\d+)", os.environ.get(name, ""))
    return int(match.group(1)) if match else None


def check_launch_size(cfg: DictConfig) -> None:
    """Refuse a run whose launcher started another number of processes or nodes than ``trainer.devices`` x
    ``trainer.num_nodes`` describes, before anything is created: Lightning would stop on its own check after the
    run folder exists, or wait for processes that never come.

    The launcher is found as Lightning finds it: SLURM when ``SLURM_NTASKS`` is set and the job is not interactive
    (``SLURM_NTASKS`` processes, ``SLURM_NNODES`` nodes, ``SLURM_NTASKS_PER_NODE`` per node); else torchrun when
    ``TORCHELASTIC_RUN_ID`` is set (``WORLD_SIZE`` processes, ``LOCAL_WORLD_SIZE`` per node, ``GROUP_WORLD_SIZE``
    or ``WORLD_SIZE / LOCAL_WORLD_SIZE`` nodes); else a launch per node with ``NODE_RANK``, which must be below
    ``trainer.num_nodes``. Without a launcher, nothing is checked. Devices per node are counted as in
    :func:`_devices_per_node`; when that count is unknown, only the nodes are compared.

    Raises:
        ConfigError: the launch and the config disagree; the message names both and the keys that match the launch.
    """
    if "trainer" not in cfg:
        return
    t = cfg.trainer
    num_nodes = int(t.get("num_nodes", 1) or 1)
    slurm = "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    torchrun = os.environ.get("TORCHELASTIC_RUN_ID") is not None
    if slurm:
        name = "SLURM (srun)"
        world, nodes = _env_int("SLURM_NTASKS"), _env_int("SLURM_NNODES") or _env_int("SLURM_JOB_NUM_NODES")
        per_node = _env_int("SLURM_NTASKS_PER_NODE")
        facts = f"SLURM_NTASKS={world}, SLURM_NNODES={nodes}" + (f", SLURM_NTASKS_PER_NODE={per_node}" if per_node else "")
        relaunch = "or change the job's --nodes / --ntasks-per-node"
    elif torchrun:
        name = "torchrun"
        world, per_node = _env_int("WORLD_SIZE"), _env_int("LOCAL_WORLD_SIZE")
        nodes = _env_int("GROUP_WORLD_SIZE") or (world // per_node if world and per_node and world % per_node == 0 else None)
        facts = f"WORLD_SIZE={world}, LOCAL_WORLD_SIZE={per_node}, {nodes} node(s)"
        relaunch = "or start torchrun with other --nnodes / --nproc-per-node"
    else:
        node_rank = _env_int("NODE_RANK")
        if node_rank is not None and node_rank >= num_nodes:
            raise ConfigError(
                f"This process was started as node NODE_RANK={node_rank}, but trainer.num_nodes={num_nodes} counts nodes "
                f"0 to {num_nodes - 1}: Lightning would wait for a run that does not include this node. Fix: pass "
                f"trainer.num_nodes=<number of nodes> (at least {node_rank + 1}) on every node, or unset NODE_RANK for a "
                "run on one node.")
        return
    if world is None:
        return
    devices, shown = _devices_per_node(t)
    if per_node is None and nodes:
        per_node = world // nodes if world % nodes == 0 else None
    wrong = (nodes is not None and nodes != num_nodes) or (devices is not None and (
        devices * num_nodes != world or (per_node is not None and per_node != devices)))
    if not wrong:
        return
    expected = f"{devices} x {num_nodes} = {devices * num_nodes} processes" if devices is not None else f"{num_nodes} node(s)"
    if per_node and nodes:
        fix = f"trainer.devices={per_node} trainer.num_nodes={nodes} (devices per node, nodes)"
    else:
        fix = f"trainer.devices and trainer.num_nodes whose product is {world}"
    raise ConfigError(
        f"{name} started {world} processes ({facts}), but {shown} x trainer.num_nodes={num_nodes} describes {expected}. "
        f"Lightning takes each process as one device of one node, so the run would fail (or wait for processes that "
        f"never start) after creating its run folder. Fix: pass {fix} with the same launch, {relaunch} to match the "
        "config.")


def make_run_dir(cfg: DictConfig) -> Path:
    """Create (if needed) and return the run folder; every process of a multi-process run gets the same one.

    In order: ``cfg.run_dir``; for a process that Lightning started on the node of the run's first process
    (``LOCAL_RANK`` > 0), the folder that process chose (:data:`RUN_DIR_ENV`, see :func:`share_run_dir`);
    for a run a W&B agent launched, ``<cfg.output_root>/wandb/<sweep id>/<run id>`` (:func:`agent_folder`);
    ``<cfg.output_root>/<cfg.name>/<launcher job>`` for a launch with a job id shared by all its processes
    (``slurm-<job id>[.<step>]`` under ``srun``, ``torchrun-<rdzv id>``) and for any SLURM batch job
    (``slurm-<job id>[.<step>]``, array tasks as ``<array job id>_<task id>``); else a new
    ``<cfg.output_root>/<cfg.name>/<timestamp>`` (microsecond resolution).

    The folders named after a W&B run or a SLURM job are found again when W&B or SLURM relaunches the same run
    after a preemption, so that launch can resume (``callbacks.resume.relaunch_resumes``).

    Before anything is created, :func:`check_launch_size` compares the launch with ``trainer.devices`` x
    ``trainer.num_nodes``.

    Raises:
        ConfigError: the launcher started another number of processes or nodes than the config describes; a run
            over several separately launched processes (``trainer.num_nodes`` > 1, torchrun without a rendezvous
            id, a Lightning launch with ``NODE_RANK``) and no ``run_dir`` nor job id to agree on.
    """
    check_launch_size(cfg)
    inherited = os.environ.get(RUN_DIR_ENV) if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 else None
    job = launcher_job_name()
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
    elif inherited:
        run_dir = Path(inherited)
    elif agent_folder(cfg) is not None:
        run_dir = agent_folder(cfg)
    elif job or slurm_job_folder():
        run_dir = Path(cfg.output_root) / cfg.name / (job or slurm_job_folder())
    else:
        separate = launched_without_job_id() or (f"trainer.num_nodes={cfg.trainer.num_nodes}"
                                                 if "trainer" in cfg and int(cfg.trainer.get("num_nodes", 1) or 1) > 1 else None)
        if separate:
            raise ConfigError(
                f"This run spans processes started separately ({separate}) with nothing they share to name one run "
                "folder: each would write its own timestamped folder. Fix: pass the same run_dir=<folder> on every node "
                "(on a shared file system), or launch with srun (SLURM) or torchrun --rdzv-id=<id>, whose job id names "
                "the folder.")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run_dir = Path(cfg.output_root) / cfg.name / stamp
    key = "run_dir" if cfg.run_dir else "output_root"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create the run folder '{run_dir}' ({key}): {exc.strerror or exc}. Fix: choose a "
                          f"writable {key}=<folder>.") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"The run folder '{run_dir}' ({key}) is not writable. Fix: choose a writable {key}=<folder>, or "
                          "change the folder's permissions.")
    return run_dir


def agent_folder(cfg: DictConfig) -> Path | None:
    """``<cfg.output_root>/wandb/<sweep id>/<run id>`` when a W&B agent launched this process
    (:func:`~clipure_lit.loggers.wandb_agent_run`), else None: a run W&B requeues keeps its run id, so its next
    launch finds this folder."""
    agent = wandb_agent_run()
    if agent is None:
        return None
    safe = {k: "".join(c if c.isalnum() or c in "-_." else "_" for c in v) for k, v in agent.items()}
    return Path(cfg.output_root) / "wandb" / safe["sweep_id"] / safe["run_id"]


@contextlib.contextmanager
def exclusive_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` for the block, so a second process on the same folder fails at once instead of
    mixing its per-sample records and results with this run's. Only the process that launches a run (rank 0) takes
    it; the operating system releases it when the process ends, crashed or not."""
    if not launcher_rank_is_zero():
        yield
        return
    lock = FileLock(str(Path(run_dir) / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"The run folder '{run_dir}' is in use by another process (it holds {Path(run_dir) / LOCK_NAME}). "
                          "Two runs writing one folder would mix their results. Fix: wait for that run to end (resume it "
                          "then with resume=true), or give this one another run_dir. A crashed run holds no lock.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot lock the run folder '{run_dir}': {exc.strerror or exc}. Fix: choose a writable run_dir.") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def share_run_dir(run_dir: Path):
    """For the run's first process on a node: while active, processes it starts (Lightning's launcher re-runs the
    same command line for local ranks > 0) find ``run_dir`` in :data:`RUN_DIR_ENV`; restored on exit."""
    before = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(Path(run_dir).resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = before


def run_log(run_dir: Path):
    """Context manager: every log record of the process (every level the loggers let through, Python warnings
    included) is appended to ``<run_dir>/log.txt`` while it is open (``log.rank<r>.txt`` on a process of rank
    r > 0). A suite's folder gets the log of all its runs, each run's folder its own."""
    return log_to_file(run_dir, "log.txt")


def environment_info() -> dict:
    """Python version, platform, the versions of the packages a result depends on (None when not installed) and
    the git commit of this checkout (None outside git)."""
    versions = {}
    for dist in _VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    commit = None
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions, "git_commit": commit}


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED_SUMS = SHIPPED_DIR / "SHA256SUMS"  # `sha256sum` format, committed with the shipped weights


def shipped_sha256() -> dict[Path, str]:
    """``{resolved path: SHA-256}`` of the weights that ship in ``checkpoints/`` (empty when the list is absent)."""
    if not SHIPPED_SUMS.is_file():
        return {}
    sums = {}
    for line in SHIPPED_SUMS.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[(SHIPPED_DIR / name.strip().lstrip("*")).resolve()] = digest
    return sums


def _sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _hash_entry(path: Path) -> dict:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {"path": str(path), "sha256": _sha256(files)}


def text_side_hashes(cfg: DictConfig) -> dict:
    """Provenance of what defines the model besides its weights: ``clip.model_config`` (SHA-256 of the JSON),
    ``clip.tokenizer`` (its name, and the SHA-256 of the Python file of a ``module:callable`` / ``file.py:callable``
    tokenizer) and the precomputed ``prompts.class_embeddings`` / ``prompts.blank_embedding`` files."""
    out = {}
    clip = cfg.clip
    if clip.get("model_config"):
        path = find_path(clip.model_config)
        if path is not None:
            out["clip.model_config"] = _hash_entry(path)
    spec = clip.get("tokenizer")
    entry = {"name": str(spec) if spec else f"{clip.arch} (open_clip default)"}
    if spec and is_callable_spec(str(spec)):
        source = callable_source(str(spec))
        if source is not None:
            entry.update({"path": str(source), "sha256": _sha256([source])})
    out["clip.tokenizer"] = entry
    if "prompts" in cfg:
        for key in ("class_embeddings", "blank_embedding"):
            value = cfg.prompts.get(key)
            path = find_path(value) if value else None
            if path is not None:
                out[f"prompts.{key}"] = _hash_entry(path)
    return out


def checkpoint_hashes(cfg: DictConfig) -> dict:
    """SHA-256 of every local file that defines the run's model: the CLIP checkpoint and each chosen purifier's
    ``weight_files`` (a diffusion prior, a diffusion UNet folder), then :func:`text_side_hashes` (model-config JSON,
    tokenizer name or file, precomputed embedding files). A shipped file (``checkpoints/``) whose hash is
    not the committed one (``checkpoints/SHA256SUMS``) is logged as a warning and recorded with
    ``"matches_shipped": false``: every number of the run comes from weights that are not the shipped ones."""
    candidates = {"clip.pretrained": cfg.clip.pretrained}
    if "purifier" in cfg:  # training runs have no purifier section
        for where, section in chosen_sections(cfg).items():
            candidates.update(section.weight_files(where))
    shipped = shipped_sha256()
    out = {}
    for key, value in candidates.items():
        path = find_path(value) if value else None
        if path is not None:
            out[key] = _hash_entry(path)
            expected = shipped.get(path.resolve())
            if expected is not None:
                out[key]["matches_shipped"] = out[key]["sha256"] == expected
                if expected != out[key]["sha256"]:
                    log.warning("%s=%s is a shipped checkpoint, but its SHA-256 %s is not the committed %s (%s): it was "
                                "modified, and this run's numbers are not those of the shipped model. Fix: `git checkout "
                                "-- %s` restores it.", key, value, out[key]["sha256"][:12], expected[:12],
                                SHIPPED_SUMS.name, path)
    out.update(text_side_hashes(cfg))
    return out


def write_config(run_dir: Path, cfg: DictConfig) -> Path:
    """Write the fully resolved ``cfg`` to ``<run_dir>/config.yaml`` (loadable again with ``load_config``)."""
    path = Path(run_dir) / "config.yaml"
    path.write_text(to_yaml(cfg))
    return path


def write_environment(run_dir: Path, **extra) -> dict:
    """Write ``environment.json``: :func:`environment_info` followed by the ``extra`` keys in the given order;
    returns what was written."""
    env = {**environment_info(), **extra}
    write_json(Path(run_dir) / "environment.json", env)
    return env


def close_logger(logger, end: RunEnd | None = None) -> None:
    """End the logger's run, recording how the job ended: ``end``, or when None, what :func:`run_end_for` makes of
    the exception propagating through the caller's ``finally`` block (none: finished).

    For a ``WandbLogger`` whose W&B run was started (in this process: the first one of a multi-process run):
    :func:`~clipure_lit.loggers.finish_wandb_run` (exit code, ``status`` and the summary values of ``end``; a stopped
    run that its launcher will continue is marked as preempting), which flushes its files, so the next run in the
    same process starts a new W&B run; for an offline run, the ``wandb sync`` command goes to the log file. The CSV
    logger and no logger (``False``/None) need nothing."""
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb  # heavy: wandb (~0.5 s to import); only a W&B logger needs it

        run = wandb.run
        if run is None:  # no W&B run was started (a failure before the test loop, or a process of rank > 0)
            return
        finish_wandb_run(run, end if end is not None else run_end_for(sys.exc_info()[1]))
        log_sync_hint(run)
