"""Resumable evaluation: per-sample results are appended to ``<run_dir>/progress/`` as batches finish.

* ``progress/config.json``: the resolved config of the run (written when the run starts);
* ``progress/rank<r>.jsonl``: one line per finished batch of process ``r``: every column added for the batch
  (``label``, ``clean_pred``, ``adv_pred/<attack>``), its timings and any masking-check findings. Lines are
  flushed and fsync'ed, so a killed run loses at most the batch in flight (a torn last line is ignored).

With ``resume=true`` and the same ``run_dir``, an identical config continues: finished samples are restored into
the module, batches made only of finished samples are skipped, and the final table equals that of an
uninterrupted run (per-batch seeding makes batches independent of what ran before). A different config is refused
with the list of differing keys.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from clipure_lit.errors import ConfigError

log = logging.getLogger(__name__)

PROGRESS_DIR = "progress"
# Keys that do not change any per-sample result: they may differ between the interrupted run and its resumption.
IGNORED_KEYS = ("resume", "name", "output_root", "run_dir", "logger", "log_level", "trainer.enable_progress_bar",
                "trainer.limit_test_batches", "trainer.num_threads", "data.num_workers", "prompts.cache_dir",
                "attack.save_adversarial")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


def config_differences(old: dict, new: dict) -> list[str]:
    """``["key: old -> new", ...]`` over the keys that matter for per-sample results."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if not _ignored(k) and a.get(k, "<absent>") != b.get(k, "<absent>"))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys]


def has_progress(run_dir: Path) -> bool:
    """True when ``run_dir`` holds at least one finished batch of an earlier run."""
    return any(p.stat().st_size > 0 for p in (Path(run_dir) / PROGRESS_DIR).glob("rank*.jsonl"))


def prepare_progress(run_dir: Path, config: dict, resume: bool) -> bool:
    """Check the run folder before anything is written to it; returns True when there is progress to resume.

    A folder without a finished batch (e.g. a run that failed before its first batch) counts as fresh.

    Raises:
        ConfigError: progress exists but ``resume`` is false (it would be overwritten), or the saved config differs.
    """
    folder = Path(run_dir) / PROGRESS_DIR
    saved = folder / "config.json"
    if not has_progress(run_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("rank*.jsonl"):
            stale.unlink()
        saved.write_text(json.dumps({"config": config}, indent=1, default=str))
        if resume:
            log.info("resume=true but %s holds no finished batch: starting from the beginning.", folder)
        return False
    if not resume:
        raise ConfigError(
            f"run_dir='{run_dir}' already holds per-sample results of a previous run ({folder}). Fix: pass resume=true to "
            "continue it, or choose another run_dir (or delete that folder to start over).")
    if not saved.is_file():
        raise ConfigError(f"Cannot resume the run in '{run_dir}': {saved} is missing, so its config cannot be checked. "
                          "Fix: start a new run_dir.")
    old = json.loads(saved.read_text())["config"]
    diffs = config_differences(old, json.loads(json.dumps(config, default=str)))
    if diffs:
        raise ConfigError(f"Cannot resume the run in '{run_dir}': its config differs in {len(diffs)} key(s): "
                          + "; ".join(diffs) + ". Fix: resume with the original values, or start a new run_dir.")
    return True


def read_progress(run_dir: Path) -> list[dict]:
    """Every complete batch record of every rank (a torn last line from a killed run is skipped)."""
    records = []
    for path in sorted((Path(run_dir) / PROGRESS_DIR).glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("ignoring an incomplete line in %s (the batch in flight when the run stopped)", path)
    return records


def merge_records(records: list[dict]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, float], int, dict]:
    """``(columns, times, num_rows, findings)`` summed over records."""
    parts: dict[str, tuple[list, list]] = {}
    times: dict[str, float] = {}
    findings: dict[str, dict] = {}
    rows = 0
    for rec in records:
        for name, col in rec["columns"].items():
            ids, values = parts.setdefault(name, ([], []))
            ids += col["ids"]
            values += col["values"]
        for key, seconds in rec.get("times", {}).items():
            times[key] = times.get(key, 0.0) + seconds
        for flag, f in rec.get("findings", {}).items():
            prev = findings.get(flag)
            if prev is None or f.get("raised", 0) > prev.get("raised", 0):
                findings[flag] = f
        rows += len(rec["columns"].get("label", {}).get("ids", []))
    columns = {name: (torch.tensor(ids, dtype=torch.long), torch.tensor(values)) for name, (ids, values) in parts.items()}
    return columns, times, rows, findings


class ResumableProgress(pl.Callback):
    """Appends each finished batch to ``progress/rank<r>.jsonl`` and restores a previous run's batches.

    Must come after every callback that adds columns in ``on_test_batch_end`` (e.g. ``RobustEvalCallback``).
    Call :func:`prepare_progress` first (``callbacks.build.eval_callbacks`` does), so a mismatching config fails
    before any work.
    """

    def __init__(self, run_dir: str | Path, resume: bool) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self._fh = None

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage != "test":
            return
        folder = self.run_dir / PROGRESS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        if self.resume:
            records = read_progress(self.run_dir)
            if records:
                columns, times, rows, findings = merge_records(records)
                pl_module.restore(columns, times, rows, findings, keep_rows=trainer.is_global_zero)
                log.info("resuming: %d samples already finished in %s", len(pl_module.finished_ids), folder)
        path = folder / f"rank{trainer.global_rank}.jsonl"
        torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self._fh = open(path, "a")
        if torn:  # a killed write left half a line: end it, so the next record starts on a line of its own
            self._fh.write("\n")

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        record = pl_module.take_batch_record()
        if not record["columns"]:
            return
        line = {"columns": {name: {"ids": ids.tolist(), "values": values.tolist()}
                            for name, (ids, values) in record["columns"].items()},
                "times": record["times"], "findings": record["findings"]}
        self._fh.write(json.dumps(line) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
