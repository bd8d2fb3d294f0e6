"""Ablation report of a group of runs: table (CSV, Markdown, LaTeX), plots (PNG) and paired McNemar comparisons;
or the findings document (docs/findings.md) made from the committed runs of findings/studies.yaml.

    python report.py runs/sweeps/cos_step_size_x_steps            # a sweep folder
    python report.py runs/a runs/b --out runs/a_vs_b --baseline a  # any run folders; compare against run 'a'
    python report.py runs/sweeps/cos_random_search --confirm data.ids_file=heldout_ids.txt   # the sweep's winner
                                                     # evaluated again on held-out images: selection vs held out

    python report.py --findings                      # docs/findings.md + docs/findings/*.png from findings/runs (seconds)
    python report.py --findings --check              # exit 1 when docs/findings.md is not what the committed runs give
    python report.py --findings --recompute          # run every study into runs/findings (resumable), then write
                                                     # runs/findings/findings.md from those runs
    python report.py --findings --recompute --study epsilon          # one study
    python report.py --findings --recompute --retry-failed           # also run again the runs that failed
    python report.py --findings --runs runs/findings --freeze --overwrite   # replace the committed runs with them
    python report.py --findings --runs runs/findings --freeze --overwrite --study epsilon   # only one study's runs

Exit status: 0 on success; 1 when --check finds a difference or a recomputed run failed; 2 for bad input; 130 / 143
when --recompute was stopped by SIGINT / SIGTERM (the same command resumes).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import tempfile
from pathlib import Path

STUDIES = Path("findings/studies.yaml")
COMMITTED_RUNS = Path("findings/runs")
DOC = Path("docs/findings.md")


def _findings(args) -> int:
    from clipure_lit.reporting.findings import load_findings, render_findings

    findings = load_findings(args.studies)
    if args.retry_failed and not args.recompute:
        from clipure_lit.errors import ConfigError

        raise ConfigError("--retry-failed runs failed runs again and needs --recompute (without it no run is started).")
    if args.study and not (args.recompute or args.freeze):
        from clipure_lit.errors import ConfigError

        raise ConfigError("--study selects the studies to recompute or to freeze and needs --recompute or --freeze "
                          "(the document always covers every study).")
    if args.recompute:
        from clipure_lit.sweeping.findings_runs import recompute

        runs = Path(args.runs or "runs/findings")
        if runs.resolve() == COMMITTED_RUNS.resolve():
            from clipure_lit.errors import ConfigError

            raise ConfigError(f"--recompute writes run folders, and --runs {runs} holds the committed ones. Fix: recompute "
                              "into another folder (default runs/findings), then --freeze --overwrite to replace them.")
        from clipure_lit.sweeping.launcher import SweepOptions

        results = recompute(findings, runs, args.study, SweepOptions(wandb="off", retry_failed=args.retry_failed))
        stopped = next((r.stopped_by for _, r in results if r.stopped_by is not None), None)
        bad = [name for name, r in results if r.failed or r.stopped_by is not None]
        if bad:
            print(f"findings: part(s) {bad} failed or were stopped; the same command resumes.", file=sys.stderr)
            return 128 + int(stopped) if stopped is not None else 1
        if args.study:
            print(f"findings: studies {args.study} done in {runs}; run without --study for the document.")
            return 0
    runs = Path(args.runs or (COMMITTED_RUNS if not args.recompute else "runs/findings"))
    if args.freeze:
        from clipure_lit.sweeping.findings_runs import freeze

        count = freeze(findings, runs, COMMITTED_RUNS, overwrite=args.overwrite, studies=args.study)
        print(f"findings: {count} runs copied into {COMMITTED_RUNS}; now `make findings` rewrites {DOC}.")
        return 0
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            made = render_findings(findings, runs, Path(tmp) / DOC.name, Path(tmp) / "findings")
            new, old = made.read_text(), DOC.read_text() if DOC.is_file() else ""
        if new == old:
            print(f"findings: {DOC} is what {runs} gives, byte for byte.")
            return 0
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(DOC), "regenerated"))
        return 1
    out = Path(args.out) if args.out else (DOC if runs.resolve() == COMMITTED_RUNS.resolve() else runs / DOC.name)
    made = render_findings(findings, runs, out, out.parent / "findings")
    print(f"findings: wrote {made} and its plots in {out.parent / 'findings'} from the runs in {runs}.")
    return 0


def _confirm(args):
    """Evaluate the sweep's winner(s) on the held-out images (the sweep launcher); returns the
    :class:`~clipure_lit.sweeping.confirm.Confirmation`."""
    from clipure_lit.errors import ConfigError
    from clipure_lit.sweeping.confirm import confirm_winners
    from clipure_lit.sweeping.launcher import SweepOptions, slurm_options

    if len(args.paths) != 1:
        raise ConfigError(f"--confirm confirms the winner of one sweep folder, and {len(args.paths)} folders were given. "
                          "Fix: python report.py <sweep folder> --confirm data.ids_file=<held-out ids>.")
    opts = SweepOptions(launcher=args.launcher, parallel=args.parallel, gpus=[g for g in args.gpus.split(",") if g],
                        wandb="off", retry_failed=args.retry_failed, resubmit=args.resubmit, slurm=slurm_options(args))
    return confirm_winners(args.paths[0], args.confirm, args.top, args.metric, args.goal, opts)


def _unconfirmed(confirmation, argv: list[str]) -> int:
    """Say which held-out runs have not finished (failed, stopped, or queued on SLURM) and what to run next; the
    exit status: 0 while SLURM jobs are queued, 1 for a failed run, 128 + n when stopped by signal n."""
    import shlex

    launch, again = confirmation.launch, shlex.join(["python", "report.py", *argv])
    print(f"report: the held-out run(s) {confirmation.pending} of {launch.out} have not finished; no Selection table yet.",
          file=sys.stderr)
    for name in confirmation.pending:
        entry = launch.state.get(name, {})
        print(f"  {name}: {entry.get('status', '?')} {entry.get('reason') or ''} log: {launch.out / name / 'stdout.log'}",
              file=sys.stderr)
    if launch.held:
        print(f"failed runs are launched again only with --retry-failed: {again} --retry-failed", file=sys.stderr)
    print(f"when they are done (or to resume them), the same command writes the report: {again}", file=sys.stderr)
    if launch.stopped_by is not None:
        return 128 + int(launch.stopped_by)
    return 1 if launch.failed or launch.interrupted else 0


def main(argv: list[str] | None = None) -> dict | int:
    from clipure_lit.errors import ClipureError
    from clipure_lit.reporting import build_report, format_report
    from clipure_lit.sweeping.launcher import add_slurm_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="folders searched (recursively) for finished runs")
    parser.add_argument("--out", help="report folder (default: the first path); with --findings, the Markdown file")
    parser.add_argument("--baseline", help="run folder name or path the paired comparisons are made against (default: the first run)")
    confirm = parser.add_argument_group("confirming a sweep's winner on held-out images (docs/evaluation.md)")
    confirm.add_argument("--confirm", nargs="+", metavar="KEY=VALUE",
                         help="the held-out images (data.ids_file=..., or data.subset / data.subset_seed / data.num_samples / "
                              "data.split): the best run(s) of the sweep folder are evaluated there in <sweep folder>/confirm/ "
                              "(resumable) and the report gains a Selection table (report.md/.csv/.tex, selection.csv)")
    confirm.add_argument("--top", type=int, default=1, help="with --confirm: how many of the best runs (default 1; ties included)")
    confirm.add_argument("--metric", help="with --confirm: the accuracy to rank by (default: the sweep's metric)")
    confirm.add_argument("--goal", choices=("maximize", "minimize"), help="with --confirm: (default: the sweep's goal)")
    confirm.add_argument("--launcher", choices=("local", "slurm"), default="local",
                         help="with --confirm: local processes (default) or a SLURM job array, as sweep.py")
    confirm.add_argument("--parallel", type=int, help="with --confirm: held-out runs at the same time")
    confirm.add_argument("--gpus", default="", help="with --confirm, local: comma-separated GPU ids shared out among runs")
    findings = parser.add_argument_group("findings document")
    findings.add_argument("--findings", action="store_true", help=f"write {DOC} from the runs of {STUDIES}")
    findings.add_argument("--studies", default=str(STUDIES), help=f"study file (default {STUDIES})")
    findings.add_argument("--runs", help=f"folder of the studies' runs (default {COMMITTED_RUNS}; with --recompute runs/findings)")
    findings.add_argument("--recompute", action="store_true", help="run (or resume) every study's runs first")
    findings.add_argument("--study", action="append", help="with --recompute or --freeze: only this study (repeatable)")
    findings.add_argument("--retry-failed", action="store_true",
                          help="with --recompute or --confirm: run again the runs whose last attempt failed (listed with "
                               "their reason)")
    findings.add_argument("--check", action="store_true", help=f"compare {DOC} with what the runs give; exit 1 if it differs")
    findings.add_argument("--freeze", action="store_true", help=f"copy the runs' config.yaml/results.json/samples.csv into {COMMITTED_RUNS}")
    findings.add_argument("--overwrite", action="store_true", help="with --freeze: replace the committed runs")
    add_slurm_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.findings:
            return _findings(args)
        if not args.paths:
            parser.error("give run folders, or --findings")
        selection = None
        if not args.confirm and (args.top != 1 or args.metric or args.goal):
            parser.error("--top, --metric and --goal choose what --confirm evaluates again: add --confirm <held-out images>")
        if args.confirm:
            confirmation = _confirm(args)
            if confirmation.pending:
                return _unconfirmed(confirmation, sys.argv[1:] if argv is None else list(argv))
            selection = confirmation.confirmed
        summary = build_report(args.paths, args.out, args.baseline, selection=selection)
    except ClipureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_report(summary))
    return summary


if __name__ == "__main__":
    try:
        result = main()
    except KeyboardInterrupt:  # Ctrl-C outside the sweep launcher (which stops its runs itself): no traceback
        print("interrupted; `python report.py --findings --recompute` resumes where the runs stopped", file=sys.stderr)
        raise SystemExit(130) from None
    if isinstance(result, int):
        raise SystemExit(result)
