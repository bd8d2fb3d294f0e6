"""Evaluate a (purified) zero-shot CLIP classifier: clean and robust accuracy through Lightning's test loop.

    python eval.py --help
"""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> dict:
    """Compose the config from ``argv`` (``sys.argv[1:]`` when None), run the evaluation, print the summary table
    and return the metrics that are also written to ``<run folder>/results.json``."""
    from clipure_lit.cli import run_cli
    from clipure_lit.report import format_summary
    from clipure_lit.runner import run_eval

    return run_cli(argv, "eval.py", "Zero-shot CLIP evaluation with optional purifiers and attacks.", run_eval, format_summary)


if __name__ == "__main__":
    main()
