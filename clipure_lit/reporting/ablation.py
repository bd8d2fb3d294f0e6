"""Turn a group of run folders (a sweep, a suite, any runs) into an ablation report.

Outputs in the report folder: ``report.csv`` and ``report.md`` (one row per run: the config keys that vary across
the runs, clean and robust accuracy per attack with 95% intervals, the worst case, time per sample), one PNG per
numeric varying key (accuracy against that key, one line per combination of the other varying keys; the even/odd
pattern of the released CLIPure-Cos shows up against ``purifier.clipure_cos.num_steps``), and ``paired.csv``: each run against
a baseline run on the shared sample ids, with the accuracy difference and an exact McNemar test.
"""

from __future__ import annotations

import csv
import logging

from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from clipure_lit.errors import DataNotFoundError
from clipure_lit.reporting.format import ms, pct_entry, points
from clipure_lit.results import read_json
from clipure_lit.utils.mcnemar import mcnemar_exact

log = logging.getLogger(__name__)

_IGNORED_PREFIXES = ("name", "run_dir", "output_root", "logger.", "log_level", "prompts.cache_dir", "trainer.enable_progress_bar", "resume")


@dataclass
class Run:
    path: Path
    results: dict
    config: dict  # flattened {dotted key: value}

    def correct(self, metric: str) -> dict[int, bool]:
        """Per-sample correctness for ``metric``: ``clean``, an attack name, or ``worst_case``."""
        with open(self.path / "samples.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        out = {}
        for row in rows:
            label = row["label"]
            if metric == "clean":
                ok = row["clean_pred"] == label
            elif metric == "worst_case":
                ok = row["clean_pred"] == label and all(v == label for k, v in row.items() if k.startswith("adv_pred/"))
            else:
                ok = row[f"adv_pred/{metric}"] == label
            out[int(row["sample_id"])] = ok
        return out


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tuple(node) if isinstance(node, list) else node}


def collect_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every finished run (a folder with results.json, config.yaml and samples.csv) under the given paths."""
    runs = []
    for root in map(Path, paths):
        if not root.exists():
            raise DataNotFoundError(f"Run folder not found: '{root}'.")
        for results in sorted(root.rglob("results.json")):
            folder = results.parent
            if not (folder / "config.yaml").is_file() or not (folder / "samples.csv").is_file():
                continue
            config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=True)
            runs.append(Run(folder, read_json(results), _flatten(config)))
    if not runs:
        raise DataNotFoundError(f"No finished runs (results.json + config.yaml + samples.csv) under {list(map(str, paths))}.")
    return runs


def varying_keys(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if not k.startswith(_IGNORED_PREFIXES) and len({repr(r.config.get(k)) for r in runs}) > 1]


def attack_names(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(name for r in runs for name in r.results.get("robust", {})))


def _headline(run: Run) -> float:
    robust = run.results.get("robust", {})
    return (robust.get("worst_case") or run.results["clean"])["acc"]


def write_table(runs: list[Run], keys: list[str], out: Path) -> None:
    attacks = attack_names(runs)
    header = ["run", *keys, "clean", *[f"robust/{a}" for a in attacks], "time/clean (ms)"]
    with open(out / "report.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", *keys, "n", "clean", "clean_ci_low", "clean_ci_high",
                         *[f"{s}/{a}" for a in attacks for s in ("robust", "robust_ci_low", "robust_ci_high")],
                         *[f"time_per_sample_s/{k}" for k in ("clean", *[f"attack/{a}" for a in attacks if a != "worst_case"])]])
        for r in runs:
            robust = r.results.get("robust", {})
            times = r.results.get("time_per_sample_s", {})
            writer.writerow([r.path.name, *[r.config.get(k) for k in keys], r.results["num_samples"], r.results["clean"]["acc"],
                             *r.results["clean"]["ci95"],
                             *[v for a in attacks for v in ([robust[a]["acc"], *robust[a]["ci95"]] if a in robust else [None] * 3)],
                             *[times.get(k) for k in ("clean", *[f"attack/{a}" for a in attacks if a != "worst_case"])]])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        robust = r.results.get("robust", {})
        t = r.results.get("time_per_sample_s", {}).get("clean")
        cells = [r.path.name, *[str(r.config.get(k)) for k in keys], pct_entry(r.results["clean"]),
                 *[pct_entry(robust.get(a)) for a in attacks], ms(t)]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_against(runs: list[Run], keys: list[str], out: Path) -> list[Path]:
    """One PNG per numeric varying key with at least 3 values: headline accuracy (worst-case robust, or clean when
    no attack ran) against it, one line per combination of the other varying keys; clean accuracy dashed."""
    import matplotlib  # heavy: ~0.4 s to import; only the plots need it, not the tables

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for x_key in keys:
        values = {r.config.get(x_key) for r in runs}
        if len(values) < 3 or not all(_is_number(v) for v in values):
            continue
        others = [k for k in keys if k != x_key]
        series_of = lambda r: tuple((k, r.config.get(k)) for k in others)  # noqa: E731
        fig, ax = plt.subplots(figsize=(6, 4))
        for series, members in groupby(sorted(runs, key=lambda r: repr(series_of(r))), key=series_of):
            members = sorted(members, key=lambda r: r.config[x_key])
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in series) or "runs"
            xs = [r.config[x_key] for r in members]
            line, = ax.plot(xs, [100 * _headline(r) for r in members], marker="o", label=label)
            ax.plot(xs, [100 * r.results["clean"]["acc"] for r in members], ls="--", color=line.get_color(), alpha=0.5)
        if all(v > 0 for v in values) and max(values) / min(values) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(x_key)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("solid: robust (worst case over attacks), dashed: clean", fontsize=9)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=6)
        fig.tight_layout()
        path = out / f"acc_vs_{x_key.replace('.', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def paired_comparisons(runs: list[Run], baseline: Run, out: Path, metric: str = "worst_case") -> list[dict]:
    """Each run against ``baseline`` on their shared sample ids (``metric`` correctness): accuracy difference and the
    exact McNemar p-value."""
    base = baseline.correct(metric if baseline.results.get("robust") else "clean")
    rows = []
    for r in runs:
        if r is baseline:
            continue
        other = r.correct(metric if r.results.get("robust") else "clean")
        shared = sorted(set(base) & set(other))
        if not shared:
            continue
        only_base = sum(base[i] and not other[i] for i in shared)
        only_other = sum(other[i] and not base[i] for i in shared)
        diff = (sum(other[i] for i in shared) - sum(base[i] for i in shared)) / len(shared)
        rows.append({"run": r.path.name, "baseline": baseline.path.name, "shared_samples": len(shared), "acc_difference": diff,
                     "only_baseline_correct": only_base, "only_run_correct": only_other, "mcnemar_p": mcnemar_exact(only_base, only_other)})
    if rows:
        with open(out / "paired.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def build_report(paths: Sequence[str | Path], out: str | Path | None = None, baseline: str | None = None) -> dict:
    """Collect the runs under ``paths`` and write the report into ``out`` (default: the first path)."""
    runs = collect_runs(paths)
    out = Path(out or paths[0])
    out.mkdir(parents=True, exist_ok=True)
    keys = varying_keys(runs)
    write_table(runs, keys, out)
    plots = plot_against(runs, keys, out)
    base = next((r for r in runs if baseline and (r.path.name == baseline or str(r.path) == baseline)), runs[0])
    paired = paired_comparisons(runs, base, out)
    summary = {"runs": len(runs), "varying_keys": keys, "plots": [str(p) for p in plots], "paired": paired,
               "out": str(out), "best": max(runs, key=_headline).path.name}
    log.info("report of %d runs in %s", len(runs), out)
    return summary


def format_report(summary: dict) -> str:
    out = Path(summary["out"])
    lines = [(out / "report.md").read_text().rstrip()]
    for row in summary["paired"]:
        significant = "significant" if row["mcnemar_p"] < 0.05 else "not significant"
        lines.append(f"{row['run']} vs {row['baseline']}: {points(row['acc_difference'])} points on {row['shared_samples']} "
                     f"shared samples, McNemar p={row['mcnemar_p']:.3g} ({significant})")
    lines.append(f"report folder: {out} (report.csv, report.md, paired.csv, {len(summary['plots'])} plot(s))")
    return "\n".join(lines)


