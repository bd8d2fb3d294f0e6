"""The run folder's lifecycle, the same for an evaluation (``eval.py``) and a training run (``train.py``).

In order, a run calls :func:`make_run_dir` (``cfg.run_dir``, else a folder under ``<cfg.output_root>/<cfg.name>/``
that every process of a multi-process run agrees on; a folder that cannot be written is a one-paragraph error),
holds :func:`exclusive_run_folder` (one run per folder) and :func:`run_log` (the full log of the run, ``log.txt``,
whatever the console shows) for the rest, :func:`write_config` (the fully resolved ``config.yaml``, before any
work), :func:`write_environment` (``environment.json``: Python, platform, package versions, git commit, plus what
the caller adds, e.g. :func:`checkpoint_hashes`), and, whether the job succeeded or not, :func:`close_logger`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout
from omegaconf import DictConfig

from clipure_lit.clip.tokenizers import callable_source, is_callable_spec
from clipure_lit.config.loader import to_yaml
from clipure_lit.errors import ConfigError
from clipure_lit.loggers import log_sync_hint
from clipure_lit.purifiers.registry import chosen_sections
from clipure_lit.results import write_json
from clipure_lit.utils.console import log_to_file
from clipure_lit.utils.distributed import launched_without_job_id, launcher_job_name, launcher_rank_is_zero
from clipure_lit.utils.paths import find_path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"  # held by the process running in the folder
# Set by a run's first process for the processes Lightning starts for it on the same node (which re-run the same
# command line): the run folder that first process chose.
RUN_DIR_ENV = "CLIPURE_LIT_RUN_DIR"

_VERSIONED = ("torch", "torchvision", "pytorch-lightning", "open_clip_torch", "dalle2-pytorch", "pyautoattack", "wandb",
              "omegaconf", "clip-benchmark", "diffusers")


def make_run_dir(cfg: DictConfig) -> Path:
    """Create (if needed) and return the run folder; every process of a multi-process run gets the same one.

    In order: ``cfg.run_dir``; for a process that Lightning started on the node of the run's first process
    (``LOCAL_RANK`` > 0), the folder that process chose (:data:`RUN_DIR_ENV`, see :func:`share_run_dir`);
    ``<cfg.output_root>/<cfg.name>/<launcher job>`` for a launch with a job id shared by all its processes
    (``slurm-<job id>[.<step>]`` under ``srun``, ``torchrun-<rdzv id>``); else a new
    ``<cfg.output_root>/<cfg.name>/<timestamp>`` (microsecond resolution).

    Raises:
        ConfigError: a run over several separately launched processes (``trainer.num_nodes`` > 1, torchrun without
            a rendezvous id, a Lightning launch with ``NODE_RANK``) and no ``run_dir`` nor job id to agree on.
    """
    inherited = os.environ.get(RUN_DIR_ENV) if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 else None
    job = launcher_job_name()
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
    elif inherited:
        run_dir = Path(inherited)
    elif job:
        run_dir = Path(cfg.output_root) / cfg.name / job
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


def close_logger(logger) -> None:
    """End the logger's run. For a ``WandbLogger`` this is ``wandb.finish()`` (flushes its files, so the next run in
    the same process starts a new W&B run) and, for an offline run, the ``wandb sync`` command in the log file; the
    CSV logger and no logger (``False``/None) need nothing."""
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb  # heavy: wandb (~0.5 s to import); only a W&B logger needs it

        run = wandb.run
        wandb.finish()
        log_sync_hint(run)
