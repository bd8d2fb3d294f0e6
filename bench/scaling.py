"""How purification and attack cost grow with the number of steps and the batch size, and how the peak memory of
a full-gradient attack step grows with the number of steps, with and without step checkpointing (not a test).

    .venv/bin/python bench/scaling.py [--profile quick|full]

Model: the CIFAR-10 CLIP that ships in ``checkpoints/`` (32x32 inputs). Time (interleaved, medians; see
``bench/harness.py``), each figure a ratio to plain CLIP at the same batch, measured in the same loop:

* steps: the CLIPure-Cos and CLIPure-Diff (shipped prior) forward, as ``1 + purifier alone / plain forward`` (the
  purifier timed on precomputed embeddings: the encoder's run-to-run noise exceeds a cheap purifier's cost), and one
  attack gradient through them in ``full`` mode, end to end, for T in ``steps``;
* batch: the plain forward and the Cos and Diff purifiers alone at each batch size, reported as defended forward /
  plain forward (``1 + purifier / plain``) and as time per sample relative to batch 1.

Memory: the peak resident set (Linux ``VmHWM``) of one attack step (forward + gradient w.r.t. the pixels) minus the
resident set just before it, per image, through (a) CLIPure-Diff in ``full`` mode with a prior of the released
architecture (depth 24, 32 heads of 64, 256 null text tokens) at the small CLIP's dim and (b) DiffPure with a
small diffusers UNet, as T grows, with ``gradient_checkpointing`` off and on. The cases run in a subprocess with
glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB, so freed tensors go back to the OS at once and the peak counts
live memory; freed heap pages are trimmed (``malloc_trim``) and ``VmHWM`` is reset before each case. Batch 2: the
released evaluation batch size.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # small ops crawl when OpenMP threads spin on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.builders import Defences  # noqa: E402
from bench.harness import REPO, Headline, log, median, reset_peak_rss, status_kb, time_round_robin, write_result  # noqa: E402

LIBC = ctypes.CDLL("libc.so.6")
PROFILES = {
    "quick": dict(steps=(1, 2, 5, 10, 20, 50), steps_batch=16, batches=(1, 4, 16, 64), reps=5,
                  memory_steps=(2, 10, 20), memory_batch=2),
    "full": dict(steps=(1, 2, 5, 10, 20, 50), steps_batch=32, batches=(1, 2, 4, 8, 16, 32, 64, 128), reps=7,
                 memory_steps=(2, 5, 10, 20, 50), memory_batch=2),
}
BASE = ["clip=cifar10_small", "prompts=cifar10", "prompts.blank_prompt=a photo of a ."]
DEFENCES = {"cos": ("clipure_cos", ["purifier=clipure_cos", "purifier.clipure_cos.batch_size=null"]),
            "diff": ("clipure_diff", ["purifier=clipure_diff_cifar10_small", "purifier.clipure_diff.batch_size=null"])}
RELEASED_PRIOR_AT_128 = ["purifier=clipure_diff", "purifier.clipure_diff.batch_size=null", "purifier.clipure_diff.prior.dim=128",
                         "purifier.clipure_diff.prior.checkpoint=null"]
TINY_UNET = dict(sample_size=32, block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def build(extra: list[str], shared: Defences | None = None) -> tuple:
    """``(classifier of BASE + extra, the Defences family)``; pass the family back to share its backbone and head."""
    shared = shared or Defences(BASE)
    return shared.build(extra), shared


def inputs(batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)


def forward_case(clf, x):
    def run():
        with torch.no_grad():
            return clf(x)
    return run


def purifier_alone_case(latent, z):
    def run():
        with torch.no_grad():
            return latent(z, generator=torch.Generator().manual_seed(0))
    return run


def attack_case(clf, x, y):
    def run():
        xx = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(clf(xx), y), xx)[0]
    return run


def full_view(clf):
    from clipure_lit.attacks.gradient_modes import make_view
    from clipure_lit.attacks.config import AttackGradMode, AttackPrecision

    return make_view(clf, AttackGradMode.full, AttackPrecision.fp32)


def bench_steps(profile: dict) -> list[dict]:
    plain, shared = build(["purifier=none"])
    x, y = inputs(profile["steps_batch"])
    with torch.no_grad():
        z = plain.backbone.encode_image(x)  # [B, D]
    cases = {"fwd/plain": forward_case(plain, x), "attack/plain": attack_case(plain, x, y)}
    for name, (purifier, args) in DEFENCES.items():
        for steps in profile["steps"]:
            clf, _ = build([*args, f"purifier.{purifier}.num_steps={steps}"], shared)
            cases[f"fwd/{name}/T{steps}"] = purifier_alone_case(clf.latent, z)
            cases[f"attack/{name}@full/T{steps}"] = attack_case(full_view(clf), x, y)
    log(f"scaling in steps: batch {profile['steps_batch']}, {len(cases)} cases x {profile['reps']} reps ...")
    times = time_round_robin(cases, profile["reps"])
    fwd, att = median(times["fwd/plain"]), median(times["attack/plain"])
    rows = []
    for case, ts in times.items():
        if case.count("/") != 2:
            continue
        kind, name, steps = case.split("/")
        # fwd: 1 + purifier alone / plain forward (the encoder's run-to-run noise exceeds a cheap purifier's cost).
        ratio = 1.0 + median(ts) / fwd if kind == "fwd" else median(ts) / att
        rows.append({"kind": kind, "defence": name, "steps": int(steps[1:]), "batch": profile["steps_batch"],
                     "median_s": median(ts), "ratio_to_plain": ratio})
    return rows


def bench_batch(profile: dict) -> list[dict]:
    plain, shared = build(["purifier=none"])
    defended = {name: build(args, shared)[0] for name, (_, args) in DEFENCES.items()}
    rows = []
    per_sample_1 = {}
    for batch in profile["batches"]:
        x, _ = inputs(batch)
        with torch.no_grad():
            z = plain.backbone.encode_image(x)  # [B, D]
        cases = {"plain": forward_case(plain, x), **{n: purifier_alone_case(c.latent, z) for n, c in defended.items()}}
        log(f"scaling in batch size: batch {batch} ...")
        times = time_round_robin(cases, profile["reps"])
        base = median(times["plain"])
        for name, ts in times.items():
            # A defended forward = the plain one + the purifier: 1 + purifier alone / plain (as in the steps sweep).
            total = median(ts) + (base if name != "plain" else 0.0)
            per_sample = total / batch
            per_sample_1.setdefault(name, per_sample)
            rows.append({"defence": name, "batch": batch, "median_s": median(ts), "ratio_to_plain": total / base,
                         "per_sample_s": per_sample, "per_sample_vs_batch1": per_sample / per_sample_1[name]})
    return rows


# ------------------------------------------------------------------------------------------------------- memory
def memory_cases(kind: str, steps: list[int], batch: int) -> list[dict]:
    """Run in the subprocess: one attack step per (T, checkpointing), peak extra resident memory."""
    logging.getLogger("clipure_lit").setLevel(logging.ERROR)  # the random-prior warning, once per case
    x, y = inputs(batch)
    shared = None
    rows = []
    for ckpt in (False, True):
        for t in steps:
            if kind == "clipure_diff":
                clf, shared = build([*RELEASED_PRIOR_AT_128, f"purifier.clipure_diff.num_steps={t}", "purifier.clipure_diff.grad_mode=full",
                                     f"purifier.clipure_diff.gradient_checkpointing={str(ckpt).lower()}"], shared)
            else:
                clf, shared = build(["purifier=none"], shared)
                clf.pixel = diffpure(t, ckpt)
            step = attack_case(full_view(clf), x, y)
            with torch.no_grad():
                clf(x)  # warm-up: kernels, lazily built buffers
            gc.collect()
            LIBC.malloc_trim(0)  # hand freed heap pages of the previous case back to the OS
            before = status_kb("VmRSS")
            reset_peak_rss()
            step()
            peak = status_kb("VmHWM")
            rows.append({"purifier": kind, "steps": t, "checkpointing": ckpt, "batch": batch,
                         "peak_extra_mb": (peak - before) / 1024, "peak_extra_mb_per_image": (peak - before) / 1024 / batch})
            del clf, step
    return rows


def diffpure(steps: int, checkpointing: bool):
    from diffusers import UNet2DModel
    from omegaconf import OmegaConf

    from clipure_lit.purifiers.pixel_diffusion import DiffPureCfg
    from clipure_lit.purifiers.pixel_diffusion import DiffPurePurifier, build_scheduler

    cfg = OmegaConf.structured(DiffPureCfg(num_steps=steps, gradient_checkpointing=checkpointing))  # t* = 0.1: 100 levels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(**TINY_UNET).eval().requires_grad_(False)
    scheduler, timesteps = build_scheduler(cfg, None)
    return DiffPurePurifier(unet, scheduler, timesteps, sampler=cfg.sampler, gradient_checkpointing=checkpointing,
                            source="tiny_unet")


def bench_memory(profile: dict) -> list[dict]:
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for kind in ("clipure_diff", "diffpure"):
        log(f"memory of a full-gradient attack step through {kind}: T in {profile['memory_steps']} ...")
        spec = json.dumps([kind, list(profile["memory_steps"]), profile["memory_batch"]])
        done = subprocess.run([sys.executable, __file__, "--memory-cases", spec], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"memory subprocess for {kind} failed:\n{done.stderr[-3000:]}")
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def headlines(steps_rows, batch_rows, memory_rows, profile) -> list[Headline]:
    out = []
    lo, hi = min(profile["steps"]), max(profile["steps"])
    at = {(r["kind"], r["defence"], r["steps"]): r["ratio_to_plain"] for r in steps_rows}
    for kind, label in (("fwd", "forward"), ("attack", "attack gradient (full)")):
        for name, pretty in (("cos", "CLIPure-Cos"), ("diff", "CLIPure-Diff")):
            key = f"{name}@full" if kind == "attack" else name
            a, b = at.get((kind, key, lo)), at.get((kind, key, hi))
            if a is not None and b is not None:
                out.append(Headline("scaling", f"{pretty} {label} / plain, T={lo} -> T={hi} (small CLIP)", b,
                                    why=f"{a:.2f}x at T={lo}; grows linearly in T"))
    batches = sorted({r["batch"] for r in batch_rows})
    for name in ("cos", "diff"):
        rs = {r["batch"]: r["ratio_to_plain"] for r in batch_rows if r["defence"] == name}
        if rs:
            out.append(Headline("scaling", f"{'CLIPure-Cos' if name == 'cos' else 'CLIPure-Diff'} forward / plain at batch "
                                           f"{batches[-1]} (small CLIP)", rs[batches[-1]],
                                why=f"{rs[batches[0]]:.2f}x at batch {batches[0]}"))
    for kind, label in (("clipure_diff", "CLIPure-Diff (released prior arch)"), ("diffpure", "DiffPure (small UNet)")):
        mem = {(r["steps"], r["checkpointing"]): r["peak_extra_mb"] for r in memory_rows if r["purifier"] == kind}
        steps = sorted({s for s, _ in mem})
        if len(steps) >= 2:
            s0, s1 = steps[0], steps[-1]
            grow_on, grow_off = mem[s1, True] - mem[s0, True], mem[s1, False] - mem[s0, False]
            # Flat in T <=> the memory added per step with checkpointing is a small fraction of what it is without.
            out.append(Headline("memory", f"{label} attack-step peak memory added per step, checkpointing on / off "
                                          f"(T={s0} -> {s1}, batch {profile['memory_batch']})",
                                grow_on / grow_off, goal=0.10,
                                why=f"on: {mem[s0, True]:.0f} -> {mem[s1, True]:.0f} MB; off: {mem[s0, False]:.0f} -> "
                                    f"{mem[s1, False]:.0f} MB"))
    return out


def run(profile_name: str = "quick") -> dict:
    profile = PROFILES[profile_name]
    logging.getLogger("clipure_lit").setLevel(logging.ERROR)  # random-prior and batch-size warnings are expected
    steps_rows = bench_steps(profile)
    batch_rows = bench_batch(profile)
    memory_rows = bench_memory(profile)
    return {"profile": profile_name, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in profile.items()},
            "steps": steps_rows, "batch": batch_rows, "memory": memory_rows,
            "headline": headlines(steps_rows, batch_rows, memory_rows, profile)}


def print_tables(payload: dict) -> None:
    print(f"{'kind':<7} {'defence':<10} {'T':>3} {'batch':>5} {'median s':>9} {'/plain':>8}")
    for r in payload["steps"]:
        print(f"{r['kind']:<7} {r['defence']:<10} {r['steps']:>3} {r['batch']:>5} {r['median_s']:>9.4f} {r['ratio_to_plain']:>8.2f}")
    print(f"\n{'defence':<8} {'batch':>5} {'median s':>9} {'/plain':>7} {'s/sample vs batch 1':>20}   (median s: purifier alone for cos, diff)")
    for r in payload["batch"]:
        print(f"{r['defence']:<8} {r['batch']:>5} {r['median_s']:>9.4f} {r['ratio_to_plain']:>7.2f} {r['per_sample_vs_batch1']:>20.3f}")
    print(f"\n{'purifier':<13} {'T':>3} {'checkpointing':>13} {'batch':>5} {'peak MB':>8} {'MB/image':>9}")
    for r in payload["memory"]:
        print(f"{r['purifier']:<13} {r['steps']:>3} {str(r['checkpointing']):>13} {r['batch']:>5} {r['peak_extra_mb']:>8.1f} "
              f"{r['peak_extra_mb_per_image']:>9.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/scaling.json")
    ap.add_argument("--memory-cases", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_cases:
        kind, steps, batch = json.loads(args.memory_cases)
        print(json.dumps(memory_cases(kind, steps, batch)))
        return
    payload = run(args.profile)
    path = write_result("scaling", payload, args.out)
    print_tables(payload)
    print(f"written: {os.path.relpath(path, REPO)}")


if __name__ == "__main__":
    main()
