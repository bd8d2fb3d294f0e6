"""Confirming a sweep's winner on held-out images, end to end on the shipped CIFAR-10 sample: sweep.py runs a tiny
grid, report.py --confirm evaluates the best run again on disjoint ids and reports both numbers and their
difference; overlapping images, settings other than images and a mixed sweep are refused before anything runs;
a second confirmation evaluates nothing again. The interval arithmetic is checked against worked values."""

from __future__ import annotations

import csv
import json
import os

import pytest

import report as report_script
import sweep as sweep_script
from clipure_lit.reporting.selection import newcombe_difference

from conftest import tiny_sweep_yaml

# The shipped sample (clipure_lit/assets), so a user's clone can run the same: the first 12 images to select on.
RUN_ARGS = ["data=cifar10_sample", "data.num_samples=12", "data.batch_size=4", "attack.run=[apgd_ce]",
            "attack.n_iter=1", "attack.eps=1", "attack.checks=false", "trainer.num_threads=1",
            "trainer.enable_progress_bar=false"]


def test_newcombe_interval_matches_worked_values():
    """Newcombe (1998), method 10, his example (a): 56/70 vs 48/80 -> 0.2000 [0.0524, 0.3339]."""
    d, low, high = newcombe_difference(56, 70, 48, 80)
    assert (round(d, 4), round(low, 4), round(high, 4)) == (0.2, 0.0524, 0.3339)
    d, low, high = newcombe_difference(5, 5, 0, 5)  # at the edges it stays inside [-1, 1]
    assert d == 1.0 and -1 <= low < 1 and high == pytest.approx(1.0)


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


@pytest.mark.slow  # a 3-run sweep and a held-out run through eval.py processes (about 40 s on 2 cores)
@pytest.mark.timeout(600)
def test_the_winner_is_evaluated_again_on_held_out_ids_and_the_optimism_reported(sweep_dir, tmp_path, capsys):
    heldout = _ids_file(tmp_path / "heldout.txt", range(100, 120))
    report_script.main([str(sweep_dir), "--confirm", f"data.ids_file={heldout}"])
    printed = capsys.readouterr().out
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("run-*/results.json")}
    best = max(sorted(results), key=lambda r: results[r]["robust"]["worst_case"]["acc"])  # first of ties, as ranked
    confirmed = sweep_dir.with_name("sweep.confirm") / best
    held = json.loads((confirmed / "results.json").read_text())
    assert held["num_samples"] == 20
    with open(confirmed / "samples.csv") as fh:
        assert {int(r["sample_id"]) for r in csv.DictReader(fh)} == set(range(100, 120))
    (row,) = list(csv.DictReader(open(sweep_dir / "selection.csv")))
    sel, ho = results[best]["robust"]["worst_case"], held["robust"]["worst_case"]
    assert row["run"] == best and row["of"] == "3" and row["metric"] == "test/robust_acc/worst_case"
    assert float(row["selection_acc"]) == pytest.approx(sel["acc"]) and float(row["held_out_acc"]) == pytest.approx(ho["acc"])
    assert float(row["optimism"]) == pytest.approx(sel["acc"] - ho["acc"])
    assert (row["selection_images"], row["held_out_images"]) == ("12", "20")
    report_md = (sweep_dir / "report.md").read_text()
    assert "## Selection" in report_md and "best of 3 configurations" in report_md and "held-out number" in report_md
    assert "## Selection" in printed
    tex = (sweep_dir / "selection.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and tex.count(r"\\") >= 2 and "Newcombe" in tex
    # The confirmation runs sit beside the sweep: a report of the sweep does not mix them in.
    assert sorted(p.parent.name for p in sweep_dir.rglob("results.json")) == sorted(results)
    # Again: nothing is evaluated again (the held-out run's files are untouched).
    stamp = os.stat(confirmed / "results.json").st_mtime_ns
    report_script.main([str(sweep_dir), "--confirm", f"data.ids_file={heldout}"])
    assert os.stat(confirmed / "results.json").st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("args, expected", [
    (["data.num_samples=20"], "share 12 of their images"),  # the first 20 contain the first 12
    (["data.ids_file={overlap}"], "share 2 of their images"),
    (["attack.n_iter=5"], "may only choose the images"),
    ([], "needs the held-out images"),
])
def test_held_out_images_that_overlap_or_other_settings_are_refused_before_anything_runs(sweep_dir, tmp_path, capsys,
                                                                                        args, expected):
    overlap = _ids_file(tmp_path / "overlap.txt", [10, 11, 200, 201])
    before = set(sweep_dir.parent.iterdir())
    with pytest.raises(SystemExit) as info:
        report_script.main([str(sweep_dir), "--confirm", *[a.format(overlap=overlap) for a in args]]
                           if args else [str(sweep_dir), "--confirm"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    if args:
        assert expected in err and "Fix:" in err and "Traceback" not in err
    assert set(sweep_dir.parent.iterdir()) <= before | {sweep_dir.with_name("sweep.confirm")}
