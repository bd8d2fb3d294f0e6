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

Paths alternate within every repetition; medians are compared. Writes ``bench/results/attack_overhead.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.builders import Defences  # noqa: E402
from bench.harness import REPO, Headline, log, median, write_result  # noqa: E402

# n_iter: the framework adds one clean forward per batch (the test step's; AutoAttack makes its own), a fixed cost
# that 100-iteration AutoAttack hides and a 5-iteration one does not: quick uses 10.
PROFILES = {"quick": dict(images=16, batch=16, n_iter=10, reps=3, clip_images=32, clip_n_iter=10),
            "full": dict(images=64, batch=32, n_iter=10, reps=5, clip_images=128, clip_n_iter=20)}


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


def framework_once(classifier, loader, spec, checks: bool) -> tuple[float, float]:
    """One ``trainer.test`` with the robust-evaluation callback: (seconds, robust accuracy)."""
    import pytorch_lightning as pl

    from clipure_lit.callbacks.robust_eval import RobustEvalCallback
    from clipure_lit.models.lit_module import ZeroShotLitModule

    start = time.perf_counter()
    module = ZeroShotLitModule(classifier)
    trainer = pl.Trainer(accelerator="cpu", devices=1, inference_mode=False, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[RobustEvalCallback([spec], checks=checks)])
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
    runs = {"plain": [], "framework": [], "framework_with_checks": []}
    accs = {k: set() for k in runs}
    for rep in range(profile["reps"]):
        for name in runs:
            if name == "plain":
                seconds, acc = plain_once(model, loader, eps / 255, profile["n_iter"], profile["batch"])
            else:
                seconds, acc = framework_once(classifier, loader, spec, checks=name.endswith("checks"))
            runs[name].append(seconds)
            accs[name].add(acc)
            log(f"attack callback: rep {rep + 1}/{profile['reps']} {name:<22} {seconds:7.2f} s  robust acc {acc:.4f}")
    med = {k: median(v) for k, v in runs.items()}
    return {"model": "pyautoattack examples ResNet-18 (CIFAR-10)", "attack": spec.describe(), "seconds": runs, "median_s": med,
            "ratio_framework_over_plain": med["framework"] / med["plain"],
            "ratio_framework_with_checks_over_plain": med["framework_with_checks"] / med["plain"],
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
    runs = {k: [] for k in cases}
    for rep in range(profile["reps"]):
        for name, (clf, spec) in cases.items():
            seconds, acc = framework_once(clf, loader, spec, checks=False)
            runs[name].append(seconds)
            log(f"APGD on the small CLIP: rep {rep + 1}/{profile['reps']} {name:<17} {seconds:6.2f} s  robust acc {acc:.4f}")
    med = {k: median(v) for k, v in runs.items()}
    return {"model": "shipped small CIFAR-10 CLIP (checkpoints/vit_c10_s4_clip.safetensors)", "images": profile["clip_images"],
            "n_iter": profile["clip_n_iter"], "seconds": runs, "median_s": med,
            "ratio_cos_full_over_plain": med["clipure_cos_full"] / med["plain_clip"]}


def run(profile_name: str = "quick") -> dict:
    profile = PROFILES[profile_name]
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # "GPU available: ..." per Trainer
    callback = callback_vs_plain(profile)
    cos = cos_full_vs_plain_clip(profile)
    headline = [
        Headline("attack", "AutoAttack callback / plain pyautoattack loop (checks off)", callback["ratio_framework_over_plain"],
                 goal=1.05, why="" if callback["same_robust_acc"] else "robust accuracy differs between paths!"),
        Headline("attack", "AutoAttack callback with first-batch masking checks / plain pyautoattack",
                 callback["ratio_framework_with_checks_over_plain"],
                 why="the checks attack the first batch's undefended twin and compare gradients (on by default)"),
        Headline("attack", f"APGD-CE through CLIPure-Cos (full) / APGD-CE on plain CLIP, small CLIP",
                 cos["ratio_cos_full_over_plain"], goal=1.05,
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    payload = run(args.profile)
    path = write_result("attack_overhead", payload, args.out)
    c, k = payload["callback_vs_plain"], payload["cos_full_vs_plain_clip"]
    print(f"callback / plain pyautoattack: {c['ratio_framework_over_plain']:.3f}x (with masking checks "
          f"{c['ratio_framework_with_checks_over_plain']:.3f}x); same robust accuracy: {c['same_robust_acc']}")
    print(f"APGD-CE through CLIPure-Cos (full) / plain CLIP, small CLIP: {k['ratio_cos_full_over_plain']:.3f}x")
    print(f"written: {os.path.relpath(path, REPO)}")


if __name__ == "__main__":
    main()
