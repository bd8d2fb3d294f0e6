"""The tables and plot of a suite: one row per dataset (or per defence, for a suite of defences on the same
samples), clean and worst-case robust accuracy (95% intervals) per defence, as ``suite.csv``, ``suite.md`` and
``suite.png``; several suite run folders merge into one such table."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from clipure_lit.config.loader import load_config
from clipure_lit.reporting.format import pct
from clipure_lit.results import read_json


def average(rows: list[dict], exclude: tuple[str, ...] = ("imagenet",)) -> dict:
    """Mean clean and robust accuracy over the finished datasets, ImageNet excluded (the literature's
    13-dataset zero-shot average)."""
    done = [r for r in rows if r.get("status") == "done" and r["dataset"] not in exclude]
    mean = lambda key: (sum(r[key] for r in done) / len(done)) if done and all(r[key] is not None for r in done) else None  # noqa: E731
    return {"num_datasets": len(done), "clean": mean("clean"), "robust": mean("robust")}


def defence_name(cfg: DictConfig) -> str:
    """The column name of a suite run: ``<clip arch>/<pixel purifier>+<latent purifier>`` (``none`` when undefended)."""
    purifiers = "+".join(p for p in (cfg.purifier.pixel, cfg.purifier.latent) if p != "identity") or "none"
    return f"{cfg.clip.arch}/{purifiers}"


def average_interval(rows: list[dict], key: str, exclude: tuple[str, ...] = ("imagenet",)) -> tuple[float, float] | None:
    """An approximate 95% interval of the mean ``key`` accuracy (``clean`` or ``robust``) over the rows
    :func:`average` averages: each dataset's Wilson interval is taken as independent error of the mean, its half
    widths combined in quadrature and divided by the number of datasets. None when the average is undefined."""
    done = [r for r in rows if r.get("status") == "done" and r["dataset"] not in exclude]
    if not done or any(r.get(key) is None or not r.get(f"{key}_ci95") for r in done):
        return None
    mean = sum(r[key] for r in done) / len(done)
    lower = math.sqrt(sum((r[key] - r[f"{key}_ci95"][0]) ** 2 for r in done)) / len(done)
    upper = math.sqrt(sum((r[f"{key}_ci95"][1] - r[key]) ** 2 for r in done)) / len(done)
    return max(0.0, mean - lower), min(1.0, mean + upper)


def write_tables(out: Path, columns: dict[str, list[dict]], row_label: str = "dataset") -> None:
    """``suite.csv``, ``suite.md`` and ``suite.png``: one row per dataset (``row_label="dataset"``, with the average
    over datasets) or per defence (``row_label="defence"``, no average), clean and worst-case robust accuracy with
    95% intervals per column. A column named ``""`` is the only one (its cells are headed ``clean`` / ``robust``)."""
    datasets = list(dict.fromkeys(r["dataset"] for rows in columns.values() for r in rows))
    by_key = {(name, r["dataset"]): r for name, rows in columns.items() for r in rows}
    with open(out / "suite.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([row_label, "defence", "status", "clean", "clean_ci_low", "clean_ci_high", "robust", "robust_ci_low", "robust_ci_high"])
        for d in datasets:
            for name in columns:
                r = by_key.get((name, d), {"status": "missing"})
                cc, rc = r.get("clean_ci95") or [None, None], r.get("robust_ci95") or [None, None]
                writer.writerow([d, name or d, r["status"], r.get("clean"), *cc, r.get("robust"), *rc])
    header = f"| {row_label} | " + " | ".join(f"{_head(n, 'clean')} | {_head(n, 'robust (worst case)')}" for n in columns) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(columns))]
    for d in datasets:
        cells = []
        for name in columns:
            r = by_key.get((name, d), {})
            if r.get("status") != "done":
                cells += [r.get("status", "missing"), ""]
            else:
                cells += [pct(r["clean"], r["clean_ci95"]), pct(r["robust"], r["robust_ci95"])]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    if row_label == "dataset":
        avgs = [average(rows) for rows in columns.values()]
        lines.append("| **average (excl. ImageNet)** | " + " | ".join(f"{pct(a['clean'])} | {pct(a['robust'])}" for a in avgs) + " |")
    (out / "suite.md").write_text("\n".join(lines) + "\n")
    _plot(out / "suite.png", datasets, columns, by_key, row_label)


def _head(column: str, what: str) -> str:
    return f"{column} {what}" if column else what


def _plot(path: Path, datasets: list[str], columns: dict, by_key: dict, row_label: str = "dataset") -> None:
    """Grouped bars per row: clean (light) and worst-case robust accuracy of every defence column, each with its 95%
    Wilson interval; a row that was not evaluated is marked with its status instead of a bar, and a suite of datasets
    ends with the average over the finished ones (hatched, with the interval of :func:`average_interval`)."""
    import matplotlib  # heavy: ~0.4 s to import; only the plots need it, not the tables

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_average = row_label == "dataset"
    labels = datasets + (["average\n(excl. ImageNet)"] if with_average else [])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.2))
    n = len(columns)
    width = 0.8 / (2 * n)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, name in enumerate(columns):
        color = colors[j % len(colors)]
        for k, key in enumerate(("clean", "robust")):
            xs, values, low, high = [], [], [], []
            for i, d in enumerate(datasets):
                r = by_key.get((name, d), {})
                if r.get("status") != "done" or r.get(key) is None:
                    continue
                ci = r.get(f"{key}_ci95") or [r[key], r[key]]
                xs.append(i - 0.4 + width * (2 * j + k + 0.5))
                values.append(100 * r[key])
                low.append(100 * (r[key] - ci[0]))
                high.append(100 * (ci[1] - r[key]))
            what = "robust (worst case)" if key == "robust" else "clean"
            label = what if not name or name == "defence" else f"{name} {what}"
            ax.bar(xs, values, width, yerr=[low, high], capsize=2, ecolor="black", color=color,
                   alpha=1.0 if key == "robust" else 0.4, label=label)
            if with_average:
                rows = columns[name]
                mean = average(rows)[key]
                interval = average_interval(rows, key)
                if mean is not None:
                    x = len(datasets) - 0.4 + width * (2 * j + k + 0.5)
                    err = [[100 * (mean - interval[0])], [100 * (interval[1] - mean)]] if interval else None
                    ax.bar([x], [100 * mean], width, yerr=err, capsize=2, ecolor="black", color=color, hatch="//",
                           edgecolor="white", alpha=1.0 if key == "robust" else 0.4)
        for i, d in enumerate(datasets):  # rows not evaluated: their status where the bars would be
            r = by_key.get((name, d), {"status": "missing"})
            if r.get("status") != "done":
                x = i - 0.4 + width * (2 * j + 1)
                ax.bar([x], [100], 2 * width, color="none", edgecolor="grey", hatch="xx", linewidth=0.5)
                ax.text(x, 50, r.get("status", "missing"), rotation=90, ha="center", va="center", fontsize=8, color="dimgray",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100 + 12 * ((2 * n + 1) // 4 + 1))  # headroom for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    title = "error bars: 95% Wilson intervals"
    if with_average:
        title += "; average: mean of finished datasets, interval from theirs"
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper center", ncol=min(2 * n, 4), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_suites(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """One dataset x defence table from several suite run folders (e.g. plain CLIP, FARE, CLIPure on the same ids)."""
    columns = {}
    for run_dir in map(Path, run_dirs):
        summary = read_json(run_dir / "suite.json")
        name = defence_name(load_config([str(run_dir / "config.yaml")]))
        columns[name if name not in columns else f"{name} ({run_dir.name})"] = summary["rows"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(out, columns)
    return out
