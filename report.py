"""Ablation report of a group of runs: table (CSV, Markdown), plots (PNG) and paired McNemar comparisons.

    python report.py runs/sweeps/cos_step_size_x_steps            # a sweep folder
    python report.py runs/a runs/b --out runs/a_vs_b --baseline a  # any run folders; compare against run 'a'
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> dict:
    from clipure_lit.errors import ClipureError
    from clipure_lit.reporting import build_report, format_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="folders searched (recursively) for finished runs")
    parser.add_argument("--out", help="report folder (default: the first path)")
    parser.add_argument("--baseline", help="run folder name or path the paired comparisons are made against (default: the first run)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = build_report(args.paths, args.out, args.baseline)
    except ClipureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_report(summary))
    return summary


if __name__ == "__main__":
    main()
