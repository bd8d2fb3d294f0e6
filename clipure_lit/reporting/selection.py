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

:func:`add_selection` adds the Selection table to a report folder: a section of ``report.md``, a second table in
``report.tex``, the held-out columns of the confirmed rows of ``report.csv``, and ``selection.csv`` (the table alone).
The confirmation runs live in ``<sweep folder>/confirm/<run>/`` (:data:`CONFIRM_DIR`), which a report of the sweep
leaves out (:func:`is_confirmation`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from clipure_lit.errors import ConfigError
from clipure_lit.reporting.format import pct, points
from clipure_lit.reporting.latex import accuracy_cell, escape
from clipure_lit.utils.stats import wilson_interval

CONFIRM_DIR = "confirm"  # <sweep folder>/confirm/<run>/: the held-out runs (and confirm.superseded/, stale ones)

WHY = ("The winner was chosen as the best of {k} configurations on the selection images, so its accuracy there is "
       "biased upwards (picking the best of several noisy numbers on the same images picks their luck too); the "
       "held-out number, on images that played no part in the choice, is the one to report. The optimism is the "
       "difference, with a 95% interval for a difference of two independent proportions (Newcombe).")


def is_confirmation(root: Path, folder: Path) -> bool:
    """True when run ``folder``, found below ``root``, sits in a sweep folder's :data:`CONFIRM_DIR` (or its
    ``.superseded`` twin) strictly below ``root``: such runs are another experiment (other images), so a report of
    the sweep leaves them out; a report of the confirm folder itself keeps them."""
    parts = folder.relative_to(root).parts
    for depth, name in enumerate(parts[:-1]):
        if name in (CONFIRM_DIR, f"{CONFIRM_DIR}.superseded") and (root.joinpath(*parts[:depth]) / "plan.json").is_file():
            return True
    return False


def metric_entry(results: dict, metric: str) -> dict | None:
    """The ``{"acc", "correct", "total", "ci95"}`` entry of ``results.json`` that a sweep metric names:
    ``test/clean_acc`` / ``live/clean_acc`` -> clean, ``test/robust_acc/<a>`` / ``live/robust_acc/<a>`` -> attack a
    (``worst_case`` included); None when the run has no such attack.

    Raises:
        ConfigError: a metric that is not an accuracy.
    """
    if metric in ("test/clean_acc", "live/clean_acc"):
        return results["clean"]
    for prefix in ("test/robust_acc/", "live/robust_acc/"):
        if metric.startswith(prefix):
            return results.get("robust", {}).get(metric[len(prefix):])
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
    """One winner: its label (as the sweep's report names it), its rank among the ``of`` finished configurations
    (tied runs share a rank), ``planned``: the configurations the sweep planned (None when unknown), and its
    ``metric`` entries on both image sets with the run folders they come from."""

    label: str
    rank: int
    of: int
    planned: int | None
    metric: str
    selection: dict
    held_out: dict
    selection_dir: Path
    held_out_dir: Path

    @property
    def optimism(self) -> tuple[float, float, float]:
        return newcombe_difference(int(self.selection["correct"]), int(self.selection["total"]),
                                   int(self.held_out["correct"]), int(self.held_out["total"]))


def selection_row(c: Confirmed) -> dict:
    """One row of ``selection.csv`` (fractions, not percent)."""
    d, low, high = c.optimism
    return {"run": c.label, "rank": c.rank, "of": c.of, "planned": c.planned, "metric": c.metric,
            "selection_acc": c.selection["acc"], "selection_ci_low": c.selection["ci95"][0],
            "selection_ci_high": c.selection["ci95"][1], "selection_images": int(c.selection["total"]),
            "held_out_acc": c.held_out["acc"], "held_out_ci_low": c.held_out["ci95"][0],
            "held_out_ci_high": c.held_out["ci95"][1], "held_out_images": int(c.held_out["total"]),
            "optimism": d, "optimism_ci_low": low, "optimism_ci_high": high,
            "selection_run": str(c.selection_dir), "held_out_run": str(c.held_out_dir)}


def _chosen_from(c: Confirmed) -> str:
    unfinished = (c.planned or c.of) - c.of
    return f"{c.of} configurations" + (f" ({unfinished} more of the {c.planned} planned did not finish and were not "
                                       "compared)" if unfinished > 0 else "")


def selection_markdown(confirmed: list[Confirmed]) -> str:
    """The Markdown "Selection" section: one row per confirmed winner, then the sentence saying why."""
    first = confirmed[0]
    lines = ["## Selection", "",
             f"Ranked by `{first.metric}` among {_chosen_from(first)}; each winner evaluated again, with its own "
             "config, on held-out images disjoint from the selection images.", "",
             "| run | rank | selection images | selection | held-out images | held out | optimism (points) |",
             "|---|---|---|---|---|---|---|"]
    for c in confirmed:
        d, low, high = c.optimism
        lines.append(f"| {c.label} | {c.rank} of {c.of} | {int(c.selection['total'])} | "
                     f"{pct(c.selection['acc'], c.selection['ci95'], unit='%')} | {int(c.held_out['total'])} | "
                     f"{pct(c.held_out['acc'], c.held_out['ci95'], unit='%')} | {points(d)} [{points(low)}, {points(high)}] |")
    lines += ["", WHY.format(k=first.of), ""]
    return "\n".join(lines)


def selection_latex(confirmed: list[Confirmed]) -> str:
    """A booktabs table of the confirmed winners (percent, 95% intervals; optimism in points)."""
    body = []
    for c in confirmed:
        d, low, high = c.optimism
        body.append(f"{escape(c.label)} & {c.rank}/{c.of} & {accuracy_cell(c.selection, False)} & "
                    f"{int(c.selection['total'])} & {accuracy_cell(c.held_out, False)} & {int(c.held_out['total'])} & "
                    f"{100 * d:+.1f} {{\\scriptsize [{100 * low:+.1f}, {100 * high:+.1f}]}} \\\\")
    first = confirmed[0]
    caption = (f"Selection optimism of {escape(first.metric)}: the winner(s) among {escape(_chosen_from(first))}, "
               "chosen on the selection images and evaluated again on disjoint held-out images; accuracies in percent "
               "with 95\\% Wilson intervals, optimism = selection $-$ held out in points with a 95\\% Newcombe interval. "
               "Report the held-out number.")
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", r"\label{tab:selection}", r"\small",
                      r"\begin{tabular}{lrcrcrc}", r"\toprule",
                      r"Run & Rank & Selection & $n$ & Held out & $n$ & Optimism \\", r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# report.csv's columns for a confirmed run (empty for the others): the held-out number and the optimism.
REPORT_COLUMNS = ("selection_rank", "held_out_acc", "held_out_ci_low", "held_out_ci_high", "held_out_images",
                  "optimism", "optimism_ci_low", "optimism_ci_high")


def add_selection(confirmed: list[Confirmed], out: Path) -> list[dict]:
    """Add the Selection table to the report in ``out`` (written just before: ``report.md``, ``report.csv``,
    ``report.tex``) and write ``selection.csv``; returns its rows."""
    rows = [selection_row(c) for c in confirmed]
    _write_csv(out / "selection.csv", rows, list(rows[0]))
    with open(out / "report.md", "a") as fh:
        fh.write("\n" + selection_markdown(confirmed))
    with open(out / "report.tex", "a") as fh:
        fh.write("\n" + selection_latex(confirmed))
    with open(out / "report.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    by_run = {row["run"]: {**row, "selection_rank": row["rank"]} for row in rows}
    for line in table:
        line.update({k: by_run.get(line["run"], {}).get(k) for k in REPORT_COLUMNS})
    _write_csv(out / "report.csv", table, list(table[0]))
    return rows
