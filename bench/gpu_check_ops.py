"""Operation counts behind the README's runtime estimate (``bench/gpu_check.py --count-ops MODEL``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable

from bench.gpu_check_common import Context, Devices, MODELS, PROFILES, Report, inputs
from bench.gpu_check_throughput import THROUGHPUT_CASES, attack_case, build_model, forward_case, full_view
from bench.gpu_check_memory import diff_variant


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
