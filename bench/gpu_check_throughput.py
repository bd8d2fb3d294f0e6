"""GPU check part ``throughput``: images/s of the clean and purified forward and of one attack step
(bench/gpu_check.py).
"""

from __future__ import annotations

import time
from typing import Any

from bench.harness import median, time_round_robin
from bench.gpu_check_common import Clock, Context, Entry, MODELS, family, inputs, purifier_args, run_case


# ----------------------------------------------------------------------------------------------- part: throughput
def build_model(ctx: Context, model: str) -> dict[str, Any]:
    """Plain, CLIPure-Cos and CLIPure-Diff classifiers of ``model`` on the device (cached in ``ctx.models``)."""
    if model not in ctx.models:
        fam = family(ctx, model, ctx.devices.main)
        ctx.models[model] = {"plain": fam.build(["purifier=none"]),
                             "cos": fam.build(purifier_args("clipure_cos", model, batch_size=None)),
                             "diff": fam.build(purifier_args("clipure_diff", model, batch_size=None))}
    return ctx.models[model]


def forward_case(clf, x, sync):
    import torch

    def run():
        with torch.no_grad():
            clf(x)
        sync()
    return run


def attack_case(clf, x, y, sync):
    """One attack step: logits + cross-entropy + gradient w.r.t. the pixels."""
    import torch
    import torch.nn.functional as F

    def run():
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(clf(xx), y), xx)
        sync()
    return run


def full_view(clf):
    from clipure_lit.attacks.gradient_modes import make_view
    from clipure_lit.attacks.config import AttackGradMode, AttackPrecision

    return make_view(clf, AttackGradMode.full, AttackPrecision.fp32)


THROUGHPUT_CASES = (("clean forward", "plain", "fwd"), ("CLIPure-Cos forward", "cos", "fwd"),
                    ("CLIPure-Diff forward", "diff", "fwd"), ("attack step, plain CLIP", "plain", "attack"),
                    ("attack step through CLIPure-Cos (full gradient)", "cos", "attack"),
                    ("attack step through CLIPure-Diff (full gradient)", "diff", "attack"))


def part_throughput(ctx: Context, clock: Clock) -> None:
    batch, reps, sync = ctx.profile["throughput_batch"], ctx.profile["reps"], ctx.devices.sync
    expected = 0.0
    for model in ctx.profile["models"]:
        def case(model=model):
            m = build_model(ctx, model)
            x, y = inputs(batch, MODELS[model]["size"], ctx.devices.main)
            cases = {}
            for label, key, kind in THROUGHPUT_CASES:
                cases[label] = forward_case(m[key], x, sync) if kind == "fwd" else attack_case(full_view(m[key]), x, y, sync)
            start = time.perf_counter()
            for fn in cases.values():  # warm-up: kernels, lazily built buffers
                fn()
            rep_s = time.perf_counter() - start
            times: dict[str, list[float]] = {k: [] for k in cases}
            for r in range(reps):  # interleaved repetitions, as long as the part's time allows
                if r and rep_s > clock.left():
                    break
                for name, ts in time_round_robin(cases, reps=1, warmup=False, seed=r).items():
                    times[name] += ts
            done = len(times[THROUGHPUT_CASES[0][0]])
            note = f"median of {done} repetition(s)" + ("" if done == reps else f" of {reps} (part budget)")
            return [Entry("throughput", f"{model} {label}, batch {batch}", "measured", value=batch / median(times[label]),
                          unit="images/s", detail=note,
                          extra={"model": model, "case": label, "batch": batch, "median_s": median(times[label]),
                                 "times_s": times[label]}) for label, _, _ in THROUGHPUT_CASES]

        expected = run_case(ctx, clock, f"{model} throughput, batch {batch}", case, expected)
