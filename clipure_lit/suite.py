"""Run one evaluation per dataset of a suite (``suite=zeroshot13``); the cross-dataset table is written by
:mod:`clipure_lit.reporting.suite_tables`.

Each dataset is a normal run in ``<suite run folder>/<data choice>/``, composed from the same command-line
arguments plus ``data=<choice>`` and that dataset's templates, so every run of the suite (and every suite run with
another ``clip=`` or ``purifier=``) evaluates the same sample ids. With ``resume=true`` and the same ``run_dir``,
finished datasets are skipped and unfinished ones resume at sample granularity. A dataset whose files are missing
is reported as skipped (with the path and the download hint), not as a crash; a suite whose datasets were all
skipped is an error (``suite.allow_skipped=true`` accepts it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from clipure_lit.config.loader import load_config
from clipure_lit.config.suites import check_suite_entries, dataset_argv, entry_name, selected_entries
from clipure_lit.errors import DataNotFoundError
from clipure_lit.evaluation import run_eval
from clipure_lit.loggers import log_table_to_wandb
from clipure_lit.reporting.suite_tables import average, defence_name, write_tables
from clipure_lit.results import read_json, write_json
from clipure_lit.run_folder import exclusive_run_folder, make_run_dir, run_log, share_run_dir, write_config
from clipure_lit.utils.distributed import launcher_rank_is_zero

log = logging.getLogger(__name__)


def run_suite(cfg: DictConfig, argv: Sequence[str]) -> dict:
    """Evaluate every dataset of ``cfg.suite`` in turn; returns (and writes ``suite.json``) the per-dataset rows."""
    check_suite_entries(cfg, argv, load_config)  # an entry its run would refuse stops the suite before its first run
    entries = selected_entries(cfg)
    out = make_run_dir(cfg)
    with exclusive_run_folder(out), run_log(out):  # one suite per folder; each entry's run locks its own sub-folder
        return _run_suite_in(cfg, argv, entries, out)


def _run_suite_in(cfg: DictConfig, argv: Sequence[str], entries: list, out: Path) -> dict:
    """The suite's runs, ``suite.json`` and tables in its folder ``out`` (the body of :func:`run_suite`)."""
    writes = launcher_rank_is_zero()  # every process of a multi-process launch runs the suite; one writes its files
    if writes:
        write_config(out, cfg)
    with share_run_dir(out):  # processes Lightning starts re-run the whole suite: they need the same folder
        rows = _run_entries(cfg, argv, entries, out)
    summary = {"suite": cfg.suite.name, "compare": str(cfg.suite.compare.value), "run_dir": str(out), "rows": rows,
               "average": average(rows)}
    if writes:
        write_json(out / "suite.json", summary)
    if all(r["status"] == "skipped" for r in rows) and not cfg.suite.allow_skipped:
        reasons = " ".join(f"{r['dataset']}: {r['reason']}" for r in rows)
        raise DataNotFoundError(f"Suite '{cfg.suite.name}' evaluated nothing: all {len(rows)} dataset(s) were skipped. "
                                f"{reasons} Fix: provide the data (data.root=...), choose datasets that exist with "
                                f"suite.only=[...], or pass suite.allow_skipped=true to accept an empty suite.")
    if not writes:
        return summary
    # A suite of defences has one row per defence: its columns are just clean and worst-case robust accuracy.
    if cfg.suite.compare.value == "datasets":
        write_tables(out, {defence_name(cfg): rows})
    else:
        write_tables(out, {"": rows}, row_label="defence")
    if cfg.logger.name == "wandb":
        avg = summary["average"]
        log_table_to_wandb(cfg, out, f"{cfg.name}-{cfg.suite.name}", out / "suite.csv", out / "suite.png",
                           {"suite/avg_clean_acc": avg["clean"], "suite/avg_robust_acc": avg["robust"],
                            "suite/num_datasets": avg["num_datasets"]})
    return summary


def _run_entries(cfg: DictConfig, argv: Sequence[str], entries: list, out: Path) -> list[dict]:
    """One row per suite entry: its run (or its earlier results with resume=true), or why it was skipped."""
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
    return rows


def _row(dataset: str, results: dict) -> dict:
    robust = results.get("robust", {})
    worst = robust.get("worst_case")
    return {"dataset": dataset, "status": "done", "num_samples": results["num_samples"], "clean": results["clean"]["acc"],
            "clean_ci95": results["clean"]["ci95"], "robust": worst["acc"] if worst else None,
            "robust_ci95": worst["ci95"] if worst else None, "results": results}
