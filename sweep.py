"""Run a W&B sweep file locally, offline: the same file works unchanged with `wandb sweep` + `wandb agent`.

    python sweep.py sweeps/cos_step_size_x_steps.yaml --out runs/sweeps/cos --parallel 2 experiment=tiny
    python sweep.py sweeps/cos_step_size_x_steps.yaml --out runs/sweeps/cos      # again: resumes
    python report.py runs/sweeps/cos                                             # table + plots

Arguments after the options (key=value, group=choice) are added to every run of the sweep.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> dict:
    from clipure_lit.errors import ClipureError
    from clipure_lit.sweeping.launcher import format_sweep, run_sweep
    from clipure_lit.sweeping.plan import load_sweep

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", help="a W&B sweep YAML (method grid or random)")
    parser.add_argument("overrides", nargs="*", help="extra key=value / group=choice arguments for every run")
    parser.add_argument("--out", help="sweep folder (default: runs/sweeps/<sweep name>); reuse it to resume")
    parser.add_argument("--parallel", type=int, default=1, help="runs at the same time (default 1)")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids; runs are spread over them round robin")
    parser.add_argument("--count", type=int, help="number of runs of a random sweep (default: the file's run_cap)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-search draws (default 0)")
    parser.add_argument("--timeout", type=float, help="seconds after which a run is stopped and marked failed")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = load_sweep(args.sweep_file)
        out = args.out or f"runs/sweeps/{spec.name}"
        state = run_sweep(spec, out, args.overrides, parallel=args.parallel, gpus=[g for g in args.gpus.split(",") if g],
                          count=args.count, seed=args.seed, dry_run=args.dry_run, timeout_s=args.timeout)
    except ClipureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    text = format_sweep(state, out, args.dry_run)
    if text:  # a dry run with nothing left to run prints nothing
        print(text)
    return state


if __name__ == "__main__":
    main()
