"""``acc_vs_<key>.png`` shows what the ablation is about: every attack (released and exact gradient side by side) next
to clean accuracy, in numeric order, with captions that name the model, attacks, radius, iterations and images;
series at the same value stay apart; categorical keys in natural order; the bytes repeat; and the committed
findings runs draw the released 8% next to the exact 0%."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clipure_lit.reporting.ablation import build_report, collect_runs, varying_keys
from clipure_lit.reporting.plot_style import fits_width
from clipure_lit.reporting.sweep_plots import figure_against

from scripts.make_gallery import MODEL, describe_attacks, synthetic_results, write_run

ROOT = Path(__file__).resolve().parents[2]
STEPS = "purifier.clipure_cos.num_steps"
SIZE = "purifier.clipure_cos.step_size"
SCOPE = "purifier.clipure_cos.norm_scope"


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures drawn without saving are closed after each test (matplotlib keeps them otherwise)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _grid(folder: Path, steps=(1, 10, 2, 3, 4, 9), sizes=(30.0, 5.0, 10.0), scopes=("sample",), n=40):
    """Runs in the order a text sort would scramble (1, 10, 2, ...), each under the released and the exact gradient."""
    k = 0
    for scope in scopes:
        for size in sizes:
            for step in steps:
                released = 0.3 if step % 2 == 0 else 0.05
                config = {**MODEL, "purifier": {"latent": "clipure_cos", "clipure_cos": {
                    "num_steps": step, "step_size": size, "norm_scope": scope, "grad_mode": "as_released"}}}
                table, summary = synthetic_results(n, 0.7, {"aa_clipure@purifier": released, "aa_clipure@full": 0.0},
                                                   seed=3, attack_seed=k)
                write_run(folder / f"run-{k:04d}", config, table, describe_attacks(summary))
                k += 1


def _figure(folder: Path, x_key: str):
    runs = collect_runs([folder])
    return figure_against(runs, varying_keys(runs), x_key)


def test_numbers_run_in_numeric_order_on_the_axis_and_across_panels(tmp_path):
    _grid(tmp_path)
    drawn = _figure(tmp_path, STEPS)
    assert drawn.panels == ["step_size=5", "step_size=10", "step_size=30"]  # as text: 10, 30, 5
    for series in drawn.series:
        assert series.xs == [1, 2, 3, 4, 9, 10]
    ticks = [t.get_text() for t in drawn.fig.axes[0].get_xticklabels()]
    assert ticks == ["1", "2", "3", "4", "9", "10"]


def test_released_and_exact_gradients_are_both_drawn_next_to_clean_and_worst_case(tmp_path):
    _grid(tmp_path, sizes=(30.0,))
    drawn = _figure(tmp_path, STEPS)
    families = [s.family for s in drawn.series]
    assert families == ["clean", "released", "exact", "worst_case"]
    labels = [t.get_text() for t in drawn.legend.get_texts()]
    assert labels == ["clean", "aa_clipure@purifier (released gradient)", "aa_clipure@full (exact gradient)",
                      "worst case (per sample, all attacks)"]
    released = next(s for s in drawn.series if s.family == "released")
    exact = next(s for s in drawn.series if s.family == "exact")
    assert max(released.accs) > 0.15 and exact.accs == [0.0] * 6


def test_series_at_the_same_value_are_shifted_apart_and_stay_between_neighbouring_values(tmp_path):
    _grid(tmp_path, sizes=(30.0,))
    drawn = _figure(tmp_path, STEPS)
    ax = drawn.fig.axes[0]
    # One errorbar container per series; the x positions of the four series at num_steps=1 differ and stay in (0.5, 1.5).
    firsts = [container.lines[0].get_xdata()[0] for container in ax.containers]
    assert len(firsts) == 4 and len(set(firsts)) == 4
    assert firsts == sorted(firsts) and 0.5 < min(firsts) < 1 < max(firsts) < 1.5
    low, high = ax.get_xlim()
    assert low < min(firsts) and max(container.lines[0].get_xdata()[-1] for container in ax.containers) < high
    assert ax.get_ylim()[0] < 0  # markers at 0% are drawn whole


def test_title_and_caption_name_model_attacks_radius_iterations_and_images_and_fit_the_figure(tmp_path):
    _grid(tmp_path, sizes=(30.0,))
    drawn = _figure(tmp_path, STEPS)
    title = drawn.title.get_text().replace("\n", " ")
    caption = drawn.caption.get_text().replace("\n", " ")
    assert "ViT-C10-S4-32px (vit_c10_s4_clip.safetensors)" in title and "40 images per run" in title
    assert "clipure_cos (as_released)" in title
    for words in ("aa_clipure@purifier: APGD-CE+APGD-T, Linf 4/255, 20 it. x 5 restarts, released gradient",
                  "aa_clipure@full: APGD-CE+APGD-T, Linf 4/255, 20 it. x 5 restarts, exact gradient",
                  "95% Wilson intervals"):
        assert words in caption
    assert fits_width(drawn.fig, drawn.title) and fits_width(drawn.fig, drawn.caption)


def test_a_text_key_is_drawn_in_natural_order_where_it_changes(tmp_path):
    _grid(tmp_path, steps=(2, 4), sizes=(30.0,), scopes=("b10", "b2", "a"))
    drawn = _figure(tmp_path, SCOPE)
    assert [t.get_text() for t in drawn.fig.axes[0].get_xticklabels()] == ["a", "b2", "b10"]
    assert drawn.series[0].xs == ["a", "b2", "b10"] and drawn.panels == ["num_steps=2", "num_steps=4"]


def test_values_spanning_more_than_a_factor_50_use_a_log_axis(tmp_path):
    _grid(tmp_path, steps=(2,), sizes=(0.1, 1.0, 10.0, 100.0))
    drawn = _figure(tmp_path, SIZE)
    assert drawn.fig.axes[0].get_xscale() == "log"
    assert [t.get_text() for t in drawn.fig.axes[0].get_xticklabels()] == ["0.1", "1", "10", "100"]


def test_reports_redraw_the_same_bytes(tmp_path):
    _grid(tmp_path / "runs", steps=(1, 2, 3), sizes=(10.0, 30.0))
    first = build_report([tmp_path / "runs"], out=tmp_path / "a")
    build_report([tmp_path / "runs"], out=tmp_path / "b")
    for png in first["plots"]:
        name = Path(png).name
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "report.tex").read_bytes() == (tmp_path / "b" / "report.tex").read_bytes()


@pytest.mark.timeout(120)
def test_committed_findings_runs_show_the_released_gradient_above_the_exact_one(tmp_path):
    runs = tmp_path / "cos_step_size_x_steps"
    shutil.copytree(ROOT / "findings/runs/cos_step_size_x_steps", runs)
    collected = collect_runs([runs])
    drawn = figure_against(collected, varying_keys(collected), STEPS)
    assert drawn.panels == ["step_size=10", "step_size=30"]
    released = next(s for s in drawn.series if s.panel == "step_size=10" and s.family == "released")
    exact = next(s for s in drawn.series if s.panel == "step_size=10" and s.family == "exact")
    assert released.xs == exact.xs == [1, 2, 3, 4, 9, 10]
    assert released.accs[0] == pytest.approx(0.08) and exact.accs[0] == 0.0
    caption = drawn.caption.get_text().replace("\n", " ")
    assert "Linf 4/255, 20 it. x 5 restarts, released gradient" in caption and "exact gradient" in caption
    assert "ViT-C10-S4-32px" in drawn.title.get_text() and "100 images" in drawn.title.get_text()

    summary = build_report([runs], out=tmp_path / "report")
    assert sorted(Path(p).name for p in summary["plots"]) == ["acc_vs_purifier_clipure_cos_num_steps.png",
                                                               "acc_vs_purifier_clipure_cos_step_size.png"]
    md = (tmp_path / "report" / "report.md").read_text().splitlines()
    assert "| flags | clean ms/sample (steady state: first batch excluded) |" in md[0]
    assert "| nondifferentiable_without_bpda@purifier |" in md[2]
    assert md[2].endswith("* |") and any(line.startswith("* mean over every batch, warm-up included") for line in md)
