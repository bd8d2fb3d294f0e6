"""Run one evaluation per dataset of a suite (``suite=zeroshot13``) and build the cross-dataset table.

Each dataset is a normal run in ``<suite run folder>/<data choice>/``, composed from the same command-line
arguments plus ``data=<choice>`` and that dataset's templates, so every run of the suite (and every suite run with
another ``clip=`` or ``purifier=``) evaluates the same sample ids. With ``resume=true`` and the same ``run_dir``,
finished datasets are skipped and unfinished ones resume at sample granularity. A dataset whose files are missing
is reported as skipped (with the path and the download hint), not as a crash.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from clipure_lit.config.schema import BlankAnchorSource
from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.results import read_json, write_json

log = logging.getLogger(__name__)

# Arguments that the suite sets itself for each dataset.
_SUITE_OWNED = ("suite", "suite.", "data=", "run_dir=", "prompts.class_templates=", "prompts.blank_templates=", "name=")


def dataset_argv(cfg: DictConfig, argv: Sequence[str], entry, run_dir: Path) -> list[str]:
    """The arguments of one dataset's run: the user's, minus what the suite owns, plus the dataset's choices."""
    base = [a for a in argv if not a.startswith(_SUITE_OWNED)]
    blank = BlankAnchorSource(cfg.suite.blank)
    if blank == BlankAnchorSource.custom and not cfg.prompts.blank_prompt:
        raise ConfigError("suite.blank=custom needs prompts.blank_prompt='<prompt>' (e.g. \"a photo of a .\").")
    extra = ["suite=none", f"run_dir={run_dir}", f"name={cfg.name}-{entry_name(entry)}"]
    if entry.data:
        extra.append(f"data={entry.data}")
    if entry.templates:
        extra.append(f"prompts.class_templates={entry.templates}")
        if blank == BlankAnchorSource.dataset:
            extra.append(f"prompts.blank_templates={entry.templates}")
    if blank == BlankAnchorSource.imagenet80:
        extra.append("prompts.blank_templates=openai_imagenet_80")
    return base + extra + list(entry.overrides)


def entry_name(entry) -> str:
    return entry.name or entry.data


def run_suite(cfg: DictConfig, argv: Sequence[str]) -> dict:
    """Evaluate every dataset of ``cfg.suite`` in turn; returns (and writes ``suite.json``) the per-dataset rows."""
    from clipure_lit.config.loader import list_choices, load_config, to_yaml
    from clipure_lit.runner import make_run_dir, run_eval

    entries = [e for e in cfg.suite.datasets if not cfg.suite.only or e.data in cfg.suite.only or e.name in cfg.suite.only]
    unknown = [e.data for e in entries if e.data and e.data not in list_choices("data")]
    if unknown:
        raise ConfigError(f"Suite '{cfg.suite.name}' names data choices that do not exist: {unknown}. Valid: {list_choices('data')}.")
    if not entries:
        raise ConfigError(f"Suite '{cfg.suite.name}' selects no dataset (suite.only={list(cfg.suite.only)}).")
    out = make_run_dir(cfg)
    (out / "config.yaml").write_text(to_yaml(cfg))
    rows = []
    for index, entry in enumerate(entries, 1):
        name = entry_name(entry)
        run_dir = out / name
        done = run_dir / "results.json"
        if cfg.get("resume", False) and done.is_file():
            log.info("[%d/%d] %s: finished earlier, reusing %s", index, len(entries), name, done)
            rows.append(_row(name, read_json(done)))
            continue
        log.info("[%d/%d] %s", index, len(entries), name)
        try:
            results = run_eval(load_config(dataset_argv(cfg, argv, entry, run_dir)))
        except DataNotFoundError as exc:
            log.warning("%s skipped: %s", name, exc)
            rows.append({"dataset": name, "status": "skipped", "reason": str(exc)})
            continue
        rows.append(_row(name, results))
    summary = {"suite": cfg.suite.name, "compare": str(cfg.suite.compare.value), "run_dir": str(out), "rows": rows,
               "average": average(rows)}
    write_json(out / "suite.json", summary)
    # A suite of defences has one row per defence: its columns are just clean and worst-case robust accuracy.
    column = _defence_name(cfg) if cfg.suite.compare.value == "datasets" else "defence"
    write_tables(out, {column: rows})
    if cfg.logger.name == "wandb":
        from clipure_lit.loggers import log_table_to_wandb

        avg = summary["average"]
        log_table_to_wandb(cfg, out, f"{cfg.name}-{cfg.suite.name}", out / "suite.csv", out / "suite.png",
                           {"suite/avg_clean_acc": avg["clean"], "suite/avg_robust_acc": avg["robust"],
                            "suite/num_datasets": avg["num_datasets"]})
    return summary


def _row(dataset: str, results: dict) -> dict:
    robust = results.get("robust", {})
    worst = robust.get("worst_case")
    return {"dataset": dataset, "status": "done", "num_samples": results["num_samples"], "clean": results["clean"]["acc"],
            "clean_ci95": results["clean"]["ci95"], "robust": worst["acc"] if worst else None,
            "robust_ci95": worst["ci95"] if worst else None, "results": results}


def average(rows: list[dict], exclude: tuple[str, ...] = ("imagenet",)) -> dict:
    """Mean clean and robust accuracy over the finished datasets, ImageNet excluded (the literature's
    13-dataset zero-shot average)."""
    done = [r for r in rows if r.get("status") == "done" and r["dataset"] not in exclude]
    mean = lambda key: (sum(r[key] for r in done) / len(done)) if done and all(r[key] is not None for r in done) else None  # noqa: E731
    return {"num_datasets": len(done), "clean": mean("clean"), "robust": mean("robust")}


def _defence_name(cfg: DictConfig) -> str:
    purifiers = "+".join(p for p in (cfg.purifier.pixel, cfg.purifier.latent) if p != "identity") or "none"
    return f"{cfg.clip.arch}/{purifiers}"


def _fmt(value, ci=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:.1f}"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


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
                cells += [_fmt(r["clean"], r["clean_ci95"]), _fmt(r["robust"], r["robust_ci95"])]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    avgs = [average(rows) for rows in columns.values()]
    lines.append("| **average (excl. ImageNet)** | " + " | ".join(f"{_fmt(a['clean'])} | {_fmt(a['robust'])}" for a in avgs) + " |")
    (out / "suite.md").write_text("\n".join(lines) + "\n")
    _plot(out / "suite.png", datasets, columns, by_key)


def _plot(path: Path, datasets: list[str], columns: dict, by_key: dict) -> None:
    import matplotlib

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
    from clipure_lit.config.loader import load_config

    columns = {}
    for run_dir in map(Path, run_dirs):
        summary = read_json(run_dir / "suite.json")
        name = _defence_name(load_config([str(run_dir / "config.yaml")]))
        columns[name if name not in columns else f"{name} ({run_dir.name})"] = summary["rows"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(out, columns)
    return out
