"""Cells that every report table of a run shows the same way (``report.md``, ``report.csv``, ``report.tex``): the
masking flags that fired, and the time per sample in its steady state.

Flags come from ``results.json`` ``flags`` (``{name: 0/1}``, per-attack flags named ``<check>/<attack token>``,
docs/evaluation.md#flags). Their short name keeps the check and shortens the attack token to its ``@<mode>``
suffix when that suffix names one attack of the run (``weak_grad/aa_clipure@purifier`` -> ``weak_grad@purifier``).

Times: ``steady_time_per_sample_s`` of ``results.json`` (seconds per sample over the batches after each process's
first, so the first batch's warm-up is excluded) when the run recorded it; otherwise ``time_per_sample_s`` (every
batch, warm-up included: older runs, or runs of a single batch), and the cell says so with :data:`WARMUP_MARK`.
"""

from __future__ import annotations

from clipure_lit.reporting.format import ms

NO_FLAGS = "none"
NOT_CHECKED = "not checked"
WARMUP_MARK = "*"
STEADY_HEADER = "ms/sample (steady state: first batch excluded)"
WARMUP_NOTE = (f"{WARMUP_MARK} mean over every batch, warm-up included: the run recorded no per-batch times (a "
               "single batch, or a run older than the steady-state timing).")


def short_flag(name: str, attack_tokens: list[str]) -> str:
    """``<check>@<mode>`` for a per-attack flag whose ``@<mode>`` names one attack of the run, else the name."""
    check, _, token = name.partition("/")
    if "@" not in token:
        return name
    mode = token.rsplit("@", 1)[1]
    same_mode = [t for t in attack_tokens if t.rsplit("@", 1)[-1] == mode and "@" in t]
    return f"{check}@{mode}" if same_mode == [token] or not same_mode else name


def raised_flags(results: dict) -> list[str]:
    """Short names of the flags that fired, in ``results.json`` order."""
    tokens = [t for t in results.get("robust", {}) if t != "worst_case"]
    return list(dict.fromkeys(short_flag(name, tokens) for name, value in results.get("flags", {}).items() if value))


def flags_text(results: dict) -> str:
    """The raised flags' short names joined by ``, ``; :data:`NO_FLAGS` when checks ran and none fired;
    :data:`NOT_CHECKED` when the run has no flags at all (``attack.checks=false``, or no attack)."""
    if not results.get("flags"):
        return NOT_CHECKED
    return ", ".join(raised_flags(results)) or NO_FLAGS


def seconds_per_sample(results: dict, keys: list[str]) -> tuple[float | None, bool]:
    """Summed seconds per sample of ``keys`` (``clean``, ``attack/<token>``) and whether they are steady-state
    (True) or the all-batch mean (False); ``(None, False)`` when no key was timed."""
    steady = results.get("steady_time_per_sample_s") or {}
    if keys and all(k in steady for k in keys):
        return sum(steady[k] for k in keys), True
    total = results.get("time_per_sample_s") or {}
    present = [total[k] for k in keys if k in total]
    return (sum(present), False) if present else (None, False)


def time_cell(results: dict, keys: list[str]) -> str:
    """Milliseconds per sample of ``keys`` (:func:`seconds_per_sample`), marked with :data:`WARMUP_MARK` when the
    warm-up could not be left out."""
    seconds, steady = seconds_per_sample(results, keys)
    return ms(seconds) + ("" if steady or seconds is None else WARMUP_MARK)


def attack_time_keys(results: dict) -> list[str]:
    """The timing keys of every attack of a run (``attack/<token>``)."""
    return [f"attack/{t}" for t in results.get("robust", {}) if t != "worst_case"]
