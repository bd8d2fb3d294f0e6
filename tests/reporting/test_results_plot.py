"""A run's ``results.png`` says what ran and draws what its legend says: the title (model, defence, images) and
the caption (each attack's radius, iterations and gradient) fit the figure; bars take their gradient family's look;
the legend lists exactly the kinds of bar drawn; the bytes repeat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipure_lit.reporting.plot_style import fits_width
from clipure_lit.reporting.plots import plot_results, results_figure

from scripts.make_gallery import MODEL, describe_attacks, synthetic_results

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {**MODEL, "purifier": {"latent": "clipure_cos", "pixel": "identity", "clipure_cos": {"grad_mode": "as_released"}}}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _results(attacks: dict[str, float], purifier_mode: str | None = "as_released") -> dict:
    _, summary = synthetic_results(100, 0.74, attacks, seed=0)
    return describe_attacks(summary, purifier_mode=purifier_mode)


def test_title_and_caption_name_the_configuration_and_fit_the_figure():
    results = _results({"aa_clipure@purifier": 0.08, "aa_clipure@full": 0.0, "aa_clipure@bpda_identity": 0.01,
                        "transfer_clip": 0.02, "square": 0.3})
    drawn = results_figure(results, CONFIG)
    title = drawn.title.get_text().replace("\n", " ")
    assert title == "ViT-C10-S4-32px (vit_c10_s4_clip.safetensors), clipure_cos (as_released), 100 images"
    caption = drawn.caption.get_text().replace("\n", " ")
    for words in ("aa_clipure@purifier: APGD-CE+APGD-T, Linf 4/255, 20 it. x 5 restarts, released gradient",
                  "aa_clipure@bpda_identity: APGD-CE+APGD-T, Linf 4/255, 20 it. x 5 restarts, BPDA",
                  "transfer_clip: APGD-CE+APGD-T, Linf 4/255, 20 it. x 5 restarts, transfer from undefended",
                  "square: Square, Linf 4/255, 500 queries, black-box", "95% Wilson intervals"):
        assert words in caption, words
    assert "red" not in title + caption
    assert fits_width(drawn.fig, drawn.title) and fits_width(drawn.fig, drawn.caption)


def test_a_long_title_is_wrapped_to_the_figure_width():
    results = _results({"aa_clipure@purifier": 0.1})
    config = {"clip": {"arch": "hf-hub:some-organisation/a-very-long-robust-clip-model-name-ViT-L-14-336px",
                       "pretrained": "/data/checkpoints/fine_tuned_with_a_long_recipe_name_epoch_0099.safetensors"},
              "purifier": CONFIG["purifier"]}
    drawn = results_figure(results, config)
    assert "\n" in drawn.title.get_text() and fits_width(drawn.fig, drawn.title)


def test_bars_follow_the_gradient_family_and_the_legend_lists_exactly_what_is_drawn():
    drawn = results_figure(_results({"aa_clipure@purifier": 0.08, "aa_clipure@full": 0.0}), CONFIG)
    assert [(name, kind) for name, kind, _ in drawn.bars] == [("clean", "clean"), ("aa_clipure@purifier", "released"),
                                                             ("aa_clipure@full", "exact"), ("worst_case", "worst_case")]
    assert drawn.legend_labels == ["clean", "released gradient", "exact gradient", "worst case (per sample)"]
    # On an undefended model the attack's own gradient is the exact one.
    drawn = results_figure(_results({"aa_clipure": 0.0}, purifier_mode=None), {**MODEL})
    assert [kind for _, kind, _ in drawn.bars] == ["clean", "exact", "worst_case"]
    assert drawn.legend_labels == ["clean", "exact gradient", "worst case (per sample)"]


def test_the_png_of_a_committed_run_repeats_byte_for_byte(tmp_path):
    folder = ROOT / "findings/runs/cos_step_size_x_steps/grid/run-0000"
    results = json.loads((folder / "results.json").read_text())
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
    drawn = results_figure(results, config)
    assert [(kind, acc) for _, kind, acc in drawn.bars] == [("clean", 0.1), ("released", 0.08), ("exact", 0.0),
                                                           ("worst_case", 0.0)]
    a = plot_results(results, tmp_path / "a.png", config)
    b = plot_results(results, tmp_path / "b.png", config)
    assert a.read_bytes() == b.read_bytes()
