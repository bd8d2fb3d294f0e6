"""Run the benchmark suite, print one table of ratios against their goals, and rewrite BENCHMARKS.md.

    make bench                                  # = .venv/bin/python bench/run.py (quick profile, about 12 min on 2 cores)
    .venv/bin/python bench/run.py --only purification,scaling --profile full

Each benchmark runs in its own process (so allocator state and threads do not carry over), writes
``bench/results/<name>.json`` and contributes headline rows; this script collects them into
``bench/results/summary.json`` and ``BENCHMARKS.md`` (table, machine, commands). A benchmark that fails is
reported, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import REPO, RESULTS, Headline, format_measured, log, machine_info, markdown_table  # noqa: E402
from bench.gpu_check import benchmarks_section, read_cuda_payload  # noqa: E402

BENCHMARKS = {  # name -> (script, what it measures)
    "purification": ("purification_overhead.py", "each purifier's forward and one attack gradient, as ratios to plain CLIP"),
    "attack": ("attack_overhead.py", "the AutoAttack callback against plain pyautoattack; APGD through CLIPure-Cos (full) "
                                     "against APGD on plain CLIP"),
    "scaling": ("scaling.py", "cost in the number of steps and the batch size; peak memory of full-gradient attacks"),
    "pipeline": ("pipeline_throughput.py", "end-to-end samples/s of the main job and where the time goes; text head "
                                           "cold vs cached; 2 vs 1 DDP processes"),
    "scale": ("scale.py", "eval.py on 1,000, 5,000 and 10,000 CIFAR-10 test JPEGs: seconds per image and peak memory "
                          "against the smallest size; a run killed at half and resumed"),
    "multiprocess": ("multiprocess.py", "eval.py on 1,000 images as 2 DDP processes (and 2 shards where eval.py has "
                                        "--shards) against 1 process of 2 threads, wall clock"),
}
RESULT_FILE = {"purification": "purification_overhead", "attack": "attack_overhead", "scaling": "scaling",
               "pipeline": "pipeline_throughput", "scale": "scale", "multiprocess": "multiprocess"}
# Benchmarks of tens of minutes: run by --profile full (or --only); their tables form BENCHMARKS.md's "Scale"
# section, read from their result files, so a quick run keeps the latest full figures.
FULL_ONLY = ("scale", "multiprocess")


def run_one(name: str, profile: str, threads: int | None) -> tuple[dict | None, float, str | None]:
    script, _ = BENCHMARKS[name]
    out = RESULTS / f"{RESULT_FILE[name]}.json"
    cmd = [sys.executable, str(REPO / "bench" / script), "--profile", profile, "--out", os.path.relpath(out, REPO)]
    if threads:
        cmd += ["--threads", str(threads)]
    log(f"== {name}: {' '.join(os.path.relpath(c, REPO) if c.startswith(str(REPO)) else c for c in cmd)}")
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
                                               "WANDB_MODE": "offline"}, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    sys.stderr.write(done.stdout)
    if done.returncode != 0:
        return None, seconds, f"exit status {done.returncode} (its output is above)"
    if not out.exists() or out.stat().st_mtime < time.time() - seconds - 1:  # skipped (it printed why): no rows
        return {"headline": []}, seconds, None
    return json.loads(out.read_text()), seconds, None


def render_markdown(rows: list[Headline], durations: dict[str, float], failures: dict[str, str], profile: str,
                    machine: dict, total: float) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every figure is a ratio of two measurements taken side by side in one process: the cases of a comparison",
        "run interleaved, in a shuffled order, after a warm-up, and each figure is the median of the repetitions",
        "(`bench/harness.py`). Absolute seconds are in `bench/results/*.json` but are noise on shared machines.",
        "A figure with a goal is the median of per-repetition paired ratios with its distribution-free 95% interval",
        "(n = repetitions); comparisons repeat until the interval decides the goal or their budget is spent. `status`:",
        "`met` (interval at or below the goal), `missed` (above it), either one by the median when the whole interval",
        "lies within 5% of the goal, else `undecided`; a missed goal says why in the note. Spread between suite runs on",
        "these shared cores: end-to-end ratios of cases shorter than ~0.2 s (small-CLIP forwards and single attack",
        "gradients) move by up to about 10%; purifier-alone ratios, APGD runs and memory move by a few percent.",
        "Regenerate this file with",
        "`make bench` (the quick profile, about 12 minutes on 2 CPU cores: goals repeat until decided) or",
        "`.venv/bin/python bench/run.py --profile full` (larger batches, ViT-B-32 at batch 32, more repetitions; much",
        "longer). Where one evaluation spends its time, by operator and Python function:",
        "`.venv/bin/python bench/profile_eval.py [eval.py overrides]` (default: the main job's slowest path).",
        "",
        f"Profile `{profile}`, measured on: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, CUDA: {machine['cuda']}, commit `{machine['git_commit']}`, load average at "
        f"the end {machine['load_avg_1m_at_end']}. Suite wall clock: {total / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in durations.items())}).",
        "",
        markdown_table([r for r in rows if r.benchmark not in FULL_ONLY]),
        "",
    ]
    if failures:
        lines += ["Failed benchmarks (no rows above): " + "; ".join(f"`{k}`: {v}" for k, v in failures.items()), ""]
    lines += [scale_section(), benchmarks_section(read_cuda_payload()), "## What each benchmark measures", ""]
    for name, (script, what) in BENCHMARKS.items():
        lines.append(f"- `{name}` (`bench/{script}`, results in `bench/results/{RESULT_FILE[name]}.json`): {what}. "
                     f"The script's docstring states the exact cases.")
    return "\n".join(lines) + "\n"


def scale_section() -> str:
    """BENCHMARKS.md's "Scale" section: the tables of the full-only benchmarks from their latest result files,
    with the command that made each and the load average around its runs."""
    lines = ["## Scale", "",
             "`eval.py` runs in processes of their own on the CIFAR-10 test JPEGs (`../shared/data`), shipped small CLIP,",
             "clean + 2-iteration APGD-CE; run by `bench/run.py --profile full` or alone. Timing on a machine shared with",
             "other work is noisy: the load average is recorded with each figure.", ""]
    for name in FULL_ONLY:
        path = RESULTS / f"{RESULT_FILE[name]}.json"
        if not path.exists():
            lines += [f"`bench/{BENCHMARKS[name][0]}` has not run yet.", ""]
            continue
        data = json.loads(path.read_text())
        rows = [Headline(**{k: v for k, v in h.items() if k != "status"}) for h in data.get("headline", [])]
        loads = data.get("load_avg_1m_after_each_run") or [x for r in data.get("rows", []) for x in r.get("load_avg_1m", [])]
        lines += [f"`{data['command']}` (profile `{data.get('profile', '?')}`; 1-minute load average around the runs: "
                  f"{', '.join(str(x) for x in loads) or '?'}; {data['machine']['cpu_count']} cores):", "",
                  markdown_table(rows), ""]
        resume = data.get("resume")
        if resume:
            lines += [f"Kill and resume at {resume['images']} images: SIGTERM after {resume['batches_done_at_kill']} "
                      f"finished batches (exit {resume['killed_exit']}), resumed with `resume=true`: killed "
                      f"{resume['killed']['wall_s']:.1f} s + resumed {resume['resumed']['wall_s']:.1f} s against "
                      f"{resume['uninterrupted_wall_s']:.1f} s uninterrupted ({resume['overhead']:+.0%}); "
                      f"samples.csv identical: {resume['identical_samples_csv']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=("quick", "full"), default="quick")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {list(BENCHMARKS)} (default: all; "
                                                 f"{list(FULL_ONLY)} only with --profile full)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every benchmark (default: torch's choice)")
    ap.add_argument("--no-markdown", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite BENCHMARKS.md from bench/results/summary.json without measuring anything")
    args = ap.parse_args(argv)
    if args.markdown_only:
        summary = json.loads((RESULTS / "summary.json").read_text())
        rows = [Headline(**{k: v for k, v in h.items() if k != "status"}) for h in summary["headline"]]
        (REPO / "BENCHMARKS.md").write_text(render_markdown(rows, summary["seconds"], summary["failures"], summary["profile"],
                                                           summary["machine"], summary["total_seconds"]))
        print("written: BENCHMARKS.md (from bench/results/summary.json)")
        return 0
    default = [n for n in BENCHMARKS if args.profile == "full" or n not in FULL_ONLY]
    names = [n for n in args.only.split(",") if n] if args.only else default
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {unknown}; valid: {list(BENCHMARKS)}")
    start = time.perf_counter()
    rows, durations, failures = [], {}, {}
    for name in names:
        payload, seconds, error = run_one(name, args.profile, args.threads)
        durations[name] = seconds
        if error:
            failures[name] = error
            continue
        rows += [Headline(**{k: v for k, v in h.items() if k != "status"}) for h in payload.get("headline", [])]
    total = time.perf_counter() - start
    machine = machine_info()
    summary = {"profile": args.profile, "benchmarks": names, "seconds": durations, "total_seconds": total,
               "failures": failures, "machine": machine, "headline": [r.as_dict() for r in rows]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
    print(markdown_table(rows))
    print(f"\nsuite wall clock {total / 60:.1f} min; per benchmark: " + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items()))
    for status in ("missed", "undecided"):
        hit = [r for r in rows if r.status == status]
        if hit:
            print(f"{status} goals: " + "; ".join(f"{r.figure}: {format_measured(r)} vs <= {r.goal}x ({r.why})" for r in hit))
    if not args.no_markdown and set(names) >= set(BENCHMARKS) - set(FULL_ONLY):
        (REPO / "BENCHMARKS.md").write_text(render_markdown(rows, durations, failures, args.profile, machine, total))
        print("written: BENCHMARKS.md, bench/results/summary.json")
    else:
        print("written: bench/results/summary.json (BENCHMARKS.md is rewritten only by a run of every benchmark)")
    for name, error in failures.items():
        print(f"FAILED {name}: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
