"""Cost of attacks in the framework (not a test).

    .venv/bin/python bench/attack_overhead.py [--profile quick|full]

1. **Callback vs plain pyautoattack.** The framework's AutoAttack path (Lightning test loop +
   ``RobustEvalCallback``, with and without the first-batch masking checks) against a plain pyautoattack loop on
   the same model, images, seed and settings (APGD-CE + APGD-T). Model: pyautoattack's pretrained CIFAR-10
   ResNet-18 (``examples/model_test.pt``); data: the CIFAR-10 test sample that ships with the project. Goal 1.05x.
2. **APGD through CLIPure-Cos, full gradient, vs APGD on plain CLIP.** APGD-CE in the callback on the shipped small
   CIFAR-10 CLIP, once undefended and once through CLIPure-Cos with the exact gradient (``apgd_ce@full``). Goal
   1.05x (the purification is 10 small steps on [B, D] embeddings; its cost is fixed while the encoder's grows with
   the model, so the small CLIP is the hard case).

3. **The live progress display** (``EvalProgress`` with the running counts and the sub-attack monitor, drawn to an
   in-memory terminal) added to case 1's callback: information, no goal.

Paths are interleaved in a shuffled order within every repetition (``bench/harness.py``); a goal-bearing figure is
the median of the per-repetition ratios with its 95% interval, and repetitions continue (up to the profile's
``max_reps`` / ``budget_s``) until the interval decides the goal. Writes ``bench/results/attack_overhead.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.builders import Defences  # noqa: E402
from bench.harness import (REPO, Headline, Spread, goals_decided, log, markdown_table, median,  # noqa: E402
                           paired_ratios, ratio_spread, time_round_robin, write_result)

# n_iter: the framework adds one clean forward per batch (the test step's; AutoAttack makes its own), a fixed cost
# that 100-iteration AutoAttack hides and a 5-iteration one does not: quick uses 10.
# max_reps / budget_s: when a comparison stops repeating if its goal is still undecided (6 repetitions at least
# are needed to decide at 95%).
PROFILES = {"quick": dict(images=16, batch=16, n_iter=10, max_reps=12, budget_s=200, clip_images=32, clip_n_iter=10),
            "full": dict(images=64, batch=32, n_iter=10, max_reps=20, budget_s=900, clip_images=128, clip_n_iter=20)}
GOAL = 1.05


def load_model():
    import pyautoattack
    from pyautoattack.examples.resnet import ResNet18

    model = ResNet18()
    state = torch.load(Path(pyautoattack.__file__).parent / "examples" / "model_test.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def make_loader(n: int, batch: int):
    """The first ``n`` images of the shipped CIFAR-10 test sample, decoded once into memory (decoding is not what is
    measured), as a loader of ``(x, y, sample_id)``."""
    from torch.utils.data import DataLoader, TensorDataset

    from clipure_lit.config.loader import load_config
    from clipure_lit.data.datamodule import ZeroShotDataModule

    dm = ZeroShotDataModule(load_config([f"data.num_samples={n}", f"data.batch_size={batch}"]).data)
    dm.setup("test")
    items = [dm.test_set[i] for i in range(len(dm.test_set))]
    x = torch.stack([it[0] for it in items])
    y = torch.tensor([int(it[1]) for it in items])
    ids = torch.tensor([int(it[2]) for it in items])
    return DataLoader(TensorDataset(x, y, ids), batch_size=batch, shuffle=False)


def display_callbacks() -> list:
    """What ``eval.py`` adds for its display: the running counts and the live progress display (with the
    sub-attack monitor), drawn on an in-memory terminal so that the drawing is paid but nothing is printed."""
    import io

    from rich.console import Console

    from clipure_lit.callbacks.progress import EvalProgress
    from clipure_lit.callbacks.running import RunningAccuracy

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    return [RunningAccuracy(log_live=False), EvalProgress(title="bench", live=True, console=console)]


def framework_once(classifier, loader, spec, checks: bool, display: bool = False) -> tuple[float, float]:
    """One ``trainer.test`` with the robust-evaluation callback (and, with ``display``, the live progress
    display): (seconds, robust accuracy)."""
    import pytorch_lightning as pl

    from clipure_lit.callbacks.robust_eval import RobustEvalCallback
    from clipure_lit.models.lit_module import ZeroShotLitModule

    start = time.perf_counter()
    module = ZeroShotLitModule(classifier)
    trainer = pl.Trainer(accelerator="cpu", devices=1, inference_mode=False, logger=False, enable_progress_bar=display,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[RobustEvalCallback([spec], checks=checks), *(display_callbacks() if display else [])])
    trainer.test(module, loader, verbose=False)
    return time.perf_counter() - start, module.summary["robust"][spec.name]["acc"]


def plain_once(model, loader, eps: float, n_iter: int, batch: int) -> tuple[float, float]:
    from pyautoattack import AutoAttack

    start = time.perf_counter()
    robust = total = 0
    for x, y, _ in loader:
        adversary = AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], device="cpu", seed=0)
        for apgd in (adversary.apgd, adversary.apgd_targeted):
            apgd.n_iter = n_iter
            apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
        adversary.apgd.n_restarts = 1
        adversary.apgd_targeted.n_target_classes = 3
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch)
        robust += int((y_adv == y).sum())
        total += int(y.numel())
    return time.perf_counter() - start, robust / total


def callback_vs_plain(profile: dict) -> dict:
    from clipure_lit.attacks.adapters import classifier_from_model
    from clipure_lit.attacks.presets import attack_config, resolve_attacks

    eps = 1.0
    entry = {"n_restarts": 1, "n_target_classes": 3}
    (spec,) = resolve_attacks(attack_config(run=["aa_clipure"], eps=eps, n_iter=profile["n_iter"], entries={"aa_clipure": entry}))
    model = load_model()
    classifier = classifier_from_model(model)
    loader = make_loader(profile["images"], profile["batch"])
    framework_once(classifier, loader, spec, checks=False)  # warm-up (imports, first Trainer, kernels for both paths)
    accs: dict[str, set] = {k: set() for k in ("plain", "framework", "framework_with_checks", "framework_with_display")}

    def case(name: str):
        def run() -> None:
            if name == "plain":
                seconds, acc = plain_once(model, loader, eps / 255, profile["n_iter"], profile["batch"])
            else:
                seconds, acc = framework_once(classifier, loader, spec, checks=name.endswith("checks"),
                                              display=name.endswith("display"))
            accs[name].add(acc)
            log(f"attack callback: {name:<22} {seconds:7.2f} s  robust acc {acc:.4f}")
        return run

    goals = {"framework": (lambda t: paired_ratios(t, "framework", "plain"), GOAL)}
    runs = time_round_robin({name: case(name) for name in accs}, reps=profile["max_reps"], warmup=False,
                            until=goals_decided(goals), budget_s=profile["budget_s"])
    spread = {name: ratio_spread(runs, name, "plain") for name in runs if name != "plain"}
    display = ratio_spread(runs, "framework_with_display", "framework")
    return {"model": "pyautoattack examples ResNet-18 (CIFAR-10)", "attack": spec.describe(), "seconds": runs,
            "median_s": {k: median(v) for k, v in runs.items()}, "spread": {k: asdict(v) for k, v in spread.items()},
            "ratio_framework_over_plain": spread["framework"].median,
            "ratio_framework_with_checks_over_plain": spread["framework_with_checks"].median,
            "ratio_display_over_framework": display.median, "display_spread": asdict(display),
            "robust_acc": {k: sorted(v) for k, v in accs.items()}, "same_robust_acc": len(set().union(*accs.values())) == 1}


def cos_full_vs_plain_clip(profile: dict) -> dict:
    from clipure_lit.attacks.presets import attack_config, resolve_attacks

    loader = make_loader(profile["clip_images"], profile["batch"])
    family = Defences(["clip=cifar10_small"])
    plain = family.build(["purifier=none"])
    cos = family.build(["purifier=clipure_cos", "purifier.clipure_cos.batch_size=null"])
    cases = {}
    for name, clf, token in (("plain_clip", plain, "apgd_ce"), ("clipure_cos_full", cos, "apgd_ce@full")):
        (spec,) = resolve_attacks(attack_config(run=[token], eps=4.0, n_iter=profile["clip_n_iter"], checks=False))
        cases[name] = (clf, spec)
    for clf, spec in cases.values():
        framework_once(clf, loader, spec, checks=False)  # warm-up

    def case(name: str):
        def run() -> None:
            seconds, acc = framework_once(cases[name][0], loader, cases[name][1], checks=False)
            log(f"APGD on the small CLIP: {name:<17} {seconds:6.2f} s  robust acc {acc:.4f}")
        return run

    goals = {"clipure_cos_full": (lambda t: paired_ratios(t, "clipure_cos_full", "plain_clip"), GOAL)}
    runs = time_round_robin({name: case(name) for name in cases}, reps=profile["max_reps"], warmup=False,
                            until=goals_decided(goals), budget_s=profile["budget_s"])
    spread = ratio_spread(runs, "clipure_cos_full", "plain_clip")
    return {"model": "shipped small CIFAR-10 CLIP (checkpoints/vit_c10_s4_clip.safetensors)", "images": profile["clip_images"],
            "n_iter": profile["clip_n_iter"], "seconds": runs, "median_s": {k: median(v) for k, v in runs.items()},
            "spread": asdict(spread), "ratio_cos_full_over_plain": spread.median}


def run(profile_name: str = "quick") -> dict:
    profile = PROFILES[profile_name]
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # "GPU available: ..." per Trainer
    callback = callback_vs_plain(profile)
    cos = cos_full_vs_plain_clip(profile)
    headline = [
        Headline.from_spread("attack", "AutoAttack callback / plain pyautoattack loop (checks off)",
                             Spread(**callback["spread"]["framework"]), goal=GOAL,
                             why="" if callback["same_robust_acc"] else "robust accuracy differs between paths!"),
        Headline.from_spread("attack", "AutoAttack callback with first-batch masking checks / plain pyautoattack",
                             Spread(**callback["spread"]["framework_with_checks"]),
                             why="the checks attack the first batch's undefended twin and compare gradients (on by default)"),
        Headline.from_spread("attack", "AutoAttack callback with the live progress display / without (checks off)",
                             Spread(**callback["display_spread"]),
                             why="running counts, live display and sub-attack monitor drawn on an in-memory terminal"),
        Headline.from_spread("attack", "APGD-CE through CLIPure-Cos (full) / APGD-CE on plain CLIP, small CLIP",
                             Spread(**cos["spread"]), goal=GOAL,
                             why="the hard case: ~2 ms of latent steps per gradient against an encoder ~20x cheaper than ViT-B-32's"),
    ]
    return {"profile": profile_name, "settings": profile, "callback_vs_plain": callback, "cos_full_vs_plain_clip": cos,
            "headline": headline}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the two paths then compete least "
                                                                "with other processes)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/attack_overhead.json")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # 4 images, 2 iterations, <= 6 reps
    args = parser.parse_args(argv)
    if args.smoke:
        PROFILES[args.profile] = dict(PROFILES[args.profile], images=4, batch=4, n_iter=2, max_reps=6, budget_s=5,
                                      clip_images=4, clip_n_iter=2)
    torch.set_num_threads(args.threads)
    payload = run(args.profile)
    path = write_result("attack_overhead", payload, args.out)
    print(markdown_table(payload["headline"]))
    print(f"same robust accuracy on every path: {payload['callback_vs_plain']['same_robust_acc']}")
    print(f"written: {os.path.relpath(path, REPO)}")


if __name__ == "__main__":
    main()
