"""Turn a group of run folders (a sweep, a suite, any runs) into an ablation report.

Outputs in the report folder: ``report.csv`` and ``report.md`` (one row per run: the config keys that vary across
the runs, clean and robust accuracy per attack with 95% intervals, the worst case, time per sample), one PNG per
numeric varying key (accuracy with 95% Wilson intervals against that key, one line per combination of the other
varying keys; the even/odd pattern of the released CLIPure-Cos shows up against ``purifier.clipure_cos.num_steps``;
a key without a plot gets the reason), and ``paired.csv``: each run against a baseline run on the shared sample ids,
with the metric compared, the accuracy difference and an exact McNemar test. Runs are labelled by folder name, or
by their path below the shared folder when names repeat (two sweeps' ``run-0000``).
"""

from __future__ import annotations

import csv
import difflib
import logging

from dataclasses import dataclass
from functools import cached_property
from itertools import groupby
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from clipure_lit.errors import ConfigError, DataNotFoundError
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

    @cached_property
    def samples(self) -> list[dict]:
        """The rows of ``samples.csv``, read once per run."""
        with open(self.path / "samples.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    def correct(self, metric: str) -> dict[int, bool]:
        """Per-sample correctness for ``metric``: ``clean``, an attack name, or ``worst_case``."""
        out = {}
        for row in self.samples:
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


def run_labels(runs: list[Run]) -> dict[Path, str]:
    """A unique label per run: its folder name, or, when names repeat (``run-0000`` of two sweeps), its path below
    the deepest folder all runs share (``sweep_a/run-0000``)."""
    names = [r.path.name for r in runs]
    if len(set(names)) == len(names):
        return {r.path: r.path.name for r in runs}
    parts = [r.path.resolve().parts for r in runs]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return {r.path: "/".join(p[common:]) for r, p in zip(runs, parts)}


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
    labels = run_labels(runs)
    header = ["run", *keys, "clean", *[f"robust/{a}" for a in attacks], "time/clean (ms)"]
    with open(out / "report.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", *keys, "n", "clean", "clean_ci_low", "clean_ci_high",
                         *[f"{s}/{a}" for a in attacks for s in ("robust", "robust_ci_low", "robust_ci_high")],
                         *[f"time_per_sample_s/{k}" for k in ("clean", *[f"attack/{a}" for a in attacks if a != "worst_case"])]])
        for r in runs:
            robust = r.results.get("robust", {})
            times = r.results.get("time_per_sample_s", {})
            writer.writerow([labels[r.path], *[r.config.get(k) for k in keys], r.results["num_samples"], r.results["clean"]["acc"],
                             *r.results["clean"]["ci95"],
                             *[v for a in attacks for v in ([robust[a]["acc"], *robust[a]["ci95"]] if a in robust else [None] * 3)],
                             *[times.get(k) for k in ("clean", *[f"attack/{a}" for a in attacks if a != "worst_case"])]])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        robust = r.results.get("robust", {})
        t = r.results.get("time_per_sample_s", {}).get("clean")
        cells = [labels[r.path], *[str(r.config.get(k)) for k in keys], pct_entry(r.results["clean"]),
                 *[pct_entry(robust.get(a)) for a in attacks], ms(t)]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _headline_entry(run: Run) -> dict:
    robust = run.results.get("robust", {})
    return robust.get("worst_case") or run.results["clean"]


def plot_against(runs: list[Run], keys: list[str], out: Path) -> tuple[list[Path], dict[str, str]]:
    """One PNG per numeric varying key: headline accuracy (worst-case robust, or clean when no attack ran) against
    it, one line per combination of the other varying keys, clean accuracy dashed, every point with its 95% Wilson
    interval. Returns the PNGs written and, for each varying key without a plot, the reason."""
    import matplotlib  # heavy: ~0.4 s to import; only the plots need it, not the tables

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, skipped = [], {}
    robust = any(r.results.get("robust") for r in runs)
    for x_key in keys:
        values = [r.config.get(x_key) for r in runs]
        if any(v is None for v in values):
            skipped[x_key] = "some runs leave it unset (null), so it has no position on an axis"
            continue
        if not all(_is_number(v) for v in values):
            skipped[x_key] = "its values are not numbers (compare them in report.md and paired.csv)"
            continue
        others = [k for k in keys if k != x_key]
        series_of = lambda r: tuple((k, r.config.get(k)) for k in others)  # noqa: E731
        groups = [(series, sorted(members, key=lambda r: r.config[x_key]))
                  for series, members in groupby(sorted(runs, key=lambda r: repr(series_of(r))), key=series_of)]
        if not any(len({r.config[x_key] for r in members}) > 1 for _, members in groups):
            tied = [k for k in others if all(len({repr(r.config.get(k)) for r in runs if r.config[x_key] == v}) == 1
                                             for v in set(values))]
            skipped[x_key] = ("it never changes while the other varying keys stay fixed"
                              + (f" (it changes together with {', '.join(tied)})" if tied else "")
                              + ", so no line can be drawn against it")
            continue
        log_x = all(v > 0 for v in values) and max(values) / min(values) > 50
        # Series drawn side by side (a small horizontal offset each) so that their error bars do not hide each other.
        dodge = 0.0 if log_x or len(groups) == 1 else 0.03 * (max(values) - min(values)) / (len(groups) - 1)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for index, (series, members) in enumerate(groups):
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in series) or "all runs"
            shift = dodge * (index - (len(groups) - 1) / 2)
            xs = [r.config[x_key] + shift for r in members]
            head = [_headline_entry(r) for r in members]
            clean = [r.results["clean"] for r in members]
            line = ax.errorbar(xs, [100 * e["acc"] for e in head], yerr=_yerr(head), marker="o", capsize=3, label=label)
            if robust:
                ax.errorbar(xs, [100 * e["acc"] for e in clean], yerr=_yerr(clean), ls="--", capsize=2,
                            color=line.lines[0].get_color(), alpha=0.45)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x_key)
        ax.set_ylabel("accuracy (%)")
        n = sorted({r.results["num_samples"] for r in runs})
        samples = f"{n[0]} samples" if len(n) == 1 else f"{n[0]}-{n[-1]} samples"
        what = "solid: worst-case robust, dashed: clean" if robust else "clean accuracy (no attack ran)"
        ax.set_title(f"{what}; {samples} per run, bars: 95% Wilson intervals", fontsize=8)
        ax.set_ylim(0, 105)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), title_fontsize=6,  # beside the axes
                  title="one line per\n" + (", ".join(k.split(".")[-1] for k in others) if others else "run"))
        fig.tight_layout()
        path = out / f"acc_vs_{x_key.replace('.', '_')}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written, skipped


def _yerr(entries: list[dict]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars (percent) from the entries' 95% Wilson intervals."""
    return [[100 * (e["acc"] - e["ci95"][0]) for e in entries], [100 * (e["ci95"][1] - e["acc"]) for e in entries]]


METRIC_NAMES = {"worst_case": "worst-case robust accuracy", "clean": "clean accuracy"}


def compare_paired(base: dict[int, bool], other: dict[int, bool]) -> dict | None:
    """Two per-sample correctness maps compared on the sample ids they share: ``shared_samples``,
    ``acc_difference`` (other - base), the discordant counts and the exact McNemar p-value; None when no id is shared."""
    shared = sorted(set(base) & set(other))
    if not shared:
        return None
    only_base = sum(base[i] and not other[i] for i in shared)
    only_other = sum(other[i] and not base[i] for i in shared)
    diff = (sum(other[i] for i in shared) - sum(base[i] for i in shared)) / len(shared)
    return {"shared_samples": len(shared), "acc_difference": diff, "only_baseline_correct": only_base,
            "only_run_correct": only_other, "mcnemar_p": mcnemar_exact(only_base, only_other)}


def paired_comparisons(runs: list[Run], baseline: Run, out: Path, metric: str = "worst_case",
                       labels: dict[Path, str] | None = None) -> list[dict]:
    """Each run against ``baseline`` on their shared sample ids: accuracy difference and the exact McNemar p-value,
    for ``metric`` (per-sample correctness; ``clean`` for a pair where either run has no attack). Each row names the
    metric it compares."""
    labels = labels or run_labels(runs)
    rows = []
    for r in runs:
        if r is baseline:
            continue
        used = metric if (baseline.results.get("robust") and r.results.get("robust")) else "clean"
        paired = compare_paired(baseline.correct(used), r.correct(used))
        if paired is None:
            continue
        rows.append({"run": labels[r.path], "baseline": labels[baseline.path], "metric": used, **paired})
    if rows:
        with open(out / "paired.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def pick_baseline(runs: list[Run], labels: dict[Path, str], baseline: str | None) -> Run:
    """The run named by ``baseline`` (its label, folder name or path), or the first run when ``baseline`` is None.

    Raises:
        ConfigError: no run, or more than one, answers to ``baseline`` (a comparison against a run nobody chose
            would look like an answer).
    """
    if baseline is None:
        return runs[0]
    wanted = Path(baseline).resolve() if Path(baseline).exists() else None
    matches = [r for r in runs if baseline in (r.path.name, labels[r.path], str(r.path))
               or (wanted is not None and r.path.resolve() == wanted)]
    names = [labels[r.path] for r in runs]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        close = difflib.get_close_matches(baseline, names, n=3)
        raise ConfigError(f"--baseline '{baseline}' names none of the {len(runs)} runs of this report"
                          + (f" (closest: {close})" if close else "") + f"; the runs are {names[:20]}"
                          + (" ..." if len(names) > 20 else "") + ". Fix: give one of those labels (or a run folder's "
                          "path), or leave --baseline out to compare against the first run.")
    raise ConfigError(f"--baseline '{baseline}' names {len(matches)} runs ({[labels[r.path] for r in matches]}). Fix: "
                      "give the label shown in report.md, which is unique, or the run folder's path.")


def build_report(paths: Sequence[str | Path], out: str | Path | None = None, baseline: str | None = None) -> dict:
    """Collect the runs under ``paths`` and write the report into ``out`` (default: the first path). ``baseline``
    is a run's label (folder name, or path below the shared folder when names repeat) or path."""
    runs = collect_runs(paths)
    labels = run_labels(runs)
    base = pick_baseline(runs, labels, baseline)  # before anything is written: a bad name writes no report
    out = Path(out or paths[0])
    out.mkdir(parents=True, exist_ok=True)
    keys = varying_keys(runs)
    write_table(runs, keys, out)
    plots, skipped = plot_against(runs, keys, out)
    if not keys:
        skipped = {"(no key)": "the runs differ in no config key, so there is no axis to plot against"}
    paired = paired_comparisons(runs, base, out, labels=labels)
    summary = {"runs": len(runs), "varying_keys": keys, "plots": [str(p) for p in plots], "skipped_plots": skipped,
               "paired": paired, "out": str(out), "best": labels[max(runs, key=_headline).path]}
    log.info("report of %d runs in %s", len(runs), out)
    return summary


def format_report(summary: dict) -> str:
    out = Path(summary["out"])
    lines = [(out / "report.md").read_text().rstrip()]
    for row in summary["paired"]:
        significant = "significant" if row["mcnemar_p"] < 0.05 else "not significant"
        what = METRIC_NAMES.get(row.get("metric", "worst_case"), row.get("metric"))
        lines.append(f"{what}, {row['run']} vs {row['baseline']}: {points(row['acc_difference'])} points on "
                     f"{row['shared_samples']} shared samples, McNemar p={row['mcnemar_p']:.3g} ({significant})")
    for key, reason in summary.get("skipped_plots", {}).items():
        lines.append(f"no plot against {key}: {reason}")
    lines.append(f"report folder: {out} (report.csv, report.md, paired.csv, {len(summary['plots'])} plot(s))")
    return "\n".join(lines)
