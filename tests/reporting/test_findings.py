"""The findings document: the committed one is exactly what the committed runs give; numbers in its text come from
the runs (a changed run changes the sentence); McNemar tests pair on sample ids against the matching baseline; a
bad study file is refused with the key named; recomputing never writes into the committed runs; freezing keeps
only the three files the document reads and never replaces committed runs unasked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.reporting.findings import COMMITTED_FILES, load_findings, render_findings

from scripts.make_gallery import synthetic_results, write_run

ROOT = Path(__file__).resolve().parents[2]

STUDIES = {
    "title": "T",
    "intro": "Intro.",
    "common": ["data.num_samples=40"],
    "studies": [{
        "name": "grid",
        "title": "A grid",
        "parts": [{"name": "base", "sweep": "sweeps/findings/single.yaml", "args": ["purifier=none"]},
                  {"name": "cos", "sweep": "sweeps/findings/epsilon.yaml", "args": ["purifier=clipure_cos"]}],
        "keys": ["attack.eps"],
        "metrics": [{"label": "clean", "metric": "clean"}, {"label": "AA", "metric": "aa", "compare": True}],
        "baseline": {"ref": {"part": "base"}, "match": ["attack.eps"], "metric": "aa"},
        "refs": {"cos4": {"part": "cos", "where": {"attack.eps": 4}}},
        "plot": {"x": "attack.eps", "series": [{"label": "cos", "part": "cos", "metric": "aa"}]},
        "text": "At 4/255 CLIPure keeps {{cos4.aa}} ({{cos4.aa:n}}; {{cos4.clean:acc}} clean; gradient ratio "
                "{{cos4.checks[weak_grad/aa]}}).",
    }],
}


def _runs(root: Path, cos_robust: float = 0.3) -> None:
    for k, eps in enumerate((2, 4)):
        table, summary = synthetic_results(40, 0.7, {"aa": 0.1}, seed=0, attack_seed=10 + k)
        write_run(root / "grid" / "base" / f"run-{k:04d}", {"attack": {"eps": eps}}, table, summary)
        table, summary = synthetic_results(40, 0.7, {"aa": cos_robust}, seed=0, attack_seed=20 + k)
        summary["checks"] = {"weak_grad/aa": 5.9e-9 * (k + 1)}
        write_run(root / "grid" / "cos" / f"run-{k:04d}", {"attack": {"eps": eps}}, table, summary)


def _study_file(tmp_path: Path, content: dict = STUDIES) -> Path:
    path = tmp_path / "studies.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_document_numbers_come_from_the_runs_and_mcnemar_pairs_with_the_same_eps(tmp_path):
    _runs(tmp_path / "runs")
    findings = load_findings(_study_file(tmp_path))
    out = render_findings(findings, tmp_path / "runs", tmp_path / "doc" / "findings.md", tmp_path / "doc" / "findings")
    text = out.read_text()
    assert (tmp_path / "doc" / "findings" / "grid.png").stat().st_size > 1000
    assert "![A grid](findings/grid.png)" in text
    sentence = next(line for line in text.splitlines() if line.startswith("At 4/255"))
    import csv
    rows = list(csv.DictReader(open(tmp_path / "runs/grid/cos/run-0001/samples.csv")))
    k = sum(r["adv_pred/aa"] == r["label"] for r in rows)
    assert f"({k}/40;" in sentence and f"{100 * k / 40:.1f} [" in sentence and "gradient ratio 1.2e-08)" in sentence
    # The McNemar column: each cos run against the base run with the same eps; base rows show "-".
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| defence | eps | n | clean | AA | AA: vs baseline (p) |")
    assert table[1].endswith("| - |") and table[2].endswith("| - |")  # the baseline runs themselves
    assert "(p=" in table[3] and "(p=" in table[4]
    assert "at the same attack.eps" in text

    # A different run gives a different sentence: nothing in the text is typed by hand.
    _runs(tmp_path / "runs2", cos_robust=0.6)
    out2 = render_findings(findings, tmp_path / "runs2", tmp_path / "doc2" / "findings.md", tmp_path / "doc2" / "findings")
    assert next(line for line in out2.read_text().splitlines() if line.startswith("At 4/255")) != sentence


def test_rendering_is_byte_for_byte_repeatable(tmp_path):
    _runs(tmp_path / "runs")
    findings = load_findings(_study_file(tmp_path))
    a = render_findings(findings, tmp_path / "runs", tmp_path / "a" / "f.md", tmp_path / "a" / "img").read_bytes()
    b = render_findings(findings, tmp_path / "runs", tmp_path / "b" / "f.md", tmp_path / "b" / "img").read_bytes()
    assert a.replace(b"(img/", b"(X/") == b.replace(b"(img/", b"(X/")
    assert (tmp_path / "a/img/grid.png").read_bytes() == (tmp_path / "b/img/grid.png").read_bytes()


@pytest.mark.parametrize("change, message", [
    (lambda s: s["studies"][0].update(colour="red"), "unknown key(s) ['colour']"),
    (lambda s: s["studies"][0].update(text="{{nope.aa}}"), "refers to 'nope'"),
    (lambda s: s["studies"][0]["refs"].update(cos4={"part": "cos"}), "matches 2 runs, not exactly one"),
    (lambda s: s["studies"][0].update(text="{{cos4.square}}"), "has no metric 'square'"),
    (lambda s: s["studies"][0].update(text="{{cos4.checks[zero_grad/aa]}}"), "has no check 'zero_grad/aa'"),
    (lambda s: s["studies"][0]["parts"][1].update(name="missing"), "No runs for part 'grid/missing'"),
])
def test_a_bad_study_file_is_refused_naming_what_is_wrong(tmp_path, change, message):
    import copy

    _runs(tmp_path / "runs")
    content = copy.deepcopy(STUDIES)
    change(content)
    with pytest.raises(Exception) as info:
        render_findings(load_findings(_study_file(tmp_path, content)), tmp_path / "runs", tmp_path / "f.md", tmp_path / "img")
    assert message in str(info.value)


def test_freeze_keeps_three_files_per_run_and_never_replaces_unasked(tmp_path):
    from clipure_lit.sweeping.findings_runs import freeze

    _runs(tmp_path / "runs")
    (tmp_path / "runs/grid/cos/run-0000/log.txt").write_text("big log")
    findings = load_findings(_study_file(tmp_path))
    assert freeze(findings, tmp_path / "runs", tmp_path / "committed") == 4
    kept = sorted(p.name for p in (tmp_path / "committed/grid/cos/run-0000").iterdir())
    assert kept == sorted(COMMITTED_FILES)
    # No machine path in what is committed: the run folder is named relative to the runs' root.
    results = (tmp_path / "committed/grid/cos/run-0000/results.json").read_text()
    assert str(tmp_path) not in results and '"run_dir": "runs/grid/cos/run-0000"' in results
    with pytest.raises(ConfigError, match="--overwrite"):
        freeze(findings, tmp_path / "runs", tmp_path / "committed")
    assert freeze(findings, tmp_path / "runs", tmp_path / "committed", overwrite=True) == 4


def test_freezing_one_study_replaces_only_its_runs(tmp_path):
    """A recomputed study is adopted alone: the other studies' committed runs stay (the runs root need not hold
    them), and its own are replaced only with --overwrite."""
    from clipure_lit.sweeping.findings_runs import freeze

    two = dict(STUDIES, studies=[STUDIES["studies"][0], dict(STUDIES["studies"][0], name="other")])
    findings = load_findings(_study_file(tmp_path, two))
    _runs(tmp_path / "runs")  # only the study 'grid' was recomputed
    (tmp_path / "committed/other/base/run-0000").mkdir(parents=True)
    (tmp_path / "committed/other/base/run-0000/results.json").write_text("{}")
    with pytest.raises(DataNotFoundError, match="unfinished runs or parts"):
        freeze(findings, tmp_path / "runs", tmp_path / "committed", overwrite=True)  # every study: 'other' is missing
    assert freeze(findings, tmp_path / "runs", tmp_path / "committed", studies=["grid"]) == 4
    assert (tmp_path / "committed/other/base/run-0000/results.json").read_text() == "{}"
    with pytest.raises(ConfigError, match="--overwrite"):
        freeze(findings, tmp_path / "runs", tmp_path / "committed", studies=["grid"])
    with pytest.raises(ConfigError, match="no such study"):
        freeze(findings, tmp_path / "runs", tmp_path / "committed", studies=["nope"])


def test_report_refuses_to_recompute_into_the_committed_runs(tmp_path):
    done = subprocess.run([sys.executable, "report.py", "--findings", "--recompute", "--runs", "findings/runs"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "holds the committed ones" in done.stderr and "Traceback" not in done.stderr



def test_committed_document_is_what_the_committed_runs_give():
    """`make findings` on a clone rewrites docs/findings.md byte for byte from findings/runs."""
    done = subprocess.run([sys.executable, "report.py", "--findings", "--check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_readme_quotes_the_committed_positive_control():
    """The README's robust-CLIP numbers are those of the committed run (a changed run fails this test)."""
    import json

    from clipure_lit.reporting.format import pct

    readme = (ROOT / "README.md").read_text()
    for part, bold in (("robust_clip", True), ("undefended", False)):
        results = json.loads((ROOT / f"findings/runs/positive_control/{part}/run-0000/results.json").read_text())
        for entry in (results["clean"], results["robust"]["aa_clipure"]):
            text = pct(entry["acc"], entry["ci95"], unit="%")
            assert (f"**{text}**" if bold else text) in readme, text
        if part == "robust_clip":
            square = results["robust"]["square"]
            assert pct(square["acc"], square["ci95"], unit="%") in readme
    # The full-protocol, FARE and convergence numbers of the same paragraph.
    readme = " ".join(readme.split())
    quoted = [("full_protocol/robust_clip/run-0000", ["aa_clipure", "square"]),
              ("fare_control/fare_clip/run-0000", ["clean", "aa_clipure"]),
              ("convergence_apgd/fare_clip/run-0003", ["aa_clipure"]),
              ("convergence_eot/clipure_diff/run-0000", ["aa_clipure@eot"]),
              ("convergence_eot/clipure_diff/run-0001", ["aa_clipure@eot"])]
    for run, metrics in quoted:
        results = json.loads((ROOT / "findings/runs" / run / "results.json").read_text())
        for metric in metrics:
            entry = results["clean"] if metric == "clean" else results["robust"][metric]
            assert pct(entry["acc"], entry["ci95"], unit="%") in readme, (run, metric)


def test_a_part_whose_sweep_varies_a_common_key_drops_that_common_argument():
    """The study file's common arguments hold "unless a part sets them otherwise": a convergence part that sweeps
    attack.n_iter runs at the swept values, not at the common attack.n_iter (which the launcher would refuse)."""
    from clipure_lit.sweeping.findings_runs import part_args
    from clipure_lit.sweeping.plan import load_sweep

    spec = load_sweep(ROOT / "sweeps/findings/n_iter.yaml")
    common = ["data.num_samples=100", "data.batch_size=50", "attack.n_iter=20"]
    assert part_args(common, ["purifier=none"], spec) == ["data.num_samples=100", "data.batch_size=50", "purifier=none"]
    single = load_sweep(ROOT / "sweeps/findings/single.yaml")
    assert part_args(common, ["attack.n_iter=100"], single) == [*common, "attack.n_iter=100"]  # the part's wins later


# Every number of the README's "What the demo shows" paragraph, with the committed run and metric it comes from.
README_QUOTES = [
    ("findings/runs/epsilon/clipure_cos/run-0002", ["clean", "aa_clipure@purifier", "aa_clipure@full"]),
    ("findings/runs/epsilon/clipure_diff/run-0002", ["clean", "aa_clipure@eot", "worst_case"]),
]


def test_readme_quotes_the_committed_runs_of_the_demo_defences():
    """The README's description of what the demo shows quotes committed runs (at Linf 4/255), not a demo printout
    that drifts with every change: each number is there, formatted as the findings format it."""
    import json

    import yaml

    from clipure_lit.reporting.format import pct

    paragraph = (ROOT / "README.md").read_text().split("What the demo shows", 1)[1].split("###", 1)[0]
    paragraph = " ".join(paragraph.split())
    for run, metrics in README_QUOTES:
        assert yaml.safe_load((ROOT / run / "config.yaml").read_text())["attack"]["eps"] == 4, run
        results = json.loads((ROOT / run / "results.json").read_text())
        for metric in metrics:
            entry = results["clean"] if metric == "clean" else results["robust"][metric]
            text = pct(entry["acc"], entry["ci95"], unit="%")
            assert text in paragraph, (run, metric, text)
    weak = json.loads((ROOT / README_QUOTES[0][0] / "results.json").read_text())["checks"]["weak_grad/aa_clipure@purifier"]
    assert f"{weak:.2g} of plain CLIP's" in paragraph
