"""The run folder's lifecycle, the same for an evaluation (``eval.py``) and a training run (``train.py``).

In order, a run calls :func:`make_run_dir` (``cfg.run_dir``, else a folder under ``<cfg.output_root>/<cfg.name>/``
that every process of a multi-process run agrees on),
:func:`write_config` (the fully resolved ``config.yaml``, before any work), :func:`write_environment`
(``environment.json``: Python, platform, package versions, git commit, plus what the caller adds, e.g.
:func:`checkpoint_hashes`), and, whether the job succeeded or not, :func:`close_logger`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig

from clipure_lit.config.loader import to_yaml
from clipure_lit.errors import ConfigError
from clipure_lit.purifiers.registry import chosen_sections
from clipure_lit.results import write_json
from clipure_lit.utils.distributed import launched_without_job_id, launcher_job_name
from clipure_lit.utils.paths import find_path

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
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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


def checkpoint_hashes(cfg: DictConfig) -> dict:
    """SHA-256 of every local weight file the run loads (CLIP checkpoint, and each chosen purifier's
    ``weight_files``: a diffusion prior, a diffusion UNet folder)."""
    candidates = {"clip.pretrained": cfg.clip.pretrained}
    if "purifier" in cfg:  # training runs have no purifier section
        for where, section in chosen_sections(cfg).items():
            candidates.update(section.weight_files(where))
    out = {}
    for key, value in candidates.items():
        path = find_path(value) if value else None
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path is not None and path.is_dir() else [path] if path else []
        if files:
            digest = hashlib.sha256()
            for f in files:
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
            out[key] = {"path": str(path), "sha256": digest.hexdigest()}
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
    the same process starts a new W&B run); the CSV logger and no logger (``False``/None) need nothing."""
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb  # heavy: wandb (~0.5 s to import); only a W&B logger needs it

        wandb.finish()
