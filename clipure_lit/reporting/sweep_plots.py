"""``acc_vs_<key>.png`` of an ablation report: accuracy against one varying config key, for every attack.

One figure per varying key that can be drawn against. Each panel holds the runs that share the values of the other
varying keys, for every combination in which the key takes two values or more (the caption counts the runs left
out); its title names the fewest of those keys that tell the panels apart
(:func:`~clipure_lit.reporting.config_keys.distinguishing_keys`). In a panel: clean accuracy (grey, dashed), the
robust accuracy under each attack token of ``results.json`` styled by its gradient family (released, exact, BPDA,
EOT, transfer, black-box: :mod:`clipure_lit.reporting.plot_style`; a second token of the same family with hollow
markers), and, where the panel's runs ran several attacks, the per-sample worst case (black stars). Every point
carries its 95% Wilson interval and each series is shifted sideways by a small fixed amount, so series at the same
value (0% under several attacks) stay visible side by side.

Numeric keys are drawn on a numeric axis in numeric order (log-scaled when the values span more than a factor 50);
other keys (text, booleans, lists, null) on evenly spaced positions in natural order
(:func:`~clipure_lit.reporting.run_description.natural_key`). The title names the model, the defence and the
number of images; the caption under the panels gives each attack's sub-attacks, radius (in /255 for Linf),
iterations or queries and gradient. A key gets no figure, and a reason, when it never changes while the other
varying keys stay fixed (no line can be drawn against it).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from clipure_lit.reporting.config_keys import distinguishing_keys
from clipure_lit.reporting.plot_style import (CLEAN_LOOK, FAMILY_LOOKS, WORST_LOOK, Y_LIMITS, Look, add_caption,
                                              dodge_offsets, dodge_spacing, dodged, percent_errors, save_png,
                                              wrap_to_width)
from clipure_lit.reporting.run_description import (FAMILIES, FAMILY_WORDS, attack_legend, count_words, defence_words,
                                                   gradient_family, model_words, natural_key, one_or_varies, short_key,
                                                   value_words)

if TYPE_CHECKING:
    from clipure_lit.reporting.ablation import Run

WORST = "worst_case"


@dataclass
class DrawnSeries:
    """One series as drawn: its panel, legend label, gradient family (``clean``, ``worst_case`` or a family of
    :data:`~clipure_lit.reporting.run_description.FAMILIES`), the key's values (in drawing order) and accuracies
    (fractions)."""

    panel: str
    label: str
    family: str
    xs: list
    accs: list[float]


@dataclass
class SweepFigure:
    """A drawn figure before saving: the matplotlib figure, what it shows, and its title and caption artists."""

    fig: object
    x_key: str
    series: list[DrawnSeries] = field(default_factory=list)
    panels: list[str] = field(default_factory=list)
    title: object = None
    caption: object = None
    legend: object = None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def skip_reason(runs: Sequence["Run"], keys: Sequence[str], x_key: str) -> str | None:
    """Why no line can be drawn against ``x_key``, or None when one can."""
    others = [k for k in keys if k != x_key]
    by_panel: dict[tuple, set] = {}
    for r in runs:
        by_panel.setdefault(tuple(repr(r.config.get(k)) for k in others), set()).add(repr(r.config.get(x_key)))
    if any(len(values) > 1 for values in by_panel.values()):
        return None
    values = {repr(r.config.get(x_key)) for r in runs}
    tied = [k for k in others if all(len({repr(r.config.get(k)) for r in runs if repr(r.config.get(x_key)) == v}) == 1
                                     for v in values)]
    return ("it never changes while the other varying keys stay fixed"
            + (f" (it changes together with {', '.join(tied)})" if tied else "") + ", so no line can be drawn against it")


def series_of(run: "Run") -> list[tuple[str, str]]:
    """``(attack token, gradient family)`` of each attack of a run, in ``results.json`` order (worst case left out)."""
    attacks = run.results.get("attacks", {})
    purifiers = run.results.get("purifiers", ())
    return [(token, gradient_family(attacks.get(token), purifiers)) for token in run.results.get("robust", {}) if token != WORST]


def _series_order(runs: Sequence["Run"]) -> list[tuple[str, str]]:
    """Every ``(token, family)`` of the runs: by family (released first, as the number to question), then in the
    order the runs list their attacks."""
    seen = list(dict.fromkeys(s for r in runs for s in series_of(r)))
    return sorted(seen, key=lambda s: FAMILIES.index(s[1]))


def figure_against(runs: Sequence["Run"], keys: Sequence[str], x_key: str) -> SweepFigure:
    """Draw (without saving) accuracy against ``x_key``: one panel per combination of the other varying keys in
    which ``x_key`` takes at least two values (the other runs have no line to show here; the caption counts them)."""
    import matplotlib  # heavy: ~0.4 s to import; only the plots need it, not the tables

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [k for k in keys if k != x_key]
    panel_of = lambda r: tuple(_hashable(r.config.get(k)) for k in others)  # noqa: E731
    panels = [p for p in {panel_of(r) for r in runs} if len({repr(r.config.get(x_key)) for r in runs if panel_of(r) == p}) > 1]
    left_out = sum(panel_of(r) not in panels for r in runs)
    runs = [r for r in runs if panel_of(r) in panels]
    values = [r.config.get(x_key) for r in runs]
    numeric = all(_is_number(v) for v in values)
    categories = sorted(set(map(_hashable, values)), key=natural_key)
    position = (lambda v: float(v)) if numeric else (lambda v: float(categories.index(_hashable(v))))  # noqa: E731
    log_x = numeric and min(values) > 0 and max(values) / min(values) > 50

    # Panels are told apart by the fewest of the other keys that do it (a defence comparison varies in dozens).
    named = distinguishing_keys([next(r.config for r in runs if panel_of(r) == p) for p in panels], others)
    # In the named keys' natural order first, so that the panels read like their titles.
    rank = [others.index(k) for k in named] + [i for i, k in enumerate(others) if k not in named]
    panels.sort(key=lambda p: tuple(natural_key(p[i]) for i in rank))

    attack_series = _series_order(runs)
    several = len({s[0] for s in attack_series}) > 1
    drawn_kinds = [("clean", "clean"), *attack_series] + ([(WORST, WORST)] if several else [])
    positions = [math.log10(v) if log_x else float(v) for v in values] if numeric else list(range(len(categories)))
    offsets = dodge_offsets(len(drawn_kinds), dodge_spacing(positions, len(drawn_kinds),
                                                             axis_range=None if numeric else len(categories)))

    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    width, height = (4.2, 3.3) if len(panels) <= 3 else (3.6, 2.7)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns + 0.6, height * rows + 0.4), squeeze=False,
                             sharey=True)
    result = SweepFigure(fig, x_key)
    handles: dict[str, object] = {}
    for ax, panel in zip(axes.flat, panels):
        members = sorted((r for r in runs if panel_of(r) == panel), key=lambda r: natural_key(r.config.get(x_key)))
        name = ", ".join(f"{short_key(k, keys)}={value_words(v)}" for k, v in zip(others, panel) if k in named) or "all runs"
        result.panels.append(name)
        alone = len({t for r in members for t, _ in series_of(r)}) == 1  # worst case = that attack: not drawn again
        for (token, family), offset in zip(drawn_kinds, offsets):
            if token == WORST and alone:
                continue
            points = [(r, _entry(r, token, family)) for r in members]
            points = [(r, e) for r, e in points if e is not None]
            if not points:
                continue
            look, label = _look_and_label(token, family)
            second = (token, family) in attack_series and [t for t, f in attack_series if f == family].index(token) > 0
            ys, yerr = percent_errors([e for _, e in points])
            xs = dodged([position(r.config.get(x_key)) for r, _ in points], offset, log_x)
            # A second attack of the same gradient family: hollow markers and its own dashes, same colour.
            artist = ax.errorbar(xs, ys, yerr=yerr, color=look.color, marker=look.marker,
                                 ls=(0, (4, 1, 1, 1, 1, 1)) if second else look.linestyle, lw=1.2,
                                 ms=5 if look.marker != "*" else 7, capsize=2.5, elinewidth=0.9,
                                 mfc="white" if family == "clean" or second else look.color, mec=look.color, label=label,
                                 zorder=1 if family == "clean" else 2)
            handles.setdefault(label, artist)
            result.series.append(DrawnSeries(name, label, family, [r.config.get(x_key) for r, _ in points],
                                             [e["acc"] for _, e in points]))
        ax.set_title(textwrap.fill(name, int(width * 72 / (0.55 * 8))), fontsize=8)
        ax.set_ylim(*Y_LIMITS)
        ax.grid(axis="y", alpha=0.3, lw=0.5)
        _x_axis(ax, matplotlib, sorted(set(values), key=natural_key) if numeric else categories, numeric, log_x,
                max(map(abs, offsets)))
        ax.set_xlabel(short_key(x_key, keys) if len(panels) > 1 else x_key, fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)", fontsize=8)
    order = [_look_and_label(token, family)[1] for token, family in drawn_kinds]
    labels = sorted(handles, key=order.index)  # clean, the attacks by gradient family, worst case: as in every panel
    result.legend = fig.legend([handles[label] for label in labels], labels, loc="upper left", bbox_to_anchor=(1.0, 0.98),
                               fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if rows == 1 else 0.96))
    result.title = fig.suptitle(wrap_to_width(fig, _title(runs, x_key), 9.5), fontsize=9.5, y=1.0, va="bottom")
    result.caption = add_caption(fig, _caption(runs, keys, x_key, named, attack_series, left_out))
    return result


def plot_against(runs: Sequence["Run"], keys: Sequence[str], out: Path) -> tuple[list[Path], dict[str, str]]:
    """One PNG per varying key (``acc_vs_<key>.png``, module docstring). Returns the PNGs written and, for each
    varying key without a plot, the reason."""
    written, skipped = [], {}
    for x_key in keys:
        reason = skip_reason(runs, keys, x_key)
        if reason:
            skipped[x_key] = reason
            continue
        drawn = figure_against(runs, keys, x_key)
        written.append(save_png(drawn.fig, Path(out) / f"acc_vs_{x_key.replace('.', '_')}.png"))
    return written, skipped


# ----------------------------------------------------------------------------------------------------- helpers
def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _entry(run: "Run", token: str, family: str) -> dict | None:
    if token == "clean":
        return run.results["clean"]
    if token == WORST:
        return run.results.get("robust", {}).get(WORST)
    return run.results.get("robust", {}).get(token) if (token, family) in series_of(run) else None


def _look_and_label(token: str, family: str) -> tuple[Look, str]:
    if token == "clean":
        return CLEAN_LOOK, "clean"
    if token == WORST:
        return WORST_LOOK, "worst case (per sample, all attacks)"
    return FAMILY_LOOKS[family], f"{token} ({FAMILY_WORDS[family]})"


def _x_axis(ax, matplotlib, ticks: list, numeric: bool, log_x: bool, spread: float) -> None:
    """Ticks at the key's values (at most 12 labelled on a numeric axis), and limits wide enough for the outermost
    dodged markers (``spread``: the largest sideways shift, in axis units)."""
    if log_x:
        ax.set_xscale("log")
    if numeric:
        if len(ticks) <= 12:
            ax.set_xticks([float(v) for v in ticks], [value_words(v) for v in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if log_x:
            factor = 10 ** (spread + 0.04 * math.log10(max(ticks) / min(ticks)))
            ax.set_xlim(min(ticks) / factor, max(ticks) * factor)
        else:
            pad = spread + 0.05 * ((max(ticks) - min(ticks)) or 1.0)
            ax.set_xlim(min(ticks) - pad, max(ticks) + pad)
    else:
        labels = [value_words(v) for v in ticks]
        ax.set_xticks(range(len(ticks)), labels, rotation=20 if max(map(len, labels)) > 8 else 0, ha="right"
                      if max(map(len, labels)) > 8 else "center")
        ax.set_xlim(-0.5 - spread, len(ticks) - 0.5 + spread)
    ax.tick_params(labelsize=7)


def _title(runs: Sequence["Run"], x_key: str) -> str:
    model = one_or_varies((model_words(r.config) for r in runs), "model")
    defence = one_or_varies((defence_words(r.config, r.results.get("purifiers", ())) for r in runs), "defence")
    images = count_words(r.results["num_samples"] for r in runs)
    return f"Accuracy against {x_key}: {model}, {defence}, {images} per run"


def _caption(runs: Sequence["Run"], keys: Sequence[str], x_key: str, named: list[str],
             attack_series: list[tuple[str, str]], left_out: int) -> str:
    results = [r.results for r in runs]
    tokens = list(dict.fromkeys(token for token, _ in attack_series))
    attacks = "; ".join(attack_legend(results, t) for t in tokens) if tokens else "none (clean accuracy only)"
    panels = f"One panel per {', '.join(short_key(k, keys) for k in named)}. " if named else ""
    if left_out:
        panels += (f"Not drawn: {left_out} run(s) whose other keys' values come with a single "
                   f"{short_key(x_key, keys)} (see report.md). ")
    return (f"Attacks: {attacks}. {panels}Error bars: 95% Wilson intervals; series are shifted sideways by a fixed "
            f"small amount so that equal values stay visible.")
