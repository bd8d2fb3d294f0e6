"""The status of an evaluation in progress, read from its folders only (nothing is loaded or started): one run
folder, or the shards of one (``<run_dir>/shards/<i>/``, or runs found under ``--from`` folders).

Per run: done (``results.json``), running (a process holds the folder's lock, or its SLURM job is queued or
running according to the shard set's ``state.json``), stopped (finished batches, nobody on it: launching again
resumes it) or not started. Over all runs: the samples done of the total, the running clean and robust accuracy per
attack and worst case over the finished samples, with 95% Wilson intervals (from the ``progress/`` files), and an
ETA: the seconds per sample of the finished batches (the sum of their timed parts) times the samples left, divided
by the number of runs going at once (at least one).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from clipure_lit.callbacks.resume import merge_records, read_progress
from clipure_lit.reporting.format import pct_ci_counts
from clipure_lit.results import read_json, summarise_finished, table_from_columns
from clipure_lit.run_folder import LOCK_NAME
from clipure_lit.sweeping import outcomes as oc

DONE, RUNNING, STOPPED, NOT_STARTED = "done", "running", "stopped", "not started"


@dataclass
class RunState:
    """One run folder's state, its samples done and total (None: not known yet), and its finished batches
    (``folder`` None: a shard of a ``--from`` set with no run yet)."""

    folder: Path | None
    state: str
    done: int
    total: int | None
    records: list


def _locked(folder: Path) -> bool:
    """True while a process holds the run folder's lock (a running evaluation)."""
    path = folder / LOCK_NAME
    if not path.exists():
        return False
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def run_state(folder: Path, queued: bool = False) -> RunState:
    """The state of the run in ``folder``; ``queued``: its SLURM job is pending or running (state.json)."""
    records = read_progress(folder) if (folder / "progress").is_dir() else []
    done = len({i for r in records for i in r["columns"].get("label", {}).get("ids", [])})
    env = folder / "environment.json"
    total = read_json(env).get("num_samples") if env.is_file() else None
    if (folder / "results.json").is_file():
        state = DONE
    elif _locked(folder) or queued:
        state = RUNNING
    else:
        state = STOPPED if records else NOT_STARTED
    return RunState(folder, state, done, total, records)


def found_states(folders: list[Path | None]) -> list[RunState]:
    """The states of shard runs launched elsewhere (:func:`~clipure_lit.sweeping.shard_runs.found_shard_runs`): not
    started where a shard has no run; otherwise running only while a process holds the folder."""
    return [run_state(f) if f is not None else RunState(None, NOT_STARTED, 0, None, []) for f in folders]


def shard_states(run_dir: Path, num_shards: int | None = None) -> list[RunState]:
    """The states of the shards of ``run_dir`` (``num_shards``, else as many as it holds folders)."""
    out = Path(run_dir) / "shards"
    if num_shards is None:
        num_shards = len([p for p in out.iterdir() if p.is_dir() and p.name.isdigit()]) if out.is_dir() else 0
    state_path = out / "state.json"
    launched = json.loads(state_path.read_text()) if state_path.is_file() else {}
    states = []
    for i in range(num_shards):
        entry = launched.get(str(i), {})
        queued = entry.get("status") == "submitted" and oc.last_outcome(entry) in (None, oc.ACTIVE, oc.UNKNOWN)
        states.append(run_state(out / str(i), queued=queued))
    return states


def _eta(seconds: float) -> str:
    return str(_dt.timedelta(seconds=round(seconds)))


def format_status(run_dir: Path, runs: list[RunState], total: int | None, sharded: bool) -> str:
    """The status view: one line on the runs, one on the samples and the ETA, then one table of accuracies."""
    counts = {s: sum(1 for r in runs if r.state == s) for s in (DONE, RUNNING, STOPPED, NOT_STARTED)}
    lines = [f"run folder: {run_dir}"]
    if sharded:
        listed = ", ".join(f"{n} {s}" + (f" ({', '.join(str(k) for k, r in enumerate(runs) if r.state == s)})" if n else "")
                           for s, n in counts.items())
        lines.append(f"shards: {len(runs)}: {listed}")
    else:
        lines.append(f"state: {runs[0].state}")
    done = sum(r.done for r in runs)
    records = [rec for r in runs for rec in r.records]
    seconds = sum(sum(rec.get("times", {}).values()) for rec in records)
    left = None if total is None else max(total - done, 0)
    eta = "-"
    if left == 0:
        eta = "0:00:00"
    elif left is not None and done:
        eta = f"{_eta(left * seconds / done / max(counts[RUNNING], 1))} ({seconds / done:.3g} s per sample over the " \
              f"finished batches, {max(counts[RUNNING], 1)} running at once)"
    lines.append(f"samples: {done} of {total if total is not None else '?'} done; ETA {eta}")
    columns = merge_records(records)[0]
    if "label" not in columns or "clean_pred" not in columns:
        lines.append("no finished batch yet: no accuracy to show")
        return "\n".join(lines)
    numbers = summarise_finished(table_from_columns(columns))
    rows = [("clean", numbers["clean"])] + [(("worst case" if name == "worst_case" else f"robust: {name}"), entry)
                                            for name, entry in numbers["robust"].items()]
    width = max(len(name) for name, _ in rows)
    lines.append(f"{'':{width}}  {'acc':>7}  {'95% Wilson':^14}  (correct/done)")
    lines += [f"{name:{width}}  {pct_ci_counts(entry)}" for name, entry in rows]
    return "\n".join(lines)


def status_text(run_dir: Path, num_shards: int | None = None, total: int | None = None,
                found: list[Path | None] | None = None) -> str:
    """The status view of ``run_dir``: its shards when it holds ``shards/`` (or ``num_shards`` is given), else the
    run folder itself; ``found``: the shard runs found under ``--from`` folders instead (one entry per shard, None
    where none was found). ``total``: the samples of the whole evaluation, when known (else summed from the runs'
    ``environment.json``, unknown while a shard has not started)."""
    run_dir = Path(run_dir)
    sharded = found is not None or num_shards is not None or (run_dir / "shards").is_dir()
    runs = found_states(found) if found is not None else shard_states(run_dir, num_shards) if sharded else [run_state(run_dir)]
    if total is None and runs and all(r.total is not None for r in runs):
        total = sum(r.total for r in runs)
    return format_status(run_dir, runs, total, sharded)
