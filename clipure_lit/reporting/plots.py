"""The PNG of one evaluation: clean accuracy and robust accuracy per attack, with 95% intervals."""

from __future__ import annotations

from pathlib import Path

from clipure_lit.reporting.format import pct


def plot_results(results: dict, path: Path) -> Path:
    """Bar chart of ``results.json``: clean, each attack, worst case; error bars are the Wilson intervals."""
    import matplotlib  # heavy: ~0.4 s to import; only the plots need it, not the tables

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [("clean", results["clean"])] + list(results.get("robust", {}).items())
    names = [n for n, _ in entries]
    accs = [100 * e["acc"] for _, e in entries]
    low = [100 * (e["acc"] - e["ci95"][0]) for _, e in entries]
    high = [100 * (e["ci95"][1] - e["acc"]) for _, e in entries]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(entries) + 1.5), 3.8))
    colors = ["tab:gray"] + ["tab:red" if n == "worst_case" else "tab:blue" for n in names[1:]]
    ax.bar(range(len(entries)), accs, yerr=[low, high], capsize=4, color=colors)
    for i, (_, entry) in enumerate(entries):  # the value above its interval, where no whisker crosses it
        ax.text(i, 100 * entry["ci95"][1] + 1.5, pct(entry["acc"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(entries)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{results['num_samples']} samples; error bars: 95% Wilson intervals; red: per-sample worst case",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
