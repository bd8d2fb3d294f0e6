"""Merge several suite run folders into one dataset x defence table (CSV, Markdown, PNG).

    python scripts/compare_suites.py runs/suite_clip/<stamp> runs/suite_clipure/<stamp> -o runs/comparison
"""

from __future__ import annotations

import argparse

from clipure_lit.reporting import compare_suites


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="suite run folders (each holds suite.json and config.yaml)")
    parser.add_argument("-o", "--out", required=True, help="output folder for suite.csv, suite.md and suite.png")
    args = parser.parse_args(argv)
    out = compare_suites(args.run_dirs, args.out)
    print((out / "suite.md").read_text())


if __name__ == "__main__":
    main()
