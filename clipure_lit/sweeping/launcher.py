"""Execute a sweep plan with submitit: local processes on one machine, or a SLURM job array on a cluster.

Layout of the sweep folder:
    plan.json            the planned configurations (made once; a resumed sweep reuses it)
    state.json           per run: status, log file, launches, job id, and every attempt (launch) with its outcome:
                         state, class, reason, exit status, memory (see :mod:`clipure_lit.sweeping.outcomes`)
    <run id>/            an ordinary eval.py run folder (results.json, samples.csv, config.yaml, progress/, wandb/)
    <run id>/stdout.log  the run's output; every launch appends (with a header line) instead of overwriting
    .submitit/           submitit's job files (pickled commands, its own logs) and the runs' process-group ids

Before anything is launched, every selected run's command is composed and validated exactly as eval.py would
(a bad extra argument is one error, not a failure per run), and each existing run folder is compared with the
run's resolved config: a finished run is skipped (resumed when data.num_samples grew), an interrupted one continues (``resume=true``: finished batches
are kept), and one whose resolved config changed (other extra arguments, another config file) is moved to
``<sweep folder>.superseded/`` and run again.

A later call settles what earlier launches became: SLURM array tasks from one ``sacct`` call for the whole sweep
(falling back, with one warning, to submitit's result files when sacct cannot be read), local runs from their
exit status. Interrupted runs (time limit, preemption, cancellation, node failure, a signal) are resumed; failed
runs are resubmitted only with ``retry_failed`` (and, after OUT_OF_MEMORY, only with more memory); runs whose job
is still queued or running are left alone. The earlier attempts of the selected runs are logged as a table.

Stopping (local launcher): the first SIGINT/SIGTERM/SIGHUP sends SIGTERM to every running run's process group
(a run stops after its current batch; its progress is on disk), starts nothing new, and SIGKILLs what is left
after ``grace_s`` or at a second signal; states are recorded and the command that resumes is printed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from clipure_lit.config.loader import GROUPS, load_config, to_plain
from clipure_lit.errors import ConfigError
from clipure_lit.loggers import wandb_credentials_present
from clipure_lit.results import write_json
from clipure_lit.sweeping import outcomes as oc
from clipure_lit.sweeping.job import RequeueableRunCommand, RunCommand, group_alive, read_pid
from clipure_lit.sweeping.plan import (SweepSpec, check_count, check_extra_args, check_metric, expand, program_args,
                                       select_runs)

log = logging.getLogger(__name__)

_NO_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local jobs always have a time limit; "none" is a year


@dataclass
class SlurmOptions:
    """What the SLURM job array asks for, per run (one array task per run)."""

    partition: str | None = None
    time_min: int = 60
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    # Any other sbatch option, e.g. {"account": "proj", "qos": "high"} (``--slurm-arg account=proj``).
    extra: dict = field(default_factory=dict)


def add_slurm_arguments(parser) -> None:
    """The ``--launcher slurm`` options of sweep.py and ``eval.py --shards`` on an ``argparse`` parser
    (read back with :func:`slurm_options`)."""
    slurm = parser.add_argument_group("SLURM (--launcher slurm)")
    slurm.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    slurm.add_argument("--time", type=int, default=60, metavar="MIN", help="time limit of each run in minutes (default 60); "
                       "a run that reaches it (or is preempted) is requeued and resumes")
    slurm.add_argument("--cpus-per-run", type=int, help="CPU cores of each run")
    slurm.add_argument("--mem-gb", type=float, help="memory of each run in GB")
    slurm.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --slurm-arg account=myproject --slurm-arg qos=high")
    slurm.add_argument("--resubmit", action="store_true",
                       help="resubmit runs whose earlier SLURM job state cannot be read (sacct unavailable)")


def slurm_options(args) -> SlurmOptions:
    """:class:`SlurmOptions` from the arguments :func:`add_slurm_arguments` declared.

    Raises:
        ConfigError: a ``--slurm-arg`` that is not ``key=value``.
    """
    extra = {}
    for item in args.slurm_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-arg '{item}' needs the form key=value (e.g. --slurm-arg account=myproject).")
        extra[key.lstrip("-")] = value
    return SlurmOptions(partition=args.partition, time_min=args.time, cpus_per_run=args.cpus_per_run, mem_gb=args.mem_gb,
                        extra=extra)


@dataclass
class SweepOptions:
    """How ``sweep.py`` runs a plan. ``parallel``: runs at the same time (local) or array tasks at the same time
    (SLURM); ``gpus`` (local): GPU ids shared out in groups of ``gpus_per_run``, one group per concurrent run;
    ``wandb``: ``offline`` (default: each run writes an offline W&B run, synced later), ``online``, or ``off`` (the
    runs' own logger setting); ``retry_failed``: launch again the runs whose last attempt failed (otherwise they are
    reported and left alone); ``resubmit``: launch again the runs whose SLURM job state cannot be read."""

    launcher: str = "local"
    parallel: int | None = None
    gpus: list[str] = field(default_factory=list)
    gpus_per_run: int = 1
    count: int | None = None
    seed: int = 0
    runs: str | None = None
    where: list[str] = field(default_factory=list)
    timeout_min: float | None = None
    grace_s: float = 30.0
    wandb: str = "offline"
    dry_run: bool = False
    resubmit: bool = False
    retry_failed: bool = False
    python: str = field(default_factory=lambda: sys.executable)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


@dataclass
class SweepResult:
    """What a call to :func:`run_sweep` did. ``state``: ``state.json``'s content (every run seen so far);
    ``actions``: this call's decision per selected run (``run``, ``resume``, ``rerun`` (stale), ``skip``
    (finished), ``queued`` (its SLURM job is pending or running, or its state is unknown), ``busy`` (still running
    locally), ``failed`` (its last attempt failed and it is not retried)); ``stopped_by``: the signal that stopped
    the sweep, if any; ``job_id``: the SLURM job. :attr:`failed` and :attr:`interrupted` are the selected runs in
    that state after this call."""

    out: Path
    state: dict
    actions: dict
    commands: dict
    stopped_by: int | None = None
    job_id: str | None = None
    launcher: str = "local"
    dry_run: bool = False

    @property
    def failed(self) -> list[str]:
        return [r for r in self.actions if self.state.get(r, {}).get("status") == "failed"]

    @property
    def interrupted(self) -> list[str]:
        return [r for r in self.actions if self.state.get(r, {}).get("status") == "interrupted"]

    @property
    def held(self) -> list[str]:
        """Selected runs that failed earlier and were not launched again (no ``retry_failed``)."""
        return [r for r, a in self.actions.items() if a == "failed"]


def run_id(index: int) -> str:
    return f"run-{index:04d}"


def make_plan(spec: SweepSpec, out: Path, count: int | None, seed: int, save: bool = True) -> list[dict]:
    """Load the saved plan of a resumed sweep, or expand a new one (and save it unless ``save`` is false). A saved
    plan made from a different sweep definition is refused."""
    path = out / "plan.json"
    definition = {"sweep": spec.raw, "count": count, "seed": seed}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["definition"] != json.loads(json.dumps(definition)):
            raise ConfigError(f"'{out}' holds a different sweep (its plan.json was made from another file, count or seed). "
                              "Fix: use a new --out folder, or the same sweep file and options to resume.")
        return saved["runs"]
    runs = expand(spec, count=count, seed=seed)
    if save:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, {"definition": definition, "runs": runs})
    return runs


# ----------------------------------------------------------------------------------------------------------------
# What each run needs: its arguments, its resolved config, and what its folder already holds.

def _logger_args(mode: str) -> list[str]:
    if mode == "off":
        return []
    if mode not in ("offline", "online"):
        raise ConfigError(f"--wandb {mode}: expected offline, online or off.")
    return ["logger=wandb", f"logger.mode={mode}"]


def run_args(spec: SweepSpec, params: dict, extra: list[str], run_dir: Path, wandb: str, resume: bool) -> list[str]:
    """The arguments of one run, in the order they take effect: the sweep's command with the run's values, the
    launcher's defaults (W&B logging, run name and W&B group = sweep name), the user's extra arguments (which may
    change those defaults), then what the launcher owns (``run_dir``, ``resume``)."""
    args = program_args(spec, params) + _logger_args(wandb) + [f"name={spec.name}", f"logger.group={spec.name}"]
    return args + list(extra) + [f"run_dir={run_dir}"] + (["resume=true"] if resume else [])


def _has_progress(run_dir: Path) -> bool:
    return any(p.stat().st_size > 0 for p in (run_dir / "progress").glob("rank*.jsonl"))


def _saved_config(run_dir: Path) -> dict | None:
    """The resolved config the run folder was made with (``progress/config.json``, what eval.py's resume checks;
    ``config.yaml`` for folders without it)."""
    saved = run_dir / "progress" / "config.json"
    if saved.is_file():
        try:
            return json.loads(saved.read_text())["config"]
        except (ValueError, KeyError):
            return None
    if (run_dir / "config.yaml").is_file():
        import yaml  # only for run folders made before progress/config.json existed

        return yaml.safe_load((run_dir / "config.yaml").read_text())
    return None


def config_changes(run_dir: Path, resolved: dict) -> list[str] | None:
    """``["key: old -> new", ...]`` between the run folder's saved config and ``resolved`` over the keys that change
    per-sample results (eval.py's resume rules), or None when the folder has no readable config."""
    saved = _saved_config(run_dir)
    if saved is None:
        return None
    # heavy: the resume callback module imports Lightning (~5 s); only needed when an earlier run folder exists
    from clipure_lit.callbacks.resume import config_differences

    return config_differences(saved, json.loads(json.dumps(resolved, default=str)), allow_growth=True)


def grew(run_dir: Path, resolved: dict) -> bool:
    """True when ``resolved`` selects more samples than the run in ``run_dir`` did (a larger ``data.num_samples``):
    a finished run then resumes, evaluating only the samples it lacks."""
    saved = _saved_config(run_dir)
    # heavy: the resume callback module imports Lightning (~5 s); only needed when an earlier run folder exists
    from clipure_lit.callbacks.resume import grown_size

    return saved is not None and grown_size(saved, json.loads(json.dumps(resolved, default=str))) is not None


def _device_count(devices) -> int:
    """Lightning's ``devices``: a count, ``-1``/``"auto"`` (all it sees: -1 here), ``"0,1"`` or ``[0, 1]`` (ids)."""
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        return int(text) if text.isdigit() else -1
    if isinstance(devices, int):
        return devices
    return len(list(devices))


def _check_devices(cfg, opts: SweepOptions, name: str) -> None:
    """A run's ``trainer.devices`` must use the GPUs it gets: on SLURM each GPU is one task, and Lightning refuses a
    ``devices`` that differs from the tasks per node; locally a smaller count leaves GPUs idle (a warning)."""
    devices = cfg.trainer.devices
    if _device_count(devices) in (-1, opts.gpus_per_run):
        return
    message = (f"{name} runs with trainer.devices={devices}, but each run gets --gpus-per-run {opts.gpus_per_run} GPU(s). "
               f"Fix: pass trainer.devices={opts.gpus_per_run}" + (" trainer.strategy=ddp" if opts.gpus_per_run > 1 else "")
               + " (or trainer.devices=-1: all GPUs the run gets), or change --gpus-per-run.")
    if opts.launcher == "slurm":
        raise ConfigError(message)
    if opts.gpus and cfg.trainer.accelerator in ("gpu", "cuda", "auto"):
        log.warning(message)


def _settle_submitted(out: Path, state: dict, names: list[str]) -> dict[str, str]:
    """Record the outcome of every run in ``names`` whose last attempt was submitted to SLURM and is not settled:
    finished when its results.json exists, else its array task's state from ONE ``sacct`` call for the whole sweep.
    When sacct cannot be read (one warning), submitit's result file of the task decides, else the state stays
    unknown. Returns the runs still waiting: run -> SLURM state (an active one, ``UNKNOWN`` or another unknown
    state such as ``REVOKED``)."""
    pending = {}
    for name in names:
        entry = state.get(name)
        if not entry or entry.get("status") != "submitted" or not entry.get("job_id"):
            continue
        if (out / name / "results.json").is_file():
            oc.settle(entry, state="COMPLETED", outcome=oc.FINISHED)
        else:
            pending[name] = entry
    if not pending:
        return {}
    info, error = oc.query_sacct([entry["job_id"] for entry in pending.values()])
    if error:
        log.warning("cannot read the SLURM job states of this sweep (%s). Each run's state comes from state.json and "
                    "submitit's result files instead; a run whose state stays unknown is left alone (pass --resubmit "
                    "once its job is no longer queued or running).", error)
    waiting = {}
    for name, entry in pending.items():
        job_id = entry["job_id"]
        tail, footer = oc.read_log(out / name / "stdout.log")
        task = info.get(job_id)
        if task:
            outcome = oc.slurm_outcome(task.get("state", ""))
            if outcome in (oc.ACTIVE, oc.UNKNOWN):
                waiting[name] = task.get("state") or "UNKNOWN"
                continue
            reason = oc.slurm_reason(task, footer, tail)
            if outcome == oc.FINISHED:  # a COMPLETED task always leaves results.json: this one's is gone
                outcome, reason = oc.FAILED, f"{reason}; but {out / name / 'results.json'} does not exist"
            accounting = ("exit_code", "derived_exit_code", "slurm_reason", "elapsed", "max_rss", "req_mem")
            oc.settle(entry, state=task.get("state"), outcome=outcome, reason=reason,
                      **{k: task.get(k) for k in accounting}, ended=task.get("end"), log_tail=tail)
            continue
        result = oc.submitit_result(out / ".submitit", job_id)
        if result is None:
            waiting[name] = "UNKNOWN"
            continue
        kind, value = result
        code = (value if isinstance(value, int) else 0) if kind == "success" else oc.exit_of_traceback(str(value))
        if kind == "success":
            outcome, why = oc.FAILED, "exit status 0 without results.json"
        else:
            outcome = oc.INTERRUPTED if oc.exit_signal(code) else oc.FAILED
            why = oc.describe_exit(code) if code is not None else str(value).strip().splitlines()[-1][:300]
        reason = f"submitit's result file: {why}" + (f": {tail[-1]}" if tail else "")
        oc.settle(entry, state="SIGNALED" if outcome == oc.INTERRUPTED else "FAILED", outcome=outcome, reason=reason,
                  exit_code=code, signal=oc.exit_signal(code), log_tail=tail)
    return waiting


@dataclass
class _Run:
    """One selected run: what this call does with it (``action``), why (``why``: ``new``, ``interrupted`` (an
    earlier attempt stopped from outside), ``retry`` (failed, retried), ``resubmit`` (unknown SLURM state,
    ``--resubmit``), ``stale`` (config changed), ``finished``, ``queued``, ``busy``, ``failed`` (not retried)),
    the program and its arguments."""

    index: int
    params: dict
    run_dir: Path
    action: str
    program: str
    args: list[str]
    note: str = ""
    why: str = ""
    seen: str = ""  # the SLURM state of a run whose job is still waiting or running
    id: str = ""  # the run's folder name under the launch folder (default: run-<index>)
    resume_args: list[str] = field(default_factory=list)  # its arguments when it continues (resume=true)

    @property
    def name(self) -> str:
        return self.id or run_id(self.index)


def _classify(spec: SweepSpec, out: Path, index: int, params: dict, extra: list[str], opts: SweepOptions,
              previous: dict, waiting: dict[str, str]) -> _Run:
    """Compose and check the run's command (as eval.py would), then decide what to do with it (:func:`decide`)."""
    run_dir = out / run_id(index)
    args = run_args(spec, params, extra, run_dir, opts.wandb, resume=False)
    cfg = load_config(args)  # the same composition and checks as eval.py: raises its ConfigError, word for word
    if cfg.suite.name:
        raise ConfigError(f"{run_id(index)} would run suite '{cfg.suite.name}' (several evaluations in one run folder), "
                          "but a sweep run is one evaluation: its results.json is what the sweep resumes, reports and "
                          "optimises. Fix: add suite=none (an experiment such as experiment=demo selects a suite).")
    check_metric(spec, cfg, run_id(index))  # the sweep's metric must be one this run logs (its attacks decide)
    _check_devices(cfg, opts, run_id(index))
    run = _Run(index, params, run_dir, "run", spec.program, args,
               resume_args=run_args(spec, params, extra, run_dir, opts.wandb, resume=True))
    return decide(run, to_plain(cfg), out, opts, previous, waiting)


def decide(run: _Run, resolved: dict, out: Path, opts: SweepOptions, previous: dict, waiting: dict[str, str]) -> _Run:
    """What to do with a planned run whose command composed to ``resolved``, from its earlier attempts
    (``previous``: state.json, settled) and its folder: ``run`` (new), ``resume``, ``rerun`` (config changed),
    ``skip`` (finished), ``queued`` / ``busy`` (still going) or ``failed`` (not retried). ``waiting``: runs whose
    SLURM job is still active or whose state is unknown (:func:`_settle_submitted`)."""
    name, run_dir = run.name, run.run_dir

    def as_(action: str, note: str = "", why: str = "", **more) -> _Run:
        return replace(run, action=action, note=note, why=why, **more)

    entry = previous.get(name, {})
    history = oc.attempts(entry) if entry else []
    why = ""
    if name in waiting:
        seen, job_id = waiting[name], entry.get("job_id")
        if oc.slurm_outcome(seen) == oc.ACTIVE or not opts.resubmit:
            note = (f"SLURM job {job_id} is {seen}" if oc.slurm_outcome(seen) == oc.ACTIVE else
                    f"the state of SLURM job {job_id} is unknown ({seen}); pass --resubmit if it is no longer queued "
                    "or running")
            return as_("queued", note, "queued", seen=seen)
        oc.settle(entry, state=seen, outcome=oc.UNKNOWN, reason=f"{seen}: the job's state is unknown; resubmitted "
                  "(--resubmit)")
        why = "resubmit"
    pgid = read_pid(_pid_path(out, name))
    if pgid and _runs_in(pgid, run_dir):
        return as_("busy", f"still running as process group {pgid} (started by an earlier launch that ended without "
                   f"stopping it; stop it with: kill -TERM -{pgid})", "busy")
    if entry.get("status") == "running":  # its launcher ended (killed) before recording the outcome
        reason, tail, _ = oc.with_log("the launcher that started it ended before recording its outcome",
                                      run_dir / "stdout.log")
        oc.settle(entry, state="LOST", outcome=oc.INTERRUPTED, reason=reason, log_tail=tail)
    finished = (run_dir / "results.json").is_file()
    if entry.get("status") == "failed" and not finished:
        if not opts.retry_failed:
            return as_("failed", entry.get("reason") or entry.get("error") or oc.describe_exit(entry.get("returncode")),
                       "failed")
        why = "retry"
    why = why or ("interrupted" if history or (run_dir.is_dir() and _has_progress(run_dir)) else "new")
    if not run_dir.is_dir() or not (finished or _has_progress(run_dir)):
        return as_("run", why=why)
    changes = config_changes(run_dir, resolved)
    if changes is None or changes:
        detail = ("its saved config cannot be read" if changes is None
                  else "; ".join(changes[:4]) + (" ..." if len(changes) > 4 else ""))
        return as_("rerun", f"config changed: {detail}", why if why in ("retry", "resubmit") else "stale")
    if finished and not grew(run_dir, resolved):
        return as_("skip", why="finished")
    return as_("resume", why=why, args=list(run.resume_args))


def _supersede(run: _Run, out: Path) -> Path:
    """Move a stale run folder out of the sweep folder (report.py reads every run under it)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = out.parent / f"{out.name}.superseded" / f"{run.name}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run.run_dir), str(target))
    log.warning("%s: %s; the earlier run is kept in %s and the run starts again.", run.name, run.note, target)
    return target


# ----------------------------------------------------------------------------------------------------------------
# Launching.

class StopRequests:
    """While active, SIGINT, SIGTERM and SIGHUP are counted instead of ending the process: the launcher polls
    :attr:`count` and stops its runs itself (no KeyboardInterrupt, no traceback). Signal handlers can only be set
    in the main thread; elsewhere this does nothing (the caller's own handling stays)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.first = self.first or signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _gpu_slots(opts: SweepOptions) -> list[tuple[str, ...] | None]:
    """One entry per concurrent local run: the GPU ids it gets, or None (it sees what the launcher sees)."""
    if opts.gpus_per_run < 1:
        raise ConfigError(f"--gpus-per-run {opts.gpus_per_run}: must be at least 1.")
    if not opts.gpus:
        return [None] * max(1, opts.parallel or 1)
    if len(opts.gpus) % opts.gpus_per_run:
        raise ConfigError(f"--gpus {','.join(opts.gpus)} cannot be split into groups of --gpus-per-run {opts.gpus_per_run}. "
                          "Fix: list a multiple of --gpus-per-run GPU ids.")
    groups = [tuple(opts.gpus[k:k + opts.gpus_per_run]) for k in range(0, len(opts.gpus), opts.gpus_per_run)]
    if opts.parallel and opts.parallel > len(groups):
        raise ConfigError(f"--parallel {opts.parallel} needs {opts.parallel * opts.gpus_per_run} GPUs, but --gpus lists "
                          f"{len(opts.gpus)} (runs never share a GPU). Fix: --parallel {len(groups)} or more --gpus.")
    return groups[:opts.parallel or len(groups)]


def _command(run: _Run, opts: SweepOptions, out: Path, gpus: tuple[str, ...] | None, requeue: bool) -> RunCommand:
    env_set, env_unset = {}, []
    if opts.launcher == "local":
        # submitit's local controller sets CUDA_VISIBLE_DEVICES itself; give the run its own GPUs, or the launcher's view.
        if gpus is not None:
            env_set["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        elif "CUDA_VISIBLE_DEVICES" in os.environ:
            env_set["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            env_unset.append("CUDA_VISIBLE_DEVICES")
    cls = RequeueableRunCommand if requeue else RunCommand
    return cls([opts.python, run.program] + run.args, cwd=str(Path.cwd()), log_path=str(run.run_dir / "stdout.log"),
               pid_path=str(_pid_path(out, run)), env_set=env_set, env_unset=env_unset, grace_s=opts.grace_s,
               raise_on_failure=requeue)


def _pid_path(out: Path, run: "_Run | str") -> Path:
    """Where a run's process-group id is written (by :class:`RunCommand`, in the job)."""
    return out / ".submitit" / "pids" / (run if isinstance(run, str) else run.name)


def _runs_in(pgid: int, run_dir: Path) -> bool:
    """True while process group ``pgid`` is alive and (where /proc tells) its leader is the run in ``run_dir``."""
    if not group_alive(pgid):
        return False
    cmdline = Path(f"/proc/{pgid}/cmdline")
    try:
        return f"run_dir={run_dir}".encode() in cmdline.read_bytes()
    except OSError:
        return not Path("/proc/self").exists()  # no /proc: trust the group id


def _launch_local(runs: list[_Run], opts: SweepOptions, out: Path, state: dict, save) -> int | None:
    """Run ``runs`` through submitit's local executor, at most one per GPU slot at a time; returns the signal that
    stopped the sweep, or None. However it ends (also by an unexpected error), no run's process is left behind."""
    import submitit  # heavy-ish: only when something is launched

    slots = _gpu_slots(opts)
    executor = submitit.LocalExecutor(folder=out / ".submitit")  # (AutoExecutor takes whole minutes only)
    # The job controllers ignore Ctrl-C: the launcher stops runs itself, by process group, without tracebacks.
    executor.update_parameters(timeout_min=opts.timeout_min or _NO_TIMEOUT_MIN, setup=["trap '' INT"])
    pending = list(runs)
    active: dict[int, tuple[_Run, object, float]] = {}
    stopping_since = killed = None
    signalled: set[tuple[int, int]] = set()

    def signal_active(sig: int) -> None:
        for run, _, _ in active.values():
            pgid = read_pid(_pid_path(out, run))  # None until the job has started the run's command
            if pgid and (pgid, sig) not in signalled and group_alive(pgid):
                signalled.add((pgid, sig))  # once each: a repeated SIGTERM would cut the run's own shutdown short
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass

    with StopRequests() as stop:
        try:
            while pending or active:
                if stop.count and stopping_since is None:
                    stopping_since = time.monotonic()
                    log.warning("%s: stopping %d running run(s) (each stops after its current batch; killed after %g s, "
                                "or at once on a second Ctrl-C); %d not started.", signal.Signals(stop.first).name,
                                len(active), opts.grace_s, len(pending))
                    for run in pending:
                        state[run.name] = {**state.get(run.name, {}), "params": run.params}
                        state[run.name].setdefault("status", "not started")
                    pending = []
                if stopping_since is not None:
                    kill = stop.count > 1 or time.monotonic() - stopping_since > opts.grace_s
                    signal_active(signal.SIGKILL if kill else signal.SIGTERM)
                    if kill and killed is None:
                        killed = time.monotonic()
                for slot, gpus in enumerate(slots):
                    if slot not in active and pending:
                        run = pending.pop(0)
                        _pid_path(out, run).unlink(missing_ok=True)
                        job = executor.submit(_command(run, opts, out, gpus, requeue=False))
                        active[slot] = (run, job, time.monotonic())
                        entry = state.setdefault(run.name, {})
                        oc.start_attempt(entry, launcher="local", job_id=job.job_id, action=run.action,
                                         **({"gpus": ",".join(gpus)} if gpus else {}))
                        _open_entry(entry, run, "running", job.job_id)
                        save()
                        verb = {"run": "started", "resume": "resumed", "rerun": "started again"}[run.action]
                        log.info("%s %s%s", run.name, verb, f" on GPU {','.join(gpus)}" if gpus else "")
                for slot, (run, job, started) in list(active.items()):
                    if job.done():
                        del active[slot]
                        _record(run, job, started, stopping_since is not None, opts, state, runs)
                        save()
                if killed is not None and active and time.monotonic() - killed > 60:
                    log.error("runs %s did not end 60 s after SIGKILL; giving up on them",
                              [r.name for r, _, _ in active.values()])
                    break
                time.sleep(0.2)
        except BaseException:
            signal_active(signal.SIGKILL)  # an unexpected error in the launcher: leave nothing running
            raise
        finally:
            _reap_leftovers(runs, out, opts.grace_s)
    return stop.first


def _reap_leftovers(runs: list[_Run], out: Path, grace_s: float) -> None:
    """A run's command can outlive its job (the job was killed at its time limit: the command got SIGTERM from
    the kernel and is finishing its batch). Wait for such commands up to ``grace_s``, then SIGKILL them."""
    left = [(r, pgid) for r in runs if (pgid := read_pid(_pid_path(out, r))) and _runs_in(pgid, r.run_dir)]
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [(r, pgid) for r, pgid in left if _runs_in(pgid, r.run_dir)]
    for run, pgid in left:
        log.warning("%s: its command (process group %d) outlived its job; killing it", run.name, pgid)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _open_entry(entry: dict, run: _Run, status: str, job_id: str) -> None:
    """The run's entry once a new attempt is launched (its earlier attempts' outcomes stay in its history)."""
    entry.update(params=run.params, status=status, log=str(run.run_dir / "stdout.log"), resumed=run.action == "resume",
                 job_id=job_id)
    for key in ("reason", "error", "returncode", "seconds"):
        entry.pop(key, None)


def _record(run: _Run, job, started: float, stopping: bool, opts: SweepOptions, state: dict, runs: list[_Run]) -> None:
    """Put a finished local job's outcome into ``state`` (the run's status and its attempt) and log it."""
    code, error = None, ""
    if job.paths.result_pickle.exists():
        try:
            code = job.result()
        except Exception as exc:  # the job raised: submitit's own error (e.g. its time limit)
            error = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    else:
        error = "the job ended without a result (killed)"
    seconds = time.monotonic() - started
    timed_out = bool(opts.timeout_min and seconds >= 60 * opts.timeout_min)
    has_results = (run.run_dir / "results.json").is_file()
    name = oc.local_state(code, has_results, stopping, timed_out)
    outcome = oc.LOCAL_STATES[name][0]
    if name == "TIMEOUT":
        reason = f"stopped at the --timeout of {60 * opts.timeout_min:g} s"
    elif name == "STOPPED":
        reason = f"stopped by sweep.py ({oc.describe_exit(code)})"
    elif code == 0:
        reason = "exit status 0 without results.json"
    else:
        reason = oc.describe_exit(code) if code is not None else error
    tail: list[str] = []
    if outcome != oc.FINISHED:
        reason, tail, _ = oc.with_log(reason, run.run_dir / "stdout.log")
    entry = state[run.name]
    oc.settle(entry, state=name, outcome=outcome, reason=None if outcome == oc.FINISHED else reason, exit_code=code,
              signal=oc.exit_signal(code), seconds=round(seconds, 2), log_tail=tail)
    entry.update(returncode=code, seconds=round(seconds, 2))
    status = entry["status"]
    done = sum(1 for r in runs if state.get(r.name, {}).get("status") in ("finished", "failed", "interrupted"))
    log.info("[%d/%d] %s %s (%.1f s)%s", done, len(runs), run.name, status, seconds,
             "" if status == "finished" else f": {reason} (log: {run.run_dir / 'stdout.log'})")


def _launch_slurm(runs: list[_Run], opts: SweepOptions, out: Path, state: dict, save, job_name: str) -> str:
    """Submit ``runs`` as one SLURM job array (one array task per run, one SLURM task per GPU of a run); returns
    the job id. Each task runs the run's command, which Lightning's SLURM environment turns into DDP ranks."""
    import submitit  # heavy-ish: only when something is launched

    sl = opts.slurm
    executor = submitit.AutoExecutor(folder=out / ".submitit", cluster="slurm")
    params = dict(name=job_name, timeout_min=sl.time_min, nodes=1, tasks_per_node=opts.gpus_per_run,
                  gpus_per_node=opts.gpus_per_run, slurm_array_parallelism=opts.parallel or len(runs))
    if sl.partition:
        params["slurm_partition"] = sl.partition
    if sl.cpus_per_run:
        params["cpus_per_task"] = max(1, sl.cpus_per_run // opts.gpus_per_run)
    if sl.mem_gb:
        params["mem_gb"] = sl.mem_gb
    if sl.extra:
        params["slurm_additional_parameters"] = dict(sl.extra)
    executor.update_parameters(**params)
    try:  # submitit prints a failing sbatch's stderr itself: it belongs in the one error message instead
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            jobs = [executor.submit(_command(run, opts, out, None, requeue=True)) for run in runs]
    except Exception as exc:  # sbatch refused the array (partition, account, limits): nothing was submitted
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        said = lines[-1] if lines else type(exc).__name__
        raise ConfigError(f"sbatch refused the job array of {len(runs)} run(s): {said}. "
                          "Nothing was submitted. Fix: check --partition, --time, --mem-gb, --cpus-per-run and "
                          "--slurm-arg against the cluster's limits (sinfo, sacctmgr show qos).") from None
    for run, job in zip(runs, jobs):
        entry = state.setdefault(run.name, {})
        oc.start_attempt(entry, launcher="slurm", job_id=job.job_id, action=run.action, mem_gb=sl.mem_gb,
                         time_min=sl.time_min, **({"partition": sl.partition} if sl.partition else {}))
        _open_entry(entry, run, "submitted", job.job_id)
    save()
    return jobs[0].job_id.split("_")[0] if jobs else ""


def _check_memory(runs: list[_Run], state: dict, opts: SweepOptions) -> None:
    """Refuse to resubmit a run whose last attempt ran out of memory without more memory than that attempt had."""
    short = []
    for run in runs:
        if run.why != "retry" or run.action not in ("run", "resume", "rerun"):
            continue
        attempt = oc.last_attempt(state[run.name])
        if attempt is None or attempt.get("outcome") != oc.NEEDS_CHANGE:
            continue
        had = oc.attempt_memory_gb(attempt)
        if opts.slurm.mem_gb is None or (had is not None and opts.slurm.mem_gb <= had):
            short.append((run.name, attempt.get("job_id"), had))
    if not short:
        return
    known = [had for _, _, had in short if had is not None]
    most = max(known) if known else None
    listed = ", ".join(f"{name} (job {job}: {f'{had:g} GB' if had is not None else 'the cluster default'})"
                       for name, job, had in short)
    asked = (f"--mem-gb {opts.slurm.mem_gb:g} is not more than that" if opts.slurm.mem_gb is not None
             else "no --mem-gb is given, so they would get the same memory again")
    than = f"{most:g} GB" if most is not None else "they had"
    raise ConfigError(f"{len(short)} run(s) ran out of memory (SLURM state OUT_OF_MEMORY) in their last attempt: "
                      f"{listed}; {asked}, and they would run out again. Fix: pass --mem-gb "
                      f"{oc.suggest_memory_gb(most)} (more than {than}) with --retry-failed, or leave them out with "
                      "--runs/--where.")


def _decision(run: _Run, attempt: dict) -> str:
    """What this call does with a run, in a few words (the attempts table)."""
    if run.action == "failed":
        more = " --mem-gb <more>" if attempt.get("outcome") == oc.NEEDS_CHANGE else ""
        return f"left failed (--retry-failed{more})"
    if run.action == "queued":
        return f"left alone ({run.seen})" if oc.slurm_outcome(run.seen) == oc.ACTIVE else "left alone (--resubmit)"
    verb = {"run": "start", "resume": "resume", "rerun": "start again", "skip": "skip",
            "busy": "left alone"}[run.action]
    extra = {"retry": "retry", "resubmit": "--resubmit", "stale": "config changed",
             "busy": "still running"}.get(run.why)
    return f"{verb} ({extra})" if extra else verb


def attempts_table(runs: list[_Run], state: dict) -> str:
    """One line per selected run that was launched before: its last attempt (number, job id, state, outcome), what
    this call does with it, and the attempt's reason. Empty when no selected run was launched before."""
    rows = []
    for run in runs:
        entry = state.get(run.name, {})
        attempt = oc.last_attempt(entry) if entry else None
        if attempt is None:
            continue
        seen = run.seen or attempt.get("state") or ("RUNNING" if entry.get("status") == "running" else "?")
        outcome = (oc.slurm_outcome(run.seen) if run.seen else attempt.get("outcome")) or "?"
        reason = "" if outcome == oc.FINISHED else (attempt.get("reason") or run.note or "")
        rows.append([run.name, str(attempt.get("attempt", "?")), str(attempt.get("job_id") or "-"), seen, outcome,
                     _decision(run, attempt), reason])
    if not rows:
        return ""
    rows.insert(0, ["run", "attempt", "job", "state", "outcome", "now", "reason"])
    widths = [max(len(r[k]) for r in rows) for k in range(6)]
    return "\n".join(("  " + "  ".join(r[k].ljust(widths[k]) for k in range(6)) + "  " + r[6][:300]).rstrip()
                     for r in rows)


def check_launcher(opts: SweepOptions, program: str) -> None:
    """Refuse launch options that cannot work here, before any work: an unknown launcher, GPU options that do not
    divide (local), or ``--launcher slurm`` without ``sbatch`` / ``srun`` on PATH (unless ``opts.dry_run``)."""
    if opts.launcher not in ("local", "slurm"):
        raise ConfigError(f"--launcher {opts.launcher}: expected local or slurm.")
    if opts.launcher == "local":
        _gpu_slots(opts)
    missing = [tool for tool in ("sbatch", "srun") if not shutil.which(tool)]
    if opts.launcher == "slurm" and not opts.dry_run and missing:
        raise ConfigError(f"--launcher slurm submits with sbatch and runs each task with srun, and {' and '.join(missing)} "
                          f"is not on PATH here. Fix: run {program} on a machine of the SLURM cluster (a login node), or "
                          "use --launcher local.")


def run_sweep(spec: SweepSpec, out: Path | str, extra: list[str], opts: SweepOptions | None = None) -> SweepResult:
    """Plan, check and launch the sweep ``spec`` into ``out``.

    Nothing is launched unless every selected run's command validates (as eval.py would check it), the extra
    arguments neither override a swept key nor set a launcher-owned key, and no run that ran out of memory would be
    resubmitted with the same memory. Earlier attempts are settled first (SLURM: one ``sacct`` call) and recorded in
    ``state.json``; runs whose last attempt failed are launched only with ``opts.retry_failed``.

    Raises:
        ConfigError: a bad sweep option, extra argument or planned configuration, or an out-of-memory run
            resubmitted without a larger ``--mem-gb`` (sweep.py: exit status 2).
    """
    opts = opts or SweepOptions()
    out = Path(out).absolute()  # run folders are named absolutely: jobs may start elsewhere (SLURM nodes)
    if opts.launcher not in ("local", "slurm"):
        raise ConfigError(f"--launcher {opts.launcher}: expected local or slurm.")
    if not Path(spec.program).is_file():
        raise ConfigError(f"Program '{spec.program}' of sweep '{spec.name}' is not in the current folder {Path.cwd()}. "
                          "Fix: run sweep.py from the project root (where `wandb agent` runs it too).")
    check_count(spec, opts.count)
    if opts.wandb == "online" and not wandb_credentials_present():
        raise ConfigError("--wandb online needs W&B credentials, and none are configured (no WANDB_API_KEY, no "
                          "api.wandb.ai entry in ~/.netrc): every run would fail. Fix: run `wandb login` first, or use "
                          "--wandb offline (the default) and `wandb sync` the runs later.")
    check_extra_args(spec, list(extra), groups=GROUPS)
    check_launcher(opts, "sweep.py")
    plan = make_plan(spec, out, opts.count, opts.seed, save=not opts.dry_run)
    chosen = select_runs(spec, plan, opts.runs, opts.where)
    return launch_runs(out, [run_id(i) for i in chosen], opts, f"clipure-{spec.name}",
                       lambda k, state, waiting: _classify(spec, out, chosen[k], plan[chosen[k]], list(extra), opts,
                                                           state, waiting),
                       f"sweep {spec.name}: {len(plan)} planned")


def launch_runs(out: Path, names: list[str], opts: SweepOptions, job_name: str, classify, title: str) -> SweepResult:
    """Settle, decide and launch the runs ``names`` (folders ``out/<name>``) of a plan: earlier attempts are settled
    first (SLURM: one ``sacct`` call) and recorded in ``out/state.json``; ``classify(k, state, waiting)`` composes
    and checks run ``k``'s command and decides what to do with it (:func:`decide`); then, unless ``opts.dry_run``,
    stale folders are superseded and the runs to do are launched (locally or as one SLURM job array named
    ``job_name``). ``title`` starts the counts line that is logged.

    Raises:
        ConfigError: a run's command does not compose, or an out-of-memory run would be resubmitted without a larger
            ``--mem-gb``.
    """
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    before = json.dumps(state, sort_keys=True)
    waiting = _settle_submitted(out, state, names)
    runs = [classify(k, state, waiting) for k in range(len(names))]
    for run in runs:
        entry = state.get(run.name)
        if run.action == "skip" and entry is not None and entry.get("status") != "finished":  # e.g. finished by hand
            if oc.last_outcome(entry) in (None, oc.ACTIVE, oc.UNKNOWN) and oc.last_attempt(entry) is not None:
                oc.settle(entry, state="COMPLETED", outcome=oc.FINISHED)
            entry.update(params=run.params, status="finished")
        elif run.action == "skip" and entry is None:
            state[run.name] = {"params": run.params, "status": "finished"}
    if opts.launcher == "slurm":
        _check_memory(runs, state, opts)
    commands = {r.name: [opts.python, r.program] + r.args for r in runs}
    actions = {r.name: r.action for r in runs}
    todo = [r for r in runs if r.action in ("run", "resume", "rerun")]
    whys = {w: sum(1 for r in runs if r.why == w) for w in
            ("finished", "new", "interrupted", "retry", "resubmit", "stale", "failed", "queued", "busy")}
    words = {"interrupted": "interrupted (to resume)", "retry": "failed (retried)", "resubmit": "of unknown state "
             "(resubmitted)", "stale": "to rerun (config changed)", "failed": "failed (not retried: --retry-failed)",
             "queued": "still queued or running on SLURM", "busy": "still running"}
    log.info("%s, %d selected: %d finished, %d new%s", title, len(runs), whys["finished"], whys["new"],
             "".join(f", {whys[w]} {text}" for w, text in words.items() if whys[w]))
    table = attempts_table(runs, state)
    if table:
        log.info("earlier attempts of the selected runs:\n%s", table)
    for run in runs:
        if run.action == "rerun" and opts.dry_run:
            log.info("%s would run again: %s", run.name, run.note)
    result = SweepResult(out, state, actions, commands, launcher=opts.launcher, dry_run=opts.dry_run)
    if opts.dry_run:
        return result

    def save() -> None:
        write_json(state_path, state)  # after every change, so an interrupted sweep loses nothing

    if json.dumps(state, sort_keys=True) != before:
        save()  # what the earlier attempts became is kept even when nothing is launched
    if not todo:
        return result
    for run in todo:
        if run.action == "rerun":
            _supersede(run, out)
    if opts.launcher == "local":
        result.stopped_by = _launch_local(todo, opts, out, state, save)
    else:
        result.job_id = _launch_slurm(todo, opts, out, state, save, job_name=job_name)
    return result


def format_sweep(result: SweepResult, resume_command: str) -> str:
    """What ``sweep.py`` prints: with ``dry_run`` one line per selected run (its id, what would happen, its
    command); otherwise the counts, every failed or interrupted run with its reason and log, how to retry the failed
    ones, and the commands that resume, report on and sync the sweep (the sync command only when offline W&B runs
    exist)."""
    if result.dry_run:
        return "\n".join(f"{name} [{result.actions[name]}] {shlex.join(cmd)}" for name, cmd in result.commands.items())
    out, state = result.out, result.state
    lines = []
    if result.launcher == "slurm" and result.job_id:
        submitted = [r for r, a in result.actions.items() if a in ("run", "resume", "rerun")]
        tasks = ", ".join(state[r]["job_id"] for r in submitted)
        lines += [f"submitted {len(submitted)} run(s) as SLURM job {result.job_id} (array tasks {tasks}).",
                  f"follow: squeue -j {result.job_id}    logs: {out}/<run id>/stdout.log",
                  "when they are done, the same command reports each run's outcome and resumes interrupted runs "
                  f"(failed ones with --retry-failed): {resume_command}"]
    statuses = {r: state.get(r, {}).get("status", "?") for r in result.actions}
    finished = sum(1 for s in statuses.values() if s == "finished")
    lines.append(f"sweep folder: {out}; {len(statuses)} selected runs: {finished} finished"
                 + "".join(f", {n} {s}" for s, n in _count_others(statuses).items()))
    for name in result.failed + result.interrupted:
        entry = state[name]
        why = entry.get("reason") or entry.get("error") or oc.describe_exit(entry.get("returncode"))
        lines.append(f"  {entry['status']}: {name} ({why}) log: {entry.get('log', out / name / 'stdout.log')}")
    if result.held:
        short = [(name, oc.attempt_memory_gb(oc.last_attempt(state[name]))) for name in result.held
                 if oc.last_outcome(state[name]) == oc.NEEDS_CHANGE]
        memory, retry = "", resume_command
        if short:
            known = [had for _, had in short if had is not None]
            memory = f" --mem-gb {oc.suggest_memory_gb(max(known) if known else None)}"
            retry = _without_option(resume_command, "--mem-gb")
            lines.append(f"out of memory: {', '.join(name for name, _ in short)} (with "
                         + ", ".join(f"{had:g} GB" if had is not None else "the cluster default" for _, had in short)
                         + "): resubmit them with more memory (--mem-gb)")
        lines.append(f"{len(result.held)} failed run(s) were not launched again; once the cause is fixed: "
                     f"{retry} --retry-failed{memory}")
    if result.stopped_by is not None or result.interrupted:
        lines.append(f"resume (finished batches are kept): {resume_command}")
    lines.append(f"report: python report.py {out}")
    offline = sorted(out.glob("*/wandb/offline-run-*"))
    if offline:
        lines.append(f"sync the {len(offline)} offline W&B run(s): wandb sync {out}/*/wandb/offline-run-*")
    return "\n".join(lines)


def _without_option(command: str, option: str) -> str:
    """``command`` without ``option`` and its value (``--mem-gb 16`` or ``--mem-gb=16``)."""
    words, kept, skip = shlex.split(command), [], False
    for word in words:
        if skip:
            skip = False
        elif word == option:
            skip = True
        elif not word.startswith(option + "="):
            kept.append(word)
    return shlex.join(kept)


def _count_others(statuses: dict) -> dict:
    counts: dict[str, int] = {}
    for s in statuses.values():
        if s != "finished":
            counts[s] = counts.get(s, 0) + 1
    return counts
