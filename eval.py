"""Evaluate a (purified) zero-shot CLIP classifier: clean and robust accuracy through Lightning's test loop.

    python eval.py --help
"""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> dict:
    """Compose the config from ``argv`` (``sys.argv[1:]`` when None), run the evaluation (or every dataset of a
    ``suite=``), print the summary table (only in the first process of a multi-process run) and return the metrics
    that are also written to the run folder."""
    from clipure_lit.cli import expand_flags, run_cli
    from clipure_lit.reporting import format_eval
    from clipure_lit.utils.distributed import launcher_rank_is_zero

    argv = expand_flags(sys.argv[1:] if argv is None else argv)
    what = ("Zero-shot CLIP evaluation with optional purifiers, attacks and dataset suites. --estimate: build the "
            "models, time a few passes of each attack and print what the run will cost (seconds per image, hours, "
            "peak memory); no run folder is written. --shards N [--merge | --status] [--from DIR]: one evaluation as N "
            "shard runs, their merge and status (python eval.py --shards N --help lists their options).")
    if "--estimate" in argv:
        from clipure_lit.config.loader import load_config
        from clipure_lit.estimate import estimate, format_estimate, validate_for_estimate

        argv = [a for a in argv if a != "--estimate"]
        if any(a.startswith("--") for a in argv):  # --shards N and launcher options: the per-shard cost
            from clipure_lit.sweeping.shards import estimate_args

            argv = estimate_args(argv)
        return run_cli(argv, "eval.py", what,
                       lambda cfg: estimate(cfg, argv, lambda run_argv: load_config(run_argv, validate=validate_for_estimate)),
                       format_estimate, validate=validate_for_estimate)
    if any(a.split("=", 1)[0] in ("--shards", "--merge", "--status") for a in argv):
        from clipure_lit.sweeping import shards  # one evaluation as N shard runs, their merge, or a status view

        return shards.main(argv, run_cli)

    def job(cfg) -> dict:
        # heavy: the evaluation imports Lightning (~4.5 s), which --help and --cfg must not pay for
        from clipure_lit import evaluation, suite

        return suite.run_suite(cfg, argv) if cfg.suite.name else evaluation.run_eval(cfg)

    return run_cli(argv, "eval.py", what, job,
                   format_eval if launcher_rank_is_zero() else None)


if __name__ == "__main__":
    main()
