"""Plots and reports show their uncertainty and say what they compare: sweep plots with intervals (two values are
enough; text values on categorical positions), a reason for every key without a plot, run labels unique across
folders, paired comparisons that name their metric, suite tables labelled by what their rows are, and the gallery
command."""

from __future__ import annotations

import csv

import pytest

from clipure_lit.reporting.ablation import build_report, format_report
from clipure_lit.reporting.suite_tables import average, average_interval, write_tables

from scripts.make_gallery import main as make_gallery
from scripts.make_gallery import suite_row, synthetic_results, write_run


def _sweep(folder, step_sizes, scope="batch"):
    for k, step_size in enumerate(step_sizes):
        config = {"purifier": {"clipure_cos": {"step_size": step_size, "norm_scope": scope}}}
        table, summary = synthetic_results(40, 0.7, {"aa": 0.2}, seed=0, attack_seed=k)
        write_run(folder / f"run-{k:04d}", config, table, summary)


def test_report_over_two_folders_labels_runs_uniquely_plots_two_values_and_names_the_metric(tmp_path):
    """The text key ``norm_scope`` is drawn too: it changes while ``step_size`` stays fixed."""
    _sweep(tmp_path / "a", [10.0, 30.0])
    _sweep(tmp_path / "b", [10.0, 30.0], scope="sample")
    summary = build_report([tmp_path / "a", tmp_path / "b"], out=tmp_path / "report", baseline="a/run-0000")
    rows = list(csv.DictReader(open(tmp_path / "report" / "report.csv")))
    assert [r["run"] for r in rows] == ["a/run-0000", "a/run-0001", "b/run-0000", "b/run-0001"]
    assert [p.rsplit("/", 1)[1] for p in summary["plots"]] == ["acc_vs_purifier_clipure_cos_norm_scope.png",
                                                                "acc_vs_purifier_clipure_cos_step_size.png"]
    assert summary["skipped_plots"] == {}
    assert {r["metric"] for r in summary["paired"]} == {"worst_case"} and summary["paired"][0]["baseline"] == "a/run-0000"
    text = format_report(summary)
    assert "worst-case robust accuracy, a/run-0001 vs a/run-0000:" in text
    assert "no plot against" not in text and "report.tex" in text.splitlines()[-1]


def test_a_key_that_only_changes_with_another_gets_no_plot_and_the_reason(tmp_path):
    _sweep(tmp_path / "a", [10.0])
    _sweep(tmp_path / "b", [30.0], scope="sample")
    summary = build_report([tmp_path / "a", tmp_path / "b"], out=tmp_path / "report")
    assert summary["plots"] == []
    assert "changes together with purifier.clipure_cos.norm_scope" in summary["skipped_plots"]["purifier.clipure_cos.step_size"]


def test_suite_tables_name_their_rows_and_average_only_datasets(tmp_path):
    rows = [suite_row(name, synthetic_results(50, 0.8, {"aa": 0.3}, seed=i)[1]) for i, name in enumerate(("c10", "c100"))]
    rows.append({"dataset": "dtd", "status": "skipped", "reason": "files missing"})
    write_tables(tmp_path, {"ViT-B-32/none": rows})
    md = (tmp_path / "suite.md").read_text().splitlines()
    assert md[0].startswith("| dataset | ViT-B-32/none clean |") and md[-1].startswith("| **average (excl. ImageNet)** |")
    assert "| dtd | skipped |" in "\n".join(md)
    low, high = average_interval(rows, "clean")
    assert low < average(rows)["clean"] < high
    write_tables(tmp_path, {"": rows[:2]}, row_label="defence")
    md = (tmp_path / "suite.md").read_text().splitlines()
    assert md[0] == "| defence | clean | robust (worst case) |" and "average" not in "\n".join(md)


@pytest.mark.timeout(60)
def test_the_gallery_command_draws_every_plot(tmp_path):
    out = make_gallery(["--out", str(tmp_path)])
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["report_acc_vs_purifier_clipure_cos_norm_scope.png", "report_acc_vs_purifier_clipure_cos_num_steps.png",
                     "report_acc_vs_purifier_clipure_cos_step_size.png", "results.png", "suite_datasets.png",
                     "suite_defences.png"]
    readme = (out / "README.md").read_text()
    assert all(f"({name})" in readme for name in names) and "synthetic" in readme
    assert "\\toprule" in readme and readme.count("\\midrule") == 1 and "steady state: first batch excluded" in readme


@pytest.mark.parametrize("name, says", [("run-9", "names none of the 2 runs"), ("a/run-00", "closest: ['a/run-0000'"),
                                        ("run-0000", "names 2 runs")])
def test_a_baseline_that_names_no_run_or_several_is_refused_before_anything_is_written(tmp_path, capsys, name, says):
    import report

    _sweep(tmp_path / "a", [10.0])
    _sweep(tmp_path / "b", [30.0])
    with pytest.raises(SystemExit) as stop:
        report.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "report"), "--baseline", name])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --baseline '{name}'") and says in err and "Fix:" in err and "Traceback" not in err
    assert not (tmp_path / "report").exists()
