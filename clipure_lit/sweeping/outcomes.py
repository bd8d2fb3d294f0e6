"""What became of each launch of a sweep run: SLURM job states and what they mean for the run, one ``sacct`` call
for a whole sweep, a local run's exit status, and the attempt records that ``state.json`` keeps.

Every launch of a run is one *attempt*. ``state.json`` keeps, per run, the list of its attempts (oldest first)
under ``"attempts"``; an attempt is never removed or overwritten, only completed once its outcome is known:

    attempt      1, 2, ... (the run's launch count)
    launcher     "local" or "slurm"
    job_id       submitit's job id (SLURM: the array task, "4242_3"; local: the job's process id)
    action       what was launched: "run", "resume" (resume=true) or "rerun" (config changed, started again)
    started      when it was launched or submitted (ISO time, this machine's clock)
    mem_gb       SLURM: the memory it asked for (--mem-gb; null: the cluster's default)
    state        the outcome's name: a SLURM job state ("FAILED", "CANCELLED by 1234", ...) or a local one
                 (LOCAL_STATES); absent while the attempt is running or its state is not known yet
    outcome      its class (OUTCOMES): finished, failed, failed-needs-change, interrupted, active or unknown
    reason       one line: exit status or signal, sacct's ExitCode/Reason, memory, the run's last output line
    exit_code    local: the command's exit status (negative: killed by that signal); SLURM: sacct's "code:signal"
    signal       the signal that ended the run's command, when one did
    elapsed, max_rss, req_mem, derived_exit_code, slurm_reason    SLURM accounting (sacct), where known
    log_tail     the last lines the run printed in this attempt (its stdout.log)
    ended        when it ended (SLURM: sacct's End), else when its outcome was recorded

The run's own entry keeps the summary earlier versions wrote (``status``, ``launches``, ``job_id``, ``log``,
``returncode``, ``seconds``) plus ``reason`` (the last attempt's, when it did not finish). Entries written before
attempts were kept are read as one attempt made from those fields.
"""

from __future__ import annotations

import datetime as _dt
import math
import pickle
import re
import signal
import subprocess
from pathlib import Path

# Outcome classes of an attempt.
ACTIVE = "active"                  # queued or computing: left alone
FINISHED = "finished"              # results.json written
FAILED = "failed"                  # the run's own failure: resubmitted only with --retry-failed
NEEDS_CHANGE = "failed-needs-change"  # out of memory: resubmitted only with --retry-failed and a larger --mem-gb
INTERRUPTED = "interrupted"        # stopped from outside (time limit, preemption, cancellation, node failure, a
                                   # signal): resumed by the next sweep.py call (finished batches are kept)
UNKNOWN = "unknown"                # no state can be read: left alone unless --resubmit
OUTCOMES = (ACTIVE, FINISHED, FAILED, NEEDS_CHANGE, INTERRUPTED, UNKNOWN)

# Every job state SLURM reports (sacct and squeue), its class, and what it means for the run.
SLURM_STATES: dict[str, tuple[str, str]] = {
    "PENDING": (ACTIVE, "waiting in the queue"),
    "CONFIGURING": (ACTIVE, "its nodes are being prepared"),
    "RUNNING": (ACTIVE, "running"),
    "COMPLETING": (ACTIVE, "ending (its processes are being cleaned up)"),
    "STAGE_OUT": (ACTIVE, "staging out its files"),
    "SIGNALING": (ACTIVE, "being sent a signal"),
    "SUSPENDED": (ACTIVE, "suspended; it continues when the scheduler resumes it"),
    "STOPPED": (ACTIVE, "stopped by SIGSTOP; it keeps its allocation and continues at SIGCONT"),
    "RESIZING": (ACTIVE, "changing its size"),
    "REQUEUED": (ACTIVE, "requeued (by submitit at its time limit or preemption, or by scontrol requeue)"),
    "REQUEUE_FED": (ACTIVE, "requeued by its federation"),
    "REQUEUE_HOLD": (ACTIVE, "requeued and held: scontrol release <job id> lets it run"),
    "RESV_DEL_HOLD": (ACTIVE, "held because its reservation was deleted: scontrol release <job id>"),
    "COMPLETED": (FINISHED, "exit status 0"),
    "FAILED": (FAILED, "the run's command failed (non-zero exit status)"),
    "SPECIAL_EXIT": (FAILED, "held after an exit status that the cluster marks as special"),
    "OUT_OF_MEMORY": (NEEDS_CHANGE, "killed for using more memory than it asked for (--mem-gb)"),
    "TIMEOUT": (INTERRUPTED, "reached its time limit (--time) after the requeues submitit makes"),
    "PREEMPTED": (INTERRUPTED, "preempted by a job of higher priority"),
    "CANCELLED": (INTERRUPTED, "cancelled (scancel, or an administrator)"),
    "NODE_FAIL": (INTERRUPTED, "one of its nodes failed"),
    "BOOT_FAIL": (INTERRUPTED, "its node failed to boot"),
    "DEADLINE": (INTERRUPTED, "reached its deadline (sbatch --deadline)"),
    "REVOKED": (UNKNOWN, "revoked here because another cluster of its federation started it: its state is there"),
}

# Outcomes of a local attempt (the local launcher's own names), and their classes.
LOCAL_STATES: dict[str, tuple[str, str]] = {
    "COMPLETED": (FINISHED, "exit status 0 and results.json written"),
    "FAILED": (FAILED, "non-zero exit status, or exit status 0 without results.json"),
    "TIMEOUT": (FAILED, "stopped at --timeout"),
    "SIGNALED": (INTERRUPTED, "killed by a signal from outside (SIGKILL, SIGTERM, ...)"),
    "STOPPED": (INTERRUPTED, "stopped by sweep.py (Ctrl-C, SIGTERM or SIGHUP to the launcher)"),
    "LOST": (INTERRUPTED, "the sweep.py that launched it ended before recording its outcome"),
}

# The entry status (state.json's "status") of each outcome class.
STATUS_OF = {ACTIVE: "submitted", FINISHED: "finished", FAILED: "failed", NEEDS_CHANGE: "failed",
             INTERRUPTED: "interrupted", UNKNOWN: "submitted"}

# Exit statuses that mean a signal ended the command: 128 + n is what eval.py and shells exit with after signal n.
_SIGNAL_EXITS = {128 + int(s): s for s in (signal.SIGHUP, signal.SIGINT, signal.SIGKILL, signal.SIGTERM)}
SACCT_FIELDS = ("JobID", "State", "ExitCode", "DerivedExitCode", "Reason", "Elapsed", "End", "MaxRSS", "ReqMem")


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def slurm_state_name(state: str) -> str:
    """The job state's name without sacct's decorations: ``"CANCELLED by 1234"`` and ``"CANCELLED+"`` ->
    ``"CANCELLED"``."""
    words = state.strip().split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


def slurm_outcome(state: str) -> str:
    """The class of a SLURM job state (:data:`SLURM_STATES`); ``unknown`` for a state not listed there."""
    return SLURM_STATES.get(slurm_state_name(state), (UNKNOWN, ""))[0]


# ----------------------------------------------------------------------------------------------------------------
# Reading what happened: sacct, submitit's result files, the run's log.

def _array_ids(job_id: str) -> list[str]:
    """``"4242_[0-3,7%2]"`` (a pending array's row) -> ``["4242_0", ..., "4242_3", "4242_7"]``; other ids as they are."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    ids = []
    for part in match.group(2).split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            ids += [f"{match.group(1)}_{k}" for k in range(int(first), int(last or first) + 1)]
    return ids


def parse_sacct(text: str) -> dict[str, dict]:
    """``sacct --parsable2`` output (with its header line) -> per job id (array task ``"4242_3"`` or job ``"4242"``):
    ``state``, ``exit_code``, ``derived_exit_code``, ``slurm_reason``, ``elapsed``, ``end``, ``req_mem`` from the
    job's row and ``max_rss``, the largest over its steps (``4242_3.batch``, ``4242_3.0``: the job's own row has
    none). Fields the header lacks are left out."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    names = lines[0].split("|")
    keys = {"State": "state", "ExitCode": "exit_code", "DerivedExitCode": "derived_exit_code", "Reason": "slurm_reason",
            "Elapsed": "elapsed", "End": "end", "ReqMem": "req_mem"}
    info: dict[str, dict] = {}
    rss: dict[str, tuple[float, str]] = {}
    for line in lines[1:]:
        row = dict(zip(names, (v.strip() for v in line.split("|"))))
        job_id = row.get("JobID", "")
        if not job_id:
            continue
        if "." in job_id:  # a step: only its memory use matters
            task, value = job_id.split(".", 1)[0], row.get("MaxRSS", "")
            size = memory_gb(value)
            if size is not None and size >= rss.get(task, (-1.0, ""))[0]:
                rss[task] = (size, value)
            continue
        record = {key: row[name] for name, key in keys.items()
                  if row.get(name) and not (name == "End" and row[name] in ("Unknown", "None"))}  # End of a pending job
        for task in _array_ids(job_id):
            info[task] = dict(record)
    for task, (_, value) in rss.items():
        if task in info:
            info[task]["max_rss"] = value
    return info


def query_sacct(job_ids: list[str], timeout_s: float = 60.0) -> tuple[dict[str, dict], str | None]:
    """One ``sacct`` call for every job (array) of ``job_ids``; returns (:func:`parse_sacct`'s dict, None), or
    ({}, why it could not be read) when sacct is missing, fails or times out. A sacct that does not know the
    ``Reason`` field (older SLURM) is asked again without it."""
    jobs = sorted({str(j).split("_")[0] for j in job_ids})
    if not jobs:
        return {}, None
    fields = list(SACCT_FIELDS)
    while True:
        command = ["sacct", "--parsable2", "--format=" + ",".join(fields), "--jobs=" + ",".join(jobs)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            return {}, "sacct is not on PATH"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {}, f"`{' '.join(command)}` failed: {exc}"
        if done.returncode == 0:
            return parse_sacct(done.stdout), None
        message = (done.stderr or done.stdout).strip().splitlines()
        if "Reason" in fields and any("invalid field" in m.lower() and "reason" in m.lower() for m in message):
            fields.remove("Reason")
            continue
        return {}, f"`{' '.join(command)}` exited with status {done.returncode}" + (f": {message[-1]}" if message else "")


def submitit_result(folder: Path, job_id: str) -> tuple[str, object] | None:
    """What submitit recorded for the job's first task (``<job id>_0_result.pkl``): ``("success", value)`` or
    ``("error", traceback text)``; None when there is no (readable) record."""
    path = Path(folder) / f"{job_id}_0_result.pkl"
    try:
        with open(path, "rb") as fh:
            kind, value = pickle.load(fh)
    except Exception:  # absent, truncated or unreadable: nothing known
        return None
    return (kind, value) if kind in ("success", "error") else None


def exit_of_traceback(text: str) -> int | None:
    """The command's exit status in the traceback of a job whose command failed (``CalledProcessError``); a signal
    is negative. None when the text names none."""
    match = re.search(r"returned non-zero exit status (-?\d+)", text)
    if match:
        return int(match.group(1))
    match = re.search(r"died with <Signals\.\w+: (\d+)>", text)
    return -int(match.group(1)) if match else None


def read_log(path: Path, lines: int = 5, max_bytes: int = 65536) -> tuple[list[str], str | None]:
    """The last ``lines`` lines a run printed in its latest launch (``stdout.log``; progress-bar rewrites reduced to
    what was shown last), and the launch's closing line written by the job (``"exit status 2"``, ``"killed by
    SIGKILL"``), or None when the command did not get to write one."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return [], None
    shown, footer = [], None
    for raw in text.splitlines():
        line = raw.rsplit("\r", 1)[-1].rstrip()
        if line.startswith("==== "):
            if " launch: " in line:
                shown, footer = [], None
            elif " end: " in line:
                footer = line.split(" end: ", 1)[1]
            continue
        if line.strip():
            shown.append(line[:2000])
    return shown[-lines:], footer


# ----------------------------------------------------------------------------------------------------------------
# Memory.

_UNITS = {"": 1 / 1024, "K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0, "P": 1024.0 ** 2}


def memory_gb(text: str | None) -> float | None:
    """A SLURM memory size in GB (``"16G"``, ``"16000M"``, ``"15923412K"``, ``"16Gn"``: per node); None when absent,
    unreadable or per CPU (``"4000Mc"``: the total depends on the CPUs)."""
    match = re.fullmatch(r"([\d.]+)([KMGTP]?)(n?)", (text or "").strip())
    if not match:
        return None
    try:
        return float(match.group(1)) * _UNITS[match.group(2)]
    except ValueError:
        return None


def attempt_memory_gb(attempt: dict) -> float | None:
    """The memory an attempt had: what it asked for (``mem_gb``), else what sacct says it was given."""
    if attempt.get("mem_gb"):
        return float(attempt["mem_gb"])
    return memory_gb(attempt.get("req_mem"))


def suggest_memory_gb(had: float | None) -> int:
    return int(math.ceil((had or 16) * 1.5))


# ----------------------------------------------------------------------------------------------------------------
# Attempt records.

def _legacy_attempt(entry: dict) -> dict:
    """The one attempt an entry written before attempts were kept stands for: its last launch."""
    status, job_id = entry.get("status"), entry.get("job_id")
    code = entry.get("returncode")
    attempt = {"attempt": entry.get("launches", 1), "launcher": "slurm" if "_" in str(job_id) or status == "submitted"
               else "local", "job_id": job_id, "action": "resume" if entry.get("resumed") else "run"}
    if status == "finished":
        attempt.update(state="COMPLETED", outcome=FINISHED)
    elif status in ("failed", "interrupted"):
        state = local_state(code, has_results=False, stopped=status == "interrupted" and code is None,
                            timed_out=str(entry.get("error", "")).startswith("stopped at the --timeout"))
        attempt.update(state=state, outcome=LOCAL_STATES[state][0], exit_code=code,
                       reason=entry.get("error") or describe_exit(code))
    return attempt


def attempts(entry: dict) -> list[dict]:
    """The entry's attempt list (created in place; an entry from before attempts were kept gets one attempt made
    from its fields, so that nothing it recorded is lost)."""
    if "attempts" not in entry:
        launched = entry.get("launches") or entry.get("job_id") or entry.get("status") in (
            "finished", "failed", "interrupted", "submitted", "running")
        entry["attempts"] = [_legacy_attempt(entry)] if launched and entry.get("status") != "not started" else []
        if entry["attempts"] and entry["attempts"][0].get("outcome"):  # today's rules: a killed run is interrupted
            entry["status"] = STATUS_OF[entry["attempts"][0]["outcome"]]
    return entry["attempts"]


def last_attempt(entry: dict) -> dict | None:
    history = attempts(entry)
    return history[-1] if history else None


def last_outcome(entry: dict) -> str | None:
    """The class of the run's last attempt, None when it has none or it is not settled yet."""
    attempt = last_attempt(entry)
    return attempt.get("outcome") if attempt else None


def start_attempt(entry: dict, **fields) -> dict:
    """Append a new attempt to ``entry`` (numbered after the earlier ones) and return it."""
    history = attempts(entry)
    number = max([a.get("attempt", 0) for a in history] + [entry.get("launches", 0)]) + 1
    attempt = {"attempt": number, **fields, "started": now()}
    history.append(attempt)
    entry["launches"] = number
    return attempt


def settle(entry: dict, **fields) -> dict:
    """Record the outcome (``state``, ``outcome``, ``reason``, ...) of the entry's last attempt and update the
    entry's status and reason. An entry without an open attempt gets one (outcome seen without a recorded launch)."""
    attempt = last_attempt(entry)
    if attempt is None or ("outcome" in attempt and attempt["outcome"] not in (ACTIVE, UNKNOWN)):
        attempt = {"attempt": entry.get("launches", 0) or 1, "job_id": entry.get("job_id")}
        attempts(entry).append(attempt)
    attempt.update({k: v for k, v in fields.items() if v is not None and v != "" and v != []})
    attempt.setdefault("ended", now())
    outcome = attempt.get("outcome", UNKNOWN)
    entry["status"] = STATUS_OF[outcome]
    entry.pop("error", None)
    if outcome == FINISHED:
        entry.pop("reason", None)
    elif attempt.get("reason"):
        entry["reason"] = attempt["reason"]
    return attempt


# ----------------------------------------------------------------------------------------------------------------
# Local outcomes.

def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status (the job ended without a result)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code in _SIGNAL_EXITS:
        return f"exit status {code} (after {_SIGNAL_EXITS[code].name})"
    return f"exit status {code}"


def exit_signal(code: int | None) -> str | None:
    """The signal that ended a command with exit status ``code`` (negative, or 128 + SIGHUP/INT/KILL/TERM)."""
    if code is None:
        return None
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return _SIGNAL_EXITS[code].name if code in _SIGNAL_EXITS else None


def local_state(code: int | None, has_results: bool, stopped: bool, timed_out: bool) -> str:
    """A local attempt's state (:data:`LOCAL_STATES`). ``stopped``: sweep.py stopped it; ``timed_out``: it reached
    --timeout. A command ended by a signal is SIGNALED (interrupted: resumed by the next call); any other non-zero
    status, or status 0 without results.json, is FAILED."""
    if code == 0 and has_results:
        return "COMPLETED"
    if timed_out:
        return "TIMEOUT"
    if stopped:
        return "STOPPED"
    if code is None or exit_signal(code):
        return "SIGNALED"
    return "FAILED"


def with_log(reason: str, log_path: Path) -> tuple[str, list[str], str | None]:
    """``reason`` followed by the last line the run printed; also returns the last lines and the log's closing line."""
    tail, footer = read_log(log_path)
    return (f"{reason}: {tail[-1]}" if tail else reason), tail, footer


# ----------------------------------------------------------------------------------------------------------------
# SLURM outcomes.

def slurm_reason(info: dict, footer: str | None, tail: list[str]) -> str:
    """One line from an array task's accounting: its state, ExitCode/DerivedExitCode when not 0:0, SLURM's reason,
    elapsed time, memory (for OUT_OF_MEMORY), the run's own exit status and its last output line."""
    state = info.get("state", "UNKNOWN")
    parts = [state]
    if info.get("exit_code", "0:0") != "0:0":
        parts.append(f"ExitCode {info['exit_code']}")
    if info.get("derived_exit_code", "0:0") not in ("0:0", info.get("exit_code")):
        parts.append(f"DerivedExitCode {info['derived_exit_code']}")
    if info.get("slurm_reason", "None") not in ("None", ""):
        parts.append(f"reason {info['slurm_reason']}")
    if info.get("elapsed"):
        parts.append(f"after {info['elapsed']}")
    if slurm_outcome(state) == NEEDS_CHANGE:
        used, asked = memory_gb(info.get("max_rss")), info.get("req_mem") or "?"
        parts.append(f"MaxRSS {f'{used:.1f} GB' if used is not None else '?'} of ReqMem {asked}")
    text = ", ".join(parts)
    if footer:
        text += f"; the run's command: {footer}"
    if tail:
        text += f": {tail[-1]}"
    return text
