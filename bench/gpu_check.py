"""GPU check: correctness on a CUDA device and the GPU figures of the benchmarks, in one bounded run (not a test).

    make gpu-check                                  # = .venv/bin/python bench/gpu_check.py (default --budget-s 480)
    .venv/bin/python bench/gpu_check.py --only parity,precision
    .venv/bin/python bench/gpu_check.py --cpu-smoke # the same logic on the CPU at toy sizes (what CI runs)
    .venv/bin/python bench/gpu_check.py --markdown-only   # re-render the reports and BENCHMARKS.md's GPU section
    .venv/bin/python bench/gpu_check.py --count-ops ViT-B-32   # the operation counts behind the runtime estimate

Parts, in the order they run (each gets ``share x --budget-s`` seconds plus what earlier parts left unused):

* ``gpu_tests``: ``pytest -m gpu`` in a subprocess; one entry per test (passed, failed, or skipped with pytest's reason).
* ``parity``: the same inputs through every purifier (CLIPure-Cos, CLIPure-Diff, DiffPure, pixel CLIPure, JPEG, bit
  depth, Gaussian noise) under every attack gradient mode (``purifier``, ``as_released``, ``full``, ``bpda_identity``,
  ``eot``) on the CPU and on the device (the tiny CLIP for every purifier; ViT-B-32 with the released prior
  architecture for Cos and Diff): a classifier built on the CPU, as ``eval.py`` builds it, and a copy moved to the
  device. Compared: logits (largest difference relative to the largest logit, tolerance ``TOLERANCES['logits']``)
  and the input gradient of the cross-entropy (norm of the difference relative to the larger of the CPU gradient's
  and plain CLIP's, tolerance ``TOLERANCES['grad']``; plain CLIP's norm keeps masked, ~1e-8 gradients comparable).
  TF32 is off during the comparison (cuDNN convolutions use it by default, with ~1e-3 relative error). Random
  purifiers draw from ``torch.Generator``s on the CPU seeded alike on both sides: every purifier draws on its
  generator's device and moves the numbers to the data's device (``purifiers/base.py``), so both sides see the same
  draws. ``eot`` averages ``eot_draws`` gradients, one seed each. The classifier's own path (a generator on the data's
  device) is checked per random purifier: the same seed gives the same logits, another seed other logits.
* ``precision``: the released precision on the device: ``clip.precision=mixed_fp16`` (attacked as is,
  ``AttackPrecision.model``) through CLIPure-Cos; ``as_released`` must give an input gradient that is exactly zero in
  every element (fp16 underflow), ``full`` a finite, non-zero one.
* ``eval``: ``eval.py`` in this process on the device (``trainer=gpu``), one run per purifier on the shipped CIFAR-10
  CLIP (it classifies most images correctly, so the attacks have work to do), with the quick attack set plus EOT
  (every gradient mode, transfer and Square, few iterations) and the masking checks on: passes when the run finishes
  (no device-mismatch error anywhere in the test loop, attacks or checks) with every sample scored by every attack
  and the first-batch checks recorded.
* ``ddp``: with 2 or more visible GPUs, the same evaluation in 2 processes (``eval.py trainer=ddp
  trainer.devices=2``, a subprocess) against one process: every sample counted once, identical clean predictions,
  at most ``DDP_ATTACK_MISMATCHES`` differing per attack (GPU backward kernels are not bit-deterministic); skipped
  with the reason otherwise.
* ``throughput``: ViT-B-32 and ViT-L-14 with random weights, CLIPure-Diff with the released prior architecture
  (``conf/purifier/clipure_diff.yaml``, random weights, dim = the CLIP's embedding dim): images/s of the clean
  forward, the CLIPure-Cos and CLIPure-Diff forward, and one attack step (logits + cross-entropy + input gradient)
  on plain CLIP and through Cos and Diff with the exact (``full``) gradient; interleaved repetitions, medians
  (``bench/harness.py``).
* ``memory``: peak memory of one full-gradient CLIPure-Diff attack step (``torch.cuda.max_memory_allocated``, reset
  before each case, with only that model resident) at T = 2, 10, 20 steps, step checkpointing on and off, batch 2
  and 32; the check: with checkpointing, the memory a step adds grows by at most ``MEMORY_FLAT_RATIO`` of the growth
  without it (T = 2 -> 20). The T and checkpointing variants share one prior (the purifier's settings are replaced,
  as ``attacks.gradient_modes.with_grad_mode`` does for the gradient mode): building a 250M-parameter prior per case
  would cost more than the measurements.

Budget: before each case the script compares its expected seconds (the previous similar case's) with what is left of
the part and of the whole run; a case that does not fit is recorded as skipped, with the reason. A case already
running is never interrupted (subprocesses get the time left as their timeout), so the run can overrun by at most one
case; the verdict line states the wall clock.

Outputs: ``bench/results/gpu_check.json`` (every entry: part, name, status pass/fail/skip/measured, value, unit,
limit, detail, seconds), ``bench/results/gpu_check.md`` (the same as tables) and the GPU section of BENCHMARKS.md; a
last line ``gpu-check PASS|FAIL: ...`` with the counts. ``--cpu-smoke`` (``PROFILES['cpu_smoke']``, budget 90 s, ~25 s
used on 2 CPU cores) writes ``gpu_check_cpu_smoke.{json,md}`` instead and leaves BENCHMARKS.md alone: there the CPU
stands in for the device (so parity is exact), the models are the tiny CLIP (``conf/clip/tiny_random.yaml``) with the
tiny prior and UNet and fewer purification steps, pytest runs only ``tests/bench/test_gpu_check.py``, the eval runs cover two
purifiers (the tiny CLIP classifies almost nothing correctly, so the attacks have little to do), memory is the peak
resident set (``VmHWM``, T = 1 and 3, batch 2 and 4; its flatness not judged: allocator noise at toy sizes) and DDP is
skipped unless ``--ddp-cpu`` (2 CPU processes).

Code: this file is the entry point (the command line, ``run_check``, the part table); ``gpu_check_common.py`` holds
the settings, the report, the budget, the devices and the config helpers; one module per part
(``gpu_check_<part>.py``: gpu_tests, parity, precision, eval, ddp, throughput, memory); ``gpu_check_ops.py`` the
operation counts, ``gpu_check_render.py`` the reports.

Exit status: 0 PASS, 1 FAIL (some check failed), 2 bad arguments, 3 no CUDA device (nothing checked, nothing
written; ``--cpu-smoke`` and ``--markdown-only`` need none).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # small ops crawl when OpenMP threads spin on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import REPO, RESULTS, log  # noqa: E402

# The parts and their helpers; names not used below are re-exported for the tests and bench/run.py.
from bench.gpu_check_common import (ALL_PURIFIERS, Budget, Clock, Context, DEFAULT_BUDGET_S, Devices, EXIT_FAIL,  # noqa: E402
                                    EXIT_NO_CUDA, EXIT_PASS, Entry, GRAD_MODES, MODELS, PARTS, PROFILES,
                                    PURIFIER_CONFIG, PartRecord, Report, STATUSES, describe_error, purifier_args,
                                    verdict_line)
from bench.gpu_check_gpu_tests import parse_junit, part_gpu_tests  # noqa: E402
from bench.gpu_check_parity import compare, parity_entry, part_parity  # noqa: E402
from bench.gpu_check_precision import part_precision  # noqa: E402
from bench.gpu_check_eval import part_eval  # noqa: E402
from bench.gpu_check_ddp import compare_runs, part_ddp  # noqa: E402
from bench.gpu_check_throughput import THROUGHPUT_CASES, part_throughput  # noqa: E402
from bench.gpu_check_memory import flatness_entry, part_memory  # noqa: E402
from bench.gpu_check_ops import count_ops  # noqa: E402
from bench.gpu_check_render import (benchmarks_section, read_cuda_payload, render_markdown, replace_section,  # noqa: E402
                                    update_benchmarks_md, write_reports)

PART_FUNCTIONS: dict[str, Callable[[Context, Clock], None]] = {
    "gpu_tests": part_gpu_tests, "parity": part_parity, "precision": part_precision, "eval": part_eval, "ddp": part_ddp,
    "throughput": part_throughput, "memory": part_memory,
}


# --------------------------------------------------------------------------------------------------------- main
_QUIETED = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "auto-attack", "clipure_lit",
            "diffusers", "root")


def quiet_libraries() -> dict[str, int]:
    """Progress of this script only: the libraries' INFO lines and the masking checks' expected warnings are muted.
    Returns the previous levels, for :func:`restore_levels` (``main`` also runs inside test processes)."""
    import pytorch_lightning  # noqa: F401 - sets its loggers' levels on import: import first, then override

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    previous = {name: logging.getLogger(name).level for name in _QUIETED}
    for name in _QUIETED:
        logging.getLogger(name).setLevel(logging.ERROR)
    return previous


def restore_levels(previous: dict[str, int]) -> None:
    for name, level in previous.items():
        logging.getLogger(name).setLevel(level)


def run_check(mode: str, budget_s: float, only: list[str], work: Path, ddp_cpu: bool = False) -> dict:
    """Run the parts named in ``only`` under ``budget_s``; returns the payload (without machine facts)."""
    import torch

    profile = PROFILES[mode]
    devices = Devices(torch.device("cuda", 0) if mode == "cuda" else torch.device("cpu"), torch.device("cpu"))
    report = Report(mode, budget_s)
    ctx = Context(profile, devices, work, report, ddp_cpu=ddp_cpu)
    budget = Budget(budget_s, PARTS)
    for name, _ in PARTS:
        if name not in only:
            report.add(Entry(name, name, "skip", detail="not selected (--only)"))
            report.parts.append(PartRecord(name, 0.0, note="not selected"))
            continue
        clock = budget.open(name)
        log(f"== {name}: {clock.allowance_s:.0f} s")
        try:
            PART_FUNCTIONS[name](ctx, clock)
        except Exception as exc:  # noqa: BLE001 - a broken part is a failed check, the others still run
            report.add(Entry(name, f"{name} (part)", "fail", detail=describe_error(exc), seconds=clock.elapsed()))
        report.parts.append(PartRecord(name, clock.allowance_s, clock.elapsed()))
        budget.close(clock)
    ctx.keep_only(None)
    return report.payload(time.perf_counter() - budget.start, devices.describe(), profile)


def main(argv: list[str] | None = None) -> int:
    levels = {name: logging.getLogger(name).level for name in _QUIETED}
    try:
        return _main(argv)
    finally:
        restore_levels(levels)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"total seconds (default {DEFAULT_BUDGET_S['cuda']:.0f}; "
                         f"{DEFAULT_BUDGET_S['cpu_smoke']:.0f} with --cpu-smoke)")
    ap.add_argument("--cpu-smoke", action="store_true", help="run the script's logic on the CPU at toy sizes")
    ap.add_argument("--markdown-only", action="store_true",
                    help="re-render gpu_check.md and BENCHMARKS.md's GPU section from bench/results/gpu_check.json")
    ap.add_argument("--only", default=",".join(p for p, _ in PARTS),
                    help=f"comma-separated subset of {[p for p, _ in PARTS]}")
    ap.add_argument("--out-dir", type=Path, default=RESULTS,
                    help="where the JSON and Markdown reports go (default bench/results)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--ddp-cpu", action="store_true", help="with --cpu-smoke: run the ddp part with 2 CPU processes")
    ap.add_argument("--count-ops", metavar="MODEL", choices=sorted(MODELS), default=None,
                    help="print the operation counts behind the README's runtime estimate (CPU, slow) and exit")
    ap.add_argument("--benchmarks-md", type=Path, default=REPO / "BENCHMARKS.md", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    only = [p for p in args.only.split(",") if p]
    unknown = sorted(set(only) - {p for p, _ in PARTS})
    if unknown:
        ap.error(f"--only: unknown part(s) {unknown}; valid: {[p for p, _ in PARTS]}")
    if args.count_ops:
        quiet_libraries()
        print(json.dumps(count_ops(args.count_ops), indent=2))
        return EXIT_PASS
    if args.markdown_only:
        payload = read_cuda_payload(args.out_dir / "gpu_check.json")
        if payload is not None:
            (args.out_dir / "gpu_check.md").write_text(render_markdown(payload))
        path = update_benchmarks_md(payload, args.benchmarks_md)
        print(f"written: {os.path.relpath(path, REPO)} (GPU section{'' if payload else ': not run on a GPU yet'})")
        return EXIT_PASS

    import torch

    mode = "cpu_smoke" if args.cpu_smoke else "cuda"
    if mode == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device (torch.cuda.is_available() is False): nothing was checked or written. Run it on a "
              "machine with an NVIDIA GPU, or use --cpu-smoke to exercise the script on the CPU at toy sizes. "
              f"Exit status {EXIT_NO_CUDA}.", file=sys.stderr)
        return EXIT_NO_CUDA
    budget_s = args.budget_s if args.budget_s is not None else DEFAULT_BUDGET_S[mode]
    quiet_libraries()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()  # eval runs with trainer.num_threads change it process-wide
    try:
        payload = run_check(mode, budget_s, only, work, ddp_cpu=args.ddp_cpu)
    finally:
        torch.set_num_threads(threads)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    stem = "gpu_check" if mode == "cuda" else "gpu_check_cpu_smoke"
    json_path, md_path = write_reports(payload, args.out_dir, stem)
    written = [json_path, md_path]
    if mode == "cuda" and args.out_dir.resolve() == RESULTS.resolve():
        written.append(update_benchmarks_md(read_cuda_payload(json_path), args.benchmarks_md))
    print("written: " + ", ".join(os.path.relpath(p, REPO) if str(p).startswith(str(REPO)) else str(p) for p in written))
    print(verdict_line(payload))
    return EXIT_FAIL if payload["verdict"] == "FAIL" else EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())
