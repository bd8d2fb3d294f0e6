"""GPU check part ``eval``: ``eval.py`` on the device, one run per purifier (bench/gpu_check.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.gpu_check_common import (COMMON, Clock, Context, Entry, MODELS, PURIFIER_CONFIG, purifier_args,
                                    quiet_stdout, run_case)


# ----------------------------------------------------------------------------------------------------- part: eval
EVAL_ATTACKS = ("aa_clipure@purifier", "aa_clipure@full", "aa_clipure@bpda_identity", "aa_clipure@eot", "transfer_clip",
                "square")


def eval_args(ctx: Context, purifier: str, run_dir: Path, samples: int, trainer: list[str], **knobs: Any) -> list[str]:
    """eval.py arguments of one small evaluation with the quick attack set plus EOT and the masking checks on."""
    p, model = ctx.profile, ctx.profile["eval_model"]
    return [*MODELS[model]["args"], *COMMON, *purifier_args(purifier, model, **knobs), "attack=quick",
            f"attack.run=[{','.join(EVAL_ATTACKS)}]",
            f"attack.n_iter={p['eval_n_iter']}", f"attack.n_queries={p['eval_n_queries']}",
            f"attack.eot_samples={p['eot_draws']}",
            "attack.checks=true", f"data.num_samples={samples}", "data.batch_size=2", "logger=none", f"run_dir={run_dir}",
            ctx.text_cache(), "trainer.enable_progress_bar=false", *trainer]


def trainer_args(ctx: Context) -> list[str]:
    return ["trainer=gpu"] if ctx.devices.cuda else ["trainer=cpu"]


def run_eval_main(argv: list[str]) -> dict:
    """``eval.main(argv)``; a configuration error (exit status 2) becomes a RuntimeError with the message."""
    import eval as eval_script

    with quiet_stdout():
        try:
            return eval_script.main(argv)
        except SystemExit as exc:
            raise RuntimeError(f"eval.py exited with status {exc.code} (its message is above)") from None


def eval_entry(purifier: str, metrics: dict, samples: int, trainer: list[str]) -> Entry:
    robust = {k: v for k, v in metrics.get("robust", {}).items() if k != "worst_case"}
    missing = [k for k, v in robust.items() if v.get("total") != samples]
    raised = sorted(f for f, v in metrics.get("flags", {}).items() if v)
    ok = (metrics.get("num_samples") == samples and len(robust) == len(EVAL_ATTACKS) and not missing
          and bool(metrics.get("flags")))
    clean = metrics.get("clean", {})
    detail = (f"{' '.join(trainer)}; clean {clean.get('correct')}/{clean.get('total')}, worst case "
              f"{metrics.get('robust', {}).get('worst_case', {}).get('correct')}/{samples}; {len(robust)} attacks; "
              f"masking flags raised: {', '.join(raised) or 'none'}")
    if not ok:
        detail = f"incomplete run (samples {metrics.get('num_samples')}/{samples}, attacks short of samples: {missing}, " \
                 f"checks recorded: {bool(metrics.get('flags'))}); " + detail
    return Entry("eval", f"eval.py {PURIFIER_CONFIG[purifier]['label']}: attacks and masking checks",
                 "pass" if ok else "fail", value=None, detail=detail)


def part_eval(ctx: Context, clock: Clock) -> None:
    samples, trainer = ctx.profile["eval_samples"], trainer_args(ctx)
    expected = 0.0
    for purifier in ctx.profile["eval_purifiers"]:
        run_dir = ctx.work / "eval" / purifier

        def case(purifier=purifier, run_dir=run_dir):
            return eval_entry(purifier, run_eval_main(eval_args(ctx, purifier, run_dir, samples, trainer)), samples, trainer)

        expected = max(expected, run_case(ctx, clock, f"eval.py {PURIFIER_CONFIG[purifier]['label']}", case, expected))
