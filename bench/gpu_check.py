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

Exit status: 0 PASS, 1 FAIL (some check failed), 2 bad arguments, 3 no CUDA device (nothing checked, nothing
written; ``--cpu-smoke`` and ``--markdown-only`` need none).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # small ops crawl when OpenMP threads spin on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (REPO, RESULTS, log, median, reset_peak_rss, status_kb, stdout_redirected,  # noqa: E402
                           time_round_robin, write_result)

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_NO_CUDA = 0, 1, 2, 3

# How each purifier is selected and every purifier-specific config key this script sets, in one place: a rename of
# the purifier config keys changes the strings here and nothing else. Groups are the shipped conf/purifier/ files, per
# model kind: "toy" (tiny random CLIP, dim 64), "small" (the shipped CIFAR-10 CLIP and prior), "real" (ViT-B-32 /
# ViT-L-14 sizes, random weights).
PURIFIER_CONFIG: dict[str, dict[str, Any]] = {
    "clipure_cos": {"label": "CLIPure-Cos", "groups": {"toy": "clipure_cos", "small": "clipure_cos", "real": "clipure_cos"},
                    "keys": {"batch_size": "purifier.clipure_cos.batch_size", "norm_scope": "purifier.clipure_cos.norm_scope"}},
    "clipure_diff": {"label": "CLIPure-Diff",
                     "groups": {"toy": "clipure_diff_tiny", "small": "clipure_diff_cifar10_small", "real": "clipure_diff"},
                     "keys": {"batch_size": "purifier.clipure_diff.batch_size", "num_steps": "purifier.clipure_diff.num_steps",
                              "gradient_checkpointing": "purifier.clipure_diff.gradient_checkpointing",
                              "prior_dim": "purifier.clipure_diff.prior.dim",
                              "prior_checkpoint": "purifier.clipure_diff.prior.checkpoint"}},
    "diffpure": {"label": "DiffPure", "groups": {"toy": "diffpure_tiny", "small": "diffpure_tiny", "real": "diffpure_tiny"},
                 "keys": {"num_steps": "purifier.diffpure.num_steps"}},
    "clipure_pixel": {"label": "pixel CLIPure",
                      "groups": {"toy": "clipure_pixel", "small": "clipure_pixel", "real": "clipure_pixel"},
                      "keys": {"num_steps": "purifier.clipure_pixel.num_steps"}},
    "jpeg": {"label": "JPEG", "groups": {"toy": "jpeg", "small": "jpeg", "real": "jpeg"}, "keys": {}},
    "bit_depth": {"label": "bit depth", "groups": {"toy": "bit_depth", "small": "bit_depth", "real": "bit_depth"}, "keys": {}},
    "gaussian_noise": {"label": "Gaussian noise",
                       "groups": {"toy": "gaussian_noise", "small": "gaussian_noise", "real": "gaussian_noise"}, "keys": {}},
}

# CLIP models by name: eval.py overrides, input size, purifier kind (PURIFIER_CONFIG groups), embedding dim.
MODELS: dict[str, dict[str, Any]] = {
    "toy": {"args": ["clip=tiny_random"], "size": 32, "kind": "toy", "dim": 64},
    "small": {"args": ["clip=cifar10_small"], "size": 32, "kind": "small", "dim": 128},
    "ViT-B-32": {"args": ["clip.arch=ViT-B-32", "clip.pretrained=null", "clip.model_config=null", "data.image_size=224"],
                 "size": 224, "kind": "real", "dim": 512},
    "ViT-L-14": {"args": ["clip.arch=ViT-L-14", "clip.pretrained=null", "clip.model_config=null", "data.image_size=224"],
                 "size": 224, "kind": "real", "dim": 768},
}
# A one-prompt blank anchor keeps text work small; purification cost and device behaviour do not depend on it.
COMMON = ["prompts=cifar10", "prompts.blank_prompt=a photo of a ."]
ALL_PURIFIERS = tuple(PURIFIER_CONFIG)

PROFILES: dict[str, dict[str, Any]] = {
    "cuda": dict(pytest_targets=["tests"], parity={"toy": ALL_PURIFIERS, "ViT-B-32": ("clipure_cos", "clipure_diff")},
                 parity_batch=2, eot_draws=2, precision_model="ViT-B-32", eval_model="small", eval_purifiers=ALL_PURIFIERS,
                 eval_samples=4, eval_n_iter=2, eval_n_queries=20, ddp_samples=8, models=("ViT-B-32", "ViT-L-14"),
                 throughput_batch=32, reps=3, memory_steps=(2, 10, 20), memory_batches=(2, 32), parity_knobs={}),
    "cpu_smoke": dict(pytest_targets=["tests/bench/test_gpu_check.py"], parity={"toy": ALL_PURIFIERS}, parity_batch=2, eot_draws=2,
                      precision_model="toy", eval_model="toy", eval_purifiers=("clipure_cos", "gaussian_noise"),
                      eval_samples=2, eval_n_iter=1, eval_n_queries=5, ddp_samples=4, models=("toy",), throughput_batch=4,
                      reps=2, memory_steps=(1, 3), memory_batches=(2, 4),
                      parity_knobs={"clipure_diff": {"num_steps": 3}, "diffpure": {"num_steps": 1},
                                    "clipure_pixel": {"num_steps": 2}}),
}
# (part, share of --budget-s). Correctness first, measurements last.
PARTS: tuple[tuple[str, float], ...] = (("gpu_tests", 0.12), ("parity", 0.14), ("precision", 0.04), ("eval", 0.20),
                                        ("ddp", 0.10), ("throughput", 0.22), ("memory", 0.18))
DEFAULT_BUDGET_S = {"cuda": 480.0, "cpu_smoke": 90.0}  # the smoke needs ~25 s on 2 CPU cores: its budget is a guard
TOLERANCES = {"logits": 1e-4, "grad": 1e-3, "reproducible": 1e-6}
DDP_ATTACK_MISMATCHES = 1
MEMORY_FLAT_RATIO = 0.10
GRAD_MODES = ("purifier", "as_released", "full", "bpda_identity", "eot")
STATUSES = ("pass", "fail", "skip", "measured")


# --------------------------------------------------------------------------------------------------- the report
@dataclass
class Entry:
    """One line of the report. ``status``: ``pass`` / ``fail`` (a check), ``measured`` (a figure), ``skip`` (not run);
    ``fail`` and ``skip`` must say why in ``detail``. ``limit``: the tolerance or goal a check used."""

    part: str
    name: str
    status: str
    value: float | None = None
    unit: str = ""
    limit: str = ""
    detail: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")
        if self.status in ("fail", "skip") and not self.detail.strip():
            raise ValueError(f"a {self.status} entry must say why ({self.part}: {self.name})")


@dataclass
class PartRecord:
    name: str
    budget_s: float
    seconds: float = 0.0
    note: str = ""


class Report:
    """Entries and part records of one run; the verdict is FAIL when any check failed."""

    def __init__(self, mode: str, budget_s: float) -> None:
        self.mode, self.budget_s = mode, float(budget_s)
        self.entries: list[Entry] = []
        self.parts: list[PartRecord] = []

    def add(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        mark = {"pass": "ok", "fail": "FAIL", "skip": "skip", "measured": "--"}[entry.status]
        value = "" if entry.value is None else f" {entry.value:.4g} {entry.unit}".rstrip()
        log(f"  [{mark}] {entry.part}: {entry.name}{value}{'  (' + entry.detail + ')' if entry.detail else ''}")
        return entry

    def counts(self) -> dict[str, int]:
        return {s: sum(e.status == s for e in self.entries) for s in STATUSES}

    @property
    def verdict(self) -> str:
        return "FAIL" if self.counts()["fail"] else "PASS"

    def payload(self, elapsed_s: float, device: dict, profile: dict) -> dict[str, Any]:
        return {"mode": self.mode, "verdict": self.verdict, "counts": self.counts(), "budget_s": self.budget_s,
                "elapsed_s": elapsed_s, "device": device, "tolerances": TOLERANCES,
                "settings": {k: (dict(v) if isinstance(v, dict) else v) for k, v in profile.items()},
                "parts": [asdict(p) for p in self.parts], "entries": [asdict(e) for e in self.entries]}


def verdict_line(payload: dict) -> str:
    c = payload["counts"]
    return (f"gpu-check {payload['verdict']}: {c['pass']} passed, {c['fail']} failed, {c['skip']} skipped, "
            f"{c['measured']} measured in {payload['elapsed_s']:.0f} s (budget {payload['budget_s']:.0f} s, "
            f"{'CUDA' if payload['mode'] == 'cuda' else 'CPU smoke'})")


# --------------------------------------------------------------------------------------------------- the budget
class Clock:
    """The time of one part: ``allowance_s`` from its start, never past the end of the whole run."""

    def __init__(self, part: str, allowance_s: float, run_left: Callable[[], float]) -> None:
        self.part, self.allowance_s, self._run_left = part, max(0.0, allowance_s), run_left
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return min(self.allowance_s - self.elapsed(), self._run_left())

    def skip_reason(self, expected_s: float = 0.0) -> str | None:
        """Why a case expected to take ``expected_s`` must not start now, or None."""
        left = self.left()
        if left > 0 and expected_s <= left:
            return None
        if self._run_left() <= left or self._run_left() <= 0:
            return f"run budget spent: {max(self._run_left(), 0):.0f} s left, {expected_s:.0f} s expected (--budget-s)"
        return (f"part budget spent: {max(left, 0):.0f} s left of the part's {self.allowance_s:.0f} s, "
                f"{expected_s:.0f} s expected (--budget-s)")


class Budget:
    """Splits ``total_s`` between parts by their share; what a part leaves unused goes to the parts after it."""

    def __init__(self, total_s: float, shares: Iterable[tuple[str, float]]) -> None:
        self.total_s = float(total_s)
        self.shares = dict(shares)
        self.start = time.perf_counter()
        self.carry = 0.0

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.start)

    def open(self, part: str) -> Clock:
        return Clock(part, min(self.left(), self.shares[part] * self.total_s + self.carry), self.left)

    def close(self, clock: Clock) -> None:
        self.carry = max(0.0, clock.allowance_s - clock.elapsed())


# -------------------------------------------------------------------------------------------------- the devices
@dataclass
class Devices:
    """``main``: where the checks and figures run (``cuda:0``, or the CPU standing in for it in the smoke);
    ``reference``: the CPU side of the parity comparison."""

    main: Any  # torch.device
    reference: Any  # torch.device

    @property
    def cuda(self) -> bool:
        return self.main.type == "cuda"

    @property
    def memory_metric(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.cuda else "peak resident set (VmHWM)"

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.main)

    def release(self) -> None:
        """Return cached memory, so that the next case's peak counts only what it allocates (on the CPU: freed heap
        pages back to the OS, as ``bench/scaling.py`` does; glibc keeps most of them otherwise)."""
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    def allocated_mb(self) -> float:
        import torch

        return torch.cuda.memory_allocated(self.main) / 2**20 if self.cuda else status_kb("VmRSS") / 1024

    def reset_peak(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.main)
            return
        try:
            reset_peak_rss()
        except OSError as exc:
            raise Unmeasurable(f"the peak resident set cannot be reset here ({exc})") from None

    def peak_mb(self) -> float:
        import torch

        return torch.cuda.max_memory_allocated(self.main) / 2**20 if self.cuda else status_kb("VmHWM") / 1024

    def describe(self) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {"main": str(self.main), "reference": str(self.reference), "memory_metric": self.memory_metric,
                               "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}
        if self.cuda:
            props = torch.cuda.get_device_properties(self.main)
            out.update(name=props.name, capability=f"{props.major}.{props.minor}",
                       memory_gb=round(props.total_memory / 2**30, 1),
                       cuda=torch.version.cuda, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                       tf32_cudnn=torch.backends.cudnn.allow_tf32)
        return out


@dataclass
class Context:
    """What every part uses: the profile, the devices, a scratch folder, the report, built models (by name)."""

    profile: dict[str, Any]
    devices: Devices
    work: Path
    report: Report
    ddp_cpu: bool = False
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def text_cache(self) -> str:
        return f"prompts.cache_dir={self.work / 'text'}"

    def keep_only(self, model: str | None) -> None:
        """Drop every built model except ``model`` (peak memory should count one model)."""
        for name in [n for n in self.models if n != model]:
            del self.models[name]
        self.devices.release()


# ------------------------------------------------------------------------------------------------ config helpers
def purifier_args(name: str, model: str, **knobs: Any) -> list[str]:
    """eval.py overrides selecting purifier ``name`` for ``model``, plus ``knobs`` (PURIFIER_CONFIG key names)."""
    spec = PURIFIER_CONFIG[name]
    kind = MODELS[model]["kind"]
    if name == "clipure_diff" and kind == "real":  # the released prior architecture, at this CLIP's dim, random weights
        knobs = {"prior_dim": MODELS[model]["dim"], "prior_checkpoint": None, **knobs}
    unknown = set(knobs) - set(spec["keys"])
    if unknown:
        raise KeyError(f"{name}: no config key for {sorted(unknown)} in PURIFIER_CONFIG")
    return [f"purifier={spec['groups'][kind]}", *(f"{spec['keys'][k]}={config_value(v)}" for k, v in knobs.items())]


def config_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def family(ctx: Context, model: str, device, extra: Iterable[str] = ()):
    """The ``bench.builders.Defences`` of ``model`` (backbone and head built on ``device``)."""
    from bench.builders import Defences

    return Defences([*MODELS[model]["args"], *COMMON, ctx.text_cache(), *extra], device=str(device))


def inputs(batch: int, size: int, device, seed: int = 1):
    """``(x [B, 3, S, S] in [0, 1], y [B] in 0..9)`` drawn on the CPU from ``seed``, then moved to ``device``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x.to(device), y.to(device)


def describe_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:400]}"


class Unmeasurable(RuntimeError):
    """A figure this machine cannot measure (recorded as skipped, with the reason)."""


def is_unmeasurable(exc: BaseException) -> bool:
    import torch

    return (isinstance(exc, (Unmeasurable, torch.cuda.OutOfMemoryError))
            or "out of memory" in str(exc).lower())


def run_case(ctx: Context, clock: Clock, name: str, fn: Callable[[], list[Entry] | Entry], expected_s: float = 0.0) -> float:
    """Run one case unless the budget says no (then a skip entry); an exception becomes a fail entry (out of memory or
    another :class:`Unmeasurable`: a skip, the figure cannot be measured here). Returns the case's seconds."""
    reason = clock.skip_reason(expected_s)
    if reason:
        ctx.report.add(Entry(clock.part, name, "skip", detail=reason))
        return 0.0
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - every failure is a result of the check
        seconds = time.perf_counter() - start
        status = "skip" if is_unmeasurable(exc) else "fail"
        ctx.report.add(Entry(clock.part, name, status, detail=describe_error(exc), seconds=seconds))
        ctx.devices.release()
        return seconds
    seconds = time.perf_counter() - start
    for entry in out if isinstance(out, list) else [out]:
        entry.seconds = entry.seconds or seconds
        ctx.report.add(entry)
    return seconds


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for matmuls and cuDNN convolutions (restored afterwards)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def quiet_stdout():
    """Discard what is written to file descriptor 1 (eval.main's tables; the entries carry what matters), so stdout
    keeps this script's verdict. Errors still reach stderr."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        with stdout_redirected(null):
            yield
    finally:
        os.close(null)


# ------------------------------------------------------------------------------------------------ part: gpu_tests
def parse_junit(path: Path) -> list[tuple[str, str, str]]:
    """``[(test id, pass|fail|skip, message)]`` from a pytest JUnit XML file."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        status, message = "pass", ""
        for child in case:
            if child.tag in ("failure", "error"):
                lines = (child.text or "").strip().splitlines()
                status, message = "fail", child.get("message") or (lines[-1] if lines else child.tag)
            elif child.tag == "skipped" and status == "pass":
                status, message = "skip", child.get("message") or "skipped"
        rows.append((name, status, " ".join(message.split())[:400] or status))
    return rows


def part_gpu_tests(ctx: Context, clock: Clock) -> None:
    xml = ctx.work / "gpu_tests.xml"
    targets = ctx.profile["pytest_targets"]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *targets]
    timeout = clock.left()
    if timeout < 5:
        ctx.report.add(Entry("gpu_tests", "pytest -m gpu", "skip", detail=clock.skip_reason(5.0) or "no time left"))
        return
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        ctx.report.add(Entry("gpu_tests", "pytest -m gpu " + " ".join(targets), "skip",
                             detail=f"did not finish within the part's {timeout:.0f} s (--budget-s)"))
        return
    if done.returncode == 5:
        ctx.report.add(Entry("gpu_tests", "pytest -m gpu " + " ".join(targets), "skip", detail="no gpu-marked tests collected"))
        return
    rows = parse_junit(xml) if xml.is_file() else []
    if not rows:
        tail = " ".join((done.stdout + done.stderr).split()[-60:])
        ctx.report.add(Entry("gpu_tests", "pytest -m gpu " + " ".join(targets), "fail",
                             detail=f"exit status {done.returncode}, no test results: {tail}"))
        return
    for name, status, message in rows:
        ctx.report.add(Entry("gpu_tests", name, status, detail="" if status == "pass" else message))


# --------------------------------------------------------------------------------------------------- part: parity
def forward_with(view, x, generator):
    """``PurifiedZeroShotClassifier.forward`` with every draw taken from ``generator`` (the classifier itself draws
    from a generator on the data's device; one CPU generator gives both devices the same numbers)."""
    z = view.backbone.encode_image(view.pixel(x, generator=generator))  # [B, D]
    return view.head(view.latent(z, generator=generator))  # [B, K]


def logits_and_grad(view, x, y, draws: int, seed: int = 100):
    """``(logits of the first draw [B, K], d CE / d x averaged over ``draws`` [B, 3, H, W])``, both on the CPU; draw k
    comes from a CPU generator seeded ``seed + k``."""
    import torch
    import torch.nn.functional as F

    logits, grads = None, []
    for k in range(draws):
        generator = torch.Generator().manual_seed(seed + k)
        xx = x.detach().clone().requires_grad_(True)
        out = forward_with(view, xx, generator)  # [B, K]
        (grad,) = torch.autograd.grad(F.cross_entropy(out.float(), y), xx)
        grads.append(grad.detach().float().cpu())
        logits = out.detach().float().cpu() if logits is None else logits
    return logits, torch.stack(grads).mean(0)


def compare(reference: tuple, measured: tuple, plain_grad_norm: float) -> tuple[float, float]:
    """``(logit error, gradient error)`` of ``measured`` against ``reference`` (both ``(logits, grad)``), relative:
    max |dlogit| / max |logit|; ||dgrad|| / max(||grad||, ||plain CLIP's grad||). NaN when anything is not finite."""
    import math

    import torch

    (l_ref, g_ref), (l_got, g_got) = reference, measured
    if not all(torch.isfinite(t).all() for t in (l_ref, g_ref, l_got, g_got)):
        return math.nan, math.nan
    logit_err = float((l_ref - l_got).abs().max() / l_ref.abs().max().clamp_min(1e-12))
    grad_err = float((g_ref - g_got).norm() / max(float(g_ref.norm()), plain_grad_norm, 1e-30))
    return logit_err, grad_err


def parity_entry(model: str, purifier: str, mode: str, errors: tuple[float, float], device: str) -> Entry:
    logit_err, grad_err = errors
    ok = logit_err <= TOLERANCES["logits"] and grad_err <= TOLERANCES["grad"]  # False for NaN
    detail = f"logits {logit_err:.1e}, input gradient {grad_err:.1e} (cpu vs {device})"
    return Entry("parity", f"{model} {purifier} @{mode}", "pass" if ok else "fail", value=grad_err, unit="rel",
                 limit=f"logits <= {TOLERANCES['logits']:g}, gradient <= {TOLERANCES['grad']:g}",
                 detail=detail if ok else detail + ": outside tolerance (or not finite)",
                 extra={"model": model, "purifier": purifier, "mode": mode, "logit_err": logit_err, "grad_err": grad_err})


def reproducibility_entry(model: str, purifier: str, clf, x) -> Entry:
    """The classifier's own draws (a generator on the data's device): seed 7 twice agree, seed 8 differs."""
    import torch

    from clipure_lit.utils.seed import seeded

    def logits(seed: int):
        with torch.no_grad(), seeded(clf, seed):
            return clf(x).float().cpu()

    a, b, c = logits(7), logits(7), logits(8)
    scale = float(a.abs().max().clamp_min(1e-12))
    same, other = float((a - b).abs().max()) / scale, float((a - c).abs().max()) / scale
    ok = same <= TOLERANCES["reproducible"] and other > TOLERANCES["reproducible"]
    return Entry("parity", f"{model} {purifier}: draws on {x.device.type} reproducible per seed", "pass" if ok else "fail",
                 value=same, unit="rel", limit=f"same seed <= {TOLERANCES['reproducible']:g}, other seed > it",
                 detail=f"same seed {same:.1e}, other seed {other:.1e}")


def part_parity(ctx: Context, clock: Clock) -> None:
    from clipure_lit.attacks.gradient_modes import make_view
    from clipure_lit.attacks.config import AttackGradMode, AttackPrecision

    dev, ref = ctx.devices.main, ctx.devices.reference
    batch, draws = ctx.profile["parity_batch"], ctx.profile["eot_draws"]
    with exact_fp32():
        for model, purifiers in ctx.profile["parity"].items():
            if clock.skip_reason():
                for p in purifiers:
                    ctx.report.add(Entry("parity", f"{model} {p}", "skip", detail=clock.skip_reason() or "no time left"))
                continue
            fam = family(ctx, model, ref)
            x, y = inputs(batch, MODELS[model]["size"], ref)
            _, plain_grad = logits_and_grad(fam.build(["purifier=none"]), x, y, 1)
            plain_norm = float(plain_grad.norm())
            for purifier in purifiers:
                knobs = {"batch_size": None} if "batch_size" in PURIFIER_CONFIG[purifier]["keys"] else {}
                knobs.update(ctx.profile["parity_knobs"].get(purifier, {}))
                built: dict[str, Any] = {}

                def build(purifier=purifier, knobs=knobs, built=built):
                    clf = fam.build(purifier_args(purifier, model, **knobs))
                    built.update(ref=clf, dev=copy.deepcopy(clf).to(dev))  # built on the CPU, then moved, as eval.py does
                    return []

                expected = run_case(ctx, clock, f"{model} {purifier}: build and move to {dev}", build)
                if not built:
                    continue
                results: dict[tuple, tuple] = {}  # views that are the same object share their numbers
                for mode in GRAD_MODES:
                    def case(mode=mode, built=built, results=results):
                        views = [make_view(built[k], AttackGradMode(mode), AttackPrecision.fp32) for k in ("ref", "dev")]
                        n = draws if mode == "eot" else 1
                        key = (id(views[0]), n)
                        if key not in results:
                            results[key] = compare(logits_and_grad(views[0], x, y, n),
                                                   logits_and_grad(views[1], x.to(dev), y.to(dev), n), plain_norm)
                        return parity_entry(model, purifier, mode, results[key], dev.type)

                    expected = run_case(ctx, clock, f"{model} {purifier} @{mode}", case, expected) or expected
                if built and built["ref"].stochastic:
                    run_case(ctx, clock, f"{model} {purifier}: reproducible draws",
                             lambda built=built: reproducibility_entry(model, purifier, built["dev"], x.to(dev)), expected)


# ------------------------------------------------------------------------------------------------ part: precision
def part_precision(ctx: Context, clock: Clock) -> None:
    import torch
    import torch.nn.functional as F

    from clipure_lit.attacks.checks import is_half
    from clipure_lit.attacks.gradient_modes import make_view
    from clipure_lit.attacks.config import AttackGradMode, AttackPrecision

    model, dev = ctx.profile["precision_model"], ctx.devices.main
    built: dict[str, Any] = {}

    def build():
        fam = family(ctx, model, dev, ["clip.precision=mixed_fp16"])
        built["clf"] = fam.build(purifier_args("clipure_cos", model, batch_size=None))
        return []

    run_case(ctx, clock, f"{model} mixed_fp16: build", build)
    if not built:
        return
    x, y = inputs(2, MODELS[model]["size"], dev)  # the released batch size

    def grad(mode: str):
        view = make_view(built["clf"], AttackGradMode(mode), AttackPrecision.model)
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(view(xx).float(), y), xx)
        return g, is_half(view)

    def as_released():
        g, half = grad("as_released")
        nonzero = int((g != 0).sum())
        return Entry("precision", f"{model} clip.precision=mixed_fp16, CLIPure-Cos @as_released: input gradient exactly zero",
                     "pass" if nonzero == 0 and half else "fail", value=nonzero, unit="non-zero elements", limit="== 0",
                     detail=f"{nonzero} of {g.numel()} elements non-zero; fp16 encoder weights: {half}")

    def full():
        g, half = grad("full")
        finite, norm = bool(torch.isfinite(g).all()), float(g.float().norm())
        return Entry("precision", f"{model} clip.precision=mixed_fp16, CLIPure-Cos @full: input gradient non-zero",
                     "pass" if finite and norm > 0 and half else "fail", value=norm, unit="L2 norm", limit="> 0, finite",
                     detail=f"norm {norm:.3g}, finite: {finite}; fp16 encoder weights: {half}")

    seconds = run_case(ctx, clock, f"{model} mixed_fp16 @as_released", as_released)
    run_case(ctx, clock, f"{model} mixed_fp16 @full", full, seconds)


# ----------------------------------------------------------------------------------------------------- part: eval
EVAL_ATTACKS = ("aa_clipure@purifier", "aa_clipure@full", "aa_clipure@bpda_identity", "aa_clipure@eot", "transfer_clip",
                "square")


def eval_args(ctx: Context, purifier: str, run_dir: Path, samples: int, trainer: list[str], **knobs: Any) -> list[str]:
    """eval.py arguments of one small evaluation with the quick attack set plus EOT and the masking checks on."""
    p, model = ctx.profile, ctx.profile["eval_model"]
    return [*MODELS[model]["args"], *COMMON, *purifier_args(purifier, model, **knobs), "attack=quick",
            f"attack.run=[{','.join(EVAL_ATTACKS)}]",
            f"attack.n_iter={p['eval_n_iter']}", f"attack.n_queries={p['eval_n_queries']}",
            f"attack.eot_samples={p['eot_draws']}",
            "attack.checks=true", f"data.num_samples={samples}", "data.batch_size=2", "logger=none", f"run_dir={run_dir}",
            ctx.text_cache(), "trainer.enable_progress_bar=false", *trainer]


def trainer_args(ctx: Context) -> list[str]:
    return ["trainer=gpu"] if ctx.devices.cuda else ["trainer=cpu"]


def run_eval_main(argv: list[str]) -> dict:
    """``eval.main(argv)``; a configuration error (exit status 2) becomes a RuntimeError with the message."""
    import eval as eval_script

    with quiet_stdout():
        try:
            return eval_script.main(argv)
        except SystemExit as exc:
            raise RuntimeError(f"eval.py exited with status {exc.code} (its message is above)") from None


def eval_entry(purifier: str, metrics: dict, samples: int, trainer: list[str]) -> Entry:
    robust = {k: v for k, v in metrics.get("robust", {}).items() if k != "worst_case"}
    missing = [k for k, v in robust.items() if v.get("total") != samples]
    raised = sorted(f for f, v in metrics.get("flags", {}).items() if v)
    ok = (metrics.get("num_samples") == samples and len(robust) == len(EVAL_ATTACKS) and not missing
          and bool(metrics.get("flags")))
    clean = metrics.get("clean", {})
    detail = (f"{' '.join(trainer)}; clean {clean.get('correct')}/{clean.get('total')}, worst case "
              f"{metrics.get('robust', {}).get('worst_case', {}).get('correct')}/{samples}; {len(robust)} attacks; "
              f"masking flags raised: {', '.join(raised) or 'none'}")
    if not ok:
        detail = f"incomplete run (samples {metrics.get('num_samples')}/{samples}, attacks short of samples: {missing}, " \
                 f"checks recorded: {bool(metrics.get('flags'))}); " + detail
    return Entry("eval", f"eval.py {PURIFIER_CONFIG[purifier]['label']}: attacks and masking checks",
                 "pass" if ok else "fail", value=None, detail=detail)


def part_eval(ctx: Context, clock: Clock) -> None:
    samples, trainer = ctx.profile["eval_samples"], trainer_args(ctx)
    expected = 0.0
    for purifier in ctx.profile["eval_purifiers"]:
        run_dir = ctx.work / "eval" / purifier

        def case(purifier=purifier, run_dir=run_dir):
            return eval_entry(purifier, run_eval_main(eval_args(ctx, purifier, run_dir, samples, trainer)), samples, trainer)

        expected = max(expected, run_case(ctx, clock, f"eval.py {PURIFIER_CONFIG[purifier]['label']}", case, expected))


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


# ----------------------------------------------------------------------------------------------- part: throughput
def build_model(ctx: Context, model: str) -> dict[str, Any]:
    """Plain, CLIPure-Cos and CLIPure-Diff classifiers of ``model`` on the device (cached in ``ctx.models``)."""
    if model not in ctx.models:
        fam = family(ctx, model, ctx.devices.main)
        ctx.models[model] = {"plain": fam.build(["purifier=none"]),
                             "cos": fam.build(purifier_args("clipure_cos", model, batch_size=None)),
                             "diff": fam.build(purifier_args("clipure_diff", model, batch_size=None))}
    return ctx.models[model]


def forward_case(clf, x, sync):
    import torch

    def run():
        with torch.no_grad():
            clf(x)
        sync()
    return run


def attack_case(clf, x, y, sync):
    """One attack step: logits + cross-entropy + gradient w.r.t. the pixels."""
    import torch
    import torch.nn.functional as F

    def run():
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(clf(xx), y), xx)
        sync()
    return run


def full_view(clf):
    from clipure_lit.attacks.gradient_modes import make_view
    from clipure_lit.attacks.config import AttackGradMode, AttackPrecision

    return make_view(clf, AttackGradMode.full, AttackPrecision.fp32)


THROUGHPUT_CASES = (("clean forward", "plain", "fwd"), ("CLIPure-Cos forward", "cos", "fwd"),
                    ("CLIPure-Diff forward", "diff", "fwd"), ("attack step, plain CLIP", "plain", "attack"),
                    ("attack step through CLIPure-Cos (full gradient)", "cos", "attack"),
                    ("attack step through CLIPure-Diff (full gradient)", "diff", "attack"))


def part_throughput(ctx: Context, clock: Clock) -> None:
    batch, reps, sync = ctx.profile["throughput_batch"], ctx.profile["reps"], ctx.devices.sync
    expected = 0.0
    for model in ctx.profile["models"]:
        def case(model=model):
            m = build_model(ctx, model)
            x, y = inputs(batch, MODELS[model]["size"], ctx.devices.main)
            cases = {}
            for label, key, kind in THROUGHPUT_CASES:
                cases[label] = forward_case(m[key], x, sync) if kind == "fwd" else attack_case(full_view(m[key]), x, y, sync)
            start = time.perf_counter()
            for fn in cases.values():  # warm-up: kernels, lazily built buffers
                fn()
            rep_s = time.perf_counter() - start
            times: dict[str, list[float]] = {k: [] for k in cases}
            for r in range(reps):  # interleaved repetitions, as long as the part's time allows
                if r and rep_s > clock.left():
                    break
                for name, ts in time_round_robin(cases, reps=1, warmup=False, seed=r).items():
                    times[name] += ts
            done = len(times[THROUGHPUT_CASES[0][0]])
            note = f"median of {done} repetition(s)" + ("" if done == reps else f" of {reps} (part budget)")
            return [Entry("throughput", f"{model} {label}, batch {batch}", "measured", value=batch / median(times[label]),
                          unit="images/s", detail=note,
                          extra={"model": model, "case": label, "batch": batch, "median_s": median(times[label]),
                                 "times_s": times[label]}) for label, _, _ in THROUGHPUT_CASES]

        expected = run_case(ctx, clock, f"{model} throughput, batch {batch}", case, expected)


# --------------------------------------------------------------------------------------------------- part: memory
def diff_variant(clf, steps: int, checkpointing: bool):
    """``clf`` with its CLIPure-Diff purifier running ``steps`` steps and step checkpointing on or off; shares the
    backbone, head and prior."""
    from clipure_lit.models.classifier import PurifiedZeroShotClassifier

    from clipure_lit.purifiers.base import shallow_copy_with

    latent = shallow_copy_with(clf.latent, cfg=dataclasses.replace(clf.latent.cfg, num_steps=steps,
                                                                   gradient_checkpointing=checkpointing))
    return PurifiedZeroShotClassifier(clf.backbone, clf.head, pixel=clf.pixel, latent=latent, seed=clf.seed).eval()


def memory_case(ctx: Context, model: str, clf, x, y, steps: int, checkpointing: bool) -> Entry:
    devices = ctx.devices
    step = attack_case(full_view(diff_variant(clf, steps, checkpointing)), x, y, devices.sync)
    devices.release()
    before = devices.allocated_mb()
    devices.reset_peak()
    step()
    peak = devices.peak_mb()
    return Entry("memory", f"{model} CLIPure-Diff full-gradient attack step, T={steps}, checkpointing "
                           f"{'on' if checkpointing else 'off'}, batch {x.shape[0]}", "measured", value=peak, unit="MB",
                 detail=f"{peak - before:.0f} MB added by the step ({devices.memory_metric})",
                 extra={"model": model, "steps": steps, "checkpointing": checkpointing, "batch": int(x.shape[0]),
                        "peak_mb": peak, "added_mb": peak - before})


def flatness_entry(ctx: Context, model: str, batch: int, rows: list[Entry]) -> Entry:
    """Memory added per step with checkpointing, over the same without it (T = lowest -> highest)."""
    name = f"{model} memory flat in T with step checkpointing, batch {batch}"
    limit = f"<= {MEMORY_FLAT_RATIO:g}"
    added = {(e.extra["steps"], e.extra["checkpointing"]): e.extra["added_mb"] for e in rows}
    steps = sorted({s for s, _ in added})
    if len(steps) < 2 or not all((s, c) in added for s in (steps[0], steps[-1]) for c in (True, False)):
        return Entry("memory", name, "skip", limit=limit, detail="the T cases it needs were not measured (budget)")
    lo, hi = steps[0], steps[-1]
    grow_on, grow_off = added[hi, True] - added[lo, True], added[hi, False] - added[lo, False]
    detail = f"T={lo} -> {hi}: {grow_on:+.0f} MB with checkpointing, {grow_off:+.0f} MB without"
    if not ctx.devices.cuda:
        return Entry("memory", name, "skip", limit=limit, detail=f"not judged on the CPU: peak RSS of toy-size steps is "
                                                                  f"allocator noise ({detail})")
    if grow_off <= 0:
        return Entry("memory", name, "fail", limit=limit, detail=f"no growth without checkpointing: the measurement is "
                                                                  f"broken ({detail})")
    ratio = grow_on / grow_off
    return Entry("memory", name, "pass" if ratio <= MEMORY_FLAT_RATIO else "fail", value=ratio, unit="x", limit=limit,
                 detail=detail)


def part_memory(ctx: Context, clock: Clock) -> None:
    # Resident models first, the last built first (the throughput part leaves them built; fewer rebuilds).
    models = list(ctx.profile["models"])
    for model in sorted(models, key=lambda m: (m not in ctx.models, -models.index(m))):
        ctx.keep_only(model)
        built: dict[str, Any] = {}

        def build(model=model, built=built):
            built["clf"] = build_model(ctx, model)["diff"]
            return []

        run_case(ctx, clock, f"{model} CLIPure-Diff: build", build)
        if not built:
            continue
        for batch in ctx.profile["memory_batches"]:
            x, y = inputs(batch, MODELS[model]["size"], ctx.devices.main)
            rows: list[Entry] = []
            expected, last_steps = 0.0, 1
            steps_list = ctx.profile["memory_steps"]
            warmed: dict[str, bool] = {}

            def warm_up(x=x, y=y, warmed=warmed):  # kernels, workspaces, lazily built buffers
                attack_case(full_view(diff_variant(built["clf"], steps_list[0], True)), x, y, ctx.devices.sync)()
                warmed["done"] = True
                return []

            run_case(ctx, clock, f"{model} memory warm-up, batch {batch}", warm_up)
            if not warmed:
                continue  # failed or skipped (recorded)
            for steps in steps_list:
                for checkpointing in (True, False):
                    def case(steps=steps, checkpointing=checkpointing):
                        entry = memory_case(ctx, model, built["clf"], x, y, steps, checkpointing)
                        rows.append(entry)
                        return entry

                    seconds = run_case(ctx, clock, f"{model} memory T={steps} checkpointing {checkpointing} batch {batch}",
                                       case, expected * steps / last_steps)
                    expected, last_steps = max(seconds, expected), steps
            ctx.report.add(flatness_entry(ctx, model, batch, rows))
    ctx.keep_only(None)


# --------------------------------------------------------------------------------------- operation counts (estimate)
_VIEW_OPS = frozenset({"view", "_unsafe_view", "expand", "permute", "transpose", "t", "unsqueeze", "squeeze", "slice",
                       "select", "as_strided", "detach", "alias", "reshape", "split", "unbind", "chunk", "split_with_sizes",
                       "lift_fresh"})


def count_ops(model: str, steps: Iterable[int] = (2, 10), batch: int = 1, throughput: bool = True,
              work: Path | None = None) -> dict[str, int]:
    """Aten operator calls other than views (on a GPU, about one kernel launch each) of every throughput case (when
    ``throughput``) and of the memory part's attack step at each T in ``steps`` (checkpointing on and off), on the CPU.
    The counts hardly depend on the batch size (a few batch-dependent reductions) and not on the device; the runtime
    estimate in the README multiplies them by a per-launch cost. Slow: every call goes through a Python dispatch mode
    (~10 minutes for ViT-B-32 on 2 CPU cores)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += func.__name__.split(".")[0] not in _VIEW_OPS
            return func(*args, **(kwargs or {}))

    def counted(fn: Callable[[], None]) -> int:
        with Counter() as counter:
            fn()
        return counter.calls

    cpu = torch.device("cpu")
    ctx = Context(PROFILES["cuda"], Devices(cpu, cpu), work or Path(tempfile.mkdtemp(prefix="gpu_check_ops_")),
                  Report("cuda", 0.0))
    m = build_model(ctx, model)
    x, y = inputs(batch, MODELS[model]["size"], cpu)
    out = {label: counted(forward_case(m[key], x, lambda: None) if kind == "fwd"
                          else attack_case(full_view(m[key]), x, y, lambda: None))
           for label, key, kind in (THROUGHPUT_CASES if throughput else ())}
    for t in steps:
        for checkpointing in (True, False):
            step = attack_case(full_view(diff_variant(m["diff"], t, checkpointing)), x, y, lambda: None)
            out[f"CLIPure-Diff attack step, T={t}, checkpointing {'on' if checkpointing else 'off'}"] = counted(step)
    return out


PART_FUNCTIONS: dict[str, Callable[[Context, Clock], None]] = {
    "gpu_tests": part_gpu_tests, "parity": part_parity, "precision": part_precision, "eval": part_eval, "ddp": part_ddp,
    "throughput": part_throughput, "memory": part_memory,
}


# ---------------------------------------------------------------------------------------------------- rendering
def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    text = f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return f"{text} {unit}".strip()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def throughput_table(entries: list[dict]) -> list[str]:
    rows = [e for e in entries if e["part"] == "throughput" and e["status"] == "measured"]
    if not rows:
        return []
    lines = ["| model | case | batch | images/s | median s |", "|---|---|---|---|---|"]
    for e in rows:
        x = e["extra"]
        lines.append(f"| {x['model']} | {x['case']} | {x['batch']} | {e['value']:.1f} | {x['median_s']:.4f} |")
    return lines


def memory_table(entries: list[dict]) -> list[str]:
    rows = [e for e in entries if e["part"] == "memory" and e["status"] == "measured"]
    if not rows:
        return []
    lines = ["| model | batch | T | checkpointing | peak MB | added by the step, MB |", "|---|---|---|---|---|---|"]
    for e in sorted(rows, key=lambda e: (e["extra"]["model"], e["extra"]["batch"], not e["extra"]["checkpointing"],
                                         e["extra"]["steps"])):
        x = e["extra"]
        lines.append(f"| {x['model']} | {x['batch']} | {x['steps']} | {'on' if x['checkpointing'] else 'off'} | "
                     f"{x['peak_mb']:.0f} | {x['added_mb']:.0f} |")
    return lines


def device_line(payload: dict) -> str:
    d, m = payload.get("device", {}), payload.get("machine", {})
    where = f"{d.get('name', d.get('main', '?'))}" + (f" (compute capability {d['capability']}, {d['memory_gb']} GB, CUDA "
                                                      f"{d['cuda']})" if "capability" in d else "")
    return (f"Measured on: {where}, {d.get('cuda_devices', 0)} visible GPU(s); host {m.get('cpu', '?')}, "
            f"{m.get('cpu_count', '?')} cores, torch {m.get('torch', '?')}, commit `{m.get('git_commit')}`.")


def render_markdown(payload: dict) -> str:
    """The full report (``gpu_check.md``) from a ``gpu_check.json`` payload."""
    title = "GPU check" if payload["mode"] == "cuda" else "GPU check: CPU smoke run (the CPU stands in for the device)"
    lines = [f"# {title}", "", f"`{verdict_line(payload)}`", "", device_line(payload), "",
             f"Command: `{payload.get('command', '')}`", "", "## Parts", "",
             "| part | budget s | used s | passed | failed | skipped | measured |", "|---|---|---|---|---|---|---|"]
    for p in payload["parts"]:
        n = {s: sum(e["part"] == p["name"] and e["status"] == s for e in payload["entries"]) for s in STATUSES}
        lines.append(f"| {p['name']} | {p['budget_s']:.0f} | {p['seconds']:.1f} | {n['pass']} | {n['fail']} | {n['skip']} | "
                     f"{n['measured']} |{(' ' + p['note']) if p['note'] else ''}")
    lines += ["", "## Checks", "", "| part | check | status | value | limit | detail |", "|---|---|---|---|---|---|"]
    for e in payload["entries"]:
        if e["status"] != "measured":
            lines.append(f"| {e['part']} | {_cell(e['name'])} | {e['status']} | {_fmt(e['value'], e['unit'])} | "
                         f"{_cell(e['limit'])} | {_cell(e['detail'])} |")
    if throughput_table(payload["entries"]):
        lines += ["", "## Throughput", "", *throughput_table(payload["entries"])]
    if memory_table(payload["entries"]):
        lines += ["", f"## Peak memory of one full-gradient CLIPure-Diff attack step ({payload['device'].get('memory_metric')})",
                  "", *memory_table(payload["entries"])]
    return "\n".join(lines) + "\n"


def benchmarks_section(payload: dict | None) -> str:
    """The ``## GPU`` section of BENCHMARKS.md: the GPU figures of the last CUDA run, or a note that none exists."""
    lines = ["## GPU", ""]
    if payload is None or payload.get("mode") != "cuda":
        lines += ["`bench/gpu_check.py` has not run on a GPU yet: `make gpu-check` on a CUDA machine (estimated 4 minutes,",
                  "8 at most) fills this section from `bench/results/gpu_check.json` (README, \"GPU check\")."]
        return "\n".join(lines) + "\n"
    lines += [f"`{verdict_line(payload)}`. {device_line(payload)} Every check with its tolerance: "
              "[bench/results/gpu_check.md](bench/results/gpu_check.md). Throughput: images per second (batch / median "
              "seconds of interleaved repetitions); CLIP and priors with random weights.", ""]
    lines += throughput_table(payload["entries"]) or ["(no throughput figures: skipped, see the report)"]
    lines += ["", f"Peak memory of one full-gradient CLIPure-Diff attack step, released prior architecture "
                  f"(`{payload['device'].get('memory_metric')}`, reset per case):", ""]
    lines += memory_table(payload["entries"]) or ["(no memory figures: skipped, see the report)"]
    flat = [e for e in payload["entries"] if e["part"] == "memory" and e["status"] in ("pass", "fail")]
    if flat:
        lines += ["", "Memory flat in T with step checkpointing (growth T=2 -> 20 with / without, goal <= "
                      f"{MEMORY_FLAT_RATIO:g}): " + "; ".join(f"{e['name'].split(' memory')[0]} batch "
                                                              f"{e['name'].rsplit(' ', 1)[-1]}: {e['value']:.3f} ({e['status']})"
                                                              for e in flat) + "."]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str, heading: str = "## GPU", before: str = "## What each benchmark measures") -> str:
    """``text`` with its ``heading`` section replaced by ``section`` (inserted before ``before``, or appended)."""
    start = text.find(f"\n{heading}\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        return text[:start + 1] + section + ("\n" + text[end + 1:] if end >= 0 else "")
    at = text.find(f"\n{before}")
    if at >= 0:
        return text[:at + 1] + section + "\n" + text[at + 1:]
    return text.rstrip("\n") + "\n\n" + section


def read_cuda_payload(path: Path | None = None) -> dict | None:
    path = path or RESULTS / "gpu_check.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    return payload if payload.get("mode") == "cuda" else None


def write_reports(payload: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_result("gpu_check", payload, out_dir / f"{stem}.json")
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(render_markdown(json.loads(json_path.read_text())))
    return json_path, md_path


def update_benchmarks_md(payload: dict | None, path: Path | None = None) -> Path:
    path = path or REPO / "BENCHMARKS.md"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    path.write_text(replace_section(text, benchmarks_section(payload)))
    return path


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
