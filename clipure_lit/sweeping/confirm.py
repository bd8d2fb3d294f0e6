"""Confirm a sweep's winner(s) on held-out images: the honest number to report after a selection.

``confirm_winners(sweep folder, held-out arguments)``:

1. ranks the sweep's finished runs by the sweep's metric and goal (from its ``plan.json``, or given), and takes the
   top ``k`` (and every run tied with the k-th: a tie is not broken silently);
2. composes each winner's config again from its own ``config.yaml`` plus the held-out arguments, which may only
   choose images (``data.ids_file``, ``data.num_samples``, ``data.subset``, ``data.subset_seed``, ``data.split``),
   and refuses, before anything runs, held-out images that overlap the images the runs were selected on (or runs
   that were not all evaluated on the same images);
3. evaluates each winner there as an ordinary eval.py run in ``<sweep folder>.confirm/<run>/`` (a finished one is
   kept, an interrupted one resumes), and
4. writes the selection table (:mod:`clipure_lit.reporting.selection`) into the sweep folder.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from clipure_lit.callbacks.resume import config_differences
from clipure_lit.config.loader import load_config, to_plain
from clipure_lit.data.datasets import build_dataset, select_ids
from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.reporting.ablation import Run, collect_runs, run_labels
from clipure_lit.reporting.selection import Confirmed, metric_entry, write_selection
from clipure_lit.results import read_json

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[2]  # where eval.py lives
IMAGE_KEYS = ("data.ids_file", "data.num_samples", "data.subset", "data.subset_seed", "data.split")
GOALS = ("maximize", "minimize")


def confirm_folder(sweep_dir: Path) -> Path:
    """Where the confirmation runs of ``sweep_dir`` go: beside it, so a report of the sweep never mixes them in."""
    sweep_dir = Path(sweep_dir)
    return sweep_dir.with_name(sweep_dir.name + ".confirm")


def sweep_metric(sweep_dir: Path, metric: str | None, goal: str | None) -> tuple[str, str]:
    """``(metric, goal)``: the given ones, else the sweep's own (``plan.json``, written by sweep.py).

    Raises:
        ConfigError: neither given nor found, or a goal other than maximize/minimize.
    """
    plan = Path(sweep_dir) / "plan.json"
    saved = (json.loads(plan.read_text())["definition"]["sweep"].get("metric") or {}) if plan.is_file() else {}
    metric, goal = metric or saved.get("name"), goal or saved.get("goal")
    if not metric or not goal:
        raise ConfigError(f"'{sweep_dir}' has no sweep metric to rank its runs by (no plan.json with a metric: not a "
                          "folder sweep.py made?). Fix: pass --metric <name> --goal maximize|minimize, e.g. "
                          "--metric test/robust_acc/worst_case --goal maximize.")
    if goal not in GOALS:
        raise ConfigError(f"--goal {goal}: expected one of {list(GOALS)}.")
    return metric, goal


def check_image_args(args: list[str]) -> None:
    """Held-out arguments may only choose other images of the same data: anything else would confirm another
    configuration than the winner.

    Raises:
        ConfigError: an argument that is not ``key=value`` of :data:`IMAGE_KEYS`, or none at all.
    """
    if not args:
        raise ConfigError("--confirm needs the held-out images, e.g. --confirm data.ids_file=heldout_ids.txt (or "
                          "data.subset=random data.subset_seed=1). See docs/evaluation.md, 'Selecting a configuration'.")
    for arg in args:
        key = arg.partition("=")[0]
        if "=" not in arg or key not in IMAGE_KEYS:
            raise ConfigError(f"--confirm {arg}: held-out arguments may only choose the images ({list(IMAGE_KEYS)}), so "
                              "that the winner is evaluated again exactly as it was selected. Fix: keep only those "
                              "keys; to evaluate other settings, run eval.py yourself.")


def rank_runs(runs: list[Run], metric: str, goal: str, top: int) -> list[tuple[int, Run]]:
    """``[(rank, run), ...]``: the ``top`` best runs by ``metric`` (1 = best), and every run tied with the last."""
    if top < 1:
        raise ConfigError(f"--top {top}: the number of winners to confirm must be at least 1.")
    scored = sorted(((metric_entry(r.results, metric)["acc"], i, r) for i, r in enumerate(runs)),
                    key=lambda t: (-t[0] if goal == "maximize" else t[0], t[1]))
    cut = scored[min(top, len(scored)) - 1][0]
    chosen = scored[:top] + [t for t in scored[top:] if t[0] == cut]
    if len(chosen) > top:
        log.info("%d runs tie with the %d-th best at %.4f: all of them are confirmed.", len(chosen) - top + 1, top, cut)
    return [(rank, run) for rank, (_, _, run) in enumerate(chosen, start=1)]


def _sample_ids(run: Run) -> set[int]:
    return {int(row["sample_id"]) for row in run.samples}


def held_out_ids(run: Run, args: list[str]) -> set[int]:
    """The ids the winner's config plus ``args`` selects (the dataset is opened, no model is built)."""
    cfg = load_config([str(run.path / "config.yaml"), *args])
    return set(select_ids(cfg.data, build_dataset(cfg.data)))


def _finished(run_dir: Path, config: dict) -> bool:
    """True when ``run_dir`` holds a finished run of ``config`` (keys that cannot change a result aside)."""
    results, saved = run_dir / "results.json", run_dir / "progress" / "config.json"
    if not results.is_file() or not saved.is_file():
        return False
    return not config_differences(json.loads(saved.read_text())["config"], config)


def evaluate_held_out(run: Run, args: list[str], run_dir: Path, python: str = sys.executable) -> dict:
    """``results.json`` of ``run``'s config on the held-out images, evaluated in ``run_dir`` (resumable) unless it is
    there already.

    Raises:
        DataNotFoundError: the evaluation failed (the end of its log is in the message).
    """
    argv = [str(run.path / "config.yaml"), *args, f"run_dir={run_dir}", "resume=true"]
    config = json.loads(json.dumps(to_plain(load_config(argv)), default=str))
    if _finished(run_dir, config):
        log.info("%s: already evaluated on the held-out images in %s", run.path.name, run_dir)
        return read_json(run_dir / "results.json")
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: evaluating on the held-out images in %s", run.path.name, run_dir)
    with open(run_dir / "stdout.log", "a") as out:
        code = subprocess.run([python, str(PROJECT / "eval.py"), *argv], cwd=PROJECT, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code != 0 or not (run_dir / "results.json").is_file():
        tail = (run_dir / "stdout.log").read_text()[-1500:]
        raise DataNotFoundError(f"The held-out evaluation of {run.path.name} failed (exit status {code}); its log is "
                                f"{run_dir / 'stdout.log'}, ending: {tail}")
    return read_json(run_dir / "results.json")


def confirm_winners(sweep_dir: str | Path, args: list[str], top: int = 1, metric: str | None = None,
                    goal: str | None = None, python: str = sys.executable) -> list[Confirmed]:
    """See the module docstring; returns one :class:`Confirmed` per winner and writes ``selection.*``.

    Raises:
        ConfigError: bad held-out arguments, a metric that is not an accuracy, runs on different images, or
            held-out images that overlap the selection images; all before anything is evaluated.
    """
    sweep_dir = Path(sweep_dir)
    check_image_args(list(args))
    metric, goal = sweep_metric(sweep_dir, metric, goal)
    runs = collect_runs([sweep_dir])
    labels = run_labels(runs)
    selection_ids = _sample_ids(runs[0])
    differing = [labels[r.path] for r in runs if _sample_ids(r) != selection_ids]
    if differing:
        raise ConfigError(f"The runs of '{sweep_dir}' were not all evaluated on the same images ({differing[:5]} differ "
                          f"from {labels[runs[0].path]}), so a selection among them compares different images. Fix: "
                          "confirm a sweep whose runs share their images.")
    winners = rank_runs(runs, metric, goal, top)
    for _, run in winners:  # every check before the first evaluation
        overlap = selection_ids & held_out_ids(run, list(args))
        if overlap:
            raise ConfigError(f"The held-out images {list(args)} share {len(overlap)} of their images with the "
                              f"{len(selection_ids)} the sweep selected on (e.g. sample ids {sorted(overlap)[:5]}), so "
                              "the confirmation would be optimistic too. Fix: name disjoint images, e.g. an ids file "
                              "without the selection's ids (docs/evaluation.md, 'Selecting a configuration').")
    confirmed = []
    for rank, run in winners:
        label = labels[run.path]
        held = evaluate_held_out(run, list(args), confirm_folder(sweep_dir) / label.replace("/", "__"), python)
        confirmed.append(Confirmed(label, rank, len(runs), metric, metric_entry(run.results, metric),
                                   metric_entry(held, metric), run.path, confirm_folder(sweep_dir) / label.replace("/", "__")))
    write_selection(confirmed, sweep_dir)
    return confirmed
