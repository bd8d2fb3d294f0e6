"""What every benchmark script shares: side-by-side timing, medians and ratios, machine facts, result files and the
headline rows of the suite table.

Timing contract: all cases of one comparison run in the same process, interleaved (each repetition runs every case
once, in a freshly shuffled order, so drifts in machine load hit them alike; a cheap case runs as a short block of
back-to-back calls), after one untimed warm-up call; a figure is the median over the repetitions, and is reported
as a ratio to a baseline measured in the same loop.
Absolute seconds are kept in the JSON files for inspection but never compared across runs.

Decision contract (figures with a goal): each repetition gives one paired ratio r_i = case_i / baseline_i (both
timed in the same repetition); the figure is the median of the r_i and its spread the distribution-free 95%
interval of that median from order statistics, [r_(k), r_(n+1-k)] with the largest k whose binomial coverage
1 - 2 P(Bin(n, 1/2) <= k-1) is at least 95% (n >= 6 repetitions are needed for any 95% interval). The verdict
against a goal g (largest acceptable ratio) is ``met`` when the interval lies at or below g, ``missed`` when it
lies above g, also decided (by the side of the median, marked "within 5%") when the whole interval lies within
g +- 5%, and otherwise ``undecided``. Goal-bearing comparisons repeat until decided or until their budget (seconds
or repetitions) is spent; an undecided figure is reported as such, with its interval.
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
                     min_block_s: float = 0.2, until: Callable[[dict[str, list[float]]], bool] | None = None,
                     budget_s: float | None = None) -> dict[str, list[float]]:
    """``{name: [seconds per call, one value per repetition]}`` for zero-argument callables, timed interleaved (see
    module docstring). A case faster than ``min_block_s`` (judged by its warm-up call) runs several times back to
    back within each repetition and the block's time is divided by the count, as ``timeit`` does, so that timer
    and scheduler jitter do not dominate cheap cases. Without warm-up every case runs once per repetition.

    ``reps`` is the most repetitions. With ``until`` (a predicate on the times so far, e.g. "every goal is
    decided", see ``goals_decided``) or ``budget_s`` (seconds of timed repetitions), the loop stops after the first
    repetition at which ``until`` holds or the budget is spent, whichever comes first."""
    inner = {name: 1 for name in cases}
    if warmup:
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            inner[name] = max(1, min(100, int(min_block_s / max(time.perf_counter() - start, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in cases}
    order, rng = list(cases), random.Random(seed)
    loop_start = time.perf_counter()
    for _ in range(reps):
        rng.shuffle(order)  # no case always runs right after the same (e.g. a memory-hungry) one
        for name in order:
            fn, count = cases[name], inner[name]
            start = time.perf_counter()
            for _ in range(count):
                fn()
            times[name].append((time.perf_counter() - start) / count)
        if until is not None and until(times):
            break
        if budget_s is not None and time.perf_counter() - loop_start >= budget_s:
            break
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median of each case over the median of ``baseline``."""
    base = median(times[baseline])
    return {name: median(ts) / base for name, ts in times.items()}


CONFIDENCE = 0.95
TOLERANCE = 0.05  # an interval within goal +- 5% decides the goal by the side of its median
MIN_DECIDING_REPS = 6  # the fewest repetitions with a 95% order-statistic interval of the median (coverage 0.969)


@dataclass(frozen=True)
class Spread:
    """Median of per-repetition values and the distribution-free interval of that median (module docstring).
    ``coverage``: the interval's exact binomial coverage (below ``CONFIDENCE`` when too few repetitions: the
    interval is then the full range and cannot decide a goal)."""

    median: float
    low: float
    high: float
    reps: int
    coverage: float


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> Spread:
    """The order-statistic interval [v_(k), v_(n+1-k)] of the median of ``values`` with the largest k whose
    coverage 1 - 2 P(Bin(n, 1/2) <= k-1) >= ``confidence``; with too few values, the range [min, max] and its
    (insufficient) coverage 1 - 2^(1-n)."""
    from math import comb

    vs, n = sorted(values), len(values)
    if n == 0:
        raise ValueError("median_interval needs at least one value")

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(comb(n, i) for i in range(k)) / 2.0 ** n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return Spread(median(vs), vs[k - 1], vs[n - k], n, coverage(k))


def paired_ratios(times: dict[str, list[float]], case: str, baseline: str) -> list[float]:
    """Per-repetition ratios case_i / baseline_i (the two were timed in the same repetition)."""
    return [c / b for c, b in zip(times[case], times[baseline])]


def ratio_spread(times: dict[str, list[float]], case: str, baseline: str) -> Spread:
    """Median and 95% interval of the paired ratios of ``case`` over ``baseline``."""
    return median_interval(paired_ratios(times, case, baseline))


def verdict(spread: Spread | None, goal: float | None, value: float | None = None,
            tolerance: float = TOLERANCE) -> str:
    """``met`` / ``missed`` / ``undecided`` of a figure against ``goal`` (the largest acceptable value; module
    docstring), or ``""`` without a goal. Without a spread (a single deterministic measurement, e.g. memory)
    ``value`` is compared with the goal directly."""
    if goal is None:
        return ""
    if spread is None:
        if value is None:
            return ""
        return "met" if value <= goal else "missed"
    if spread.coverage < CONFIDENCE:
        return "undecided"
    if spread.high <= goal:
        return "met"
    if spread.low > goal:
        return "missed"
    if goal * (1 - tolerance) <= spread.low and spread.high <= goal * (1 + tolerance):
        return "met" if spread.median <= goal else "missed"
    return "undecided"


def goals_decided(goals: dict[str, tuple[Callable[[dict[str, list[float]]], list[float]], float]]
                  ) -> Callable[[dict[str, list[float]]], bool]:
    """An ``until`` predicate for ``time_round_robin``: true once every figure is decided. ``goals``: figure name
    -> (function from the times so far to its per-repetition values, goal)."""

    def decided(times: dict[str, list[float]]) -> bool:
        return all(verdict(median_interval(values(times)), goal) != "undecided" for values, goal in goals.values())

    return decided


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
    """One row of the suite table: a figure, its goal (if one was set) and why it misses it, if it does.

    ``ratio`` is dimensionless (defended / plain, framework / plain, ...); ``goal`` is the largest acceptable ratio
    (``None``: no goal, the row is information); ``why`` explains a missed goal or qualifies the figure.
    ``low``/``high``/``reps``/``coverage``: the 95% interval of a median of paired ratios (``Spread``), which
    decides the status (``verdict``); without them a goal is compared with the single value ``ratio``.
    """

    benchmark: str
    figure: str
    ratio: float | None
    goal: float | None = None
    unit: str = "x"
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    low: float | None = None
    high: float | None = None
    reps: int | None = None
    coverage: float | None = None

    @classmethod
    def from_spread(cls, benchmark: str, figure: str, spread: Spread, goal: float | None = None, **kw: Any) -> "Headline":
        """A row whose figure is ``spread.median`` with its interval."""
        return cls(benchmark, figure, spread.median, goal, low=spread.low, high=spread.high, reps=spread.reps,
                   coverage=spread.coverage, **kw)

    @property
    def spread(self) -> Spread | None:
        if self.low is None or self.high is None or self.ratio is None:
            return None
        return Spread(self.ratio, self.low, self.high, self.reps or 0, self.coverage if self.coverage is not None else 0.0)

    @property
    def status(self) -> str:
        return verdict(self.spread, self.goal, self.ratio)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.3f}x" if value < 10 else f"{value:.1f}x"
    return f"{value:.3g} {unit}"


def format_measured(row: Headline) -> str:
    """The value, and for a row with a spread its 95% interval and repetitions: ``1.085x [0.98, 1.21] (n=6)``."""
    text = format_value(row.ratio, row.unit)
    if row.spread is not None:
        fmt = ".3f" if row.unit == "x" and abs(row.high) < 10 else ".3g"
        text += f" [{row.low:{fmt}}, {row.high:{fmt}}] (n={row.reps})"
    return text


def markdown_table(rows: list[Headline]) -> str:
    lines = ["| benchmark | figure | measured [95% interval] | goal | status | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        goal = f"<= {r.goal:g}x" if r.goal is not None else ""
        lines.append(f"| {r.benchmark} | {r.figure} | {format_measured(r)} | {goal} | {r.status} | {r.why} |")
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
