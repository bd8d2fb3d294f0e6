"""Build the committed CIFAR-10 evaluation sample: a class-balanced, seeded subset of the CIFAR-10 test images,
stored as one compressed array file (so a fresh clone can evaluate offline).

    python scripts/make_cifar10_sample.py --source ../shared/data/cifar10/test --per-class 50 --seed 0 \
        --out clipure_lit/assets/cifar10_test_sample.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="class-per-folder CIFAR-10 test tree")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    classes = sorted(p.name for p in Path(args.source).iterdir() if p.is_dir())
    generator = torch.Generator().manual_seed(args.seed)
    chosen = []  # (class index, file)
    for label, name in enumerate(classes):
        files = sorted((Path(args.source) / name).glob("*.jpg"))
        order = torch.randperm(len(files), generator=generator)[: args.per_class].tolist()
        chosen.append([(label, files[i]) for i in sorted(order)])
    # Interleave classes so any prefix of the sample stays class-balanced.
    interleaved = [item for group in zip(*chosen) for item in group]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for _, f in interleaved])  # uint8 [N, 32, 32, 3]
    labels = np.array([label for label, _ in interleaved], dtype=np.int64)
    sources = np.array([f"{f.parent.name}/{f.name}" for _, f in interleaved])
    np.savez_compressed(args.out, images=images, labels=labels, classnames=np.array(classes), sources=sources)
    print(f"wrote {args.out}: {len(labels)} images, {len(classes)} classes")


if __name__ == "__main__":
    main()
