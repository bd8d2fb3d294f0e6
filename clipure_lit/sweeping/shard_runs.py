"""Where the runs of one shard set are: ``<run_dir>/shards/<i>/`` when ``eval.py --shards N`` launched them, or
run folders found under ``--from`` folders when something else did (a W&B agent: ``runs/wandb/<sweep id>/<run
id>/``; ``sweep.py``: ``runs/sweeps/<name>/run-<k>/``), each run telling its shard by the ``data.shard`` and
``data.num_shards`` of its saved config (``progress/config.json``).

A ``--from`` folder is a run folder itself or holds run folders one level down. Every run found must belong to the
N-shard set and each shard must have at most one run: a run of another shard count, or two runs of one shard (an
earlier attempt kept beside a new one), would make the merged table depend on which one was read, so both are
refused with the folders named.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipure_lit.errors import ConfigError

SAVED_CONFIG = Path("progress") / "config.json"


def shard_folders(run_dir: Path, num_shards: int) -> list[Path]:
    """``<run_dir>/shards/0``, ..., ``<run_dir>/shards/<N-1>``."""
    return [Path(run_dir) / "shards" / str(i) for i in range(num_shards)]


def _run_folders(source: Path) -> list[Path]:
    """``source`` when it is a run folder (it holds a saved config), else its sub-folders that are."""
    if (source / SAVED_CONFIG).is_file():
        return [source]
    return sorted(p for p in source.iterdir() if p.is_dir() and (p / SAVED_CONFIG).is_file())


def saved_config(folder: Path) -> dict:
    """The resolved config the run in ``folder`` was made with (``progress/config.json``).

    Raises:
        ConfigError: the file is missing or unreadable.
    """
    try:
        config = json.loads((folder / SAVED_CONFIG).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"Cannot read the saved config of the run in '{folder}' ({folder / SAVED_CONFIG}: {exc}). "
                          "Fix: leave that folder out of the merge, or run it again.") from None
    if not isinstance(config, dict):
        raise ConfigError(f"The saved config of the run in '{folder}' ({folder / SAVED_CONFIG}) is not a mapping. "
                          "Fix: leave that folder out of the merge, or run it again.")
    return config


def _shard_of(folder: Path) -> tuple[int, int | None]:
    """``(data.num_shards, data.shard)`` of the run in ``folder``."""
    data = saved_config(folder).get("data") or {}
    return int(data.get("num_shards") or 1), data.get("shard")


def found_shard_runs(sources: list[Path], num_shards: int) -> list[Path | None]:
    """The run folder of every shard ``0..N-1`` found under ``sources`` (None: no run of that shard yet).

    Raises:
        ConfigError: a source is not a folder or holds no run; a run found belongs to another shard count (or to no
            shard set); two runs claim one shard.
    """
    runs: list[Path] = []
    for source in sources:
        source = Path(source)
        if not source.is_dir():
            raise ConfigError(f"--from '{source}' is not a folder. Fix: pass the folder holding the shard runs (a W&B "
                              "agent's are in runs/wandb/<sweep id>/, sweep.py's in runs/sweeps/<name>/).")
        found = _run_folders(source)
        if not found:
            raise ConfigError(f"--from '{source}' holds no run folder (none with {SAVED_CONFIG}, itself or one level "
                              "down). Fix: pass the folder holding the shard runs (a W&B agent's are in "
                              "runs/wandb/<sweep id>/, sweep.py's in runs/sweeps/<name>/).")
        runs += found
    by_shard: dict[int, list[Path]] = {}
    foreign = []
    for folder in dict.fromkeys(runs):  # a run named by two sources counts once
        count, shard = _shard_of(folder)
        if count != num_shards or shard is None:
            foreign.append(f"{folder} (data.num_shards={count}, data.shard={shard})")
        else:
            by_shard.setdefault(int(shard), []).append(folder)
    if foreign:
        raise ConfigError(f"--from holds {len(foreign)} run(s) that are not shards of this {num_shards}-shard set: "
                          f"{'; '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}. Fix: pass --shards with "
                          "their data.num_shards, or --from the folders of one shard set only.")
    doubled = {k: v for k, v in sorted(by_shard.items()) if len(v) > 1}
    if doubled:
        k, folders = next(iter(doubled.items()))
        raise ConfigError(f"--from holds {len(folders)} runs of shard {k} ({', '.join(map(str, folders))})"
                          f"{f' and of {len(doubled) - 1} more shard(s)' if len(doubled) > 1 else ''}; a merge takes "
                          "one run per shard. Fix: move the runs that should not count (e.g. an earlier attempt) out "
                          "of the folder, or pass --from the run folders themselves.")
    return [by_shard.get(k, [None])[0] for k in range(num_shards)]


def require_every_shard(folders: list[Path | None], sources: list[Path]) -> list[Path]:
    """``folders`` when every shard has a run; else refuse, naming the shards without one."""
    missing = [str(k) for k, folder in enumerate(folders) if folder is None]
    if missing:
        raise ConfigError(f"Cannot merge: {len(missing)} of the {len(folders)} shards have no run under "
                          f"{', '.join(map(str, sources))}: shard(s) {', '.join(missing)}. A merged result must hold "
                          "every sample. Fix: let the sweep run them (every value of data.shard), then merge again.")
    return folders  # type: ignore[return-value]
