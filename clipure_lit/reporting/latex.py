"""``report.tex``: the ablation table of a group of runs as a LaTeX table to paste into a paper.

One row per run, ordered by the varying config keys (numbers by value, text naturally); columns: the varying keys
(short names; when runs differ in many keys that move together, such as a comparison of defences, only the fewest
that tell the runs apart: :func:`~clipure_lit.reporting.config_keys.distinguishing_keys`), clean accuracy, the robust accuracy under each attack token (its gradient family under the name)
and, with several attacks, the per-sample worst case, each as ``acc {\\scriptsize [low, high]}`` in percent with
its 95% Wilson interval, the best value of each accuracy column in bold (every run that ties with it too, at the
precision shown), and the masking flags that fired. The caption names the attacks (sub-attacks, radius, budget,
gradient), the number of images and every setting held fixed across the runs. A run label column is added only
when the varying keys do not tell the rows apart.

The table uses booktabs rules (``\\usepackage{booktabs}`` in the paper's preamble) and nothing else beyond LaTeX
itself; every piece of text from the runs is escaped (:func:`escape`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from clipure_lit.reporting.config_keys import caption_settings, distinguishing_keys
from clipure_lit.reporting.run_cells import flags_text, raised_flags
from clipure_lit.reporting.run_description import (FAMILY_WORDS, attack_legend, count_words, natural_key, short_key,
                                                   value_words)
from clipure_lit.reporting.sweep_plots import series_of

if TYPE_CHECKING:
    from clipure_lit.reporting.ablation import Run

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
MISSING = "--"
WORST = "worst_case"


def escape(text) -> str:
    """``text`` with LaTeX's special characters (``\\ & % $ # _ { } ~ ^``) made literal."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def _number(value: float) -> str:
    return f"{100 * value:.1f}"


def accuracy_cell(entry: dict | None, bold: bool) -> str:
    """``73.0 {\\scriptsize [63.6, 80.7]}`` (percent, 95% Wilson interval), the value in bold when ``bold``."""
    if not entry:
        return MISSING
    value = _number(entry["acc"])
    low, high = entry["ci95"]
    return (rf"\textbf{{{value}}}" if bold else value) + rf" {{\scriptsize [{_number(low)}, {_number(high)}]}}"


def flags_cell(results: dict) -> str:
    """The flags that fired, one per line (a column as wide as the longest name, not as all of them), or the
    words of :func:`~clipure_lit.reporting.run_cells.flags_text` when none did."""
    names = raised_flags(results)
    if not names:
        return rf"{{\scriptsize {escape(flags_text(results))}}}"
    return r"{\scriptsize\begin{tabular}[t]{@{}l@{}}" + r" \\ ".join(map(escape, names)) + r"\end{tabular}}"


def _columns(runs: Sequence["Run"]) -> list[tuple[str, str]]:
    """``(metric, header)`` of each accuracy column: clean, each attack token, and the worst case when several."""
    tokens: dict[str, set] = {}
    for r in runs:
        for token, family in series_of(r):
            tokens.setdefault(token, set()).add(family)
    columns = [("clean", "Clean")]
    for token, families in tokens.items():
        below = FAMILY_WORDS[next(iter(families))] if len(families) == 1 else "gradient varies"
        columns.append((token, rf"\begin{{tabular}}[b]{{@{{}}c@{{}}}}{escape(token)}\\{{\scriptsize {escape(below)}}}\end{{tabular}}"))
    if len(tokens) > 1:
        columns.append((WORST, r"\begin{tabular}[b]{@{}c@{}}Worst case\\{\scriptsize per sample}\end{tabular}"))
    return columns


def _entry(run: "Run", metric: str) -> dict | None:
    return run.results["clean"] if metric == "clean" else run.results.get("robust", {}).get(metric)


def _caption(runs: Sequence["Run"], keys: Sequence[str], shown: Sequence[str], columns: list[tuple[str, str]]) -> str:
    results = [r.results for r in runs]
    tokens = [m for m, _ in columns if m not in ("clean", WORST)]
    attacks = "; ".join(attack_legend(results, t) for t in tokens) if tokens else "none (clean accuracy only)"
    fixed = caption_settings(runs)
    settings = ", ".join(f"{k}={value_words(v)}" for k, v in fixed.items()) or "none"
    varying = ", ".join(shown) or "none"
    hidden = len(keys) - len(shown)
    if hidden:
        varying += f" (and {hidden} key(s) that change with them: report.csv)"
    return (f"Accuracy (\\%) with 95\\% Wilson intervals on {escape(count_words(r.results['num_samples'] for r in runs))} "
            f"per run; best per column in bold (ties included). Attacks: {escape(attacks)}. Varying: {escape(varying)}. "
            f"Held fixed: {escape(settings)}. Flags: masking checks that fired (docs/evaluation.md).")


def latex_table(runs: Sequence["Run"], keys: Sequence[str], labels: dict[Path, str]) -> str:
    """The text of ``report.tex`` (module docstring)."""
    all_keys = list(keys)
    keys = distinguishing_keys([r.config for r in runs], all_keys)
    rows = sorted(runs, key=lambda r: (tuple(natural_key(r.config.get(k)) for k in keys), labels[r.path]))
    need_label = len({tuple(repr(r.config.get(k)) for k in keys) for r in runs}) < len(runs) or not keys
    columns = _columns(runs)
    best = {}
    for metric, _ in columns:
        shown = [_number(e["acc"]) for r in runs if (e := _entry(r, metric))]
        best[metric] = max(shown, key=float) if shown else None
    key_columns = [short_key(k, keys) for k in keys]
    header = (["Run"] if need_label else []) + [escape(k) for k in key_columns] + [h for _, h in columns] + ["Flags"]
    align = ("l" if need_label else "") + "".join(
        "r" if all(isinstance(r.config.get(k), (int, float)) and not isinstance(r.config.get(k), bool) for r in runs) else "l"
        for k in keys) + "c" * len(columns) + "l"
    lines = [f"% report.tex: {len(runs)} runs; needs \\usepackage{{booktabs}}.",
             r"\begin{table}[t]", r"\centering", rf"\caption{{{_caption(runs, all_keys, keys, columns)}}}",
             r"\label{tab:ablation}", r"\small", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    for r in rows:
        cells = [escape(labels[r.path])] if need_label else []
        cells += [escape(value_words(r.config.get(k))) for k in keys]
        for metric, _ in columns:
            entry = _entry(r, metric)
            cells.append(accuracy_cell(entry, bold=bool(entry) and _number(entry["acc"]) == best[metric]))
        cells.append(flags_cell(r.results))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_latex(runs: Sequence["Run"], keys: Sequence[str], labels: dict[Path, str], out: Path) -> Path:
    """Write ``report.tex`` into ``out``; returns its path."""
    path = Path(out) / "report.tex"
    path.write_text(latex_table(runs, keys, labels))
    return path
