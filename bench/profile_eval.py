"""Profile one evaluation: where its time goes, by torch operator and by Python function (not a test).

    .venv/bin/python bench/profile_eval.py [eval.py overrides ...] [--name NAME] [--rows 25]

The default profiles the slowest path of the main job (``make run``): CLIPure-Diff with the shipped prior on the
shipped small CLIP under APGD-CE with EOT (4 draws per gradient), 4 images, 5 iterations. It runs ``eval.main``
once to warm up, then once under ``torch.profiler`` (operators, self CPU time) and ``cProfile`` (Python functions,
cumulative time), and writes both tables to ``bench/results/profile_<name>.txt``. Profilers slow small operators
down, so read shares, not absolute times.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import REPO, RESULTS, log, machine_info, repo_relative  # noqa: E402

SLOWEST = ["clip=cifar10_small", "purifier=clipure_diff_cifar10_small", "data.num_samples=4", "data.batch_size=2",
           "attack.run=[apgd_ce@eot]", "attack.eot_samples=4", "attack.n_iter=5", "attack.checks=false", "logger=none"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*", help="eval.py overrides (default: the main job's slowest path)")
    ap.add_argument("--name", default="slowest_path", help="output: bench/results/profile_<name>.txt")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    import eval as eval_script

    overrides = args.overrides or SLOWEST
    with tempfile.TemporaryDirectory() as tmp:
        log("warm-up run ...")
        eval_script.main([*overrides, f"run_dir={tmp}/warmup"])
        log("profiled run ...")
        python = cProfile.Profile()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            python.enable()
            eval_script.main([*overrides, f"run_dir={tmp}/profiled"])
            python.disable()
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    stream = io.StringIO()
    pstats.Stats(python, stream=stream).sort_stats("cumulative").print_stats(args.rows)
    machine = machine_info()
    text = (f"eval.py {' '.join(overrides)}\nmachine: {machine['cpu']}, {machine['cpu_count']} cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, commit {machine['git_commit']}\n\n"
            f"== torch operators by self CPU time\n{ops}\n== Python functions by cumulative time\n{stream.getvalue()}")
    out = RESULTS / f"profile_{args.name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(repo_relative(text).replace(sys.prefix + os.sep, ".venv" + os.sep))
    print(ops)
    print(f"written: {os.path.relpath(out, REPO)}")


if __name__ == "__main__":
    main()
