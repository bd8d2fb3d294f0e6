"""Multi-process speed: two processes against one on the same CPU evaluation (not a test).

    .venv/bin/python bench/multiprocess.py [--images 1000] [--reps 6] [--budget-s 1800]
                                           [--out bench/results/multiprocess.json]

Each case is one ``eval.py`` process started as a user starts it (wall clock from outside: start-up, spawning the
ranks, the test loop, gathers and reports), on the same evaluation as ``bench/scale.py`` (shipped small CLIP,
CIFAR-10 test JPEGs, clean + 2-iteration APGD-CE, ``attack.batch_size=1`` so that every case predicts the same
per-sample labels):

- ``1_process``: ``trainer=cpu trainer.num_threads=2`` (the baseline);
- ``2_ddp``: ``trainer.accelerator=cpu trainer.devices=2 trainer.strategy=ddp trainer.num_threads=1`` (gloo;
  Lightning's launcher starts the second rank as a copy of the command);
- ``2_shards``: ``eval.py <same overrides> trainer.num_threads=1 --shards 2 --launcher local --parallel 2`` (per-shard runs
  merged), measured when this checkout's eval.py has ``--shards``; otherwise the row says it was not measured.

Cases run interleaved in a shuffled order; each figure is the median of per-repetition ratios case / 1_process with
its 95% interval, goal <= 0.6 (``bench/harness.py``), repeated until decided or ``--reps`` / ``--budget-s`` are
spent. Every case's ``samples.csv`` is compared with the baseline's. Writes ``bench/results/multiprocess.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.eval_process import log_tail, run_eval_process  # noqa: E402
from bench.harness import (REPO, Headline, goals_decided, log, markdown_table, median, paired_ratios,  # noqa: E402
                           ratio_spread, time_round_robin, write_result)
from bench.pipeline_throughput import read_predictions  # noqa: E402
from bench.scale import DATA_ROOT  # noqa: E402

GOAL = 0.6
COMMON = ["clip=cifar10_small", "data=cifar10_jpeg_shared", "data.batch_size=100", "attack.run=[apgd_ce]",
          "attack.n_iter=2", "attack.checks=false", "attack.batch_size=1", "logger=none"]
CASES = {
    "1_process": (["trainer=cpu", "trainer.num_threads=2"], []),
    "2_ddp": (["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.num_threads=1"], []),
    "2_shards": (["trainer=cpu", "trainer.num_threads=1"], ["--shards", "2", "--launcher", "local", "--parallel", "2"]),
}
WHY = {"2_ddp": "2 ranks of 1 thread on 2 shared cores vs 1 process of 2 threads: the second rank adds start-up "
                "(imports, model, text head) and a gloo all-gather per batch and at the end, no cores",
       "2_shards": "two independent eval.py processes and a merge; no gathers, but two start-ups on the same cores"}


def sharding_available() -> bool:
    """Whether this checkout's eval.py accepts ``--shards`` (the sharded case runs only then)."""
    return "--shards" in (REPO / "eval.py").read_text()


def run(images: int, reps: int, budget_s: float) -> dict:
    names = [n for n in CASES if n != "2_shards" or sharding_available()]
    root = Path(tempfile.mkdtemp(prefix="bench_multiprocess_"))
    run_dirs: dict[str, list[Path]] = {n: [] for n in names}
    loads: list[float] = []

    def case(name: str):
        overrides, flags = CASES[name]

        def go() -> None:
            run_dir = root / f"{name}_{len(run_dirs[name])}"
            log_path = root / f"{run_dir.name}.log"
            done = run_eval_process([*COMMON, f"data.num_samples={images}", *overrides, f"run_dir={run_dir}", *flags],
                                    log_path)
            if done.returncode != 0:
                raise RuntimeError(f"{name} exited {done.returncode}:\n{log_tail(log_path)}")
            run_dirs[name].append(run_dir)
            loads.append(round(os.getloadavg()[0], 2))
            log(f"multiprocess: {name:<10} {done.wall_s:6.1f} s  (load {loads[-1]})")
        return go

    try:
        goals = {n: (lambda t, n=n: paired_ratios(t, n, "1_process"), GOAL) for n in names if n != "1_process"}
        times = time_round_robin({n: case(n) for n in names}, reps=reps, warmup=False, until=goals_decided(goals),
                                 budget_s=budget_s)
        reference = read_predictions(run_dirs["1_process"][0])
        differing = {n: sum(read_predictions(d) != reference for d in ds) for n, ds in run_dirs.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    spreads = {n: ratio_spread(times, n, "1_process") for n in goals}
    labels = {"2_ddp": "2 DDP processes (gloo, 1 thread each)", "2_shards": "2 shards (--launcher local, 1 thread each)"}
    headline = [Headline.from_spread("multiprocess", f"{labels[n]} / 1 process of 2 threads, wall clock, {images} images",
                                     spreads[n], goal=GOAL,
                                     why=WHY[n] + ("" if not differing[n] else f"; PREDICTIONS DIFFER in {differing[n]} runs"))
                for n in spreads]
    if "2_shards" not in names:
        headline.append(Headline("multiprocess", f"2 shards (--launcher local) / 1 process of 2 threads, {images} images",
                                 None, goal=GOAL, why="not measured: this checkout's eval.py has no --shards"))
    return {"images": images, "common_args": COMMON, "cases": {n: [*CASES[n][0], *CASES[n][1]] for n in names},
            "seconds": times, "median_s": {n: median(v) for n, v in times.items()},
            "spreads": {n: vars(s) for n, s in spreads.items()}, "runs_with_differing_samples_csv": differing,
            "load_avg_1m_after_each_run": loads, "headline": headline}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=("quick", "full"), default="full",
                    help="quick: 200 images, 1 repetition (a check of the script); full: 1,000 images")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None, help="most repetitions (6 are needed to decide the goal)")
    ap.add_argument("--budget-s", type=float, default=1800.0, help="stop repeating after this many seconds")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/multiprocess.json")
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)  # bench/run.py passes it; fixed here
    args = ap.parse_args(argv)
    if not DATA_ROOT.is_dir():
        print(f"multiprocess: skipped: the CIFAR-10 test JPEGs are not at {DATA_ROOT}")
        return 0
    quick = args.profile == "quick"
    payload = run(args.images or (200 if quick else 1000), args.reps or (1 if quick else 6), args.budget_s)
    path = write_result("multiprocess", {"profile": args.profile, **payload}, args.out)
    print(markdown_table(payload["headline"]))
    print(f"written: {os.path.relpath(path, REPO)}")
    return 1 if any(payload["runs_with_differing_samples_csv"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
