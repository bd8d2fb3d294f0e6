"""Train the models the evaluation side loads: a small CLIP, a diffusion prior over its embeddings (CLIPure-Diff),
FARE / TeCoA robust fine-tuning.

    python train.py --help
    python train.py experiment=train_cifar10_small_clip
"""

from __future__ import annotations

import os
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> dict:
    """Compose the config from ``argv`` (``sys.argv[1:]`` when None; root ``conf/train.yaml``), run the job named by
    ``job``, print its summary (only in the first process of a multi-process run) and return its metrics (also
    written to ``<run folder>/results.json``)."""
    # Idle OpenMP threads must sleep, not spin, when other processes share the cores (set before torch starts).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from clipure_lit.cli import run_cli
    from clipure_lit.config.train_schema import TrainRunCfg, validate_train_config
    from clipure_lit.utils.distributed import launcher_rank_is_zero

    def job(cfg) -> dict:
        # heavy: the training jobs import Lightning (~4.5 s), which --help and --cfg must not pay for
        from clipure_lit.training.dispatch import run_train

        return run_train(cfg)

    def report(metrics: dict) -> str:
        from clipure_lit.training.dispatch import format_train_summary  # imported by job() already

        return format_train_summary(metrics)

    return run_cli(argv, "train.py", "Train a small CLIP, a diffusion prior on its embeddings, or FARE/TeCoA fine-tuning "
                   "(job=clip|prior|fare|tecoa).", job, report if launcher_rank_is_zero() else None, root="train", schema=TrainRunCfg,
                   validate=validate_train_config)


if __name__ == "__main__":
    main()
