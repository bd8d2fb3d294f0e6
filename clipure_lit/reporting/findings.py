"""The findings document: an ablation study written out from committed run folders, never from memory.

A study file (``findings/studies.yaml``) lists studies; each study has *parts* (a sweep file plus the extra
arguments of its runs, run into ``<runs root>/<study>/<part>/run-XXXX``), a table, a plot, optional McNemar tests
against a baseline run and a paragraph. :func:`render_findings` turns the run folders into ``findings.md`` and one
PNG per study; it reads only ``config.yaml``, ``results.json`` and ``samples.csv`` of each run (the files that are
committed), so the document regenerates byte for byte without recomputing anything.

Run references (``ref``): ``{part: <study>/<part>, where: {<config key>: <value>, ...}}`` picks the one run of that
part whose config has those values; the study's own parts may be named without the study prefix. Metrics: ``clean``,
an attack name of ``results.json`` (``aa_clipure@full``), or ``worst_case``.

Numbers in paragraphs are never typed: ``{{name.metric}}`` is replaced by the accuracy with its 95% Wilson interval
(``45.0 [35.6, 54.8]``), ``{{name.metric:acc}}`` by the accuracy alone, ``{{name.metric:n}}`` by ``correct/total``,
where ``name`` is a run reference declared under the study's ``refs``; ``{{name.checks[<check>]}}`` is the value of
one masking check of ``results.json`` (``checks``, e.g. ``weak_grad/aa_clipure@purifier``: the attack's gradient
relative to undefended CLIP), two significant digits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.reporting.ablation import Run, collect_runs, compare_paired
from clipure_lit.reporting.format import pct, points
from clipure_lit.reporting.plot_style import dodge_offsets, dodge_spacing
from clipure_lit.utils.stats import wilson_interval

COMMITTED_FILES = ("config.yaml", "results.json", "samples.csv")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\.([A-Za-z0-9_@\-]+)(?::(acc|n))?\s*\}\}")
_CHECK = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\.checks\[([^\]]+)\]\s*\}\}")


@dataclass
class Part:
    """Runs of one sweep file with extra arguments, in ``<runs root>/<study>/<name>``."""

    name: str
    sweep: str
    args: list[str] = field(default_factory=list)
    label: str | None = None


@dataclass
class Study:
    name: str
    title: str
    parts: list[Part]
    setup: str = ""
    keys: list[str] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    baseline: dict | None = None
    refs: dict = field(default_factory=dict)
    plot: dict | None = None
    text: str = ""


@dataclass
class Findings:
    title: str
    intro: str
    common: list[str]
    studies: list[Study]
    outro: str = ""
    source: Path | None = None


def _require(node: dict, key: str, where: str) -> Any:
    if key not in node:
        raise ConfigError(f"{where} has no '{key}'. Fix: add it (see the module docstring of clipure_lit.reporting.findings).")
    return node[key]


def load_findings(path: str | Path) -> Findings:
    """Read and check a study file (unknown keys are refused, so a typo is not silently ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"Study file '{path}' not found. Fix: pass the path of findings/studies.yaml.")
    raw = yaml.safe_load(path.read_text()) or {}
    allowed = {"title", "intro", "common", "studies", "outro"}
    if set(raw) - allowed:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(set(raw) - allowed)}; allowed: {sorted(allowed)}.")
    studies = []
    for index, node in enumerate(_require(raw, "studies", str(path))):
        where = f"{path}: studies[{index}]"
        fields = {"name", "title", "parts", "setup", "keys", "metrics", "baseline", "refs", "plot", "text"}
        if set(node) - fields:
            raise ConfigError(f"{where}: unknown key(s) {sorted(set(node) - fields)}; allowed: {sorted(fields)}.")
        parts = []
        for p in _require(node, "parts", where):
            if set(p) - {"name", "sweep", "args", "label"}:
                raise ConfigError(f"{where}: a part has unknown key(s) {sorted(set(p) - {'name', 'sweep', 'args', 'label'})}.")
            parts.append(Part(name=_require(p, "name", where), sweep=_require(p, "sweep", where), args=list(p.get("args", [])),
                              label=p.get("label")))
        studies.append(Study(name=_require(node, "name", where), title=_require(node, "title", where), parts=parts,
                             setup=node.get("setup", ""), keys=list(node.get("keys", [])), metrics=list(node.get("metrics", [])),
                             baseline=node.get("baseline"), refs=dict(node.get("refs", {})), plot=node.get("plot"),
                             text=node.get("text", "")))
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: study names repeat: {names}.")
    return Findings(title=raw.get("title", "Findings"), intro=raw.get("intro", ""), common=list(raw.get("common", [])),
                    studies=studies, outro=raw.get("outro", ""), source=path)


class RunIndex:
    """The finished runs under a runs root, by part (``<study>/<part>``)."""

    def __init__(self, root: Path, findings: Findings) -> None:
        self.root = Path(root)
        self.parts: dict[str, list[Run]] = {}
        for study in findings.studies:
            for part in study.parts:
                folder = self.root / study.name / part.name
                if not folder.is_dir():
                    raise DataNotFoundError(f"No runs for part '{study.name}/{part.name}' in '{folder}'. Fix: run "
                                            "`python report.py --findings --recompute` (or point --runs at the folder "
                                            "holding them).")
                self.parts[f"{study.name}/{part.name}"] = sorted(collect_runs([folder]), key=lambda r: r.path.name)

    def select(self, ref: dict, study: Study) -> list[Run]:
        part = str(_require(ref, "part", f"a run reference of study '{study.name}'"))
        key = part if "/" in part else f"{study.name}/{part}"
        if key not in self.parts:
            raise ConfigError(f"Study '{study.name}' refers to part '{part}', which no study defines.")
        where = ref.get("where", {}) or {}
        return [r for r in self.parts[key] if all(_same(r.config.get(k), v) for k, v in where.items())]

    def one(self, ref: dict, study: Study) -> Run:
        runs = self.select(ref, study)
        if len(runs) != 1:
            raise ConfigError(f"Study '{study.name}': reference {ref} matches {len(runs)} runs, not exactly one. Fix: "
                              "narrow it with 'where'.")
        return runs[0]


def _same(value, wanted) -> bool:
    if isinstance(value, (int, float)) and isinstance(wanted, (int, float)) and not isinstance(value, bool):
        return float(value) == float(wanted)
    return str(value) == str(wanted)


def metric_counts(run: Run, metric: str) -> tuple[int, int]:
    """``(correct, total)`` of ``metric`` from the run's per-sample table."""
    correct = run.correct(metric)
    return sum(correct.values()), len(correct)


def has_metric(run: Run, metric: str) -> bool:
    return metric in ("clean", "worst_case") or metric in run.results.get("robust", {})


def acc_text(run: Run, metric: str, form: str | None = None) -> str:
    """The metric as ``acc [low, high]`` (percent, 95% Wilson), ``acc`` alone, or ``correct/total``."""
    if not has_metric(run, metric):
        return "-"
    k, n = metric_counts(run, metric)
    if form == "n":
        return f"{k}/{n}"
    if form == "acc":
        return pct(k / n)
    return pct(k / n, wilson_interval(k, n))


def mcnemar(run: Run, metric: str, base: Run, base_metric: str) -> tuple[float, float, int] | None:
    """Accuracy difference (run - baseline), exact McNemar p-value and the number of shared sample ids."""
    if not (has_metric(run, metric) and has_metric(base, base_metric)):
        return None
    paired = compare_paired(base.correct(base_metric), run.correct(metric))
    return None if paired is None else (paired["acc_difference"], paired["mcnemar_p"], paired["shared_samples"])


def _cell(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if value is None else str(value)


def baseline_of(study: Study, index: RunIndex, run: Run) -> Run | None:
    """The study's baseline run for ``run``: ``baseline.ref``, narrowed by the values ``run`` has for the keys of
    ``baseline.match`` (e.g. the undefended run at the same ``attack.eps``)."""
    if not study.baseline:
        return None
    ref = dict(study.baseline["ref"])
    match = {k: run.config.get(k) for k in study.baseline.get("match", [])}
    ref["where"] = {**(ref.get("where") or {}), **match}
    return index.one(ref, study)


def study_table(study: Study, index: RunIndex) -> list[str]:
    """Markdown lines: one row per run of the study's parts (in part order), its keys, each metric with its 95% Wilson
    interval and, with a baseline, the difference in points and the McNemar p-value of each compared metric."""
    compared = [m for m in study.metrics if m.get("compare")] if study.baseline else []
    header = ["defence", *[k.split(".")[-1] for k in study.keys], "n", *[m["label"] for m in study.metrics],
              *[f"{m['label']}: vs baseline (p)" for m in compared]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for part in study.parts:
        for run in index.parts[f"{study.name}/{part.name}"]:
            n = metric_counts(run, "clean")[1]
            cells = [part.label or part.name, *[_cell(run.config.get(k)) for k in study.keys], str(n),
                     *[acc_text(run, m["metric"]) for m in study.metrics]]
            base = baseline_of(study, index, run) if compared else None
            for m in compared:
                result = mcnemar(run, m["metric"], base, study.baseline.get("metric", m["metric"]))
                cells.append("-" if result is None or run is base else f"{points(result[0])} (p={result[1]:.2g})")
            lines.append("| " + " | ".join(cells) + " |")
    if compared:
        ref = study.baseline["ref"]
        match = study.baseline.get("match", [])
        where = ", ".join(f"{k}={v}" for k, v in (ref.get("where") or {}).items())
        lines += ["", f"McNemar tests against `{ref['part']}`" + (f" ({where})" if where else "")
                  + (f" at the same {', '.join(match)}" if match else "")
                  + (f", metric `{study.baseline['metric']}`: " if study.baseline.get("metric") else ", same metric as the column: ")
                  + "difference in points and exact two-sided p-value on the discordant pairs, over the sample ids both "
                  "runs share."]
    return lines


def plot_study(study: Study, index: RunIndex, path: Path) -> Path:
    """One PNG: each series (a part, optionally narrowed by ``where``, and a metric) against ``plot.x`` in numeric
    order, with 95% Wilson intervals as error bars, each series shifted sideways by a small fixed step
    (:func:`~clipure_lit.reporting.plot_style.dodge_spacing`) so that series at the same value (0%) stay visible."""
    import matplotlib  # heavy; only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = study.plot
    if spec.get("kind") == "bars":
        return _plot_bars(study, index, path, plt)
    x_key = spec["x"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs_all = [float(r.config[x_key]) for s in spec["series"] for r in index.select(s, study)]
    positions = [math.log2(x) if spec.get("log_x") else x for x in xs_all]
    offsets = dodge_offsets(len(spec["series"]), dodge_spacing(positions, len(spec["series"])))
    for s, offset in zip(spec["series"], offsets):
        runs = sorted(index.select(s, study), key=lambda r: float(r.config[x_key]))
        runs = [r for r in runs if has_metric(r, s["metric"])]
        if not runs:
            raise ConfigError(f"Study '{study.name}': plot series '{s.get('label')}' selects no run with metric '{s['metric']}'.")
        ys, yerr = _percent_with_errors([(r, s["metric"]) for r in runs])
        xs = [float(r.config[x_key]) * 2 ** offset if spec.get("log_x") else float(r.config[x_key]) + offset for r in runs]
        ax.errorbar(xs, ys, yerr=yerr, marker=s.get("marker", "o"), ls=s.get("ls", "-"), capsize=3, label=s["label"])
    if spec.get("log_x"):
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({float(r.config[x_key]) for s in spec["series"] for r in index.select(s, study)}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(spec.get("xlabel", x_key))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, ax, study, path, plt)


def _plot_bars(study: Study, index: RunIndex, path: Path, plt) -> Path:
    """Bars: one per entry of ``plot.bars`` (a run reference and a metric), with 95% Wilson intervals."""
    bars = study.plot["bars"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ys, yerr = _percent_with_errors([(index.one(bar, study), bar["metric"]) for bar in bars])
    ax.bar(range(len(ys)), ys, yerr=yerr, capsize=4, color=[bar.get("color", "C0") for bar in bars])
    ax.set_xticks(range(len(ys)), [bar["label"] for bar in bars], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    return _save(fig, ax, study, path, plt)


def _percent_with_errors(points: list[tuple[Run, str]]) -> tuple[list[float], list[list[float]]]:
    """Accuracies in percent of ``(run, metric)`` pairs and matplotlib's asymmetric error bars from their 95% Wilson
    intervals: ``(ys, [below, above])``."""
    ys, below, above = [], [], []
    for run, metric in points:
        k, n = metric_counts(run, metric)
        low, high = wilson_interval(k, n)
        ys.append(100 * k / n)
        below.append(100 * k / n - 100 * low)
        above.append(100 * high - 100 * k / n)
    return ys, [below, above]


def _save(fig, ax, study: Study, path: Path, plt) -> Path:
    """Title (the plot's own, else the study's), layout and a PNG without a timestamp or version in its metadata."""
    ax.set_title(study.plot.get("title", study.title) + "\n(bars: 95% Wilson intervals)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def render_text(text: str, study: Study, index: RunIndex) -> str:
    """Replace ``{{name.metric[:acc|:n]}}`` with numbers from the runs declared under ``study.refs``."""
    def run_of(name: str) -> Run:
        if name not in study.refs:
            raise ConfigError(f"Study '{study.name}': the text refers to '{name}', which is not under its refs "
                              f"({sorted(study.refs)}).")
        return index.one(study.refs[name], study)

    def substitute(match: re.Match) -> str:
        name, metric, form = match.groups()
        run = run_of(name)
        if not has_metric(run, metric):
            raise ConfigError(f"Study '{study.name}': run '{name}' has no metric '{metric}'.")
        return acc_text(run, metric, form)

    def check(match: re.Match) -> str:
        name, key = match.groups()
        checks = run_of(name).results.get("checks", {})
        if key not in checks:
            raise ConfigError(f"Study '{study.name}': run '{name}' has no check '{key}' (it has {sorted(checks)}).")
        return f"{checks[key]:.2g}"

    return _PLACEHOLDER.sub(substitute, _CHECK.sub(check, text.strip()))


def render_findings(findings: Findings, runs_root: Path, out_md: Path, image_dir: Path) -> Path:
    """Write ``out_md`` and one PNG per study with a plot into ``image_dir`` (linked relative to ``out_md``)."""
    index = RunIndex(runs_root, findings)
    out_md = Path(out_md)
    image_dir = Path(image_dir)
    lines = [f"# {findings.title}", "", findings.intro.strip(), ""]
    if findings.common:
        lines += [f"Arguments of every run (unless a part sets them otherwise): `{' '.join(findings.common)}`.", ""]
    lines += ["Contents:", ""]
    lines += [f"{i}. [{s.title}](#{_anchor(i, s)})" for i, s in enumerate(findings.studies, 1)]
    lines.append("")
    for i, study in enumerate(findings.studies, 1):
        lines += [f"<a id=\"{_anchor(i, study)}\"></a>", f"## {i}. {study.title}", ""]
        if study.setup:
            lines += [study.setup.strip(), ""]
        for part in study.parts:
            args = " ".join(part.args)
            lines.append(f"- part `{part.name}`: `{part.sweep}`" + (f" with `{args}`" if args else ""))
        lines.append("")
        lines += study_table(study, index)
        lines.append("")
        if study.plot:
            png = plot_study(study, index, image_dir / f"{study.name}.png")
            rel = Path(*png.relative_to(out_md.parent).parts) if png.is_relative_to(out_md.parent) else png
            lines += [f"![{study.title}]({rel.as_posix()})", ""]
        if study.text:
            lines += [render_text(study.text, study, index), ""]
    if findings.outro:
        lines += [findings.outro.strip(), ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines).rstrip() + "\n")
    return out_md


def _anchor(index: int, study: Study) -> str:
    return f"s{index}-{study.name.replace('_', '-')}"
