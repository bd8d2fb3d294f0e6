"""Confirming a sweep's winner on held-out images, end to end on the shipped CIFAR-10 sample: sweep.py runs a tiny
grid, report.py --confirm evaluates the best run(s) again on disjoint ids in <sweep>/confirm/ and reports both
numbers and their difference (report.md, report.csv, report.tex, selection.csv); overlapping images, settings other
than images and a sweep whose runs saw different images are refused before anything runs; a second confirmation
evaluates nothing again. Ranking (ties, goal, a missing metric) and the interval arithmetic are checked directly."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import report as report_script
import sweep as sweep_script
from clipure_lit.errors import ConfigError
from clipure_lit.reporting.ablation import Run
from clipure_lit.reporting.selection import newcombe_difference
from clipure_lit.sweeping.confirm import rank_runs

from conftest import tiny_sweep_yaml

# The shipped sample (clipure_lit/assets), so a user's clone can run the same: the first 12 images to select on.
RUN_ARGS = ["data=cifar10_sample", "data.num_samples=12", "data.batch_size=4", "attack.run=[apgd_ce]",
            "attack.n_iter=1", "attack.eps=1", "attack.checks=false", "trainer.num_threads=1",
            "trainer.enable_progress_bar=false"]
WORST = "test/robust_acc/worst_case"


def test_newcombe_interval_matches_worked_values():
    """Newcombe (1998), method 10, his example (a): 56/70 vs 48/80 -> 0.2000 [0.0524, 0.3339]."""
    d, low, high = newcombe_difference(56, 70, 48, 80)
    assert (round(d, 4), round(low, 4), round(high, 4)) == (0.2, 0.0524, 0.3339)
    d, low, high = newcombe_difference(5, 5, 0, 5)  # at the edges it stays inside [-1, 1]
    assert d == 1.0 and -1 <= low < 1 and high == pytest.approx(1.0)


def _run(name: str, clean: float, worst: float | None) -> Run:
    results = {"clean": {"acc": clean}, "robust": {} if worst is None else {"worst_case": {"acc": worst}}}
    return Run(Path(name), results, {})


def test_ranking_keeps_ties_shares_their_rank_follows_the_goal_and_refuses_a_missing_metric():
    runs = [_run("a", 0.5, 0.2), _run("b", 0.6, 0.4), _run("c", 0.7, 0.4), _run("d", 0.4, 0.1)]
    labels = {r.path: r.path.name for r in runs}
    ranked = lambda *args: [(rank, r.path.name) for rank, r in rank_runs(runs, labels, *args)]  # noqa: E731
    assert ranked(WORST, "maximize", 1) == [(1, "b"), (1, "c")]  # a tie with the 1st is confirmed too
    assert ranked(WORST, "maximize", 3) == [(1, "b"), (1, "c"), (3, "a")]
    assert ranked("test/clean_acc", "minimize", 1) == [(1, "d")]
    with pytest.raises(ConfigError, match="--top 0"):
        rank_runs(runs, labels, WORST, "maximize", 0)
    with pytest.raises(ConfigError, match=r"1 of the 5 runs have no test/robust_acc/worst_case \(\['e'\]"):
        rank_runs(runs + [_run("e", 0.9, None)], {**labels, Path("e"): "e"}, WORST, "maximize", 1)
    with pytest.raises(ConfigError, match="not an accuracy"):
        rank_runs(runs, labels, "test/loss", "maximize", 1)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("confirm")
    path = root / "tiny.yaml"
    path.write_text(tiny_sweep_yaml(**{"clip.init_seed": [0, 1, 2]}))
    out = root / "sweep"
    sweep_script.main([str(path), "--out", str(out), "--wandb", "off", *RUN_ARGS])
    return out


def _ids_file(path, ids) -> str:
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # a 3-run sweep and the held-out run(s) through eval.py processes (about a minute on 2 cores)
@pytest.mark.timeout(900)
def test_the_winner_is_evaluated_again_on_held_out_ids_and_the_optimism_reported(sweep_dir, tmp_path, capsys):
    heldout = _ids_file(tmp_path / "heldout.txt", range(100, 120))
    summary = report_script.main([str(sweep_dir), "--confirm", f"data.ids_file={heldout}"])
    printed = capsys.readouterr().out
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("run-*/results.json")}
    best = max(r["robust"]["worst_case"]["acc"] for r in results.values())
    winners = sorted(name for name, r in results.items() if r["robust"]["worst_case"]["acc"] == best)  # ties: all
    rows = {row["run"]: row for row in csv.DictReader(open(sweep_dir / "selection.csv"))}
    assert sorted(rows) == winners and summary["runs"] == 3  # the confirm runs are not mixed into the sweep's report
    report_rows = {row["run"]: row for row in csv.DictReader(open(sweep_dir / "report.csv"))}
    assert len(report_rows) == 3
    for name in winners:
        confirmed = sweep_dir / "confirm" / name
        held = json.loads((confirmed / "results.json").read_text())
        with open(confirmed / "samples.csv") as fh:
            assert {int(r["sample_id"]) for r in csv.DictReader(fh)} == set(range(100, 120))
        sel, ho, row = results[name]["robust"]["worst_case"], held["robust"]["worst_case"], rows[name]
        assert (row["rank"], row["of"], row["planned"], row["metric"]) == ("1", "3", "3", WORST)
        assert float(row["selection_acc"]) == pytest.approx(sel["acc"]) and float(row["held_out_acc"]) == pytest.approx(ho["acc"])
        assert [float(row["held_out_ci_low"]), float(row["held_out_ci_high"])] == pytest.approx(ho["ci95"])
        assert float(row["optimism"]) == pytest.approx(sel["acc"] - ho["acc"])
        assert (row["selection_images"], row["held_out_images"]) == ("12", "20")
        low, high = float(row["optimism_ci_low"]), float(row["optimism_ci_high"])
        assert low < float(row["optimism"]) < high
        assert float(report_rows[name]["held_out_acc"]) == pytest.approx(ho["acc"])
        assert float(report_rows[name]["optimism"]) == pytest.approx(sel["acc"] - ho["acc"])
        assert f"| {name} | 1 of 3 | 12 |" in (sweep_dir / "report.md").read_text()
    assert all(not report_rows[name]["held_out_acc"] for name in set(report_rows) - set(winners))
    report_md = (sweep_dir / "report.md").read_text()
    assert "## Selection" in report_md and "best of 3 configurations" in report_md and "held-out number" in report_md
    assert "## Selection" in printed
    tex = (sweep_dir / "report.tex").read_text()
    assert r"\label{tab:ablation}" in tex and r"\label{tab:selection}" in tex and "Newcombe" in tex
    # Again: nothing is evaluated again (the held-out runs' files are untouched).
    before = _files(sweep_dir / "confirm" / winners[0])
    report_script.main([str(sweep_dir), "--confirm", f"data.ids_file={heldout}"])
    assert _files(sweep_dir / "confirm" / winners[0]) == before
    state = json.loads((sweep_dir / "confirm" / "state.json").read_text())
    assert all(state[name]["status"] == "finished" for name in winners)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("args, expected", [
    (["data.num_samples=20"], "share 12 of their images with the 12"),  # the first 20 contain the first 12
    (["data.ids_file={overlap}"], "share 2 of their images with the 12"),
    (["attack.n_iter=5"], "may only choose the images"),
    (["data.ids_file={disjoint}", "--metric", "test/robust_acc/square"], "have no test/robust_acc/square"),
])
def test_held_out_images_that_overlap_or_other_settings_are_refused_before_anything_runs(sweep_dir, tmp_path, capsys,
                                                                                        args, expected):
    ids = {"overlap": _ids_file(tmp_path / "overlap.txt", [10, 11, 200, 201]),
           "disjoint": _ids_file(tmp_path / "disjoint.txt", [300, 301])}
    before = _files(sweep_dir)
    with pytest.raises(SystemExit) as info:
        report_script.main([str(sweep_dir), "--confirm", *[a.format(**ids) for a in args]])
    err = capsys.readouterr().err
    assert info.value.code == 2 and expected in err and "Fix:" in err and "Traceback" not in err
    assert _files(sweep_dir) == before


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_whose_runs_saw_different_images_is_refused(sweep_dir, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep_dir, mixed, ignore=shutil.ignore_patterns("confirm", ".submitit"))
    samples = mixed / "run-0002" / "samples.csv"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:-1]))  # as if run-0002 had been evaluated without its last image
    before = _files(mixed)
    with pytest.raises(SystemExit) as info:
        report_script.main([str(mixed), "--confirm", f"data.ids_file={_ids_file(tmp_path / 'h.txt', [300])}"])
    assert info.value.code == 2 and "were not all evaluated on the same images" in capsys.readouterr().err
    assert _files(mixed) == before and not (mixed / "confirm").exists()
