"""One plain sentence per evaluated defence, derived from its numbers and masking flags (for the demo table)."""

from __future__ import annotations

from clipure_lit.reporting.format import pct, points

_MASKING_FLAGS = ("weak_grad/", "zero_grad/", "nondifferentiable_without_bpda/", "random_without_eot/")


def _is_undefended(results: dict) -> bool:
    return all(p.get("class") == "IdentityPurifier" for p in results.get("purifiers", []))


def explain(results: dict, undefended_robust: float | None = None) -> str:
    """What a row means. ``undefended_robust``: worst-case robust accuracy of plain CLIP on the same samples (None for
    the baseline row itself). A row without purifier that is not the baseline is a backbone robust by itself (an
    adversarially fine-tuned CLIP): its robustness is the backbone's, and no gradient can be masked."""
    clean = results["clean"]["acc"]
    robust = results.get("robust", {})
    if not robust:
        return f"Clean accuracy {pct(clean, unit='%')}; no attack was run."
    worst = robust["worst_case"]["acc"]
    flags = {k for k, v in results.get("flags", {}).items() if v}
    if _is_undefended(results) and undefended_robust is None:
        return (f"Undefended CLIP: {pct(worst, unit='%')} robust ({pct(clean, unit='%')} clean): the baseline every defence "
                "is measured against.")
    masked = sorted({f.split("/", 1)[1] for f in flags if f.startswith(_MASKING_FLAGS)})
    per_attack = {name: entry["acc"] for name, entry in robust.items() if name != "worst_case"}
    parts = []
    if _is_undefended(results):
        parts.append(f"no purifier, so nothing can mask the gradient: this backbone keeps {pct(worst, unit='%')} "
                     f"({pct(clean, unit='%')} clean) under the worst case of every attack run here")
    elif masked:
        shown = max(per_attack.get(a, 0.0) for a in masked)
        strongest = min(per_attack, key=per_attack.get)
        if shown - worst >= 0.05:
            parts.append(f"the attack gradient is masked ({', '.join(masked)}: {pct(shown, unit='%')}), but {strongest} brings it "
                         f"to {pct(worst, unit='%')}, so the higher number is gradient masking, not robustness")
        else:
            parts.append(f"the gradient of {', '.join(masked)} is masked, yet the attacks still reach {pct(worst, unit='%')}")
    elif "robust_near_clean" in flags:
        parts.append(f"robust accuracy {pct(worst, unit='%')} stays near clean accuracy {pct(clean, unit='%')} under every attack "
                     "run here; check the flags and raise attack.n_iter before calling it robust")
    else:
        parts.append(f"worst case over the attacks {pct(worst, unit='%')} ({pct(clean, unit='%')} clean)")
    if undefended_robust is not None:
        gain = worst - undefended_robust
        parts.append(f"{points(gain)} points over undefended CLIP")
    if "batch_dependent" in flags:
        parts.append("its predictions depend on the other images in the batch")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."
