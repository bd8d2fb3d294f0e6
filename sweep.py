"""Run a W&B sweep file with submitit: on this machine (--launcher local) or as a SLURM job array (--launcher slurm).
The same file works unchanged with `wandb sweep` + `wandb agent` (runs launched by an agent report to W&B).

    python sweep.py sweeps/cos_step_size_x_steps.yaml experiment=demo                  # runs/sweeps/<name>/run-0000, ...
    python sweep.py sweeps/cos_step_size_x_steps.yaml --gpus 0,1,2,3 trainer=gpu      # 4 runs at a time, one per GPU
    python sweep.py sweeps/cos_random_search.yaml --count 20                           # a random search needs --count
    python sweep.py sweeps/cos_step_size_x_steps.yaml --where purifier.clipure_cos.num_steps=10   # a part of a grid
    python sweep.py sweeps/epsilon.yaml --launcher slurm --partition gpu --gpus-per-run 1 --time 240 trainer=gpu
    python sweep.py sweeps/cos_step_size_x_steps.yaml experiment=demo                  # again: resumes, skips finished runs
    python sweep.py sweeps/cos_step_size_x_steps.yaml experiment=demo --retry-failed   # also launch failed runs again
    python report.py runs/sweeps/cos_step_size_x_steps                                 # table + plots

Arguments after the sweep file (key=value, group=choice) are added to every run; one that sets a swept key is
refused. Every run's command is checked as eval.py would check it before anything starts. Ctrl-C (or SIGTERM)
stops the local runs after their current batch (a second Ctrl-C kills them) and prints how to resume.

Running the command again lists each earlier attempt's state and reason (SLURM: from sacct), resumes interrupted
runs (time limit, preemption, cancellation, node failure, a signal) and starts new ones; runs that failed are
listed and launched again only with --retry-failed (after OUT_OF_MEMORY, only with a larger --mem-gb).

Exit status: 0 when every selected run finished, was submitted or is still queued/running; 1 when a selected run
failed (in this call, or earlier and not retried) or was interrupted from outside; 2 for bad input (nothing is
launched); 130 / 143 when stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep; returns ``state.json``'s content. Exits (``SystemExit``) with status 1 when a selected run is
    failed (in this call, or earlier and not retried) or was interrupted from outside, 2 for bad input, 128 + the
    signal number when stopped by a signal. A dry run exits 0 unless the input is bad."""
    from clipure_lit.errors import ClipureError
    from clipure_lit.sweeping.launcher import SweepOptions, add_slurm_arguments, format_sweep, run_sweep, slurm_options
    from clipure_lit.sweeping.plan import load_sweep

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", help="a W&B sweep YAML (method grid or random)")
    parser.add_argument("overrides", nargs="*", help="extra key=value / group=choice arguments for every run")
    parser.add_argument("--out", help="sweep folder (default: runs/sweeps/<sweep name>); reuse it to resume")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: submitit processes on this machine (default); slurm: one SLURM job array")
    parser.add_argument("--parallel", type=int,
                        help="runs at the same time (local; default: one per GPU group of --gpus, else 1) or array "
                             "tasks at the same time (slurm; default: all)")
    parser.add_argument("--gpus", default="", help="local: comma-separated GPU ids shared out among concurrent runs")
    parser.add_argument("--gpus-per-run", type=int, default=1,
                        help="GPUs of each run (local: taken from --gpus; slurm: requested per array task, one SLURM task "
                             "per GPU; pass trainer.devices=N trainer.strategy=ddp for N > 1)")
    parser.add_argument("--runs", help="only these planned runs, by index: 0-3,7 (any method; --dry-run lists them)")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only planned runs with this swept value (repeatable; KEY=[a,b] for several values)")
    parser.add_argument("--count", type=int, help="random-search option: number of configurations to draw (required "
                                                  "for method random; a grid is always planned whole, see --runs/--where)")
    parser.add_argument("--seed", type=int, default=0, help="random-search option: seed of the draws (default 0)")
    parser.add_argument("--wandb", choices=("offline", "online", "off"), default="offline",
                        help="W&B logging of each run: offline (default; `wandb sync` later), online, or off (the runs' "
                             "own logger setting)")
    parser.add_argument("--timeout", type=float, metavar="S", help="local: seconds after which a run is stopped and marked failed")
    parser.add_argument("--grace", type=float, default=30.0, metavar="S",
                        help="seconds a stopped run may take to finish its batch before it is killed (default 30)")
    parser.add_argument("--dry-run", action="store_true", help="print what each selected run would do, and its command, and exit")
    add_slurm_arguments(parser)
    parser.add_argument("--retry-failed", action="store_true",
                        help="launch again the runs whose last attempt failed (without it they are listed with their "
                             "reason and left alone; a run that ran out of memory also needs a larger --mem-gb)")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = load_sweep(args.sweep_file)
        out = args.out or f"runs/sweeps/{spec.name}"
        opts = SweepOptions(launcher=args.launcher, parallel=args.parallel, gpus=[g for g in args.gpus.split(",") if g],
                            gpus_per_run=args.gpus_per_run, count=args.count, seed=args.seed, runs=args.runs,
                            where=args.where, timeout_min=args.timeout / 60 if args.timeout else None,
                            grace_s=args.grace, wandb=args.wandb,
                            dry_run=args.dry_run, resubmit=args.resubmit, retry_failed=args.retry_failed,
                            slurm=slurm_options(args))
        result = run_sweep(spec, out, args.overrides, opts)
    except ClipureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    once = ("--dry-run", "--resubmit", "--retry-failed")  # decisions for this call, not part of resuming
    resume = shlex.join(["python", "sweep.py", *[a for a in argv if a not in once]])
    text = format_sweep(result, resume)
    if text:
        print(text)
    if result.dry_run:
        return result.state
    if result.stopped_by is not None:
        raise SystemExit(128 + int(result.stopped_by))
    if result.failed or result.interrupted:
        raise SystemExit(1)
    return result.state


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C before the launcher took over signals (while planning): no traceback
        print("interrupted before any run was launched", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
