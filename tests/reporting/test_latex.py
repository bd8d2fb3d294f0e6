"""``report.tex`` is a table a paper can take: booktabs rules, one row per run in the varying keys' numeric order,
intervals after every accuracy, the best of each column in bold (ties too), the flags that fired, a caption with
the attacks and the settings held fixed, LaTeX's special characters escaped; it compiles where a LaTeX engine is."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clipure_lit.reporting.ablation import build_report, collect_runs, format_report, run_labels, varying_keys
from clipure_lit.reporting.latex import escape, latex_table

from scripts.make_gallery import MODEL, describe_attacks, synthetic_results, write_run

ROOT = Path(__file__).resolve().parents[2]


def _runs(folder: Path, steps=(10, 2, 1), robust=(0.3, 0.3, 0.1), flags=None) -> None:
    for k, (step, acc) in enumerate(zip(steps, robust)):
        config = {**MODEL, "data": {"batch_size": 25, "name": "my_data"}, "attack": {"n_iter": 20},
                  "purifier": {"latent": "clipure_cos", "clipure_cos": {"num_steps": step, "momentum": 0.5}}}
        table, summary = synthetic_results(50, 0.8, {"aa_clipure@purifier": acc, "aa_clipure@full": 0.0}, seed=1,
                                           attack_seed=7)
        summary = describe_attacks(summary)
        summary["flags"] = (flags or {}).get(step, {"zero_grad/aa_clipure@purifier": 0.0})
        write_run(folder / f"run-{k:04d}", config, table, summary)


def _body(tex: str) -> list[str]:
    lines = tex.splitlines()
    return lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]


def _balanced(text: str) -> bool:
    """True when the unescaped braces of ``text`` pair up."""
    depth = 0
    for brace in re.sub(r"\\\\|\\[{}]", "", text):  # a line break (\\) first, then the escaped braces
        depth += {"{": 1, "}": -1}.get(brace, 0)
        if depth < 0:
            return False
    return depth == 0


def test_escape_makes_every_special_character_literal():
    assert escape("a_b%c&d#e$f{g}h~i^j\\k") == (r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j"
                                                r"\textbackslash{}k")


def test_structure_order_intervals_bold_flags_and_caption(tmp_path):
    _runs(tmp_path, flags={2: {"weak_grad/aa_clipure@purifier": 1.0, "purifier_near_identity": 1.0}})
    runs = collect_runs([tmp_path])
    keys = varying_keys(runs)
    tex = latex_table(runs, keys, run_labels(runs))
    lines = tex.splitlines()
    assert _balanced(tex)
    assert lines.index(r"\toprule") < lines.index(r"\midrule") < lines.index(r"\bottomrule")
    assert tex.count(r"\begin{tabular}{") == 1 and lines[-1] == r"\end{table}"
    header = lines[lines.index(r"\toprule") + 1]
    assert header.startswith("num\\_steps & Clean & ") and header.endswith(r"Flags \\")
    assert r"aa\_clipure@purifier\\{\scriptsize released gradient}" in header and "exact gradient" in header
    body = _body(tex)
    assert len(body) == 3 and [row.split(" & ")[0] for row in body] == ["1", "2", "10"]  # numeric, not 1, 10, 2
    columns = len(header.split(" & "))
    assert all(len(row.split(" & ")) == columns and row.endswith(r" \\") for row in body)
    # Robust under the released gradient: about 10% for one step, 30% for 2 and 10 steps (the same draws: a tie, both
    # bold), each with its interval.
    by_steps = {r.config["purifier.clipure_cos.num_steps"]: r.results["robust"]["aa_clipure@purifier"] for r in runs}
    released = [row.split(" & ")[2] for row in body]
    for cell, steps, bold in zip(released, (1, 2, 10), (False, True, True)):
        entry = by_steps[steps]
        value = f"{100 * entry['acc']:.1f}"
        interval = f"[{100 * entry['ci95'][0]:.1f}, {100 * entry['ci95'][1]:.1f}]"
        assert cell == (rf"\textbf{{{value}}}" if bold else value) + rf" {{\scriptsize {interval}}}"
    assert by_steps[2]["acc"] == by_steps[10]["acc"] > by_steps[1]["acc"]
    assert all(row.split(" & ")[3].startswith(r"\textbf{0.0}") for row in body)  # every run ties at 0%
    assert r"weak\_grad@purifier \\ purifier\_near\_identity" in body[1] and r"{\scriptsize none}" in body[0]
    caption = next(line for line in lines if line.startswith(r"\caption{"))
    assert "Linf 4/255, 20 it. x 5 restarts, released gradient" in caption and "50 images per run" in caption
    held = caption.split("Held fixed: ", 1)[1]
    for setting in (r"clip.arch=ViT-C10-S4-32px", r"data.batch\_size=25", r"data.name=my\_data", r"attack.n\_iter=20",
                    r"purifier.clipure\_cos.momentum=0.5"):
        assert setting in held, setting
    assert "num\\_steps" not in held  # the varying key is not held fixed


def test_a_run_label_column_appears_only_when_the_keys_do_not_tell_runs_apart(tmp_path):
    _runs(tmp_path / "a", steps=(1, 2), robust=(0.1, 0.2))
    _runs(tmp_path / "b", steps=(1, 2), robust=(0.1, 0.2))
    runs = collect_runs([tmp_path / "a", tmp_path / "b"])
    tex = latex_table(runs, varying_keys(runs), run_labels(runs))
    assert varying_keys(runs) == ["purifier.clipure_cos.num_steps"]
    assert [row.split(" & ")[0] for row in _body(tex)] == ["a/run-0000", "b/run-0000", "a/run-0001", "b/run-0001"]


def test_report_writes_report_tex_and_the_flags_column_next_to_report_md(tmp_path):
    _runs(tmp_path / "runs", flags={1: {"weak_grad/aa_clipure@purifier": 1.0}})
    summary = build_report([tmp_path / "runs"], out=tmp_path / "report")
    assert (tmp_path / "report" / "report.tex").read_text().count(r"\midrule") == 1
    md = (tmp_path / "report" / "report.md").read_text().splitlines()
    flags = md[0].split(" | ").index("flags")
    assert [line.split(" | ")[flags] for line in md[2:5]] == ["none", "none", "weak_grad@purifier"]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "report" / "report.csv")))
    assert [r["flags"] for r in rows] == ["none", "none", "weak_grad@purifier"]
    assert "report.tex" in format_report(summary).splitlines()[-1]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex on this machine")
def test_report_tex_compiles(tmp_path):
    _runs(tmp_path / "runs", flags={2: {"weak_grad/aa_clipure@purifier": 1.0}})
    build_report([tmp_path / "runs"], out=tmp_path / "report")
    (tmp_path / "report" / "paper.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n"
                                                   "\\begin{document}\n\\input{report.tex}\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
                          cwd=tmp_path / "report", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
