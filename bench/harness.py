"""What every benchmark script shares: side-by-side timing, medians and ratios, machine facts, result files and the
headline rows of the suite table.

Timing contract: all cases of one comparison run in the same process, interleaved (each repetition runs every case
once, in a freshly shuffled order, so drifts in machine load hit them alike; a cheap case runs as a short block of
back-to-back calls), after one untimed warm-up call; a figure is the median over the repetitions, and is reported
as a ratio to a baseline measured in the same loop.
Absolute seconds are kept in the JSON files for inspection but never compared across runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def log(msg: str) -> None:
    """Progress for the person waiting (stderr, so a table on stdout stays clean)."""
    print(msg, file=sys.stderr, flush=True)


def time_round_robin(cases: dict[str, Callable[[], Any]], reps: int, warmup: bool = True, seed: int = 0,
                     min_block_s: float = 0.2) -> dict[str, list[float]]:
    """``{name: [seconds per call, one value per repetition]}`` for zero-argument callables, timed interleaved (see
    module docstring). A case faster than ``min_block_s`` (judged by its warm-up call) runs several times back to
    back within each repetition and the block's time is divided by the count, as ``timeit`` does, so that timer
    and scheduler jitter do not dominate cheap cases. Without warm-up every case runs once per repetition."""
    inner = {name: 1 for name in cases}
    if warmup:
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            inner[name] = max(1, min(100, int(min_block_s / max(time.perf_counter() - start, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in cases}
    order, rng = list(cases), random.Random(seed)
    for _ in range(reps):
        rng.shuffle(order)  # no case always runs right after the same (e.g. a memory-hungry) one
        for name in order:
            fn, count = cases[name], inner[name]
            start = time.perf_counter()
            for _ in range(count):
                fn()
            times[name].append((time.perf_counter() - start) / count)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median of each case over the median of ``baseline``."""
    base = median(times[baseline])
    return {name: median(ts) / base for name, ts in times.items()}


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (Linux ``VmHWM``), in MB."""
    return status_kb("VmHWM") / 1024


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    """Make ``VmHWM`` restart from the current resident set (Linux ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge a figure: CPU, cores, threads, load, versions, commit."""
    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"cpu": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "git_commit": commit}


@dataclass
class Headline:
    """One row of the suite table: a figure, its goal (if the issue set one) and why it misses it, if it does.

    ``ratio`` is dimensionless (defended / plain, framework / plain, ...); ``goal`` is the largest acceptable ratio
    (``None``: no goal, the row is information); ``why`` explains a missed goal or qualifies the figure.
    """

    benchmark: str
    figure: str
    ratio: float | None
    goal: float | None = None
    unit: str = "x"
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.goal is None or self.ratio is None:
            return ""
        return "met" if self.ratio <= self.goal else "MISSED"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.3f}x" if value < 10 else f"{value:.1f}x"
    return f"{value:.3g} {unit}"


def markdown_table(rows: list[Headline]) -> str:
    lines = ["| benchmark | figure | measured | goal | status | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        goal = f"<= {r.goal:g}x" if r.goal is not None else ""
        lines.append(f"| {r.benchmark} | {r.figure} | {format_value(r.ratio, r.unit)} | {goal} | {r.status} | {r.why} |")
    return "\n".join(lines)


def repo_relative(text: str) -> str:
    """``text`` with this checkout's absolute path removed (result files must not name the machine's folders)."""
    return text.replace(str(REPO) + os.sep, "").replace(str(REPO), ".")


def write_result(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """``bench/results/<name>.json`` (or ``out``), with the machine facts and the command that made it."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    args = [repo_relative(a) for a in sys.argv] if sys.argv and sys.argv[0] else ["?"]
    payload = {"benchmark": name, "command": " ".join([".venv/bin/python", *args]),
               "machine": machine_info(), **payload}
    if "headline" in payload:
        payload["headline"] = [h.as_dict() if isinstance(h, Headline) else h for h in payload["headline"]]
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


@contextlib.contextmanager
def stdout_redirected(target_fd: int):
    """Point file descriptor 1 at ``target_fd`` for the block (also what C code and child processes write), then
    restore it: benchmark scripts keep their own table on stdout while ``eval.main`` reports go elsewhere."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(target_fd, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
