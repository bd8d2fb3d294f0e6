"""GPU check part ``memory``: peak memory of a full-gradient CLIPure-Diff attack step, step checkpointing on and off
(bench/gpu_check.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.gpu_check_common import Clock, Context, Entry, MEMORY_FLAT_RATIO, MODELS, inputs, run_case
from bench.gpu_check_throughput import attack_case, build_model, full_view


# --------------------------------------------------------------------------------------------------- part: memory
def diff_variant(clf, steps: int, checkpointing: bool):
    """``clf`` with its CLIPure-Diff purifier running ``steps`` steps and step checkpointing on or off; shares the
    backbone, head and prior."""
    from clipure_lit.models.classifier import PurifiedZeroShotClassifier

    from clipure_lit.purifiers.base import shallow_copy_with

    latent = shallow_copy_with(clf.latent, cfg=dataclasses.replace(clf.latent.cfg, num_steps=steps,
                                                                   gradient_checkpointing=checkpointing))
    return PurifiedZeroShotClassifier(clf.backbone, clf.head, pixel=clf.pixel, latent=latent, seed=clf.seed).eval()


def memory_case(ctx: Context, model: str, clf, x, y, steps: int, checkpointing: bool) -> Entry:
    devices = ctx.devices
    step = attack_case(full_view(diff_variant(clf, steps, checkpointing)), x, y, devices.sync)
    devices.release()
    before = devices.allocated_mb()
    devices.reset_peak()
    step()
    peak = devices.peak_mb()
    return Entry("memory", f"{model} CLIPure-Diff full-gradient attack step, T={steps}, checkpointing "
                           f"{'on' if checkpointing else 'off'}, batch {x.shape[0]}", "measured", value=peak, unit="MB",
                 detail=f"{peak - before:.0f} MB added by the step ({devices.memory_metric})",
                 extra={"model": model, "steps": steps, "checkpointing": checkpointing, "batch": int(x.shape[0]),
                        "peak_mb": peak, "added_mb": peak - before})


def flatness_entry(ctx: Context, model: str, batch: int, rows: list[Entry]) -> Entry:
    """Memory added per step with checkpointing, over the same without it (T = lowest -> highest)."""
    name = f"{model} memory flat in T with step checkpointing, batch {batch}"
    limit = f"<= {MEMORY_FLAT_RATIO:g}"
    added = {(e.extra["steps"], e.extra["checkpointing"]): e.extra["added_mb"] for e in rows}
    steps = sorted({s for s, _ in added})
    if len(steps) < 2 or not all((s, c) in added for s in (steps[0], steps[-1]) for c in (True, False)):
        return Entry("memory", name, "skip", limit=limit, detail="the T cases it needs were not measured (budget)")
    lo, hi = steps[0], steps[-1]
    grow_on, grow_off = added[hi, True] - added[lo, True], added[hi, False] - added[lo, False]
    detail = f"T={lo} -> {hi}: {grow_on:+.0f} MB with checkpointing, {grow_off:+.0f} MB without"
    if not ctx.devices.cuda:
        return Entry("memory", name, "skip", limit=limit, detail=f"not judged on the CPU: peak RSS of toy-size steps is "
                                                                  f"allocator noise ({detail})")
    if grow_off <= 0:
        return Entry("memory", name, "fail", limit=limit, detail=f"no growth without checkpointing: the measurement is "
                                                                  f"broken ({detail})")
    ratio = grow_on / grow_off
    return Entry("memory", name, "pass" if ratio <= MEMORY_FLAT_RATIO else "fail", value=ratio, unit="x", limit=limit,
                 detail=detail)


def part_memory(ctx: Context, clock: Clock) -> None:
    # Resident models first, the last built first (the throughput part leaves them built; fewer rebuilds).
    models = list(ctx.profile["models"])
    for model in sorted(models, key=lambda m: (m not in ctx.models, -models.index(m))):
        ctx.keep_only(model)
        built: dict[str, Any] = {}

        def build(model=model, built=built):
            built["clf"] = build_model(ctx, model)["diff"]
            return []

        run_case(ctx, clock, f"{model} CLIPure-Diff: build", build)
        if not built:
            continue
        for batch in ctx.profile["memory_batches"]:
            x, y = inputs(batch, MODELS[model]["size"], ctx.devices.main)
            rows: list[Entry] = []
            expected, last_steps = 0.0, 1
            steps_list = ctx.profile["memory_steps"]
            warmed: dict[str, bool] = {}

            def warm_up(x=x, y=y, warmed=warmed):  # kernels, workspaces, lazily built buffers
                attack_case(full_view(diff_variant(built["clf"], steps_list[0], True)), x, y, ctx.devices.sync)()
                warmed["done"] = True
                return []

            run_case(ctx, clock, f"{model} memory warm-up, batch {batch}", warm_up)
            if not warmed:
                continue  # failed or skipped (recorded)
            for steps in steps_list:
                for checkpointing in (True, False):
                    def case(steps=steps, checkpointing=checkpointing):
                        entry = memory_case(ctx, model, built["clf"], x, y, steps, checkpointing)
                        rows.append(entry)
                        return entry

                    seconds = run_case(ctx, clock, f"{model} memory T={steps} checkpointing {checkpointing} batch {batch}",
                                       case, expected * steps / last_steps)
                    expected, last_steps = max(seconds, expected), steps
            ctx.report.add(flatness_entry(ctx, model, batch, rows))
    ctx.keep_only(None)
