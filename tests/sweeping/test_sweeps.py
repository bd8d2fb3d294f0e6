"""Sweep files: every parameter is a valid config key with valid values; a tiny sweep runs offline end to end,
resumes, and turns into a report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from clipure_lit.config.loader import load_config
from clipure_lit.errors import ConfigError
from clipure_lit.sweeping.plan import command_args, expand, load_sweep

from conftest import PROJECT_ROOT, needs_shared_cifar

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

SWEEP_FILES = sorted((PROJECT_ROOT / "sweeps").glob("*.yaml"))


def test_the_required_sweeps_ship():
    names = {p.stem for p in SWEEP_FILES}
    assert {"cos_step_size_x_steps", "blank_x_class_templates", "grad_mode_x_attack", "epsilon", "diff_timestep_x_noise",
            "purifier_comparison"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_planned_configuration_validates(path):
    spec = load_sweep(path)
    assert spec.program == "eval.py"
    assert "${args_no_hyphens}" in spec.command
    plan = expand(spec, count=6)
    assert plan
    for params in plan:
        argv = command_args(spec, params, python="python")
        load_config(argv[2:])  # drop interpreter and program; raises ConfigError on any bad key or value


def test_cos_sweep_covers_odd_even_released_and_small_steps():
    plan = expand(load_sweep(PROJECT_ROOT / "sweeps" / "cos_step_size_x_steps.yaml"))
    steps = {p["purifier.clipure_cos.num_steps"] for p in plan}
    sizes = {p["purifier.clipure_cos.step_size"] for p in plan}
    assert {9, 10, 11} <= steps and 30.0 in sizes and min(sizes) <= 1.0
    assert len(plan) == len(steps) * len(sizes)  # a full grid


def test_random_plan_is_seeded():
    spec = load_sweep(PROJECT_ROOT / "sweeps" / "cos_random_search.yaml")
    assert expand(spec, count=4, seed=1) == expand(spec, count=4, seed=1)
    assert expand(spec, count=4, seed=1) != expand(spec, count=4, seed=2)
    assert all(isinstance(p["purifier.clipure_cos.step_size"], float) for p in expand(spec, count=4))


def test_bad_sweep_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bayes.yaml"
    bad.write_text("program: eval.py\nmethod: bayes\nparameters: {seed: {values: [1]}}\n")
    with pytest.raises(ConfigError, match="bayes"):
        load_sweep(bad)
    missing = tmp_path / "nothing.yaml"
    missing.write_text("method: grid\n")
    with pytest.raises(ConfigError, match="program"):
        load_sweep(missing)


def _tiny_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(
        "name: tiny_sweep\nprogram: eval.py\nmethod: grid\nparameters:\n"
        "  clip.init_seed: {values: [0, 1]}\n  data.num_samples: {values: [6, 8]}\n"
        "command:\n  - ${env}\n  - ${interpreter}\n  - ${program}\n  - experiment=tiny\n  - ${args_no_hyphens}\n"
    )
    return sweep


@needs_shared_cifar
def test_tiny_sweep_runs_offline_resumes_and_reports(tmp_path):
    import report as report_script
    import sweep as sweep_script

    out = tmp_path / "out"
    extra = ["logger=wandb", f"prompts.cache_dir={tmp_path / 'text'}", "trainer.enable_progress_bar=false"]
    state = sweep_script.main([str(_tiny_sweep(tmp_path)), "--out", str(out), "--parallel", "2", *extra])
    assert sorted(state) == ["run-0000", "run-0001", "run-0002", "run-0003"]
    assert all(v["status"] == "finished" for v in state.values()), state
    for run in state:
        results = json.loads((out / run / "results.json").read_text())
        assert results["num_samples"] == state[run]["params"]["data.num_samples"]
        assert list((out / run / "wandb").glob("offline-run-*"))  # grouped offline W&B runs, ready for `wandb sync`
    # Resume: nothing left to do, nothing rerun.
    stamp = (out / "run-0000" / "results.json").stat().st_mtime_ns
    again = sweep_script.main([str(_tiny_sweep(tmp_path)), "--out", str(out), *extra])
    assert (out / "run-0000" / "results.json").stat().st_mtime_ns == stamp and len(again) == 4
    # A different sweep into the same folder is refused.
    with pytest.raises(SystemExit):
        sweep_script.main([str(PROJECT_ROOT / "sweeps" / "epsilon.yaml"), "--out", str(out)])
    summary = report_script.main([str(out)])
    assert summary["runs"] == 4 and set(summary["varying_keys"]) == {"clip.init_seed", "data.num_samples"}
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert len(rows) == 4 and {"clean", "clean_ci_low", "clip.init_seed"} <= set(rows[0])
    paired = list(csv.DictReader(open(out / "paired.csv")))
    assert len(paired) == 3 and all(0.0 <= float(r["mcnemar_p"]) <= 1.0 for r in paired)


def test_mcnemar_exact_values():
    from clipure_lit.utils.mcnemar import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert abs(mcnemar_exact(0, 10) - 2 / 1024) < 1e-12  # 2 * 0.5^10
    assert abs(mcnemar_exact(1, 9) - 2 * 11 / 1024) < 1e-12
