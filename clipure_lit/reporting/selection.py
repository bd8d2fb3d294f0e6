"""Selection optimism: a sweep's winner, chosen on one set of images, evaluated again on held-out images.

Picking the best of K configurations by their accuracy on the same images biases that accuracy upwards: part of the
winner's margin is the luck of those images (a maximum over K noisy estimates is larger, on average, than the
estimate of the configuration it picks). The same configuration evaluated on images that played no part in the
choice gives an unbiased number. The report shows both, and their difference as the *selection optimism*:

    optimism = acc_selection - acc_held_out

with a 95% interval for a difference of two independent proportions by Newcombe's hybrid score method (his method
10: the two Wilson intervals combined), which keeps its coverage at small counts and near 0 or 1 where a normal
approximation does not:

    low  = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)
    high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)

for ``d = p1 - p2`` and Wilson intervals ``[l1, u1]``, ``[l2, u2]`` of ``p1`` (selection) and ``p2`` (held out).

Files (in the report folder): ``selection.csv`` and ``selection.md``; ``selection.tex`` (booktabs).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from clipure_lit.errors import ConfigError
from clipure_lit.reporting.format import pct, points
from clipure_lit.reporting.latex import escape
from clipure_lit.utils.stats import wilson_interval

WHY = ("The winner was chosen as the best of {k} configurations on the selection images, so its accuracy there is "
       "biased upwards (part of its margin is the luck of those images); the held-out number, on images that played "
       "no part in the choice, is the one to report. The optimism is the difference, with a 95% interval (Newcombe).")


def metric_entry(results: dict, metric: str) -> dict:
    """The ``{"acc", "correct", "total", ...}`` entry of ``results.json`` that a sweep metric names:
    ``test/clean_acc`` / ``live/clean_acc`` -> clean, ``test/robust_acc/<a>`` / ``live/robust_acc/<a>`` -> attack a
    (``worst_case`` included).

    Raises:
        ConfigError: a metric that is not an accuracy, or an attack the run does not have.
    """
    if metric in ("test/clean_acc", "live/clean_acc"):
        return results["clean"]
    for prefix in ("test/robust_acc/", "live/robust_acc/"):
        if metric.startswith(prefix):
            name = metric[len(prefix):]
            if name not in results.get("robust", {}):
                raise ConfigError(f"metric {metric}: a run has no attack '{name}' (its attacks: "
                                  f"{sorted(results.get('robust', {}))}). Fix: --metric test/robust_acc/<one of them>.")
            return results["robust"][name]
    raise ConfigError(f"metric {metric} is not an accuracy, and a winner is confirmed by its accuracy. Fix: "
                      "--metric test/robust_acc/worst_case (or test/clean_acc, test/robust_acc/<attack>).")


def newcombe_difference(c1: int, n1: int, c2: int, n2: int) -> tuple[float, float, float]:
    """``(d, low, high)``: ``d = c1/n1 - c2/n2`` and its 95% interval (module docstring)."""
    p1, p2 = c1 / n1, c2 / n2
    l1, u1 = wilson_interval(c1, n1)
    l2, u2 = wilson_interval(c2, n2)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


@dataclass
class Confirmed:
    """One winner: its label, rank among the ``of`` configurations, and its ``metric`` entries on both image sets."""

    label: str
    rank: int
    of: int
    metric: str
    selection: dict
    held_out: dict
    selection_dir: Path
    held_out_dir: Path

    @property
    def optimism(self) -> tuple[float, float, float]:
        return newcombe_difference(int(self.selection["correct"]), int(self.selection["total"]),
                                   int(self.held_out["correct"]), int(self.held_out["total"]))


def _row(c: Confirmed) -> dict:
    d, low, high = c.optimism
    return {"run": c.label, "rank": c.rank, "of": c.of, "metric": c.metric,
            "selection_acc": c.selection["acc"], "selection_ci_low": c.selection["ci95"][0],
            "selection_ci_high": c.selection["ci95"][1], "selection_images": int(c.selection["total"]),
            "held_out_acc": c.held_out["acc"], "held_out_ci_low": c.held_out["ci95"][0],
            "held_out_ci_high": c.held_out["ci95"][1], "held_out_images": int(c.held_out["total"]),
            "optimism": d, "optimism_ci_low": low, "optimism_ci_high": high,
            "selection_run": str(c.selection_dir), "held_out_run": str(c.held_out_dir)}


def write_selection(confirmed: list[Confirmed], out: Path) -> list[dict]:
    """``selection.csv``, ``selection.md`` and ``selection.tex`` in ``out``; returns the CSV rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [_row(c) for c in confirmed]
    with open(out / "selection.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "selection.md").write_text(selection_markdown(confirmed))
    (out / "selection.tex").write_text(selection_latex(confirmed))
    return rows


def _interval(low: float, high: float) -> str:
    return f"[{points(low)}, {points(high)}]"


def selection_markdown(confirmed: list[Confirmed]) -> str:
    """The Markdown "Selection" section: one row per confirmed winner, then the sentence saying why."""
    lines = ["## Selection", "",
             f"Metric: `{confirmed[0].metric}`.", "",
             "| run | rank | selection images | selection | held-out images | held out | optimism (points) |",
             "|---|---|---|---|---|---|---|"]
    for c in confirmed:
        d, low, high = c.optimism
        lines.append(f"| {c.label} | {c.rank} of {c.of} | {int(c.selection['total'])} | "
                     f"{pct(c.selection['acc'], c.selection['ci95'], unit='%')} | {int(c.held_out['total'])} | "
                     f"{pct(c.held_out['acc'], c.held_out['ci95'], unit='%')} | {points(d)} {_interval(low, high)} |")
    lines += ["", WHY.format(k=confirmed[0].of), ""]
    return "\n".join(lines)


def _tex_acc(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['acc']:.1f} {{\\scriptsize [{100 * low:.1f}, {100 * high:.1f}]}}"


def selection_latex(confirmed: list[Confirmed]) -> str:
    """A booktabs table of the confirmed winners (percent, 95% intervals; optimism in points)."""
    body = []
    for c in confirmed:
        d, low, high = c.optimism
        body.append(f"{escape(c.label)} & {c.rank}/{c.of} & {_tex_acc(c.selection)} & {int(c.selection['total'])} & "
                    f"{_tex_acc(c.held_out)} & {int(c.held_out['total'])} & "
                    f"{100 * d:+.1f} {{\\scriptsize [{100 * low:+.1f}, {100 * high:+.1f}]}} \\\\")
    caption = (f"Selection optimism of {escape(confirmed[0].metric)}: the winner(s) of {confirmed[0].of} configurations, "
               "chosen on the selection images and evaluated again on disjoint held-out images; accuracies in percent "
               "with 95\\% Wilson intervals, optimism = selection $-$ held out in points with a 95\\% Newcombe interval. "
               "Report the held-out number.")
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{lrrrrrr}", r"\toprule",
                      r"Run & Rank & Selection & $n$ & Held out & $n$ & Optimism \\", r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\label{tab:selection}",
                      r"\end{table}", ""])
