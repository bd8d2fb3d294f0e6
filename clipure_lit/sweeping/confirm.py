"""Confirm a sweep's winner(s) on held-out images: the honest number to report after a selection.

``confirm_winners(sweep folder, held-out arguments)``:

1. ranks the sweep's finished runs by the sweep's metric and goal (from its ``plan.json``, or given), and takes the
   top ``k`` and every run tied with the k-th (a tie is not broken silently); a run without the metric is refused;
2. composes each winner's config again from its own ``config.yaml`` plus the held-out arguments, which may only
   choose images (``data.ids_file``, ``data.num_samples``, ``data.subset``, ``data.subset_seed``, ``data.split``),
   and refuses, before anything runs, held-out images that overlap the images the runs were selected on (sample ids
   of the runs' ``samples.csv`` against the ids the held-out config selects, the dataset opened, no model built),
   and runs that were not all evaluated on the same images;
3. evaluates each winner there with the sweep launcher (local processes or a SLURM job array) as an ordinary eval.py
   run in ``<sweep folder>/confirm/<run>/``: a finished one is skipped, an interrupted one resumes, one whose
   held-out images changed is moved to ``confirm.superseded/`` and run again (:func:`launcher.decide`).

The Selection table is written by :func:`clipure_lit.reporting.selection.add_selection` (report.py passes the
:class:`Confirmation`'s runs to ``build_report``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from clipure_lit.config.loader import load_config, to_plain
from clipure_lit.data.datasets import build_dataset, select_ids
from clipure_lit.errors import ConfigError
from clipure_lit.reporting.ablation import Run, collect_runs, run_labels
from clipure_lit.reporting.selection import CONFIRM_DIR, Confirmed, metric_entry
from clipure_lit.results import read_json
from clipure_lit.sweeping.launcher import (SweepOptions, SweepResult, _check_devices, _Run, check_launcher, decide,
                                           launch_runs)

log = logging.getLogger(__name__)

EVAL_PY = Path(__file__).resolve().parents[2] / "eval.py"
IMAGE_KEYS = ("data.ids_file", "data.num_samples", "data.subset", "data.subset_seed", "data.split")
GOALS = ("maximize", "minimize")


@dataclass
class Confirmation:
    """What :func:`confirm_winners` did: ``confirmed`` (one entry per winner whose held-out run finished, in rank
    order), ``launch`` (the launcher's result: actions, state, failed/interrupted runs, SLURM job) and ``pending``
    (winners whose held-out run has not finished: failed, interrupted or still queued)."""

    confirmed: list[Confirmed]
    launch: SweepResult
    pending: list[str] = field(default_factory=list)


def sweep_metric(sweep_dir: Path, metric: str | None, goal: str | None) -> tuple[str, str, int | None]:
    """``(metric, goal, planned)``: the given metric and goal, else the sweep's own (``plan.json``, written by
    sweep.py), and the number of configurations the sweep planned (None without a plan).

    Raises:
        ConfigError: neither given nor found, or a goal other than maximize/minimize.
    """
    path = Path(sweep_dir) / "plan.json"
    plan = json.loads(path.read_text()) if path.is_file() else {}
    saved = (plan.get("definition", {}).get("sweep", {}).get("metric") or {}) if plan else {}
    metric, goal = metric or saved.get("name"), goal or saved.get("goal", "maximize" if metric else None)
    if not metric or not goal:
        raise ConfigError(f"'{sweep_dir}' has no sweep metric to rank its runs by (no plan.json with a metric: not a "
                          "folder sweep.py made?). Fix: pass --metric <name> (and --goal maximize|minimize), e.g. "
                          "--metric test/robust_acc/worst_case.")
    if goal not in GOALS:
        raise ConfigError(f"--goal {goal}: expected one of {list(GOALS)}.")
    return metric, goal, len(plan["runs"]) if "runs" in plan else None


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


def rank_runs(runs: list[Run], labels: dict[Path, str], metric: str, goal: str, top: int) -> list[tuple[int, Run]]:
    """``[(rank, run), ...]``: the ``top`` best runs by ``metric`` and every run tied with the ``top``-th, best
    first; rank = 1 + the number of runs strictly better (tied runs share it).

    Raises:
        ConfigError: ``top`` < 1, or a run without the metric (ranking only the runs that have it would compare a
            subset silently).
    """
    if top < 1:
        raise ConfigError(f"--top {top}: the number of winners to confirm must be at least 1.")
    missing = [labels[r.path] for r in runs if metric_entry(r.results, metric) is None]
    if missing:
        raise ConfigError(f"{len(missing)} of the {len(runs)} runs have no {metric} ({missing[:5]}: an attack they did "
                          "not run), so they cannot be ranked by it. Fix: --metric with an accuracy every run has (e.g. "
                          "test/robust_acc/worst_case or test/clean_acc).")
    sign = -1.0 if goal == "maximize" else 1.0  # sort ascending on sign * acc: the best first
    score = {r.path: sign * metric_entry(r.results, metric)["acc"] for r in runs}
    ordered = sorted(runs, key=lambda r: (score[r.path], labels[r.path]))
    cut = score[ordered[min(top, len(ordered)) - 1].path]
    chosen = [r for r in ordered if score[r.path] <= cut]
    if len(chosen) > top:
        log.info("%d runs tie at %s = %.4f with the %d-th best: all %d are confirmed.",
                 sum(score[r.path] == cut for r in chosen), metric, abs(cut), min(top, len(ordered)), len(chosen))
    return [(1 + sum(score[o.path] < score[r.path] for o in runs), r) for r in chosen]


def sample_ids(run: Run) -> set[int]:
    """The sample ids a finished run evaluated (its ``samples.csv``, read once by :attr:`Run.samples`)."""
    return {int(row["sample_id"]) for row in run.samples}


def held_out_ids(run: Run, args: list[str]) -> set[int]:
    """The ids the winner's config plus ``args`` selects (the dataset is opened, no model is built)."""
    cfg = load_config([str(run.path / "config.yaml"), *args])
    return set(select_ids(cfg.data, build_dataset(cfg.data)))


def check_disjoint(sweep_dir: Path, runs: list[Run], labels: dict[Path, str], winners: list[Run], args: list[str]) -> None:
    """Check that every run was evaluated on the same ids (the selection images) and that the held-out ids of each
    winner avoid them.

    Raises:
        ConfigError: runs on different images, or held-out images that share any image with the selection.
    """
    selection = sample_ids(runs[0])
    differing = [labels[r.path] for r in runs if sample_ids(r) != selection]
    if differing:
        raise ConfigError(f"The runs of '{sweep_dir}' were not all evaluated on the same images ({len(differing)} of "
                          f"{len(runs)}, e.g. {differing[:5]}, differ from {labels[runs[0].path]}), so a selection among "
                          "them compares different images. Fix: confirm a sweep whose runs share their images (the "
                          "same data.* keys and no failed images), or rerun the odd runs.")
    for run in winners:
        overlap = selection & held_out_ids(run, args)
        if overlap:
            raise ConfigError(f"The held-out images {args} share {len(overlap)} of their images with the "
                              f"{len(selection)} the sweep selected on (e.g. sample ids {sorted(overlap)[:5]}), so the "
                              "confirmation would be optimistic too. Fix: name disjoint images, e.g. an ids file without "
                              "the selection's ids (docs/evaluation.md, 'Selecting a configuration').")


def confirm_args(run: Run, args: list[str], run_dir: Path, resume: bool) -> list[str]:
    """eval.py's arguments for the held-out run of ``run``: its resolved config, the held-out images, the folder."""
    return [str(run.path / "config.yaml"), *args, f"run_dir={run_dir}"] + (["resume=true"] if resume else [])


def confirm_winners(sweep_dir: str | Path, args: list[str], top: int = 1, metric: str | None = None,
                    goal: str | None = None, opts: SweepOptions | None = None) -> Confirmation:
    """See the module docstring.

    Raises:
        ConfigError: bad held-out arguments, a metric that is not an accuracy or that a run lacks, runs on
            different images, or held-out images that overlap the selection images; all before anything runs.
    """
    sweep_dir, args = Path(sweep_dir).absolute(), list(args)
    opts = opts or SweepOptions(wandb="off")  # wandb off: each run keeps its own logger settings (config.yaml)
    check_image_args(args)
    check_launcher(opts, "report.py --confirm")
    metric, goal, planned = sweep_metric(sweep_dir, metric, goal)
    runs = collect_runs([sweep_dir])
    labels = run_labels(runs)
    winners = rank_runs(runs, labels, metric, goal, top)
    check_disjoint(sweep_dir, runs, labels, [run for _, run in winners], args)
    if planned is not None and planned > len(runs):
        log.warning("%s: %d of the %d planned runs have not finished; the winner is chosen among the %d that have.",
                    sweep_dir.name, planned - len(runs), planned, len(runs))
    out = sweep_dir / CONFIRM_DIR
    names = [labels[run.path].replace("/", "__") for _, run in winners]

    def classify(k: int, state: dict, waiting: dict) -> _Run:
        run, folder = winners[k][1], out / names[k]
        argv = confirm_args(run, args, folder, resume=False)
        cfg = load_config(argv)  # eval.py's composition and checks
        _check_devices(cfg, opts, names[k])
        planned_run = _Run(k, {"winner": labels[run.path]}, folder, "run", str(EVAL_PY), argv, id=names[k],
                           resume_args=confirm_args(run, args, folder, resume=True))
        return decide(planned_run, to_plain(cfg), out, opts, state, waiting)

    launch = launch_runs(out, names, opts, f"clipure-confirm-{sweep_dir.name}", classify,
                         f"confirmation of {sweep_dir.name} on {' '.join(args)}")
    confirmed, pending = [], []
    for (rank, run), name in zip(winners, names):
        folder = out / name
        if not (folder / "results.json").is_file():
            pending.append(name)
            continue
        held = metric_entry(read_json(folder / "results.json"), metric)
        confirmed.append(Confirmed(labels[run.path], rank, len(runs), planned, metric, metric_entry(run.results, metric),
                                   held, run.path, folder))
    return Confirmation(confirmed, launch, pending)
