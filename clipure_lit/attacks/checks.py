"""Gradient-masking checks (docs/evaluation.md, "Flags"). Each returns :class:`Finding` objects; a raised
finding's message says what was seen and which config switch gives a stronger evaluation.

First-batch checks compare the defended classifier with undefended CLIP (identity purifiers, same head) and
measure input gradients of every attacked view. End-of-run checks read the summary (accuracies per attack).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from clipure_lit.utils.seed import seeded
from clipure_lit.attacks.spec import AttackSpec
from clipure_lit.attacks.config import AttackGradMode, AttackPrecision, AutoAttackVersion
from clipure_lit.purifiers.base import IdentityPurifier

# Thresholds (documented in docs/evaluation.md).
IDENTITY_REL_CHANGE = 1e-3  # relative logit change below which the purifier counts as the identity
WEAK_GRAD_RATIO = 1e-2  # median |grad| ratio to undefended CLIP below which gradients count as masked
BATCH_PROB_CHANGE = 1e-3  # max probability change (batch vs alone) above which outputs depend on batch mates
NEAR_CLEAN_POINTS = 5.0  # worst-case robust accuracy within this many points of clean accuracy
SQUARE_MARGIN = 0.002  # Square beating the best white-box attack by more than this (AutoAttack's value)
BATCH_CHECK_SAMPLES = 4


@dataclass
class Finding:
    """A check's outcome: ``flag`` (logged as ``test/flags/<flag>``, 1 when ``raised``), an optional measured
    ``value`` (logged as ``test/checks/<flag>``) and the warning ``message`` (empty when not raised)."""

    flag: str
    raised: bool
    value: float | None = None
    message: str = ""


def logits_of(model, x: Tensor, seed: int = 0) -> Tensor:
    with torch.no_grad(), seeded(model, seed):
        return model(x).float()


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``[B]`` logit of the true class minus the largest other logit: the quantity a (DLR-style) attack lowers. Unlike
    the cross-entropy, its gradient does not vanish when the softmax saturates (a confident, correct sample)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.max(dim=1).values


def input_grad_norms(model, x: Tensor, y: Tensor, seed: int = 0, loss: str = "ce") -> Tensor:
    """Per-sample L2 norm ``[B]`` of ``d loss(model(x), y) / d x`` (NaN where the gradient is not finite), for
    ``loss`` ``"ce"`` (the cross-entropy APGD-CE follows) or ``"margin"`` (:func:`margin`)."""
    x = x.detach().float().clone().requires_grad_(True)
    with torch.enable_grad(), seeded(model, seed):
        logits = model(x).float()
        loss = margin(logits, y).sum() if loss == "margin" else F.cross_entropy(logits, y, reduction="sum")
        grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
    if grad is None:  # the output does not depend on x through autograd
        return torch.zeros(x.shape[0])
    grad = grad.detach().reshape(x.shape[0], -1).float()
    norms = grad.norm(dim=1)
    norms[~torch.isfinite(grad).all(dim=1)] = math.nan
    return norms.cpu()


def has_purifier(classifier) -> bool:
    return any(not isinstance(p, IdentityPurifier) for p in classifier.purifiers)


def check_identity(classifier, undefended, x: Tensor) -> Finding:
    """Does the purifier change anything on this data? Skipped (not raised) without a purifier."""
    if not has_purifier(classifier):
        return Finding("purifier_near_identity", False)
    defended, plain = logits_of(classifier, x), logits_of(undefended, x)
    rel = float((defended - plain).norm() / plain.norm().clamp_min(1e-12))
    agree = float((defended.argmax(-1) == plain.argmax(-1)).float().mean())
    raised = agree == 1.0 and rel < IDENTITY_REL_CHANGE
    return Finding("purifier_near_identity", raised, rel, (
        f"The purifier leaves the logits (nearly) unchanged on the first batch (relative change {rel:.1e}, "
        f"{100 * agree:.0f}% of predictions agree with undefended CLIP): here the defended classifier is undefended "
        "CLIP, so its true robust accuracy is undefended CLIP's and any gain under attack comes from the gradient, "
        "not from purification. Stronger evaluation: add transfer_clip to attack.run and use "
        "attack.grad_mode=bpda_identity (or full).") if raised else "")


def check_batch_dependence(classifier, x: Tensor) -> Finding:
    """Is output i a function of sample i alone? Declared ``batch_coupled`` counts; deterministic classifiers
    are also measured (first samples classified with the batch vs alone)."""
    declared = bool(classifier.batch_coupled)
    change = 0.0
    if not classifier.stochastic and x.shape[0] > 1:
        k = min(BATCH_CHECK_SAMPLES, x.shape[0])
        together = logits_of(classifier, x).softmax(-1)[:k]
        alone = torch.cat([logits_of(classifier, x[i:i + 1]) for i in range(k)]).softmax(-1)
        change = float((together - alone).abs().max())
    raised = declared or change > BATCH_PROB_CHANGE
    measured = (f"max probability change {change:.1e} when a sample is classified alone" if not classifier.stochastic
                else "not measured, the purifier is random")
    return Finding("batch_dependent", raised, change, (
        f"Predictions depend on the other samples in the batch (declared batch_coupled={declared}; {measured}), "
        "so every result depends on data.batch_size, "
        "attack.batch_size and the number of processes, and an attacker could choose the batch mates. Stronger "
        "evaluation: purifier.<name>.norm_scope=sample for a CLIPure purifier, or data.batch_size=1 with attack.batch_size=1.") if raised else "")


def declared_batch_dependence(classifier) -> Finding:
    """The ``batch_dependent`` flag from what the purifiers declare, without a batch (so that a run without attacks,
    whose first-batch checks do not run, still carries it): raised when a purifier declares ``batch_coupled``. The
    message says when a purifier declares no batch size (``describe()["batch_size"]`` None, e.g.
    ``purifier.<name>.batch_size=null``), which makes every result a function of ``data.batch_size``."""
    coupled = [p.describe() for p in classifier.purifiers if p.batch_coupled]
    unpinned = [d["class"] for d in coupled if d.get("batch_size", None) is None]
    pinned = sorted({d["batch_size"] for d in coupled if d.get("batch_size") is not None})
    which = ", ".join(d["class"] for d in coupled)
    detail = (f"{', '.join(unpinned)} declares no batch size (purifier.<name>.batch_size=null), so these numbers hold "
              "for this run's data.batch_size and batch composition only" if unpinned else
              f"the run used the declared batch size {pinned[0] if len(pinned) == 1 else pinned}, but which images share "
              "a batch still changes each one's result")
    return Finding("batch_dependent", bool(coupled), None, (
        f"Predictions depend on the other samples in the batch ({which} declares batch_coupled=True): {detail}; an "
        "attacker could also choose the batch mates. Stronger evaluation: purifier.<name>.norm_scope=sample for a "
        "CLIPure purifier.") if coupled else "")


def is_random(classifier, x: Tensor) -> bool:
    """Declared stochastic, or two forwards with different purifier seeds disagree."""
    if classifier.stochastic:
        return True
    return bool((logits_of(classifier, x, 1) - logits_of(classifier, x, 2)).abs().max() > 1e-6)


def check_gradients(spec: AttackSpec, norms: Tensor, reference: Tensor, attacked_half: bool,
                    margin_norms: Tensor | None = None, purified: bool = True) -> list[Finding]:
    """Zero/non-finite gradients and the gradient ratio to undefended CLIP for one white-box attack.

    ``norms`` / ``reference``: cross-entropy gradient norms ``[B]`` of the attacked view and of undefended CLIP (the
    ratio). ``margin_norms``: the attacked view's :func:`margin` gradient norms, which decide ``zero_grad`` (default:
    ``norms``): a cross-entropy gradient is exactly zero wherever the softmax of a correct sample rounds to 1, which
    says nothing about masking (the targeted DLR attacks still move such a sample), whereas a zero margin gradient
    means the logits do not move with the input. ``purified``: whether the attacked view has a purifier, which the
    advice then names."""
    flat = norms if margin_norms is None else margin_norms
    bad = int((~torch.isfinite(flat) | (flat == 0)).sum())
    n = flat.numel()
    fp16 = " The attacked path is in half precision (fp16 underflows gradients to zero): use attack.precision=fp32." \
        if attacked_half else ""
    fix = (" Stronger evaluation: attack.grad_mode=full or bpda_identity." if purified else
           " The attacked model has no purifier, so the model itself is flat or broken at these inputs.")
    zero = Finding(f"zero_grad/{spec.name}", bad > 0, bad / max(n, 1), (
        f"{bad}/{n} first-batch samples have a zero or non-finite input gradient of the logit margin under {spec.name} "
        f"(grad_mode={spec.grad_mode.value}): the logits do not change with the input, so APGD cannot move from its "
        f"random start and the robust accuracy measures random noise, not robustness.{fp16}{fix}")
        if bad else "")
    ok = torch.isfinite(norms) & torch.isfinite(reference) & (reference > 0)
    ratio = float((norms[ok] / reference[ok]).median()) if ok.any() else math.nan
    weak = math.isfinite(ratio) and ratio < WEAK_GRAD_RATIO
    return [zero, Finding(f"weak_grad/{spec.name}", weak, ratio, (
        f"The input gradient under {spec.name} (grad_mode={spec.grad_mode.value}) is {ratio:.1e} times that of "
        "undefended CLIP (median over the first batch): the purifier masks the gradient the attack follows. "
        "Stronger evaluation: attack.grad_mode=full or bpda_identity, plus transfer_clip.") if weak else "")]


def check_randomness(spec: AttackSpec, random: bool) -> Finding:
    eot = spec.eot_samples if spec.eot_samples is not None else (20 if spec.version == AutoAttackVersion.rand else 1)
    raised = random and eot <= 1
    return Finding(f"random_without_eot/{spec.name}", raised, None, (
        f"The classifier's output is random, but {spec.name} uses one gradient sample per step (no EOT): each step "
        "follows a single noisy draw. Stronger evaluation: attack.grad_mode=eot (attack.eot_samples=20) or the "
        "aa_rand preset.") if raised else "")


def check_differentiable(spec: AttackSpec, attacked) -> Finding:
    names = [type(p).__name__ for p in attacked.purifiers if not getattr(p, "differentiable", True)]
    raised = bool(names) and spec.grad_mode != AttackGradMode.bpda_identity
    return Finding(f"nondifferentiable_without_bpda/{spec.name}", raised, None, (
        f"{', '.join(names)} declares differentiable=False under {spec.name}'s gradient mode "
        f"({spec.grad_mode.value}): autograd gives no meaningful gradient through it. Stronger evaluation: "
        "attack.grad_mode=bpda_identity (or full, if the purifier supports it).") if raised else "")


def is_half(model) -> bool:
    return any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters())


def first_batch_checks(classifier, views, specs: Iterable[AttackSpec], x: Tensor, y: Tensor) -> list[Finding]:
    """All first-batch checks. ``views`` is a :class:`~clipure_lit.attacks.execute.ViewCache`."""
    specs = list(specs)
    # Same precision as the defended classifier for the forward comparison; float32 for the gradient reference.
    findings = [check_identity(classifier, views.undefended(AttackPrecision.model), x), check_batch_dependence(classifier, x)]
    random = is_random(classifier, x)
    reference = input_grad_norms(views.undefended(AttackPrecision.fp32), x, y)
    cache: dict[int, tuple[Tensor, Tensor]] = {}
    for spec in specs:
        if not spec.white_box:
            continue
        attacked = views.attacked(spec)
        if id(attacked) not in cache:
            cache[id(attacked)] = (input_grad_norms(attacked, x, y), input_grad_norms(attacked, x, y, loss="margin"))
        ce, flat = cache[id(attacked)]
        findings += check_gradients(spec, ce, reference, is_half(attacked), flat, has_purifier(attacked))
        findings += [check_randomness(spec, random), check_differentiable(spec, attacked)]
    return findings


def final_checks(summary: dict, specs: Iterable[AttackSpec]) -> list[Finding]:
    """End-of-run checks on the summary: robust accuracy close to clean, Square beating white-box attacks."""
    specs = list(specs)
    robust = summary.get("robust", {})
    findings = []
    clean = summary["clean"]
    worst = robust.get("worst_case")
    if worst is not None and clean["correct"] > 0:
        gap = 100 * (clean["acc"] - worst["acc"])
        raised = gap < NEAR_CLEAN_POINTS
        findings.append(Finding("robust_near_clean", raised, gap, (
            f"Worst-case robust accuracy {100 * worst['acc']:.1f}% is within {gap:.1f} points of clean accuracy "
            f"{100 * clean['acc']:.1f}%: either the classifier is robust or the attacks are too weak (gradient masking, "
            "randomness, too few iterations). Stronger evaluation: run aa_clipure@full, aa_clipure@bpda_identity, "
            "transfer_clip and square together, and raise attack.n_iter.") if raised else ""))
    black = [s.name for s in specs if s.black_box and s.name in robust]
    white = [s.name for s in specs if s.white_box and s.name in robust]
    if black and white:
        best_white = min(robust[n]["acc"] for n in white)
        best_black = min(robust[n]["acc"] for n in black)
        margin = best_white - best_black
        raised = margin > SQUARE_MARGIN
        findings.append(Finding("blackbox_beats_whitebox", raised, margin, (
            f"The gradient-free attack ({', '.join(black)}: {100 * best_black:.1f}%) beats every white-box attack "
            f"({', '.join(white)}: best {100 * best_white:.1f}%) by {100 * margin:.1f} points: the gradients the "
            "white-box attacks follow are masked or misleading. Stronger evaluation: attack.grad_mode=bpda_identity or "
            "full (eot for random purifiers), and transfer_clip.") if raised else ""))
    return findings
