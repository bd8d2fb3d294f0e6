"""Run the benchmark suite, print one table of ratios against their goals, and rewrite BENCHMARKS.md.

    make bench                                  # = .venv/bin/python bench/run.py (quick profile, < 10 min on 2 cores)
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

from bench.harness import REPO, RESULTS, Headline, log, machine_info, markdown_table  # noqa: E402
from bench.gpu_check import benchmarks_section, read_cuda_payload  # noqa: E402

BENCHMARKS = {  # name -> (script, what it measures)
    "purification": ("purification_overhead.py", "each purifier's forward and one attack gradient, as ratios to plain CLIP"),
    "attack": ("attack_overhead.py", "the AutoAttack callback against plain pyautoattack; APGD through CLIPure-Cos (full) "
                                     "against APGD on plain CLIP"),
    "scaling": ("scaling.py", "cost in the number of steps and the batch size; peak memory of full-gradient attacks"),
    "pipeline": ("pipeline_throughput.py", "end-to-end samples/s of the main job and where the time goes; text head "
                                           "cold vs cached; 2 vs 1 DDP processes"),
}
RESULT_FILE = {"purification": "purification_overhead", "attack": "attack_overhead", "scaling": "scaling",
               "pipeline": "pipeline_throughput"}


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
    return json.loads(out.read_text()), seconds, None


def render_markdown(rows: list[Headline], durations: dict[str, float], failures: dict[str, str], profile: str,
                    machine: dict, total: float) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every figure is a ratio of two measurements taken side by side in one process: the cases of a comparison",
        "run interleaved, in a shuffled order, after a warm-up, and each figure is the median of the repetitions",
        "(`bench/harness.py`). Absolute seconds are in `bench/results/*.json` but are noise on shared machines.",
        "`status` compares a figure with its goal; a missed goal says why in the note. Spread between suite runs on",
        "these shared cores: end-to-end ratios of cases shorter than ~0.2 s (small-CLIP forwards and single attack",
        "gradients) move by up to about 10%; purifier-alone ratios, APGD runs and memory move by a few percent.",
        "Regenerate this file with",
        "`make bench` (the quick profile, under 10 minutes on 2 CPU cores) or",
        "`.venv/bin/python bench/run.py --profile full` (larger batches, ViT-B-32 at batch 32, more repetitions; much",
        "longer). Where one evaluation spends its time, by operator and Python function:",
        "`.venv/bin/python bench/profile_eval.py [eval.py overrides]` (default: the main job's slowest path).",
        "",
        f"Profile `{profile}`, measured on: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, CUDA: {machine['cuda']}, commit `{machine['git_commit']}`, load average at "
        f"the end {machine['load_avg_1m_at_end']}. Suite wall clock: {total / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in durations.items())}).",
        "",
        markdown_table(rows),
        "",
    ]
    if failures:
        lines += ["Failed benchmarks (no rows above): " + "; ".join(f"`{k}`: {v}" for k, v in failures.items()), ""]
    lines += [benchmarks_section(read_cuda_payload()), "## What each benchmark measures", ""]
    for name, (script, what) in BENCHMARKS.items():
        lines.append(f"- `{name}` (`bench/{script}`, results in `bench/results/{RESULT_FILE[name]}.json`): {what}. "
                     f"The script's docstring states the exact cases.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=("quick", "full"), default="quick")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {list(BENCHMARKS)}")
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
    names = [n for n in args.only.split(",") if n]
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
    missed = [r for r in rows if r.status == "MISSED"]
    if missed:
        print("missed goals: " + "; ".join(f"{r.figure}: {r.ratio:.3f}x > {r.goal}x ({r.why})" for r in missed))
    if not args.no_markdown and set(names) == set(BENCHMARKS):
        (REPO / "BENCHMARKS.md").write_text(render_markdown(rows, durations, failures, args.profile, machine, total))
        print("written: BENCHMARKS.md, bench/results/summary.json")
    else:
        print("written: bench/results/summary.json (BENCHMARKS.md is rewritten only by a run of every benchmark)")
    for name, error in failures.items():
        print(f"FAILED {name}: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
