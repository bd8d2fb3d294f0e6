"""The run folder's lifecycle, the same for an evaluation (``eval.py``) and a training run (``train.py``).

In order, a run calls :func:`make_run_dir` (``cfg.run_dir``, else ``<cfg.output_root>/<cfg.name>/<timestamp>``),
enters :func:`run_log` (the full log of the run, ``log.txt``, whatever the console shows), :func:`write_config`
(the fully resolved ``config.yaml``, before any work), :func:`write_environment` (``environment.json``: Python,
platform, package versions, git commit, plus what the caller adds, e.g. :func:`checkpoint_hashes`), and, whether
the job succeeded or not, :func:`close_logger`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig

from clipure_lit.config.loader import to_yaml
from clipure_lit.loggers import log_sync_hint
from clipure_lit.purifiers.registry import chosen_sections
from clipure_lit.results import write_json
from clipure_lit.utils.console import log_to_file
from clipure_lit.utils.paths import find_path

_VERSIONED = ("torch", "torchvision", "pytorch-lightning", "open_clip_torch", "dalle2-pytorch", "pyautoattack", "wandb",
              "omegaconf", "clip-benchmark", "diffusers")


def make_run_dir(cfg: DictConfig) -> Path:
    """Create (if needed) and return the run folder: ``cfg.run_dir`` when set, else a new
    ``<cfg.output_root>/<cfg.name>/<timestamp>`` (microsecond resolution)."""
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run_dir = Path(cfg.output_root) / cfg.name / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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
    the same process starts a new W&B run) and, for an offline run, the ``wandb sync`` command in the log file; the
    CSV logger and no logger (``False``/None) need nothing."""
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb  # heavy: wandb (~0.5 s to import); only a W&B logger needs it

        run = wandb.run
        wandb.finish()
        log_sync_hint(run)
