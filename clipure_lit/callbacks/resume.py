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
from clipure_lit.loggers import wandb_agent_run

log = logging.getLogger(__name__)

PROGRESS_DIR = "progress"
# Keys that do not change any per-sample result: they may differ between the interrupted run and its resumption.
IGNORED_KEYS = ("resume", "name", "output_root", "run_dir", "logger", "log_level", "trainer.enable_progress_bar",
                "trainer.limit_test_batches", "trainer.num_threads", "trainer.requeue_on_preempt", "data.num_workers", "prompts.cache_dir",
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


GROWABLE_KEY = "data.num_samples"


def grown_size(old: dict, new: dict) -> tuple[int, int | None] | None:
    """``(old data.num_samples, new data.num_samples)`` when the new config selects more samples than the old one
    (a larger number, or null: all of them) without ``data.ids_file`` (which overrides the number); else None."""
    a, b = _flatten(old), _flatten(new)
    before, after = a.get(GROWABLE_KEY), b.get(GROWABLE_KEY)
    if a.get("data.ids_file") or b.get("data.ids_file") or before is None:
        return None
    return (int(before), after) if after is None or int(after) > int(before) else None


def config_differences(old: dict, new: dict, allow_growth: bool = False) -> list[str]:
    """``["key: old -> new", ...]`` over the keys that matter for per-sample results; with ``allow_growth``, a
    larger ``data.num_samples`` (:func:`grown_size`) is not a difference (the ids are checked once the data is set
    up: :func:`check_growth`)."""
    a, b = _flatten(old), _flatten(new)
    growth = allow_growth and grown_size(old, new) is not None
    keys = sorted(k for k in set(a) | set(b) if not _ignored(k) and a.get(k, "<absent>") != b.get(k, "<absent>")
                  and not (growth and k == GROWABLE_KEY))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys]


def has_progress(run_dir: Path) -> bool:
    """True when ``run_dir`` holds at least one finished batch of an earlier run."""
    return any(p.stat().st_size > 0 for p in (Path(run_dir) / PROGRESS_DIR).glob("rank*.jsonl"))


def relaunch_resumes(run_dir: Path) -> str | None:
    """Why this launch continues the run in ``run_dir`` without ``resume=true``, or None: ``run_dir`` holds finished
    batches and this is a SLURM job that was requeued (``SLURM_RESTART_COUNT`` > 0) or a run a W&B agent launched
    (its folder is named after the W&B run id, which W&B keeps when it requeues a preempted run)."""
    if not has_progress(run_dir):
        return None
    restarts = os.environ.get("SLURM_RESTART_COUNT", "")
    if restarts.isdigit() and int(restarts) > 0:
        return f"SLURM job {os.environ.get('SLURM_JOB_ID')} was requeued (SLURM_RESTART_COUNT={restarts})"
    agent = wandb_agent_run()
    if agent is not None:
        return f"W&B sweep {agent['sweep_id']} relaunched run {agent['run_id']}"
    return None


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
    diffs = config_differences(old, json.loads(json.dumps(config, default=str)), allow_growth=True)
    if diffs:
        raise ConfigError(f"Cannot resume the run in '{run_dir}': its config differs in {len(diffs)} key(s): "
                          + "; ".join(diffs) + ". Fix: resume with the original values, or start a new run_dir.")
    return True


def saved_config(run_dir: Path) -> dict | None:
    """The config saved in ``progress/config.json`` when the run started (None when absent)."""
    path = Path(run_dir) / PROGRESS_DIR / "config.json"
    return json.loads(path.read_text())["config"] if path.is_file() else None


def check_growth(run_dir: Path, config: dict, sample_ids: list[int]) -> None:
    """For a resumed run whose ``data.num_samples`` grew (:func:`grown_size`): check, before any model is built,
    that the samples it finished are among ``sample_ids`` (the larger run's selection) in the same order, then save
    ``config`` as the run's config (``progress/config.json``), so the grown run resumes as itself. No-op otherwise.

    Batches of the earlier run that the larger run does not form alike (its last, partial batch) are evaluated
    again in the larger run's batches (:func:`planned_batches`), so every result equals a fresh run's.

    Raises:
        ConfigError: a finished sample is not selected by the larger run, or the order of selection changed.
    """
    old = saved_config(run_dir)
    growth = grown_size(old, config) if old is not None else None
    if growth is None:
        return
    position = {int(i): k for k, i in enumerate(sample_ids)}
    for rec in read_progress(run_dir):
        ids = rec["columns"].get("label", {}).get("ids", [])
        missing = [i for i in ids if i not in position]
        if missing:
            raise ConfigError(
                f"Cannot grow the run in '{run_dir}' from data.num_samples={growth[0]} to {growth[1]}: sample {missing[0]}, "
                "which it evaluated, is not among the larger run's samples, so this is another selection (data.subset, "
                "data.subset_seed or the dataset changed), not a larger one. Fix: keep the data settings of the run and "
                "change only data.num_samples, or start a new run_dir.")
        places = [position[i] for i in ids]
        if places != sorted(places):
            raise ConfigError(
                f"Cannot grow the run in '{run_dir}' from data.num_samples={growth[0]} to {growth[1]}: the larger run "
                f"orders its samples differently (a batch of {ids[:4]}... is not in the larger run's order), so its "
                "batches would differ from a fresh run's. Fix: start a new run_dir at the larger size.")
    (Path(run_dir) / PROGRESS_DIR / "config.json").write_text(json.dumps({"config": config}, indent=1, default=str))
    log.info("Growing the run in %s from data.num_samples=%s to %s: only the samples it did not finish are evaluated.",
             run_dir, growth[0], growth[1] if growth[1] is not None else "null (all)")


def planned_batches(sample_ids: list[int], batch_size: int, world_size: int) -> set[tuple[int, ...]]:
    """The batches (sample ids in order) that a test loop over ``sample_ids`` forms on every process: Lightning's
    ``DistributedSampler(shuffle=False)`` split (padded with repeated samples) under several processes, then
    ``batch_size`` per batch."""
    from torch.utils.data import DistributedSampler

    planned = set()
    for rank in range(world_size):
        positions = list(DistributedSampler(range(len(sample_ids)), num_replicas=world_size, rank=rank, shuffle=False))
        ids = [int(sample_ids[k]) for k in positions]
        planned.update(tuple(ids[k:k + batch_size]) for k in range(0, len(ids), batch_size))
    return planned


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
            datamodule = getattr(trainer, "datamodule", None)
            if records and datamodule is not None:
                # Only batches this run forms alike are kept (after a growth, the earlier last batch may not be).
                plan = planned_batches(datamodule.sample_ids, int(datamodule.cfg.batch_size), int(trainer.world_size))
                kept = [r for r in records if tuple(r["columns"].get("label", {}).get("ids", [])) in plan]
                if len(kept) < len(records):
                    log.info("%d finished batch(es) of the earlier run are not batches of this one (it grew): their "
                             "samples are evaluated again within this run's batches.", len(records) - len(kept))
                records = kept
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
