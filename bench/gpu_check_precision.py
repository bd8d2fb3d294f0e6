"""GPU check part ``precision``: the released mixed-fp16 precision through CLIPure-Cos (bench/gpu_check.py)."""

from __future__ import annotations

from typing import Any

from bench.gpu_check_common import Clock, Context, Entry, MODELS, family, inputs, purifier_args, run_case


# ------------------------------------------------------------------------------------------------ part: precision
def part_precision(ctx: Context, clock: Clock) -> None:
    import torch
    import torch.nn.functional as F

    from clipure_lit.attacks.checks import is_half
    from clipure_lit.attacks.gradient_modes import make_view
    from clipure_lit.attacks.config import AttackGradMode, AttackPrecision

    model, dev = ctx.profile["precision_model"], ctx.devices.main
    built: dict[str, Any] = {}

    def build():
        fam = family(ctx, model, dev, ["clip.precision=mixed_fp16"])
        built["clf"] = fam.build(purifier_args("clipure_cos", model, batch_size=None))
        return []

    run_case(ctx, clock, f"{model} mixed_fp16: build", build)
    if not built:
        return
    x, y = inputs(2, MODELS[model]["size"], dev)  # the released batch size

    def grad(mode: str):
        view = make_view(built["clf"], AttackGradMode(mode), AttackPrecision.model)
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(view(xx).float(), y), xx)
        return g, is_half(view)

    def as_released():
        g, half = grad("as_released")
        nonzero = int((g != 0).sum())
        return Entry("precision", f"{model} clip.precision=mixed_fp16, CLIPure-Cos @as_released: input gradient exactly zero",
                     "pass" if nonzero == 0 and half else "fail", value=nonzero, unit="non-zero elements", limit="== 0",
                     detail=f"{nonzero} of {g.numel()} elements non-zero; fp16 encoder weights: {half}")

    def full():
        g, half = grad("full")
        finite, norm = bool(torch.isfinite(g).all()), float(g.float().norm())
        return Entry("precision", f"{model} clip.precision=mixed_fp16, CLIPure-Cos @full: input gradient non-zero",
                     "pass" if finite and norm > 0 and half else "fail", value=norm, unit="L2 norm", limit="> 0, finite",
                     detail=f"norm {norm:.3g}, finite: {finite}; fp16 encoder weights: {half}")

    seconds = run_case(ctx, clock, f"{model} mixed_fp16 @as_released", as_released)
    run_case(ctx, clock, f"{model} mixed_fp16 @full", full, seconds)
