"""Cost of CLIPure purification relative to one plain CLIP image forward (a measurement script, not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/purification_overhead.py [--batch 32] [--reps 5] [--threads 2]

For each model (ViT-B-32 with random weights, and the tiny test CLIP), in one process, on the same inputs:

* ``fwd``: clean evaluation, under ``no_grad`` (as in the test loop): plain CLIP vs CLIP + purifier;
* ``attack``: one attack step, logits + CE + gradient w.r.t. the pixels: plain vs purified (released / full).

Cases are timed round-robin (so machine-load drift hits them alike), the median of ``--reps`` repetitions after
one warm-up is reported as a ratio to the plain forward of the same model and batch. ``latent/*`` cases time the
purifier alone on precomputed embeddings; ``1 + latent/fwd`` is then the purified forward's cost in units of the
plain forward without the encoder's run-to-run noise (which, on a shared CPU, exceeds a cheap purifier's cost). Diff priors: a tiny one and one with the
released architecture (depth 24, 32 heads of 64, 256 null text tokens) at the model's embedding dim. The released
size is also timed without the constant-prefix cache (``prior_cache.py``), at ``--uncached-batch`` (released
evaluation batch: 2), once, with its own plain baseline: it takes minutes per purification on a CPU.
Writes ``bench/results/purification_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # small ops crawl when OpenMP threads spin on shared cores
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from clipure_lit.clip.backbone import load_backbone  # noqa: E402
from clipure_lit.config.schema import ClipCfg, DiffPriorCfg, GradMode  # noqa: E402
from clipure_lit.purifiers.ascent import AscentSettings  # noqa: E402
from clipure_lit.purifiers.clipure_cos import ClipureCos  # noqa: E402
from clipure_lit.purifiers.clipure_diff import ClipureDiff  # noqa: E402
from clipure_lit.purifiers.prior import build_prior  # noqa: E402

MODELS = {
    "ViT-B-32": dict(clip=ClipCfg(arch="ViT-B-32", pretrained=None), size=224),
    "tiny": dict(clip=ClipCfg(arch="Tiny-ViT-32px", pretrained=None, model_config=str(REPO / "conf/model_configs/Tiny-ViT-32px.json")),
                 size=32),
}
TINY_PRIOR = dict(depth=1, heads=2, dim_head=16, max_text_len=1)
RELEASED_PRIOR = dict(depth=24, heads=32, dim_head=64, max_text_len=256)  # DiffPriorCfg defaults, at the model's dim


class UncachedDiff(ClipureDiff):
    """CLIPure-Diff through ``net.forward`` on all 260 tokens (no constant-prefix cache), for comparison."""

    def predict(self, x_t, t):
        return self.prior.net(x_t, t, text_embed=torch.zeros_like(x_t), text_cond_drop_prob=1.0, image_cond_drop_prob=0.0)


def make_cases(backbone, dim, x, y, head, priors, diff_modes, with_cos=True, diff_cls=ClipureDiff):
    """name -> zero-argument callable, for one model and batch."""
    g = torch.Generator().manual_seed(0)
    anchor = F.normalize(torch.randn(dim, generator=g), dim=0)
    latents = {"plain": lambda z: z}
    if with_cos:
        latents.update({"cos_as_released": ClipureCos(anchor, AscentSettings()),
                        "cos_full": ClipureCos(anchor, AscentSettings(grad_mode=GradMode.full))})
    for name, prior in priors.items():
        for mode in diff_modes:
            diff = diff_cls(prior, AscentSettings(grad_mode=mode))
            latents[f"diff_{name}_{mode.value}"] = (lambda d: lambda z: d(z, generator=torch.Generator().manual_seed(0)))(diff)
    with torch.no_grad():
        z = backbone.encode_image(x)  # [B, D], for the purifier-only cases

    def fwd(latent):
        def run():
            with torch.no_grad():
                return head(latent(backbone.encode_image(x)))
        return run

    def attack(latent):
        def run():
            xx = x.clone().requires_grad_(True)
            loss = F.cross_entropy(head(latent(backbone.encode_image(xx))), y)
            return torch.autograd.grad(loss, xx)[0]
        return run

    def alone(latent):
        def run():
            with torch.no_grad():
                return latent(z)
        return run

    cases = {}
    for name, latent in latents.items():
        if name == "plain" or not name.endswith("_full"):  # in no_grad, full == as_released: time it once
            cases[f"fwd/{name.replace('_as_released', '')}"] = fwd(latent)
            if name != "plain":
                cases[f"latent/{name.replace('_as_released', '')}"] = alone(latent)
        cases[f"attack/{name}"] = attack(latent)
    return cases


def time_cases(cases, reps, warmup=True):
    for fn in cases.values() if warmup else ():
        fn()
    times = {name: [] for name in cases}
    order, shuffle = list(cases), random.Random(0).shuffle
    for _ in range(reps):
        shuffle(order)  # no case always runs right after the same (e.g. a memory-hungry) one
        for name in order:
            fn = cases[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def bench_model(model, batch, reps, prior_sizes, log, diff_modes=tuple(GradMode), warmup=True, **case_kw):
    spec = MODELS[model]
    backbone, _ = load_backbone(OmegaConf.structured(spec["clip"]))
    dim = backbone.embed_dim
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, spec["size"], spec["size"], generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    classes = F.normalize(torch.randn(dim, 10, generator=g), dim=0)
    priors = {name: build_prior(OmegaConf.structured(DiffPriorCfg(dim=dim, **kw))) for name, kw in prior_sizes.items()}
    log(f"{model}: batch {batch}, dim {dim}, priors {list(priors)}, {reps} reps ...")
    times = time_cases(make_cases(backbone, dim, x, y, lambda z: 100.0 * z @ classes, priors, diff_modes, **case_kw), reps,
                       warmup)
    plain_fwd, plain_attack = statistics.median(times["fwd/plain"]), statistics.median(times["attack/plain"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"model": model, "batch": batch, "case": name, "median_s": med, "times_s": ts,
                     "ratio_to_plain_fwd": med / plain_fwd, "reps": len(ts),
                     "ratio_to_plain_attack": med / plain_attack if name.startswith("attack/") else None,
                     # for latent/* cases: the purified forward's cost if the encoder cost exactly what plain did
                     "overhead_ratio": 1.0 + med / plain_fwd if name.startswith("latent/") else None})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--models", default="ViT-B-32,tiny")
    ap.add_argument("--released-prior", action=argparse.BooleanOptionalAction, default=True,
                    help="also time a prior of the released architecture (ViT-B-32 only)")
    ap.add_argument("--uncached-batch", type=int, default=2, help="batch of the uncached released-size run (0: skip)")
    ap.add_argument("--out", default=str(REPO / "bench/results/purification_overhead.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    rows = []
    models = args.models.split(",")
    for model in models:
        priors = {"tiny_prior": TINY_PRIOR}
        if model == "ViT-B-32" and args.released_prior:
            priors["released_size_prior"] = RELEASED_PRIOR
        rows += bench_model(model, args.batch, args.reps, priors, log)
    if args.uncached_batch and "ViT-B-32" in models:
        # One repetition, no warm-up, no double backward: each call takes minutes.
        rows += bench_model("ViT-B-32", args.uncached_batch, 1, {"released_size_prior_uncached": RELEASED_PRIOR}, log,
                            diff_modes=(GradMode.as_released,), warmup=False, with_cos=False, diff_cls=UncachedDiff)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
           "processor": platform.processor(), "cpu_count": os.cpu_count(), "args": {**vars(args), "out": os.path.relpath(args.out, REPO)}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"{'model':<9} {'batch':>5}  {'case':<48} {'median s':>9} {'/plain fwd':>10} {'/plain attack':>13} "
          f"{'1+latent/fwd':>12}")
    for r in rows:
        attack = f"{r['ratio_to_plain_attack']:.3f}" if r["ratio_to_plain_attack"] is not None else "-"
        overhead = f"{r['overhead_ratio']:.4f}" if r["overhead_ratio"] is not None else "-"
        print(f"{r['model']:<9} {r['batch']:>5}  {r['case']:<48} {r['median_s']:>9.4f} {r['ratio_to_plain_fwd']:>10.3f} "
              f"{attack:>13} {overhead:>12}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
