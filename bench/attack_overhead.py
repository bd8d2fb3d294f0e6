"""Overhead of the framework's AutoAttack path (Lightning test loop + RobustEvalCallback) over a plain
pyautoattack loop, on the same model, images, seed and settings. Not a test.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/attack_overhead.py [--reps 3] [--images 32] [--batch 16] [--n-iter 5]

Model: pyautoattack's pretrained CIFAR-10 ResNet-18 (``examples/model_test.pt``); data: the real CIFAR-10 test
JPEGs in ../shared/data/cifar10/test (random images if absent). The two paths alternate, each repetition runs
both, and the medians are compared. Writes bench/results/attack_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CIFAR_TEST = ROOT.parent / "shared" / "data" / "cifar10" / "test"


def load_model():
    import pyautoattack
    from pyautoattack.examples.resnet import ResNet18

    model = ResNet18()
    state = torch.load(Path(pyautoattack.__file__).parent / "examples" / "model_test.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def make_datamodule(n: int, batch: int):
    from torch.utils.data import DataLoader, TensorDataset

    if CIFAR_TEST.is_dir():
        from clipure_lit.config.schema import DataCfg, SubsetMode
        from clipure_lit.data.datamodule import ZeroShotDataModule

        dm = ZeroShotDataModule(DataCfg(name="image_folder", root=str(CIFAR_TEST), num_samples=n, subset=SubsetMode.random,
                                        batch_size=batch, download=False))
        dm.setup()
        # Decode once so that both paths iterate identical in-memory tensors (JPEG decoding is not what we measure).
        items = [dm.test_set[i] for i in range(len(dm.test_set))]
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([it[1] for it in items])
        ids = torch.tensor([it[2] for it in items])
        source = "cifar10 test JPEGs"
    else:
        x, y, ids = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,)), torch.arange(n)
        source = "random images (CIFAR-10 JPEGs not found)"
    return DataLoader(TensorDataset(x, y, ids), batch_size=batch, shuffle=False), source


def framework_once(model, loader, spec, checks: bool) -> tuple[float, float]:
    import pytorch_lightning as pl

    from clipure_lit.attacks.adapters import classifier_from_model
    from clipure_lit.callbacks.robust_eval import RobustEvalCallback
    from clipure_lit.models.lit_module import ZeroShotLitModule

    start = time.perf_counter()
    module = ZeroShotLitModule(classifier_from_model(model))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n-iter", type=int, default=5)
    parser.add_argument("--eps", type=float, default=1.0, help="Linf radius in units of 1/255")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attack_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from clipure_lit.attacks.presets import attack_config, resolve_attacks

    entry = {"n_restarts": 1, "n_target_classes": 3}
    (spec,) = resolve_attacks(attack_config(run=["aa_clipure"], eps=args.eps, n_iter=args.n_iter, entries={"aa_clipure": entry}))
    model = load_model()
    loader, source = make_datamodule(args.images, args.batch)
    framework_once(model, loader, spec, checks=False)  # warm-up (imports, first Trainer)
    plain_once(model, loader, args.eps / 255, args.n_iter, args.batch)

    runs = {"plain": [], "framework": [], "framework_with_checks": []}
    accs = {k: set() for k in runs}
    for rep in range(args.reps):
        for name in runs:
            if name == "plain":
                seconds, acc = plain_once(model, loader, args.eps / 255, args.n_iter, args.batch)
            else:
                seconds, acc = framework_once(model, loader, spec, checks=name.endswith("checks"))
            runs[name].append(seconds)
            accs[name].add(acc)
            print(f"rep {rep + 1}/{args.reps} {name:<22} {seconds:7.2f} s  robust acc {acc:.4f}", flush=True)
    median = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python bench/attack_overhead.py " + " ".join(sys.argv[1:]),
        "model": "pyautoattack examples ResNet-18 (CIFAR-10)", "data": source, "images": args.images, "batch": args.batch,
        "attack": spec.describe(), "threads": args.threads, "reps": args.reps, "seconds": runs, "median_s": median,
        "ratio_framework_over_plain": median["framework"] / median["plain"],
        "ratio_framework_with_checks_over_plain": median["framework_with_checks"] / median["plain"],
        "robust_acc": {k: sorted(v) for k, v in accs.items()},
        "same_robust_acc": len(set().union(*accs.values())) == 1,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"median plain {median['plain']:.2f} s, framework {median['framework']:.2f} s "
          f"(ratio {result['ratio_framework_over_plain']:.3f}), framework + masking checks {median['framework_with_checks']:.2f} s "
          f"(ratio {result['ratio_framework_with_checks_over_plain']:.3f}); same robust accuracy: {result['same_robust_acc']}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
