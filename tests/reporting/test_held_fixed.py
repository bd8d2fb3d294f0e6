"""report.md names the keys that decide a result and were held fixed across the compared runs (batch sizes, radius,
iterations, model, purifier), not only the keys that vary: a table of step sizes at batch 2 and one at batch 32 must
not read alike."""

from __future__ import annotations

from clipure_lit.reporting.ablation import build_report, format_report, held_fixed

from scripts.make_gallery import synthetic_results, write_run


def _run(folder, step_size: float, batch: int, attack_batch=None):
    config = {"clip": {"arch": "ViT-B-32", "pretrained": "openai"}, "data": {"batch_size": batch, "num_samples": 40},
              "attack": {"eps": 4.0, "n_iter": 100, "batch_size": attack_batch, "run": ["aa"]},
              "purifier": {"latent": "clipure_cos", "pixel": "identity",
                           "clipure_cos": {"step_size": step_size, "norm_scope": "batch", "batch_size": 2}}}
    table, summary = synthetic_results(40, 0.7, {"aa": 0.2}, seed=0, attack_seed=int(step_size))
    write_run(folder, config, table, summary)


def test_report_lists_the_keys_held_fixed_next_to_the_varying_ones(tmp_path):
    for k, step in enumerate((10.0, 30.0)):
        _run(tmp_path / "sweep" / f"run-{k:04d}", step, batch=2)
    summary = build_report([tmp_path / "sweep"])
    assert summary["varying_keys"] == ["purifier.clipure_cos.step_size"]
    assert {"data.batch_size": 2, "attack.batch_size": None, "attack.eps": 4.0, "attack.n_iter": 100, "clip.arch": "ViT-B-32",
            "clip.pretrained": "openai", "purifier.latent": "clipure_cos", "purifier.clipure_cos.norm_scope": "batch",
            "purifier.clipure_cos.batch_size": 2}.items() <= summary["held_fixed"].items()
    text = (tmp_path / "sweep" / "report.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("Held fixed across the 2 run(s):"))
    for shown in ("`data.batch_size=2`", "`attack.batch_size=null`", "`attack.eps=4.0`", "`attack.n_iter=100`",
                  "`clip.arch=ViT-B-32`", "`clip.pretrained=openai`", "`purifier.latent=clipure_cos`", "`attack.run=[aa]`"):
        assert shown in line, shown
    assert "step_size" not in line and line in format_report(summary)


def test_a_key_that_differs_is_not_held_fixed(tmp_path):
    _run(tmp_path / "a" / "run-0000", 30.0, batch=2)
    _run(tmp_path / "b" / "run-0000", 30.0, batch=32, attack_batch=1)
    summary = build_report([tmp_path / "a", tmp_path / "b"], out=tmp_path / "report")
    assert {"data.batch_size", "attack.batch_size"} <= set(summary["varying_keys"])
    assert "data.batch_size" not in summary["held_fixed"] and "attack.batch_size" not in summary["held_fixed"]
    assert summary["held_fixed"]["attack.eps"] == 4.0


def test_keys_some_runs_lack_are_not_listed():
    from clipure_lit.reporting.ablation import Run

    runs = [Run(path=None, results={}, config={"attack.eps": 4.0, "data.batch_size": 2}),
            Run(path=None, results={}, config={"attack.eps": 4.0})]
    assert held_fixed(runs) == {"attack.eps": 4.0}
