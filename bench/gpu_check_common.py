"""What every part of bench/gpu_check.py shares: the settings (purifiers, models, profiles, parts, budget
shares, tolerances), the report, the budget clocks, the devices and run context, and the config helpers.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.harness import log, reset_peak_rss, status_kb, stdout_redirected


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
