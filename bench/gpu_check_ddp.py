"""GPU check part ``ddp``: the evaluation in 2 processes against one process (bench/gpu_check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.harness import REPO
from bench.gpu_check_common import Clock, Context, DDP_ATTACK_MISMATCHES, Entry, run_case
from bench.gpu_check_eval import eval_args, run_eval_main


# ------------------------------------------------------------------------------------------------------ part: ddp
def compare_runs(one: Path, two: Path, samples: int) -> Entry:
    """Per-sample predictions of a 2-process run (``two``) against a 1-process run (``one``), from ``samples.csv``."""
    from bench.pipeline_throughput import read_predictions

    a, b = read_predictions(one), read_predictions(two)
    columns = [c for c in next(iter(a.values())) if c.startswith("adv_pred/")] if a else []
    clean_diff = sum(a[i]["clean_pred"] != b.get(i, {}).get("clean_pred") for i in a)
    attack_diff = {c: sum(a[i][c] != b.get(i, {}).get(c) for i in a) for c in columns}
    ok = (len(a) == len(b) == samples and set(a) == set(b) and clean_diff == 0 and bool(columns)
          and all(n <= DDP_ATTACK_MISMATCHES for n in attack_diff.values()))
    detail = (f"samples {len(b)} (2 processes) vs {len(a)} (1 process) of {samples}; clean predictions differing: "
              f"{clean_diff}; per attack: {attack_diff}")
    return Entry("ddp", "2-process evaluation equals 1 process", "pass" if ok else "fail", value=float(clean_diff),
                 unit="differing clean predictions",
                 limit=f"every sample once, clean identical, <= {DDP_ATTACK_MISMATCHES} differing per attack",
                 detail=detail)


def part_ddp(ctx: Context, clock: Clock) -> None:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if ctx.devices.cuda and gpus < 2:
        ctx.report.add(Entry("ddp", "2-process evaluation", "skip", detail=f"needs 2 or more visible GPUs; {gpus} visible"))
        return
    if not ctx.devices.cuda and not ctx.ddp_cpu:
        ctx.report.add(Entry("ddp", "2-process evaluation", "skip",
                             detail="CPU smoke: no second device (--ddp-cpu runs it with 2 CPU processes)"))
        return
    samples = ctx.profile["ddp_samples"]
    # Per-sample purification and attacks (norm_scope=sample, attack.batch_size=1): batches differ between 1 and 2
    # processes, results must not.
    knobs = dict(norm_scope="sample", batch_size=None)
    one_trainer, two_trainer = (["trainer=gpu"], ["trainer=ddp", "trainer.devices=2"]) if ctx.devices.cuda \
        else (["trainer=cpu"], ["trainer=ddp_cpu"])
    dirs = {k: ctx.work / "ddp" / k for k in ("one", "two")}

    def one():
        run_eval_main([*eval_args(ctx, "clipure_cos", dirs["one"], samples, one_trainer, **knobs), "attack.batch_size=1"])
        return []

    def two():
        # A subprocess: Lightning's ddp launcher starts the other ranks by re-running the command line.
        cmd = [sys.executable, str(REPO / "eval.py"),
               *eval_args(ctx, "clipure_cos", dirs["two"], samples, two_trainer, **knobs), "attack.batch_size=1"]
        timeout = max(clock.left(), 1.0)
        try:
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Entry("ddp", "2-process evaluation", "skip", detail=f"did not finish within the part's {timeout:.0f} s")
        if done.returncode != 0:
            raise RuntimeError(f"eval.py {' '.join(two_trainer)} exited with {done.returncode}: "
                               f"{' '.join((done.stdout + done.stderr).split()[-80:])}")
        return compare_runs(dirs["one"], dirs["two"], samples)

    seconds = run_case(ctx, clock, "1-process evaluation", one)
    if (dirs["one"] / "samples.csv").is_file():
        run_case(ctx, clock, "2-process evaluation", two, seconds)
