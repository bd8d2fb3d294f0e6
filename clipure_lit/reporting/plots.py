"""``results.png`` of one evaluation: clean accuracy, the robust accuracy under each attack and the per-sample worst
case, as bars with their 95% Wilson intervals.

Each attack's bar takes the colour and hatch of its gradient family (released, exact, BPDA, EOT, transfer,
black-box; :mod:`clipure_lit.reporting.plot_style`), so a number that holds only under the released gradient
stands out next to the exact one; the legend lists exactly the kinds of bar drawn. The title names the model (from
the run's config, when given), the defence and the number of images; a caption under the axes gives each attack's
sub-attacks, radius, iterations or queries and gradient, wrapped to the figure's width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipure_lit.reporting.format import pct
from clipure_lit.reporting.plot_style import (CLEAN_COLOR, FAMILY_LOOKS, WORST_BAR, add_caption, percent_errors,
                                              save_png, wrap_to_width)
from clipure_lit.reporting.run_description import (FAMILY_WORDS, attack_words, count_words, defence_words,
                                                   flat_config, gradient_family, model_words)

_HATCHES = {"released": "", "exact": "//", "bpda": "..", "eot": "xx", "transfer": "\\\\", "black_box": "oo", "own": "--",
            "unrecorded": "++"}


@dataclass
class ResultsFigure:
    """The drawn figure before saving: bars in order as ``(name, kind, accuracy)`` (kind: ``clean``,
    ``worst_case`` or a gradient family), the legend's labels, and the title and caption artists."""

    fig: object
    bars: list[tuple[str, str, float]] = field(default_factory=list)
    legend_labels: list[str] = field(default_factory=list)
    title: object = None
    caption: object = None


def results_figure(results: dict, config: dict | None = None) -> ResultsFigure:
    """Draw (without saving) the bar chart of one run's ``results.json``; ``config`` is the run's config (nested as
    in ``config.yaml``, or flattened to dotted keys) and names the model and defence in the title."""
    import matplotlib  # heavy: ~0.4 s to import; only the plots need it, not the tables

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    flat = flat_config(config or {})
    purifiers = results.get("purifiers", ())
    attacks = results.get("attacks", {})
    entries = [("clean", "clean", results["clean"])]
    for name, entry in results.get("robust", {}).items():
        kind = "worst_case" if name == "worst_case" else gradient_family(attacks.get(name), purifiers)
        entries.append((name, kind, entry))
    fig, ax = plt.subplots(figsize=(max(5.2, 1.05 * len(entries) + 2.2), 4.0))
    drawn = ResultsFigure(fig)
    ys, yerr = percent_errors([e for _, _, e in entries])
    bars = ax.bar(range(len(entries)), ys, yerr=yerr, capsize=4, linewidth=0.8,
                  error_kw={"elinewidth": 1.0, "ecolor": "0.15"})
    for bar, (_, kind, _) in zip(bars, entries):
        bar.set(**_bar_style(kind))
    for i, (name, kind, entry) in enumerate(entries):  # the value above its interval, where no whisker crosses it
        ax.text(i, 100 * entry["ci95"][1] + 1.5, pct(entry["acc"]), ha="center", va="bottom", fontsize=8)
        drawn.bars.append((name, kind, entry["acc"]))
    ax.set_xticks(range(len(entries)), [_tick(name, kind) for name, kind, _ in entries], fontsize=7.5)
    ax.set_ylim(0, 112)
    ax.set_ylabel("accuracy (%)")
    kinds = list(dict.fromkeys(k for _, k, _ in entries))
    handles = [Patch(**_bar_style(k), label=_kind_words(k)) for k in kinds]
    legend = ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    drawn.legend_labels = [t.get_text() for t in legend.get_texts()]
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    model = model_words(flat) if flat else None
    head = ", ".join(p for p in (model, defence_words(flat, purifiers), count_words([results["num_samples"]])) if p)
    drawn.title = fig.suptitle(wrap_to_width(fig, head, 9.5), fontsize=9.5, y=1.0, va="bottom")
    words = [f"{name}: {attack_words(attacks.get(name), purifiers)}" for name, kind, _ in entries
             if kind not in ("clean", "worst_case")]
    caption = ("Attacks: " + "; ".join(words) + ". " if words else "No attack ran. ") + (
        "Worst case: a sample counts only if it is correct clean and under every attack. " if len(words) > 1 else "") + \
        "Error bars: 95% Wilson intervals."
    drawn.caption = add_caption(fig, caption)
    return drawn


def plot_results(results: dict, path: Path, config: dict | None = None) -> Path:
    """Write ``results.png`` (module docstring) for ``results.json``'s contents; ``config`` (the run's config)
    names the model in the title."""
    return save_png(results_figure(results, config).fig, Path(path), dpi=120)


def _bar_style(kind: str) -> dict:
    """Fill, edge and hatch of a bar of ``kind`` (clean, worst case, or a gradient family); the legend uses the same."""
    if kind == "worst_case":
        return dict(WORST_BAR)
    color = CLEAN_COLOR if kind == "clean" else FAMILY_LOOKS[kind].color
    return {"facecolor": color, "edgecolor": "white", "hatch": _HATCHES.get(kind, "")}


def _kind_words(kind: str) -> str:
    if kind == "clean":
        return "clean"
    if kind == "worst_case":
        return "worst case (per sample)"
    return FAMILY_WORDS[kind]


def _tick(name: str, kind: str) -> str:
    """The attack token over its gradient, split at ``@`` so that long tokens stay narrow."""
    if kind in ("clean", "worst_case"):
        return {"clean": "clean", "worst_case": "worst case"}[kind]
    return name.replace("@", "\n@", 1)
