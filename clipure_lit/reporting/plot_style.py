"""What every accuracy plot of the project shares: one look per gradient family, 95% Wilson error bars, a small
horizontal dodge so that series at the same value (often 0%) stay apart, titles and captions wrapped to the
figure's width, and PNGs whose bytes depend only on what is drawn.

Colours follow the gradient family (:mod:`clipure_lit.reporting.run_description`), so "released" is the same
orange in a run's ``results.png``, in ``acc_vs_<key>.png`` and in the findings plots; markers and line styles differ
too, so the series stay apart in greyscale print.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

CLEAN_COLOR = "0.45"
WORST_COLOR = "black"
Y_LIMITS = (-4.0, 104.0)  # below 0 so that markers and bars at 0% are drawn whole, not cut by the axis


@dataclass(frozen=True)
class Look:
    """How one series is drawn."""

    color: str
    marker: str
    linestyle: str


FAMILY_LOOKS = {
    "released": Look("tab:orange", "o", "-"),
    "exact": Look("tab:red", "s", "--"),
    "bpda": Look("tab:purple", "^", "-."),
    "eot": Look("tab:green", "D", ":"),
    "transfer": Look("tab:brown", "v", (0, (5, 1, 1, 1))),
    "black_box": Look("tab:blue", "P", (0, (1, 1))),
    "own": Look("tab:olive", "X", "-"),
    "unrecorded": Look("tab:cyan", "h", "-"),
}
CLEAN_LOOK = Look(CLEAN_COLOR, "o", (0, (6, 3)))
WORST_BAR = {"facecolor": "white", "edgecolor": WORST_COLOR, "hatch": "xxx"}  # its error bar stays visible on it
WORST_LOOK = Look(WORST_COLOR, "*", (0, (1, 2)))  # dotted: the lines it covers at 0% show through


def percent_errors(entries: Sequence[dict]) -> tuple[list[float], list[list[float]]]:
    """Accuracies in percent of ``results.json`` entries (``acc``, ``ci95``) and matplotlib's asymmetric error bars
    from their 95% Wilson intervals: ``(ys, [below, above])``."""
    ys = [100 * e["acc"] for e in entries]
    below = [100 * (e["acc"] - e["ci95"][0]) for e in entries]
    above = [100 * (e["ci95"][1] - e["acc"]) for e in entries]
    return ys, [below, above]


def dodge_offsets(count: int, spacing: float) -> list[float]:
    """``count`` offsets centred on 0, ``spacing`` apart: the horizontal shift of each series at one x value."""
    return [spacing * (i - (count - 1) / 2) for i in range(count)]


def dodge_spacing(positions: Sequence[float], n_series: int, axis_range: float | None = None) -> float:
    """The sideways step between neighbouring series, for x ``positions`` in axis units (log10 of the values on a
    log axis, indices for categories): 3.2% of the axis range (default: the positions' span), about a marker's width
    on a panel, so that markers at the same value sit side by side, but never so much that the group at one x
    reaches the next x (70% of the smallest gap at most)."""
    points = sorted(set(positions))
    gaps = [b - a for a, b in zip(points, points[1:])]
    wanted = 0.032 * (axis_range or (points[-1] - points[0] if gaps else 0.0) or 1.0)
    return min(wanted, 0.7 * min(gaps) / max(n_series - 1, 1)) if gaps else wanted


def dodged(xs: Sequence[float], offset: float, log_x: bool) -> list[float]:
    """``xs`` shifted by ``offset``: added on a linear axis, as a factor ``10**offset`` on a log axis (so the shift
    looks the same at every x)."""
    return [x * 10 ** offset if log_x else x + offset for x in xs]


def wrap_to_width(fig, text: str, fontsize: float) -> str:
    """``text`` wrapped so that each line fits the figure's width at ``fontsize`` points, measured with the
    figure's renderer (the longest lines that fit, so a title that fits on one line stays on one)."""
    probe = fig.text(0, 0, "", fontsize=fontsize)
    renderer = fig.canvas.get_renderer()
    limit = fig.bbox.width * 0.98
    chars = max(len(line) for line in text.split("\n"))
    while True:
        wrapped = "\n".join(textwrap.fill(paragraph, chars, break_on_hyphens=False) for paragraph in text.split("\n"))
        probe.set_text(wrapped)
        if chars <= 20 or probe.get_window_extent(renderer).width <= limit:
            probe.remove()
            return wrapped
        chars -= 2


def fits_width(fig, artist) -> bool:
    """True when ``artist`` (a title or caption) is drawn inside the figure's width."""
    renderer = fig.canvas.get_renderer()
    box = artist.get_window_extent(renderer)
    return box.x0 >= -0.5 and box.x1 <= fig.bbox.width + 0.5


def add_caption(fig, text: str, fontsize: float = 7.0):
    """A caption under everything drawn so far, from the figure's left edge, wrapped to the figure's width;
    returns the text artist (:func:`save_png` keeps it inside the saved image)."""
    return fig.text(0.01, 0.0, wrap_to_width(fig, text, fontsize), fontsize=fontsize, ha="left", va="top")


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Save ``fig`` as a PNG without software name or timestamp in its metadata (reruns give the same bytes), with
    everything drawn (suptitle, caption, outside legend) inside the image, and close it."""
    import matplotlib.pyplot as plt  # heavy; only the plots need it

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.08, metadata={"Software": None})
    plt.close(fig)
    return path
