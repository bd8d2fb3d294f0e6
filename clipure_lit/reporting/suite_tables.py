"""The tables and plot of a suite: one row per dataset, clean and worst-case robust accuracy (95% intervals) per
defence, as ``suite.csv``, ``suite.md`` and ``suite.png``; several suite run folders merge into one such table."""

from __future__ import annotations

import csv
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


def write_tables(out: Path, columns: dict[str, list[dict]]) -> None:
    """``suite.csv``, ``suite.md`` and ``suite.png``: one row per dataset, clean and robust accuracy per defence."""
    datasets = list(dict.fromkeys(r["dataset"] for rows in columns.values() for r in rows))
    by_key = {(name, r["dataset"]): r for name, rows in columns.items() for r in rows}
    with open(out / "suite.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "defence", "status", "clean", "clean_ci_low", "clean_ci_high", "robust", "robust_ci_low", "robust_ci_high"])
        for d in datasets:
            for name in columns:
                r = by_key.get((name, d), {"status": "missing"})
                cc, rc = r.get("clean_ci95") or [None, None], r.get("robust_ci95") or [None, None]
                writer.writerow([d, name, r["status"], r.get("clean"), *cc, r.get("robust"), *rc])
    header = "| dataset | " + " | ".join(f"{n} clean | {n} robust" for n in columns) + " |"
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
    avgs = [average(rows) for rows in columns.values()]
    lines.append("| **average (excl. ImageNet)** | " + " | ".join(f"{pct(a['clean'])} | {pct(a['robust'])}" for a in avgs) + " |")
    (out / "suite.md").write_text("\n".join(lines) + "\n")
    _plot(out / "suite.png", datasets, columns, by_key)


def _plot(path: Path, datasets: list[str], columns: dict, by_key: dict) -> None:
    """Grouped bars per dataset: clean (light) and worst-case robust accuracy of every defence column."""
    import matplotlib  # heavy: ~0.4 s to import; only the plots need it, not the tables

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(datasets) + 2), 4))
    n = len(columns)
    width = 0.8 / (2 * n)
    for j, name in enumerate(columns):
        for k, key in enumerate(("clean", "robust")):
            values = [100 * (by_key.get((name, d), {}).get(key) or 0.0) for d in datasets]
            xs = [i - 0.4 + width * (2 * j + k + 0.5) for i in range(len(datasets))]
            label = f"{key} (worst case)" if key == "robust" else key
            ax.bar(xs, values, width, label=label if name == "defence" else f"{name} {label}", alpha=1.0 if key == "robust" else 0.45)
    ax.set_xticks(range(len(datasets)), datasets, rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
