"""Throughput of the end-to-end evaluation pipeline and where its wall clock goes (not a test).

    .venv/bin/python bench/pipeline_throughput.py [--profile quick|full] [--out bench/results/pipeline_throughput.json]

Three measurements, all in this process (imports are done, and timed, before anything else):

1. ``default_job``: ``eval.py experiment=demo`` (4 defences on the same CIFAR-10 samples, the demo's attacks) with
   fewer samples and attack iterations, ``logger=none`` and an empty text-embedding cache, run once through
   ``eval.main``. Figures: evaluation samples per second (samples x defences / wall seconds of ``eval.main``) and
   the share (0..1) of that wall clock spent in each part, from every defence's ``results.json``
   (``time_per_sample_s`` x ``num_samples``) and ``timings.json`` (``phases_s``):
   ``data_loading`` (``setup_data`` + waiting for batches), ``clean`` (clean forward), ``attacks`` (every
   ``attack/*`` + ``checks``), ``text_head`` (``build_text_head``), ``model_loading`` (``load_backbone``),
   ``purifier_building`` (``build_purifiers``: prior checkpoint, blank-anchor prompts) and ``rest`` (the remainder:
   Lightning's loop and hooks, config composition, run-folder files, reports and plots).
2. ``text_head``: building the CIFAR-10 zero-shot head (``cifar10`` templates) with ``build_head`` for the shipped
   small CLIP and for ViT-B-32 with random weights, cold (fresh empty cache folder each time: text tower runs and
   the tensor is written) and cached (folder filled by an untimed cold build: fingerprint of the text tower + file
   read), interleaved; figure: median cold / median cached.
3. ``ddp``: the same small evaluation with ``trainer=cpu`` and ``trainer=ddp_cpu`` (2 gloo processes, ddp_spawn),
   interleaved; figure: median wall clock 2 processes / 1 process (>1: slower), plus whether both runs'
   ``samples.csv`` hold identical per-sample predictions.

Writes bench/results/pipeline_throughput.json (every raw number) and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # small ops crawl when OpenMP threads spin on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.builders import shipped_classnames  # noqa: E402
from bench.harness import (REPO, Headline, log, markdown_table, median, stdout_redirected,  # noqa: E402
                           time_round_robin, write_result)

PROFILES = {
    "quick": {"demo": ["data.num_samples=10", "attack.n_iter=5"], "head_reps": {"small": 3, "ViT-B-32": 2},
              "ddp": ["data.num_samples=40"], "ddp_reps": 1},
    "full": {"demo": ["data.num_samples=40", "attack.n_iter=10"], "head_reps": {"small": 5, "ViT-B-32": 5},
             "ddp": ["data.num_samples=100"], "ddp_reps": 2},
}
DDP_ARGS = ["clip=cifar10_small", "data.batch_size=10", "attack.run=[apgd_ce]", "attack.n_iter=10", "attack.batch_size=1",
            "logger=none", "trainer.num_threads=1"]
SHARES = ("data_loading", "clean", "attacks", "text_head", "model_loading", "purifier_building", "rest")
DDP_WHY = ("2 CPU cores shared by both ranks: a second process adds no compute, only spawn, re-import, model "
           "building and gloo all-gather overhead")


def stdout_to_stderr():
    """Send everything written to file descriptor 1 (``eval.main``'s reports, progress bars, spawned ranks) to
    stderr, so stdout holds only this script's table."""
    return stdout_redirected(2)


def run_eval(argv: list[str]) -> float:
    """Wall seconds of one in-process ``eval.main(argv)``."""
    import eval as eval_script

    start = time.perf_counter()
    with stdout_to_stderr():
        eval_script.main(argv)
    return time.perf_counter() - start


def import_everything() -> float:
    """Seconds to import what an evaluation needs (paid once per process; excluded from every figure)."""
    start = time.perf_counter()
    import open_clip  # noqa: F401
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401

    import eval  # noqa: F401
    from clipure_lit import evaluation, suite  # noqa: F401
    from clipure_lit.models import lit_module  # noqa: F401
    return time.perf_counter() - start


def read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def breakdown(sub_run: Path) -> dict:
    """Seconds per part (see the module docstring) of one defence's run folder, and its raw numbers."""
    results, timings = read_json(sub_run / "results.json"), read_json(sub_run / "timings.json")
    n, per_sample, phases = results["num_samples"], results["time_per_sample_s"], timings["phases_s"]
    seconds = {
        "data_loading": phases.get("setup_data", 0.0) + n * per_sample.get("data_loading", 0.0),
        "clean": n * per_sample.get("clean", 0.0),
        "attacks": n * sum(v for k, v in per_sample.items() if k.startswith("attack/") or k == "checks"),
        "text_head": phases.get("build_text_head", 0.0),
        "model_loading": phases.get("load_backbone", 0.0),
        "purifier_building": phases.get("build_purifiers", 0.0),
    }
    return {"num_samples": n, "seconds": seconds, "time_per_sample_s": per_sample, "phases_s": phases,
            "counts": timings.get("counts", {})}


def default_job(extra: list[str], root: Path) -> dict:
    """``experiment=demo`` with ``extra`` overrides, once, with a cold text-embedding cache (measurement 1)."""
    run_dir = Path(tempfile.mkdtemp(dir=root, prefix="demo_"))
    argv = ["experiment=demo", *extra, "logger=none", f"run_dir={run_dir / 'demo'}",
            f"prompts.cache_dir={tempfile.mkdtemp(dir=root, prefix='text_cache_')}"]
    log(f"default job: eval.py {' '.join(argv)}")
    wall = run_eval(argv)
    suite = read_json(run_dir / "demo" / "suite.json")
    defences = {row["dataset"]: breakdown(run_dir / "demo" / row["dataset"]) for row in suite["rows"] if row["status"] == "done"}
    skipped = [row["dataset"] for row in suite["rows"] if row["status"] != "done"]
    seconds = {part: sum(d["seconds"][part] for d in defences.values()) for part in SHARES[:-1]}
    seconds["rest"] = wall - sum(seconds.values())
    samples = sum(d["num_samples"] for d in defences.values())
    return {"argv": argv, "wall_s": wall, "defences": defences, "skipped": skipped, "evaluated_samples": samples,
            "samples_per_s": samples / wall, "seconds": seconds, "shares": {k: v / wall for k, v in seconds.items()}}


def text_head(reps: dict[str, int], root: Path) -> dict:
    """Cold and cached ``build_head`` per model (measurement 2)."""
    from omegaconf import OmegaConf

    from clipure_lit.clip.backbone import load_backbone
    from clipure_lit.clip.prompts import get_templates
    from clipure_lit.clip.zeroshot import TextEmbeddingCache, build_head
    from clipure_lit.config.loader import load_config
    from clipure_lit.clip.config import ClipCfg

    clip_cfgs = {"small": load_config(["clip=cifar10_small"]).clip,
                 "ViT-B-32": OmegaConf.structured(ClipCfg(arch="ViT-B-32", pretrained=None))}
    classnames, templates = shipped_classnames(), get_templates("cifar10")
    out = {"classnames": len(classnames), "templates": len(templates)}
    for model, cfg in clip_cfgs.items():
        backbone, tokenizer = load_backbone(cfg)
        caches: dict[str, TextEmbeddingCache] = {}

        def build(cache_dir: str, kind: str) -> None:
            # A new run fingerprints the text tower once: forget the fingerprint memoised by the previous build.
            backbone.__dict__.pop("_text_fingerprint_memo", None)
            caches[kind] = TextEmbeddingCache(cache_dir)
            build_head(backbone, tokenizer, classnames, templates, caches[kind], cfg.logit_scale)

        filled = tempfile.mkdtemp(dir=root, prefix="text_cache_")
        log(f"text head {model}: untimed cold build (warm-up, fills the cached folder), then {reps[model]} reps")
        build(filled, "cold")  # the harness's warm-up would cost one more cold build
        times = time_round_robin({"cold": lambda: build(tempfile.mkdtemp(dir=root, prefix="text_cache_"), "cold"),
                                  "cached": lambda: build(filled, "cached")}, reps=reps[model], warmup=False)
        assert caches["cold"].misses == 1 and caches["cached"].hits == 1, "cold must compute, cached must read"
        out[model] = {"arch": cfg.arch, "pretrained": cfg.pretrained, "reps": reps[model], "seconds": times,
                      "median_s": {k: median(v) for k, v in times.items()},
                      "cold_over_cached": median(times["cold"]) / median(times["cached"])}
        del backbone
    return out


def read_predictions(run_dir: Path) -> dict[str, dict]:
    with open(run_dir / "samples.csv", newline="") as fh:
        return {row["sample_id"]: row for row in csv.DictReader(fh)}


def ddp(extra: list[str], reps: int, root: Path) -> dict:
    """``trainer=cpu`` vs ``trainer=ddp_cpu`` on the same evaluation (measurement 3)."""
    import torch

    threads = torch.get_num_threads()  # trainer.num_threads=1 changes this process's setting
    run_dirs: dict[str, list[Path]] = {"1_process": [], "2_processes": []}

    def case(name: str, trainer: str):
        def run() -> None:
            run_dirs[name].append(Path(tempfile.mkdtemp(dir=root, prefix=f"{trainer}_")))
            run_eval([*DDP_ARGS, *extra, f"trainer={trainer}", f"run_dir={run_dirs[name][-1]}"])
        return run

    log(f"ddp: eval.py {' '.join(DDP_ARGS + extra)} trainer=cpu|ddp_cpu, {reps} reps")
    try:
        times = time_round_robin({"1_process": case("1_process", "cpu"), "2_processes": case("2_processes", "ddp_cpu")},
                                 reps=reps, warmup=False)
    finally:
        torch.set_num_threads(threads)
    reference = read_predictions(run_dirs["1_process"][0])
    differing = sum(read_predictions(d) != reference for ds in run_dirs.values() for d in ds)
    return {"argv": DDP_ARGS + extra, "reps": reps, "seconds": times, "median_s": {k: median(v) for k, v in times.items()},
            "two_over_one": median(times["2_processes"]) / median(times["1_process"]),
            "samples": len(reference), "predictions_identical": differing == 0, "runs_with_differing_samples_csv": differing}


def run(profile: str) -> dict:
    """All three measurements under ``profile``; returns the payload written to the JSON file."""
    p = PROFILES[profile]
    start = time.perf_counter()
    imports_s = import_everything()
    root = Path(tempfile.mkdtemp(prefix="pipeline_throughput_"))
    try:
        job = default_job(p["demo"], root)
        head = text_head(p["head_reps"], root)
        dist = ddp(p["ddp"], p["ddp_reps"], root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per_defence = job["evaluated_samples"] // max(len(job["defences"]), 1)
    headline = [
        Headline("pipeline", f"default job samples/s (experiment=demo, {per_defence} samples x {len(job['defences'])} defences)",
                 job["samples_per_s"], None, unit="samples/s",
                 why="wall shares: " + ", ".join(f"{k} {v:.0%}" for k, v in job["shares"].items()),
                 extra={"shares": job["shares"]}),
        *[Headline("pipeline", f"text head cold / cached ({model}, {head['classnames']} classes x {head['templates']} templates)",
                   head[model]["cold_over_cached"], None,
                   why=f"cold {head[model]['median_s']['cold']:.3g} s, cached {head[model]['median_s']['cached']:.3g} s")
          for model in p["head_reps"]],
        Headline("pipeline", f"DDP 2 processes / 1 process wall clock (CPU, {dist['samples']} samples)", dist["two_over_one"],
                 None, why=DDP_WHY + ("" if dist["predictions_identical"] else "; PREDICTIONS DIFFER between the runs")),
    ]
    return {"profile": profile, "settings": p, "imports_s": imports_s, "headline": headline, "default_job": job,
            "text_head": head, "ddp": dist, "total_wall_s": time.perf_counter() - start}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pipeline_throughput.json")
    args = ap.parse_args(argv)
    payload = run(args.profile)
    path = write_result("pipeline_throughput", payload, args.out)
    job = payload["default_job"]
    print(markdown_table(payload["headline"]))
    print(f"\ndefault job: {job['evaluated_samples']} evaluated samples in {job['wall_s']:.1f} s; share of the wall clock:")
    for part, share in job["shares"].items():
        print(f"  {part:<18} {share:6.1%}  ({job['seconds'][part]:7.2f} s)")
    dist = payload["ddp"]
    print(f"\nDDP: 1 process {dist['median_s']['1_process']:.1f} s, 2 processes {dist['median_s']['2_processes']:.1f} s; "
          f"identical per-sample predictions: {dist['predictions_identical']}")
    print(f"\nimports {payload['imports_s']:.1f} s (excluded), total {payload['total_wall_s']:.1f} s")
    print(f"written: {os.path.relpath(path, REPO) if path.resolve().is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
