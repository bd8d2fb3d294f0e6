"""Cost of the pixel purifiers relative to one plain CLIP forward, and DiffPure's memory per image (CPU).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/pixel_purifier_cost.py [--batch 8] [--reps 3] [--threads 1]

Time (one process, same inputs, cases timed round-robin in shuffled order after one warm-up, median of ``--reps``):

* ``fwd/<purifier>``: the defended classifier's clean forward (``no_grad``, as in the test loop);
* ``attack/<purifier>``: one attack step, logits + CE + gradient w.r.t. the pixels (for JPEG: through BPDA).

Each median is divided by the plain CLIP forward of the same model and batch. CLIP models (random weights):
``tiny`` (the test CLIP, ``Tiny-ViT-32px``) and ``small`` (the ``ViT-C10-S4-32px`` architecture of the shipped
CIFAR-10 CLIP). UNets (random weights): ``tiny_unet`` (the test UNet, 0.7 M parameters) and ``ddpm_c10_arch``
(the architecture of ``google/ddpm-cifar10-32``, 35.7 M parameters). DiffPure's default chain (100 steps) for
the large UNet is extrapolated linearly from the measured 1- and 10-step chains (marked ``extrapolated``).

Memory (one subprocess per case, so allocator caches do not carry over): the peak resident set (Linux
``VmHWM``, reset after a warm-up) of one DiffPure attack step minus the resident set before it, per image, as
the number of reverse steps grows, with and without step-level gradient checkpointing; once with glibc's default
allocator settings and once with a fixed 128 KiB mmap threshold, which measures live tensors (``ALLOCATORS``).
Writes ``bench/results/pixel_purifier_cost.json`` and prints both tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # small ops crawl when OpenMP threads spin on shared cores
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

CLIPS = {"tiny": ("Tiny-ViT-32px", "conf/model_configs/Tiny-ViT-32px.json"),
         "small": ("ViT-C10-S4-32px", "conf/model_configs/ViT-C10-S4-32px.json")}
UNETS = {
    "tiny_unet": {},  # DiffPureUNetCfg defaults
    # google/ddpm-cifar10-32's config.json (diffusers UNet2DModel).
    "ddpm_c10_arch": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2, downsample_padding=0,
                          down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                          flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, attention_head_dim=None),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_diffpure(unet_name: str, num_steps: int, checkpointing: bool = True):
    from diffusers import UNet2DModel

    from clipure_lit.config.schema import DiffPureCfg
    from clipure_lit.purifiers.pixel_diffusion import DiffPurePurifier, build_scheduler

    cfg = OmegaConf.structured(DiffPureCfg(num_steps=num_steps, gradient_checkpointing=checkpointing))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        kw = UNETS[unet_name] or dict(block_out_channels=(32, 64), layers_per_block=1,
                                      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                      up_block_types=("AttnUpBlock2D", "UpBlock2D"))
        unet = UNet2DModel(sample_size=32, **kw).eval().requires_grad_(False)
    scheduler, timesteps = build_scheduler(cfg, None)
    return DiffPurePurifier(unet, scheduler, timesteps, sampler=cfg.sampler, gradient_checkpointing=checkpointing,
                            source=unet_name)


def make_classifier(clip: str, pixel=None):
    from clipure_lit.clip.backbone import load_backbone
    from clipure_lit.config.schema import ClipCfg
    from clipure_lit.models.classifier import PurifiedZeroShotClassifier

    arch, config = CLIPS[clip]
    backbone, _ = load_backbone(OmegaConf.structured(ClipCfg(arch=arch, model_config=str(REPO / config), pretrained=None)))
    classes = F.normalize(torch.randn(backbone.embed_dim, 10, generator=torch.Generator().manual_seed(2)), dim=0)
    return PurifiedZeroShotClassifier(backbone, lambda z: 100.0 * z @ classes, pixel=pixel).eval()


def pixel_purifiers(backbone, chains):
    """name -> (purifier, attack-side gradient mode)."""
    from clipure_lit.config.schema import GradMode, NormScope
    from clipure_lit.purifiers.ascent import AscentSettings
    from clipure_lit.purifiers.pixel_clipure import ClipurePixel
    from clipure_lit.purifiers.pixel_transforms import BitDepthPurifier, GaussianNoisePurifier, JpegPurifier

    anchor = torch.randn(backbone.embed_dim, generator=torch.Generator().manual_seed(3))
    out = {"jpeg": (JpegPurifier(75), "bpda_identity"), "bit_depth": (BitDepthPurifier(5), "bpda_identity"),
           "gaussian_noise": (GaussianNoisePurifier(0.05), "purifier")}
    for mode in (GradMode.full, GradMode.as_released):
        settings = AscentSettings(num_steps=10, step_size=0.25, grad_mode=mode, norm_scope=NormScope.sample)
        out[f"clipure_pixel_{mode.value}"] = (ClipurePixel(backbone, anchor, settings, eps=8 / 255), "purifier")
    for unet_name, steps in chains:
        out[f"diffpure_{unet_name}_K{steps}"] = (make_diffpure(unet_name, steps), "purifier")
    return out


def make_cases(clip: str, batch: int, chains, attack_skip: set[str]):
    from clipure_lit.attacks.gradient_modes import make_view
    from clipure_lit.config.schema import AttackGradMode, AttackPrecision

    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    plain = make_classifier(clip)
    cases, sizes = {}, {}

    def fwd(model):
        def run():
            with torch.no_grad():
                return model(x)
        return run

    def attack(model):
        def run():
            xx = x.clone().requires_grad_(True)
            return torch.autograd.grad(F.cross_entropy(model(xx), y), xx)[0]
        return run

    cases["fwd/plain"], cases["attack/plain"] = fwd(plain), attack(plain)
    for name, (purifier, mode) in pixel_purifiers(plain.backbone, chains).items():
        from clipure_lit.models.classifier import PurifiedZeroShotClassifier

        defended = PurifiedZeroShotClassifier(plain.backbone, plain.head, pixel=purifier).eval()
        if hasattr(purifier, "unet"):
            sizes[name] = sum(p.numel() for p in purifier.unet.parameters())
        if not name.endswith("_as_released"):  # no_grad forward: both modes compute the same thing
            cases[f"fwd/{name.replace('_full', '')}"] = fwd(defended)
        if name not in attack_skip:
            view = make_view(defended, AttackGradMode(mode), AttackPrecision.fp32)
            cases[f"attack/{name}" + (f"@{mode}" if mode != "purifier" else "")] = attack(view)
    return cases, sizes


def time_cases(cases, reps):
    for fn in cases.values():
        fn()  # warm-up
    times = {name: [] for name in cases}
    order = list(cases)
    for _ in range(reps):
        random.Random(len(times[order[0]])).shuffle(order)
        for name in order:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    return times


def bench_time(clip, batch, reps, chains, attack_skip):
    cases, sizes = make_cases(clip, batch, chains, attack_skip)
    log(f"{clip}: batch {batch}, {len(cases)} cases, {reps} reps ...")
    times = time_cases(cases, reps)
    plain = statistics.median(times["fwd/plain"])
    rows = [{"clip": clip, "batch": batch, "case": n, "median_s": statistics.median(t), "per_image_ms": 1e3 * statistics.median(t) / batch,
             "ratio_to_plain_fwd": statistics.median(t) / plain, "times_s": t} for n, t in times.items()]
    big = {r["case"]: r["median_s"] for r in rows if "ddpm_c10_arch" in r["case"] and r["case"].startswith("fwd/")}
    k1, k10 = big.get("fwd/diffpure_ddpm_c10_arch_K1"), big.get("fwd/diffpure_ddpm_c10_arch_K10")
    if k1 is not None and k10 is not None:
        per_step = (k10 - k1) / 9.0
        est = k1 + 99 * per_step
        rows.append({"clip": clip, "batch": batch, "case": "fwd/diffpure_ddpm_c10_arch_K100 (extrapolated)", "median_s": est,
                     "per_image_ms": 1e3 * est / batch, "ratio_to_plain_fwd": est / plain, "times_s": []})
    return rows, sizes


# ------------------------------------------------------------------------------------------------------- memory
def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def memory_case(unet: str, steps: int, checkpointing: bool, batch: int) -> dict:
    """Run in a subprocess: peak extra resident memory of one DiffPure attack step (forward + backward)."""
    purifier = make_diffpure(unet, steps, checkpointing)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def step():
        xx = x.clone().requires_grad_(True)
        return torch.autograd.grad((purifier(xx, generator=torch.Generator().manual_seed(2)) * w).sum(), xx)[0]

    with torch.no_grad():
        purifier(x, generator=torch.Generator().manual_seed(2))  # warm-up of kernels and allocator
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM) to the current one
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    return {"unet": unet, "steps": steps, "checkpointing": checkpointing, "batch": batch, "seconds": seconds,
            "peak_extra_mb": (peak - before) / 1024, "peak_extra_mb_per_image": (peak - before) / 1024 / batch}


# glibc keeps freed heap memory for reuse (its mmap threshold grows with use), so the resident set also counts
# fragmented free memory. A fixed 128 KiB threshold returns every large freed block to the OS at once: the peak
# then measures live tensors (slower, so its timings are not comparable).
ALLOCATORS = {"glibc_default": {}, "live_mmap_128k": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def bench_memory(cases, threads):
    rows = []
    for allocator, env in ALLOCATORS.items():
        for unet, steps, ckpt, batch in cases:
            log(f"memory ({allocator}): {unet} K={steps} checkpointing={ckpt} batch={batch} ...")
            cmd = [sys.executable, __file__, "--memory-case", json.dumps([unet, steps, ckpt, batch]), "--threads", str(threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **env})
            rows.append({"allocator": allocator, **json.loads(done.stdout.strip().splitlines()[-1])})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clips", default="tiny,small")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(REPO / "bench/results/pixel_purifier_cost.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_case:
        print(json.dumps(memory_case(*json.loads(args.memory_case))))
        return
    chains = [("tiny_unet", 2), ("tiny_unet", 10), ("ddpm_c10_arch", 1), ("ddpm_c10_arch", 10)]
    rows, sizes = [], {}
    for clip in args.clips.split(","):
        r, s = bench_time(clip, args.batch, args.reps, chains, attack_skip={"diffpure_ddpm_c10_arch_K10"})
        rows += r
        sizes.update(s)
    memory = []
    if args.memory:
        memory = bench_memory([(u, k, c, args.batch) for u, ks in (("tiny_unet", (2, 10, 50)), ("ddpm_c10_arch", (2, 10)))
                               for k in ks for c in (False, True)], args.threads)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "args": {**vars(args), "out": os.path.relpath(args.out, REPO)}, "unet_params": sizes, "rows": rows, "memory": memory}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"{'clip':<6} {'batch':>5}  {'case':<58} {'median s':>9} {'ms/image':>9} {'/plain fwd':>10}")
    for r in rows:
        print(f"{r['clip']:<6} {r['batch']:>5}  {r['case']:<58} {r['median_s']:>9.4f} {r['per_image_ms']:>9.2f} "
              f"{r['ratio_to_plain_fwd']:>10.2f}")
    if memory:
        print(f"\n{'allocator':<15} {'unet':<14} {'steps':>5} {'checkpointing':>13} {'batch':>5} {'attack step s':>13} "
              f"{'peak MB':>8} {'MB/image':>9}")
        for m in memory:
            print(f"{m['allocator']:<15} {m['unet']:<14} {m['steps']:>5} {str(m['checkpointing']):>13} {m['batch']:>5} "
                  f"{m['seconds']:>13.2f} {m['peak_extra_mb']:>8.1f} {m['peak_extra_mb_per_image']:>9.2f}")
    print(f"unet parameters: {sizes}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
