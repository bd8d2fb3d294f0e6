"""GPU check part ``parity``: every purifier under every attack gradient mode on the CPU and on the device, logits
and input gradients compared (bench/gpu_check.py).
"""

from __future__ import annotations

import copy
from typing import Any

from bench.gpu_check_common import (Clock, Context, Entry, GRAD_MODES, MODELS, PURIFIER_CONFIG, TOLERANCES,
                                    exact_fp32, family, inputs, purifier_args, run_case)


# --------------------------------------------------------------------------------------------------- part: parity
def forward_with(view, x, generator):
    """``PurifiedZeroShotClassifier.forward`` with every draw taken from ``generator`` (the classifier itself draws
    from a generator on the data's device; one CPU generator gives both devices the same numbers)."""
    z = view.backbone.encode_image(view.pixel(x, generator=generator))  # [B, D]
    return view.head(view.latent(z, generator=generator))  # [B, K]


def logits_and_grad(view, x, y, draws: int, seed: int = 100):
    """``(logits of the first draw [B, K], d CE / d x averaged over ``draws`` [B, 3, H, W])``, both on the CPU; draw k
    comes from a CPU generator seeded ``seed + k``."""
    import torch
    import torch.nn.functional as F

    logits, grads = None, []
    for k in range(draws):
        generator = torch.Generator().manual_seed(seed + k)
        xx = x.detach().clone().requires_grad_(True)
        out = forward_with(view, xx, generator)  # [B, K]
        (grad,) = torch.autograd.grad(F.cross_entropy(out.float(), y), xx)
        grads.append(grad.detach().float().cpu())
        logits = out.detach().float().cpu() if logits is None else logits
    return logits, torch.stack(grads).mean(0)


def compare(reference: tuple, measured: tuple, plain_grad_norm: float) -> tuple[float, float]:
    """``(logit error, gradient error)`` of ``measured`` against ``reference`` (both ``(logits, grad)``), relative:
    max |dlogit| / max |logit|; ||dgrad|| / max(||grad||, ||plain CLIP's grad||). NaN when anything is not finite."""
    import math

    import torch

    (l_ref, g_ref), (l_got, g_got) = reference, measured
    if not all(torch.isfinite(t).all() for t in (l_ref, g_ref, l_got, g_got)):
        return math.nan, math.nan
    logit_err = float((l_ref - l_got).abs().max() / l_ref.abs().max().clamp_min(1e-12))
    grad_err = float((g_ref - g_got).norm() / max(float(g_ref.norm()), plain_grad_norm, 1e-30))
    return logit_err, grad_err


def parity_entry(model: str, purifier: str, mode: str, errors: tuple[float, float], device: str) -> Entry:
    logit_err, grad_err = errors
    ok = logit_err <= TOLERANCES["logits"] and grad_err <= TOLERANCES["grad"]  # False for NaN
    detail = f"logits {logit_err:.1e}, input gradient {grad_err:.1e} (cpu vs {device})"
    return Entry("parity", f"{model} {purifier} @{mode}", "pass" if ok else "fail", value=grad_err, unit="rel",
                 limit=f"logits <= {TOLERANCES['logits']:g}, gradient <= {TOLERANCES['grad']:g}",
                 detail=detail if ok else detail + ": outside tolerance (or not finite)",
                 extra={"model": model, "purifier": purifier, "mode": mode, "logit_err": logit_err, "grad_err": grad_err})


def reproducibility_entry(model: str, purifier: str, clf, x) -> Entry:
    """The classifier's own draws (a generator on the data's device): seed 7 twice agree, seed 8 differs."""
    import torch

    from clipure_lit.utils.seed import seeded

    def logits(seed: int):
        with torch.no_grad(), seeded(clf, seed):
            return clf(x).float().cpu()

    a, b, c = logits(7), logits(7), logits(8)
    scale = float(a.abs().max().clamp_min(1e-12))
    same, other = float((a - b).abs().max()) / scale, float((a - c).abs().max()) / scale
    ok = same <= TOLERANCES["reproducible"] and other > TOLERANCES["reproducible"]
    return Entry("parity", f"{model} {purifier}: draws on {x.device.type} reproducible per seed", "pass" if ok else "fail",
                 value=same, unit="rel", limit=f"same seed <= {TOLERANCES['reproducible']:g}, other seed > it",
                 detail=f"same seed {same:.1e}, other seed {other:.1e}")


def part_parity(ctx: Context, clock: Clock) -> None:
    from clipure_lit.attacks.gradient_modes import make_view
    from clipure_lit.attacks.config import AttackGradMode, AttackPrecision

    dev, ref = ctx.devices.main, ctx.devices.reference
    batch, draws = ctx.profile["parity_batch"], ctx.profile["eot_draws"]
    with exact_fp32():
        for model, purifiers in ctx.profile["parity"].items():
            if clock.skip_reason():
                for p in purifiers:
                    ctx.report.add(Entry("parity", f"{model} {p}", "skip", detail=clock.skip_reason() or "no time left"))
                continue
            fam = family(ctx, model, ref)
            x, y = inputs(batch, MODELS[model]["size"], ref)
            _, plain_grad = logits_and_grad(fam.build(["purifier=none"]), x, y, 1)
            plain_norm = float(plain_grad.norm())
            for purifier in purifiers:
                knobs = {"batch_size": None} if "batch_size" in PURIFIER_CONFIG[purifier]["keys"] else {}
                knobs.update(ctx.profile["parity_knobs"].get(purifier, {}))
                built: dict[str, Any] = {}

                def build(purifier=purifier, knobs=knobs, built=built):
                    clf = fam.build(purifier_args(purifier, model, **knobs))
                    built.update(ref=clf, dev=copy.deepcopy(clf).to(dev))  # built on the CPU, then moved, as eval.py does
                    return []

                expected = run_case(ctx, clock, f"{model} {purifier}: build and move to {dev}", build)
                if not built:
                    continue
                results: dict[tuple, tuple] = {}  # views that are the same object share their numbers
                for mode in GRAD_MODES:
                    def case(mode=mode, built=built, results=results):
                        views = [make_view(built[k], AttackGradMode(mode), AttackPrecision.fp32) for k in ("ref", "dev")]
                        n = draws if mode == "eot" else 1
                        key = (id(views[0]), n)
                        if key not in results:
                            results[key] = compare(logits_and_grad(views[0], x, y, n),
                                                   logits_and_grad(views[1], x.to(dev), y.to(dev), n), plain_norm)
                        return parity_entry(model, purifier, mode, results[key], dev.type)

                    expected = run_case(ctx, clock, f"{model} {purifier} @{mode}", case, expected) or expected
                if built and built["ref"].stochastic:
                    run_case(ctx, clock, f"{model} {purifier}: reproducible draws",
                             lambda built=built: reproducibility_entry(model, purifier, built["dev"], x.to(dev)), expected)
