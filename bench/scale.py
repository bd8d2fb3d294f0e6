"""Scale: one evaluation of growing size on the CIFAR-10 test JPEGs, and a kill-and-resume (not a test).

    .venv/bin/python bench/scale.py [--sizes 1000,5000,10000] [--reps 1] [--resume-size 1000] [--threads 2]
                                    [--batch-size 100] [--env KEY=VALUE ...] [--out bench/results/scale.json]

Every run is ``eval.py`` in its own process (so its peak memory is its own), as a user starts it::

    eval.py clip=cifar10_small data=cifar10_jpeg_shared data.root=<repo>/../shared/data/cifar10/test
            data.num_samples=N data.batch_size=100 attack.run=[apgd_ce] attack.n_iter=2 attack.checks=false
            logger=none trainer.num_threads=<threads> run_dir=<temporary folder>

(clean accuracy and a 2-iteration APGD-CE with the shipped small CLIP; the masking checks are off because they
attack the first batch only, a fixed cost). ``--reps R`` runs every size R times, in rounds (one run of each size
per round, the order reversed every other round, so a drift of the machine's load reaches both ends). Figures,
largest size over smallest:

1. **seconds per image, steady state** (goal <= 1.10): per batch, the test loop's own timings from
   ``progress/rank0.jsonl`` (data loading + clean forward + attack) / batch size, pooled over the rounds; the
   figure is the ratio of the two sizes' medians, its interval [low_big / high_small, high_big / low_small] from
   each median's 97.5% order-statistic interval (so at least 95% jointly); it decides the goal as in
   ``bench/harness.py``.
2. **seconds per image of the whole test loop** (``timings.json`` ``test_loop``: every batch, the progress files,
   the end-of-run gather and summary; one value per run, no interval) and **wall seconds per image** (start-up
   included, which the larger run amortises): information.
3. **peak resident memory** (``ru_maxrss`` of the process) (goal <= 1.10): the median of the per-round ratios
   with its order-statistic interval. glibc's heap moves a process's peak by up to a third between identical runs
   (fragmentation: with a fixed ``MALLOC_MMAP_THRESHOLD_`` the resident set stays flat over 10,000 images, at about
   twice the run time), so one run per size decides nothing: the figure needs 6 rounds for a 95% interval.
4. **kill and resume** at ``--resume-size`` images: SIGTERM once half of the batches are in the progress file, then
   ``resume=true`` on the same folder; the resumed ``samples.csv`` must equal the uninterrupted run's (the script
   fails otherwise); the overhead is (killed + resumed wall) / uninterrupted wall - 1.

Without ``../shared/data/cifar10/test`` the script prints why and exits 0 without measuring. Writes
``bench/results/scale.json``; ``os.getloadavg()`` before and after each run is recorded, since other processes on
the machine change every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.eval_process import log_tail, run_eval_process  # noqa: E402
from bench.harness import (REPO, Headline, Spread, log, markdown_table, median, median_interval, verdict,  # noqa: E402
                           write_result)

DATA_ROOT = REPO.parent / "shared" / "data" / "cifar10" / "test"
BATCH = 100
GOAL = 1.10
# Each median's interval at 97.5%: the two together cover the ratio with at least 95% (Bonferroni).
EACH_CONFIDENCE = 0.975
# When the mean 1-minute load average around the runs of the two sizes differs by more than this, their timing ratio
# measures the load, not the size, and the timing figures are reported undecided. (Rounds in alternating order make
# a drift reach both sizes alike; the runs' own threads are part of the load.)
LOAD_SPREAD_LIMIT = 0.5
PROFILES = {"quick": dict(sizes=(200, 500), resume_size=200, reps=1),
            "full": dict(sizes=(1000, 5000, 10000), resume_size=1000, reps=6)}


def eval_args(n: int | str, run_dir: Path, threads: int, data_root: Path = DATA_ROOT) -> list[str]:
    return ["clip=cifar10_small", "data=cifar10_jpeg_shared", f"data.root={data_root}", f"data.num_samples={n}",
            f"data.batch_size={BATCH}", "attack.run=[apgd_ce]", "attack.n_iter=2", "attack.checks=false", "logger=none",
            f"trainer.num_threads={threads}", f"run_dir={run_dir}"]


def batch_lines(run_dir: Path) -> list[dict]:
    """The finished batches of ``run_dir`` (a torn last line, from a kill, is skipped as the resume code does)."""
    path = run_dir / "progress" / "rank0.jsonl"
    lines = []
    for raw in path.read_text().splitlines() if path.exists() else []:
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return lines


def per_image_batch_seconds(run_dir: Path) -> list[float]:
    """Seconds per image of every finished batch: the sum of its recorded parts / its number of samples."""
    out = []
    for line in batch_lines(run_dir):
        n = len(line["columns"]["label"]["ids"])
        out.append(sum(line["times"].values()) / n)
    return out


def ratio_of_medians(big: list[float], small: list[float]) -> Spread:
    """Median(big) / median(small) with the conservative interval of the module docstring; its ``coverage`` is
    the joint lower bound (1 - the two miss probabilities), ``reps`` the smaller sample."""
    b, s = median_interval(big, EACH_CONFIDENCE), median_interval(small, EACH_CONFIDENCE)
    return Spread(median(big) / median(small), b.low / s.high, b.high / s.low, min(b.reps, s.reps),
                  1.0 - (1.0 - b.coverage) - (1.0 - s.coverage))


def one_size(n: int, root: Path, threads: int, data_root: Path = DATA_ROOT, env: dict[str, str] | None = None) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    run_dir = root / f"n{n}"
    load_before = os.getloadavg()[0]
    run = run_eval_process(eval_args(n, run_dir, threads, data_root), root / f"n{n}.log", extra_env=env)
    if run.returncode != 0:
        raise RuntimeError(f"eval.py on {n} images exited {run.returncode}:\n{log_tail(root / f'n{n}.log')}")
    results = json.loads((run_dir / "results.json").read_text())
    test_loop = json.loads((run_dir / "timings.json").read_text())["phases_s"]["test_loop"]
    batches = per_image_batch_seconds(run_dir)
    row = {"images": n, "wall_s": run.wall_s, "peak_rss_mb": run.peak_rss_mb, "test_loop_s": test_loop,
           "wall_s_per_image": run.wall_s / n, "test_loop_s_per_image": test_loop / n,
           "batch_s_per_image": batches, "batch_s_per_image_median": median(batches),
           "clean_acc": results["clean"]["acc"], "robust_acc": results["robust"]["apgd_ce"]["acc"],
           "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    log(f"scale: {n} images: wall {run.wall_s:.1f} s, test loop {test_loop:.1f} s, batch median "
        f"{row['batch_s_per_image_median'] * 1e3:.2f} ms/image, peak RSS {run.peak_rss_mb:.0f} MB, load {row['load_avg_1m']}")
    return row


def recorded(run, run_dir: Path, data_root: Path) -> dict:
    """``run`` as the results file keeps it: its arguments with the machine's paths replaced as in the command
    template (the data relative to the repository, ``<run_dir>``), so the file says nothing of where it ran."""
    shown = {f"data.root={data_root}": "data.root=../shared/data/cifar10/test", f"run_dir={run_dir}": "run_dir=<run_dir>"}
    return {**asdict(run), "argv": [shown.get(a, a) for a in run.argv]}


def kill_and_resume(n: int, root: Path, threads: int, uninterrupted: Path, uninterrupted_wall: float,
                    data_root: Path = DATA_ROOT, env: dict[str, str] | None = None) -> dict:
    """SIGTERM at half of the batches, resume, compare with the uninterrupted run of the same size."""
    run_dir = root / f"killed{n}"
    half = -(-n // BATCH) // 2
    killed = run_eval_process(eval_args(n, run_dir, threads, data_root), root / "killed.log",
                              stop_when=lambda: len(batch_lines(run_dir)) >= half, extra_env=env)
    done_at_kill = len(batch_lines(run_dir))
    resumed = run_eval_process([*eval_args(n, run_dir, threads, data_root), "resume=true"], root / "resumed.log",
                               extra_env=env)
    if resumed.returncode != 0:
        raise RuntimeError(f"the resumed run exited {resumed.returncode}:\n{log_tail(root / 'resumed.log')}")
    same_samples = (run_dir / "samples.csv").read_bytes() == (uninterrupted / "samples.csv").read_bytes()
    a, b = (json.loads((d / "results.json").read_text()) for d in (run_dir, uninterrupted))
    same_numbers = (a["clean"], a["robust"]) == (b["clean"], b["robust"])
    total = killed.wall_s + resumed.wall_s
    log(f"scale: kill at {done_at_kill}/{-(-n // BATCH)} batches (exit {killed.returncode}), resumed in {resumed.wall_s:.1f} s; "
        f"identical samples.csv: {same_samples}; overhead {total / uninterrupted_wall - 1:+.1%}")
    return {"images": n, "batches_done_at_kill": done_at_kill, "killed": recorded(killed, run_dir, data_root),
            "resumed": recorded(resumed, run_dir, data_root),
            "killed_exit": killed.returncode, "uninterrupted_wall_s": uninterrupted_wall, "total_wall_s": total,
            "overhead": total / uninterrupted_wall - 1, "identical_samples_csv": same_samples,
            "identical_results": same_numbers}


def by_size(rows: list[dict]) -> dict[int, list[dict]]:
    """The runs of every size (one per round), smallest size first."""
    out: dict[int, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["images"], r.get("rep", 0))):
        out.setdefault(row["images"], []).append(row)
    return out


def memory_ratio(small: list[dict], big: list[dict]) -> Spread:
    """Median of the per-round ratios peak RSS(big) / peak RSS(small), with its 95% order-statistic interval (its
    coverage is below 95%, so the figure undecided, with fewer than 6 rounds)."""
    ratios = [b["peak_rss_mb"] / s["peak_rss_mb"] for s, b in zip(small, big)]
    return median_interval(ratios)


def mean_load(runs: list[dict]) -> float:
    """The mean of the 1-minute load averages read before and after each of ``runs``."""
    loads = [x for r in runs for x in r["load_avg_1m"]]
    return sum(loads) / len(loads)


def headlines(rows: list[dict], resume: dict | None) -> list[Headline]:
    sizes = by_size(rows)
    small, big = sizes[min(sizes)], sizes[max(sizes)]
    n_small, n_big = small[0]["images"], big[0]["images"]
    rounds = min(len(small), len(big))
    span = f"{n_small} -> {n_big} images"
    pooled = {n: [x for r in runs for x in r["batch_s_per_image"]] for n, runs in ((n_small, small), (n_big, big))}
    steady = ratio_of_medians(pooled[n_big], pooled[n_small])
    load_small, load_big = mean_load(small), mean_load(big)
    load_note = ""
    if abs(load_big - load_small) > LOAD_SPREAD_LIMIT:
        steady = Spread(steady.median, steady.low, steady.high, steady.reps, 0.0)  # not comparable: undecided
        load_note = (f"; LOAD CHANGED between the sizes' runs (mean 1-min load {load_small:.1f} vs {load_big:.1f}): "
                     "timing ratios not comparable, rerun on a quiet machine")

    def mid(runs: list[dict], key: str) -> float:
        return median([r[key] for r in runs])

    loop = mid(big, "test_loop_s_per_image") / mid(small, "test_loop_s_per_image")
    wall = mid(big, "wall_s_per_image") / mid(small, "wall_s_per_image")
    rss = memory_ratio(small, big)
    peaks = {n: sorted(round(r["peak_rss_mb"]) for r in runs) for n, runs in ((n_small, small), (n_big, big))}
    each = "one run each" if rounds == 1 else f"median of {rounds} rounds"
    out = [
        Headline.from_spread("scale", f"seconds per image per batch (steady state), {span}", steady, goal=GOAL,
                             why=f"{median(pooled[n_small]) * 1e3:.2f} -> {median(pooled[n_big]) * 1e3:.2f} "
                                 f"ms/image; clean + APGD-CE 2 it., small CLIP; batches of {rounds} round(s){load_note}"),
        Headline("scale", f"seconds per image of the whole test loop, {span}", loop,
                 why=f"{mid(small, 'test_loop_s_per_image') * 1e3:.2f} -> {mid(big, 'test_loop_s_per_image') * 1e3:.2f} "
                     f"ms/image; {each}, no interval{load_note}"),
        Headline("scale", f"wall seconds per image incl. start-up, {span}", wall,
                 why=f"{mid(small, 'wall_s'):.1f} s -> {mid(big, 'wall_s'):.1f} s ({each}); the fixed start-up is "
                     f"amortised{load_note}"),
        Headline.from_spread("scale", f"peak resident memory, {span}", rss, goal=GOAL,
                             why=f"peaks {peaks[n_small]} -> {peaks[n_big]} MB; per-round ratios; no per-image state "
                                 "(the per-sample result columns are ~0.1 KB): glibc heap fragmentation moves the peak "
                                 "by up to a third between identical runs"
                                 + ("; one round cannot decide" if rounds < 6 else "")),
    ]
    if resume:
        out.append(Headline("scale", f"kill at half + resume / uninterrupted wall clock, {resume['images']} images",
                            resume["total_wall_s"] / resume["uninterrupted_wall_s"],
                            why=f"resumed samples.csv identical: {resume['identical_samples_csv']}; "
                                + ("the second start-up is most of the overhead" + load_note if resume["killed_exit"] == 143 else
                                   f"NOT INTERRUPTED: the run exited {resume['killed_exit']} before SIGTERM took effect")))
    return out


def run(sizes: list[int], resume_size: int | None, threads: int, data_root: Path = DATA_ROOT, reps: int = 1,
        env: dict[str, str] | None = None) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        rows = []
        for rep in range(reps):  # rounds: every size once, every other round in reverse order
            for n in (sizes if rep % 2 == 0 else sizes[::-1]):
                rows.append({**one_size(n, root / f"round{rep}", threads, data_root, env), "rep": rep})
        resume = None
        if resume_size:
            base = next((r for r in rows if r["images"] == resume_size), None)
            if base is None:
                base = one_size(resume_size, root / "round0", threads, data_root, env)
            resume = kill_and_resume(resume_size, root, threads, root / "round0" / f"n{resume_size}", base["wall_s"],
                                     data_root, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    heads = headlines(rows, resume)
    template = eval_args("<N>", Path("<run_dir>"), threads, Path("../shared/data/cifar10/test"))
    return {"sizes": sizes, "reps": reps, "env": env or {}, "threads": threads, "batch_size": BATCH, "eval_args": template, "rows": rows,
            "resume": resume, "headline": heads,
            "verdicts": {h.figure: verdict(h.spread, h.goal, h.ratio) for h in heads if h.goal is not None}}


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    if len(sizes) < 2 or sizes[0] <= 0:
        raise SystemExit(f"--sizes {text!r}: give at least two positive image counts, e.g. --sizes 1000,5000,10000")
    return sizes


def main(argv=None) -> int:
    global BATCH  # --batch-size: read by eval_args and kill_and_resume
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full",
                    help="quick: 200 and 500 images (a check of the script); full: 1,000, 5,000 and 10,000")
    ap.add_argument("--sizes", default=None, help="comma-separated image counts (overrides the profile)")
    ap.add_argument("--reps", type=int, default=None,
                    help="rounds (every size once per round; default: quick 1, full 6, which decides the memory goal)")
    ap.add_argument("--resume-size", type=int, default=None, help="images of the kill-and-resume run (0: skip it)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable of every eval.py run, e.g. --env MALLOC_MMAP_THRESHOLD_=131072 "
                         "(glibc's allocator: the peak memory without heap fragmentation)")
    ap.add_argument("--threads", type=int, default=2, help="trainer.num_threads of every run")
    ap.add_argument("--batch-size", type=int, default=BATCH, help="data.batch_size of every run")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/scale.json")
    args = ap.parse_args(argv)
    BATCH = args.batch_size
    if not DATA_ROOT.is_dir():
        print(f"scale: skipped: the CIFAR-10 test JPEGs are not at {DATA_ROOT} (../shared/data/cifar10/test "
              "relative to the repository)")
        return 0
    profile = PROFILES[args.profile]
    sizes = parse_sizes(args.sizes) if args.sizes else list(profile["sizes"])
    resume_size = profile["resume_size"] if args.resume_size is None else args.resume_size
    reps = profile["reps"] if args.reps is None else args.reps
    if reps < 1:
        raise SystemExit(f"--reps {reps}: give at least one round")
    bad = [e for e in args.env if "=" not in e]
    if bad:
        raise SystemExit(f"--env {bad[0]!r}: expected KEY=VALUE")
    payload = run(sizes, resume_size or None, args.threads, reps=reps, env=dict(e.split("=", 1) for e in args.env))
    path = write_result("scale", {"profile": args.profile, **payload}, args.out)
    print(markdown_table(payload["headline"]))
    print(f"written: {os.path.relpath(path, REPO)}")
    resume = payload["resume"]
    if resume and not (resume["identical_samples_csv"] and resume["identical_results"]):
        print("scale: the resumed run's per-sample results differ from the uninterrupted run's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
