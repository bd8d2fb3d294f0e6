"""Cost of every purifier relative to one plain CLIP forward, and of one attack step through CLIPure (not a test).

    .venv/bin/python bench/purification_overhead.py [--profile quick|full] [--models ViT-B-32,small]

Models: ``ViT-B-32`` (open_clip architecture, random weights: timing only, 224x224 inputs) and ``small`` (the
CIFAR-10 CLIP that ships in ``checkpoints/``, 32x32 inputs, with its shipped diffusion prior). Every defended
classifier is built from the same configs ``eval.py`` uses (``conf/purifier/*.yaml``), around one shared backbone
and head. Per model and batch, in one process, interleaved (``bench/harness.py``):

* ``fwd/<purifier>``: the clean evaluation forward, logits under ``no_grad`` as in the test loop;
* ``latent/<purifier>``: the latent purifier alone on precomputed embeddings. ``1 + latent / fwd/plain`` is the
  purified forward's cost without the image encoder's run-to-run noise, which on a shared CPU exceeds the cost of a
  cheap purifier (the headline for CLIPure-Cos);
* ``attack/<case>``: one attack step, logits + cross-entropy + gradient w.r.t. the pixels, as a ratio to the same
  step on plain CLIP (``@full`` = exact gradient through every step; Diff with the prior config's step checkpointing,
  and once with it on and off).

CLIPure-Diff at ViT-B-32 uses a prior of the released architecture (depth 24, 32 heads of 64, 256 null text tokens)
at dim 512 with random weights; in the quick profile only the purifier alone is timed there (its end-to-end forward
and attack step cost ~6x and ~12x a plain forward each repetition). DiffPure runs only at 32x32 (its UNets are CIFAR-10's): ``small`` times the
``google/ddpm-cifar10-32`` architecture (random weights) at two chain lengths and extrapolates linearly to the
default chain (100 reverse steps, marked ``extrapolated``). DiffPure, and pixel CLIPure at ViT-B-32 (~10 forward +
backward passes per call), are timed once, without warm-up, after the other cases, against a plain forward timed in
the same loop (the ``slow`` group).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # small ops crawl when OpenMP threads spin on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.builders import Defences  # noqa: E402
from bench.harness import (REPO, Headline, goals_decided, log, median, median_interval, paired_ratios,  # noqa: E402
                           time_round_robin, write_result)

PROFILES = {
    # quick: what `make bench` runs (the whole suite in about 12 minutes on 2 cores); full: the larger sizes (ViT-B-32 at batch 32).
    # max_reps / budget_s: ViT-B-32 (the model with goals) repeats until both goals are decided, at most this long.
    "quick": dict(batch={"ViT-B-32": 8, "small": 32}, reps=5, diffpure_steps=(1, 2), vitb32_diff_e2e=False,
                  max_reps=12, budget_s=120),
    "full": dict(batch={"ViT-B-32": 32, "small": 64}, reps=7, diffpure_steps=(1, 10), vitb32_diff_e2e=True,
                 max_reps=20, budget_s=600),
}
GOAL_MODEL = "ViT-B-32"
COS_FWD_GOAL, COS_ATTACK_GOAL = 1.02, 1.05


def cos_fwd_values(times: dict[str, list[float]]) -> list[float]:
    """Per repetition: defended forward / plain forward = 1 + CLIPure-Cos alone / plain forward (the encoder's
    noise cancels; the purifier is the only difference)."""
    return [1.0 + c / p for c, p in zip(times["latent/cos"], times["fwd/plain"])]


def cos_attack_values(times: dict[str, list[float]]) -> list[float]:
    return paired_ratios(times, "attack/cos@full", "attack/plain")
MODEL_ARGS = {
    "ViT-B-32": ["clip.arch=ViT-B-32", "clip.pretrained=null", "clip.model_config=null", "data.image_size=224"],
    "small": ["clip=cifar10_small"],
}
SIZE = {"ViT-B-32": 224, "small": 32}
# A blank anchor from one prompt keeps the random ViT-B-32's text work small; purification cost does not depend on it.
COMMON = ["prompts=cifar10", "prompts.blank_prompt=a photo of a ."]
DDPM_CIFAR10_ARCH = dict(sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2, downsample_padding=0,
                         down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                         flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, attention_head_dim=None)


def purifier_args(model: str, unet_dir: Path) -> dict[str, list[str]]:
    """Defence name -> config overrides, as a user would pass them to eval.py."""
    diff = (["purifier=clipure_diff", "purifier.clipure_diff.prior.dim=512", "purifier.clipure_diff.prior.checkpoint=null"]
            if model == "ViT-B-32" else ["purifier=clipure_diff_cifar10_small"])
    diff.append("purifier.clipure_diff.batch_size=null")  # timing at another batch size than the released 2 is intended here
    out = {"cos": ["purifier=clipure_cos", "purifier.clipure_cos.batch_size=null"], "diff": diff, "jpeg": ["purifier=jpeg"], "bit_depth": ["purifier=bit_depth"],
           "gaussian_noise": ["purifier=gaussian_noise"], "clipure_pixel": ["purifier=clipure_pixel"]}
    if model == "small":
        for flag in ("true", "false"):  # the attack-step cost of step recomputation, whatever the config's default
            out[f"diff_ckpt_{flag}"] = [*diff, f"purifier.clipure_diff.gradient_checkpointing={flag}"]
        for k in PROFILE["diffpure_steps"]:
            out[f"diffpure_K{k}"] = ["purifier=diffpure", f"purifier.diffpure.model={unet_dir}",
                                     f"purifier.diffpure.num_steps={k}", "purifier.diffpure.t_star=0.1"]
    return out


def save_random_ddpm_unet(folder: Path) -> None:
    """A diffusers folder with the google/ddpm-cifar10-32 UNet architecture and random weights (no download)."""
    from diffusers import DDPMScheduler, UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UNet2DModel(**DDPM_CIFAR10_ARCH).save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")


def build_defences(model: str, unet_dir: Path):
    """``(plain classifier, {name: defended classifier})`` sharing one backbone and head."""
    family = Defences([*MODEL_ARGS[model], *COMMON])
    return family.build(["purifier=none"]), {name: family.build(args) for name, args in purifier_args(model, unet_dir).items()}


def make_cases(model: str, plain, defended, batch: int):
    from clipure_lit.attacks.gradient_modes import make_view
    from clipure_lit.attacks.config import AttackGradMode, AttackPrecision

    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, SIZE[model], SIZE[model], generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    with torch.no_grad():
        z = plain.backbone.encode_image(x)  # [B, D]

    def fwd(clf):
        def run():
            with torch.no_grad():
                return clf(x)
        return run

    def alone(latent):
        def run():
            with torch.no_grad():
                return latent(z, generator=torch.Generator().manual_seed(0))
        return run

    def attack(clf):
        def run():
            xx = x.clone().requires_grad_(True)
            return torch.autograd.grad(F.cross_entropy(clf(xx), y), xx)[0]
        return run

    fast = {"fwd/plain": fwd(plain), "attack/plain": attack(plain)}
    slow = {}
    for name, clf in defended.items():
        expensive = name.startswith("diffpure") or (model == "ViT-B-32" and name == "clipure_pixel")
        if name.startswith("diff_ckpt_"):
            continue  # same forward as diff; only its attack step differs
        if not (model == "ViT-B-32" and name == "diff" and not PROFILE["vitb32_diff_e2e"]):  # see latent/diff
            (slow if expensive else fast)[f"fwd/{name}"] = fwd(clf)
        if clf.latent is not None and name in ("cos", "diff"):
            fast[f"latent/{name}"] = alone(clf.latent)
    views = {"cos@as_released": ("cos", AttackGradMode.purifier), "cos@full": ("cos", AttackGradMode.full)}
    if model == "small" or PROFILE["vitb32_diff_e2e"]:
        views["diff@full"] = ("diff", AttackGradMode.full)
    if "diff_ckpt_true" in defended:
        views["diff@full_checkpointing_on"] = ("diff_ckpt_true", AttackGradMode.full)
        views["diff@full_checkpointing_off"] = ("diff_ckpt_false", AttackGradMode.full)
    for case, (name, mode) in views.items():
        fast[f"attack/{case}"] = attack(make_view(defended[name], mode, AttackPrecision.fp32))
    return fast, slow


def bench_model(model: str, reps: int, unet_dir: Path) -> list[dict]:
    batch = PROFILE["batch"][model]
    plain, defended = build_defences(model, unet_dir)
    fast, slow = make_cases(model, plain, defended, batch)
    if model == GOAL_MODEL:
        reps = PROFILE["max_reps"]
        until = goals_decided({"cos_fwd": (cos_fwd_values, COS_FWD_GOAL), "cos_attack": (cos_attack_values, COS_ATTACK_GOAL)})
        log(f"purification {model}: batch {batch}, {len(fast)} cases, repeated until both goals are decided "
            f"(at most {reps} reps / {PROFILE['budget_s']} s) ...")
        times = time_round_robin(fast, reps, until=until, budget_s=PROFILE["budget_s"])
    else:
        log(f"purification {model}: batch {batch}, {len(fast)} cases x {reps} reps ...")
        times = time_round_robin(fast, reps)
    if slow:
        log(f"purification {model}: {list(slow)} once, with its own plain baseline ...")
        extra = time_round_robin({"fwd/plain": fast["fwd/plain"], **slow}, reps=1, warmup=False)
        times.update({f"{k}": v for k, v in extra.items() if k != "fwd/plain"})
        times["fwd/plain (slow group)"] = extra["fwd/plain"]
    plain_fwd, plain_attack = median(times["fwd/plain"]), median(times["attack/plain"])
    rows = []
    for case, ts in times.items():
        base = median(times["fwd/plain (slow group)"]) if case in {f"fwd/{k}" for k in slow} else plain_fwd
        rows.append({"model": model, "batch": batch, "case": case, "reps": len(ts), "median_s": median(ts), "times_s": ts,
                     "ratio_to_plain_fwd": median(ts) / base,
                     "ratio_to_plain_attack": median(ts) / plain_attack if case.startswith("attack/") else None,
                     "defended_fwd_from_purifier_alone": 1.0 + median(ts) / plain_fwd if case.startswith("latent/") else None})
    ks = PROFILE["diffpure_steps"]
    if model == "small" and len(ks) == 2:
        a, b = (median(times[f"fwd/diffpure_K{k}"]) for k in ks)
        per_step = (b - a) / (ks[1] - ks[0])
        est = a + (100 - ks[0]) * per_step
        rows.append({"model": model, "batch": batch, "case": "fwd/diffpure_K100 (extrapolated)", "reps": 0, "median_s": est,
                     "times_s": [], "ratio_to_plain_fwd": est / plain_fwd, "ratio_to_plain_attack": None,
                     "defended_fwd_from_purifier_alone": None})
    return rows


def headlines(rows: list[dict]) -> list[Headline]:
    by = {(r["model"], r["case"]): r for r in rows}
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        batch = next(r["batch"] for r in rows if r["model"] == model)
        cos_alone, cos_e2e = by.get((model, "latent/cos")), by.get((model, "fwd/cos"))
        if cos_alone:
            figure, why = (f"CLIPure-Cos forward / plain CLIP forward, {model}, batch {batch}",
                           f"1 + purifier alone / plain forward; end to end {cos_e2e['ratio_to_plain_fwd']:.3f}x (encoder noise)")
            if model == GOAL_MODEL:
                spread = median_interval(cos_fwd_values({"latent/cos": cos_alone["times_s"],
                                                         "fwd/plain": by[(model, "fwd/plain")]["times_s"]}))
                out.append(Headline.from_spread("purification", figure, spread, goal=COS_FWD_GOAL, why=why))
            else:
                out.append(Headline("purification", figure, cos_alone["defended_fwd_from_purifier_alone"], why=why))
        diff_alone = by.get((model, "latent/diff"))
        if diff_alone and (model, "fwd/diff") not in by:
            out.append(Headline("purification", f"CLIPure-Diff forward / plain forward, {model}",
                                diff_alone["defended_fwd_from_purifier_alone"],
                                why="1 + purifier alone / plain forward; released-size prior at dim 512, random weights"))
        for name, label in (("diff", "CLIPure-Diff"), ("jpeg", "JPEG"), ("bit_depth", "bit depth"),
                            ("gaussian_noise", "Gaussian noise"), ("clipure_pixel", "pixel CLIPure, 10 steps"),
                            ("diffpure_K100 (extrapolated)", "DiffPure, 100 steps (extrapolated)")):
            r = by.get((model, f"fwd/{name}"))
            if r:
                why = {"diff": "released-size prior at dim 512, random weights" if model == "ViT-B-32" else "shipped prior",
                       "clipure_pixel": "10 encoder forward+backward passes per call; timed once" if model == "ViT-B-32"
                       else "10 encoder forward+backward passes per call",
                       "diffpure_K100 (extrapolated)": "ddpm-cifar10-32 architecture, random weights; linear in steps"}.get(name, "")
                out.append(Headline("purification", f"{label} forward / plain forward, {model}", r["ratio_to_plain_fwd"], why=why))
        on, off = by.get((model, "attack/diff@full_checkpointing_on")), by.get((model, "attack/diff@full_checkpointing_off"))
        if on and off:
            out.append(Headline("attack", f"one attack gradient through CLIPure-Diff (full), step checkpointing on / off, "
                                          f"{model}", on["median_s"] / off["median_s"],
                                why="the price of memory flat in T: each step runs once more in the backward pass"))
        for case, label, goal in (("attack/cos@full", "one attack gradient through CLIPure-Cos (full) / plain CLIP",
                                   COS_ATTACK_GOAL),
                                  ("attack/diff@full", "one attack gradient through CLIPure-Diff (full) / plain CLIP", None)):
            r = by.get((model, case))
            why = "exact second-order gradient through 10 steps (the prior config's gradient_checkpointing)" if "diff" in case else ""
            if r and goal is not None and model == GOAL_MODEL:
                spread = median_interval(paired_ratios({case: r["times_s"], "attack/plain": by[(model, "attack/plain")]["times_s"]},
                                                       case, "attack/plain"))
                out.append(Headline.from_spread("attack", f"{label}, {model}, batch {batch}", spread, goal=goal, why=why))
            elif r:
                out.append(Headline("attack", f"{label}, {model}, batch {batch}", r["ratio_to_plain_attack"], why=why))
    return out


PROFILE = PROFILES["quick"]


def run(profile: str = "quick", models: list[str] | None = None) -> dict:
    global PROFILE
    PROFILE = PROFILES[profile]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        unet_dir = Path(tmp) / "ddpm-cifar10-32-arch"
        save_random_ddpm_unet(unet_dir)
        for model in models or list(MODEL_ARGS):
            rows += bench_model(model, PROFILE["reps"], unet_dir)
    return {"profile": profile, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in PROFILE.items()},
            "rows": rows, "headline": headlines(rows)}


def print_table(payload: dict) -> None:
    print(f"{'model':<9} {'batch':>5}  {'case':<36} {'median s':>9} {'/plain fwd':>10} {'/plain attack':>13} {'1+alone/fwd':>11}")
    for r in payload["rows"]:
        attack = f"{r['ratio_to_plain_attack']:.3f}" if r["ratio_to_plain_attack"] is not None else "-"
        alone = f"{r['defended_fwd_from_purifier_alone']:.4f}" if r["defended_fwd_from_purifier_alone"] is not None else "-"
        print(f"{r['model']:<9} {r['batch']:>5}  {r['case']:<36} {r['median_s']:>9.4f} {r['ratio_to_plain_fwd']:>10.3f} "
              f"{attack:>13} {alone:>11}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--models", default=",".join(MODEL_ARGS), help=f"comma-separated subset of {list(MODEL_ARGS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/purification_overhead.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = set(args.models.split(",")) - set(MODEL_ARGS)
    if unknown:
        ap.error(f"--models: unknown {sorted(unknown)}; valid: {list(MODEL_ARGS)}")
    payload = run(args.profile, args.models.split(","))
    path = write_result("purification_overhead", payload, args.out)
    print_table(payload)
    print(f"written: {os.path.relpath(path, REPO)}")


if __name__ == "__main__":
    main()
