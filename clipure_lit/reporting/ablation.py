"""Turn a group of run folders (a sweep, a suite, any runs) into an ablation report.

Outputs in the report folder: ``report.csv`` and ``report.md`` (one row per run: the config keys that vary across
the runs, clean and robust accuracy per attack with 95% intervals, the worst case, the masking flags that fired,
time per sample in its steady state), ``report.tex`` (the same runs as a booktabs LaTeX table for a paper:
:mod:`clipure_lit.reporting.latex`), one PNG per varying key (clean and robust accuracy under each attack, styled
by its gradient, with 95% Wilson intervals against that key, one panel per combination of the other varying keys:
:mod:`clipure_lit.reporting.sweep_plots`; the even/odd pattern of the released CLIPure-Cos shows up against
``purifier.clipure_cos.num_steps``; a key without a plot gets the reason), and ``paired.csv``: each run against a
baseline run on the shared sample ids, with the metric compared, the accuracy difference and an exact McNemar test.
Runs are labelled by folder name, or by their path below the shared folder when names repeat (two sweeps'
``run-0000``).
"""

from __future__ import annotations

import csv
import difflib
import logging

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.reporting.format import pct_entry, points
from clipure_lit.reporting.run_cells import STEADY_HEADER, WARMUP_MARK, WARMUP_NOTE, attack_time_keys, flags_text, time_cell
from clipure_lit.reporting.latex import write_latex
from clipure_lit.reporting.selection import Confirmed, add_selection, is_confirmation
from clipure_lit.reporting.sweep_plots import plot_against
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
    """Every finished run (a folder with results.json, config.yaml and samples.csv) under the given paths, except a
    sweep's confirmation runs below a path (``<sweep>/confirm/``: other images; :func:`is_confirmation`)."""
    runs = []
    for root in map(Path, paths):
        if not root.exists():
            raise DataNotFoundError(f"Run folder not found: '{root}'.")
        for results in sorted(root.rglob("results.json")):
            folder = results.parent
            if not (folder / "config.yaml").is_file() or not (folder / "samples.csv").is_file():
                continue
            if is_confirmation(root, folder):
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


# Keys that decide what an accuracy means (the model, the data and its batches, the threat model and the attack
# budget, the defence). report.md lists those the compared runs share, so a table of what varies also says what
# did not: two reports at different batch sizes or radii are not comparable.
HELD_FIXED_KEYS = ("clip.arch", "clip.pretrained", "clip.precision", "data.name", "data.num_samples", "data.ids_file",
                   "data.subset", "data.batch_size", "prompts.class_templates", "prompts.blank_templates",
                   "purifier.latent", "purifier.pixel", "attack.run", "attack.norm", "attack.eps", "attack.n_iter",
                   "attack.n_queries", "attack.eot_samples", "attack.batch_size", "attack.precision", "attack.seed", "seed")
HELD_FIXED_PURIFIER_KEYS = ("norm_scope", "batch_size", "grad_mode")


def held_fixed(runs: list[Run]) -> dict[str, object]:
    """``{key: value}`` of :data:`HELD_FIXED_KEYS` (and each chosen purifier's ``norm_scope``, ``batch_size`` and
    ``grad_mode``) that every run sets to the same value; keys a run's config lacks are left out."""
    purifier_keys = sorted({k for r in runs for k in r.config
                            if k.startswith("purifier.") and k.rsplit(".", 1)[-1] in HELD_FIXED_PURIFIER_KEYS})
    fixed = {}
    for key in (*HELD_FIXED_KEYS, *purifier_keys):
        if all(key in r.config for r in runs) and len({repr(r.config[key]) for r in runs}) == 1:
            fixed[key] = runs[0].config[key]
    return fixed


def held_fixed_line(runs: list[Run]) -> str:
    """report.md's line naming the result-deciding keys the runs share, YAML-style (``null`` for None)."""
    shown = lambda v: "null" if v is None else (f"[{', '.join(map(str, v))}]" if isinstance(v, tuple) else str(v))  # noqa: E731
    fixed = held_fixed(runs)
    cells = ", ".join(f"`{k}={shown(v)}`" for k, v in fixed.items()) or "none of the keys that decide a result"
    return f"Held fixed across the {len(runs)} run(s): {cells}."


def attack_names(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(name for r in runs for name in r.results.get("robust", {})))


def _headline(run: Run) -> float:
    robust = run.results.get("robust", {})
    return (robust.get("worst_case") or run.results["clean"])["acc"]


def write_table(runs: list[Run], keys: list[str], out: Path) -> None:
    attacks = attack_names(runs)
    labels = run_labels(runs)
    header = ["run", *keys, "clean", *[f"robust/{a}" for a in attacks], "flags", f"clean {STEADY_HEADER}",
              f"attacks {STEADY_HEADER}"]
    timed = ("clean", *[f"attack/{a}" for a in attacks if a != "worst_case"])
    with open(out / "report.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", *keys, "n", "clean", "clean_ci_low", "clean_ci_high",
                         *[f"{s}/{a}" for a in attacks for s in ("robust", "robust_ci_low", "robust_ci_high")],
                         *[f"time_per_sample_s/{k}" for k in timed], "flags",
                         *[f"steady_time_per_sample_s/{k}" for k in timed]])
        for r in runs:
            robust = r.results.get("robust", {})
            times = r.results.get("time_per_sample_s", {})
            steady = r.results.get("steady_time_per_sample_s") or {}
            writer.writerow([labels[r.path], *[r.config.get(k) for k in keys], r.results["num_samples"], r.results["clean"]["acc"],
                             *r.results["clean"]["ci95"],
                             *[v for a in attacks for v in ([robust[a]["acc"], *robust[a]["ci95"]] if a in robust else [None] * 3)],
                             *[times.get(k) for k in timed], flags_text(r.results), *[steady.get(k) for k in timed]])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    warmup_included = False
    for r in runs:
        robust = r.results.get("robust", {})
        times = [time_cell(r.results, ["clean"]), time_cell(r.results, attack_time_keys(r.results))]
        warmup_included |= any(t.endswith(WARMUP_MARK) for t in times)
        cells = [labels[r.path], *[str(r.config.get(k)) for k in keys], pct_entry(r.results["clean"]),
                 *[pct_entry(robust.get(a)) for a in attacks], flags_text(r.results), *times]
        lines.append("| " + " | ".join(cells) + " |")
    if warmup_included:
        lines += ["", WARMUP_NOTE]
    lines += ["", held_fixed_line(runs)]
    (out / "report.md").write_text("\n".join(lines) + "\n")


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


def build_report(paths: Sequence[str | Path], out: str | Path | None = None, baseline: str | None = None,
                 selection: Sequence[Confirmed] | None = None) -> dict:
    """Collect the runs under ``paths`` and write the report into ``out`` (default: the first path). ``baseline``
    is a run's label (folder name, or path below the shared folder when names repeat) or path; ``selection``, the
    sweep's confirmed winners, adds the Selection table (:func:`clipure_lit.reporting.selection.add_selection`)."""
    runs = collect_runs(paths)
    labels = run_labels(runs)
    base = pick_baseline(runs, labels, baseline)  # before anything is written: a bad name writes no report
    out = Path(out or paths[0])
    out.mkdir(parents=True, exist_ok=True)
    keys = varying_keys(runs)
    write_table(runs, keys, out)
    write_latex(runs, keys, labels, out)
    selected = add_selection(list(selection), out) if selection else []
    plots, skipped = plot_against(runs, keys, out)
    if not keys:
        skipped = {"(no key)": "the runs differ in no config key, so there is no axis to plot against"}
    paired = paired_comparisons(runs, base, out, labels=labels)
    summary = {"runs": len(runs), "varying_keys": keys, "plots": [str(p) for p in plots], "skipped_plots": skipped,
               "paired": paired, "out": str(out), "best": labels[max(runs, key=_headline).path],
               "held_fixed": held_fixed(runs), "selection": selected}
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
    lines.append(f"report folder: {out} (report.csv, report.md, report.tex, paired.csv, {len(summary['plots'])} plot(s))")
    return "\n".join(lines)
