"""A sweep file is checked against what its runs would do before any run starts: the swept values must reach
eval.py (W&B's command macros), the parameters must be forms W&B can draw and a grid can enumerate, and the metric
must be one every run logs. Each refusal goes through ``sweep.py`` as one paragraph naming the file and the fix,
with exit status 2 and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import sweep as sweep_script
from clipure_lit.config.loader import load_config
from clipure_lit.errors import ConfigError
from clipure_lit.sweeping.plan import (DISTRIBUTIONS, GRID_DISTRIBUTIONS, MACROS, READABLE_ARG_MACROS,
                                       UNREADABLE_ARG_MACROS, SweepSpec, expand, load_sweep, metric_names, program_args,
                                       schema_violations)

PROGRAM = ["${env}", "${interpreter}", "${program}"]


def _sweep(tmp_path: Path, **changes) -> Path:
    """A grid over ``clip.init_seed`` of tiny runs (no attack) with ``changes`` to its top-level keys (None: drop the
    key), written to ``<tmp_path>/sweep.yaml``."""
    raw = {"program": "eval.py", "method": "grid", "metric": {"name": "test/clean_acc", "goal": "maximize"},
           "parameters": {"clip.init_seed": {"values": [0, 1]}},
           "command": PROGRAM + ["experiment=tiny", "${args_no_hyphens}"]}
    raw.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}, sort_keys=False))
    return path


def _refused(capsys, path: Path, *argv: str) -> str:
    """sweep.py's message for ``path``: exit status 2, one paragraph, no traceback, the file named, a fix given."""
    with pytest.raises(SystemExit) as info:
        sweep_script.main([str(path), "--out", str(path.parent / "out"), "--dry-run", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and "Fix" in err, err
    assert not (path.parent / "out").exists()
    return err


def _dry_run(capsys, path: Path, *argv: str) -> list[str]:
    """sweep.py --dry-run's lines for ``path`` (it must be accepted)."""
    sweep_script.main([str(path), "--out", str(path.parent / "out"), "--dry-run", *argv])
    return capsys.readouterr().out.strip().splitlines()


# ------------------------------------------------------------------------------------------------ the command

def test_a_command_without_the_swept_values_is_refused(tmp_path, capsys):
    err = _refused(capsys, _sweep(tmp_path, command=PROGRAM + ["experiment=tiny", "attack=aa_clipure"]))
    assert "clip.init_seed" in err and "identical runs" in err and "${args_no_hyphens}" in err


def test_a_sweep_without_command_is_refused_because_w_and_b_would_pass_dashed_arguments(tmp_path, capsys):
    err = _refused(capsys, _sweep(tmp_path, command=None))
    assert "${args}" in err and "--key=value" in err and "${args_no_hyphens}" in err


def test_eval_py_reads_plain_and_plus_prefixed_overrides_but_not_dashed_ones():
    """What the macro rules rest on: eval.py's loader takes key=value, +key=value and ++key=value, not --key=value."""
    for token in ("clip.init_seed=5", "+clip.init_seed=5", "++clip.init_seed=5"):
        assert load_config(["experiment=tiny", token]).clip.init_seed == 5
    with pytest.raises(ConfigError, match="--clip"):
        load_config(["experiment=tiny", "--clip.init_seed=5"])


def _value(cfg, key: str):
    """The composed value of ``key`` as plain Python."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def test_the_macros_are_the_w_and_b_agents_and_its_values_compose_like_ours(tmp_path):
    """The macro lists against the agent's own code: every macro it substitutes is known here, and the arguments it
    builds for the accepted ones compose to the config sweep.py composes; the null it writes as the text 'None'."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    params = {"attack.run": ["aa_clipure", "square"], "attack.eps": 0.5, "attack.checks": False,
              "prompts.class_templates": "cifar10"}
    agent = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    assert {f"${{{name}}}" for name in agent} | {"${env}", "${interpreter}", "${program}", "${args_json_file}"} == set(MACROS)
    for macro in READABLE_ARG_MACROS:
        spec = load_sweep(_sweep(tmp_path, parameters={k: {"value": v} for k, v in params.items()},
                                 command=PROGRAM + ["experiment=tiny", macro]))
        ours = load_config(program_args(spec, params))
        theirs = load_config(["experiment=tiny", *agent[macro[2:-1]]])
        assert {k: _value(ours, k) for k in params} == {k: _value(theirs, k) for k in params} == params
    assert create_sweep_command_args({"args": {"seed": {"value": None}}})["args_no_hyphens"] == ["seed=None"]


def test_the_engine_refusing_a_hand_made_spec_is_a_config_error():
    spec = SweepSpec(name="hand", program="eval.py", method="grid",
                     parameters={"clip.init_seed": {"min": 0.5, "max": 1.5}})
    with pytest.raises(ConfigError, match="Sweep 'hand': W&B's sweep engine cannot plan"):
        expand(spec)


@pytest.mark.parametrize("macro", sorted(READABLE_ARG_MACROS))
def test_macros_that_give_key_value_arguments_reach_the_runs(tmp_path, capsys, macro):
    path = _sweep(tmp_path, command=PROGRAM + ["experiment=tiny", macro])
    lines = _dry_run(capsys, path)
    prefix = READABLE_ARG_MACROS[macro]
    assert [line.split()[:2] for line in lines] == [["run-0000", "[run]"], ["run-0001", "[run]"]]
    assert f" {prefix}clip.init_seed=1 " in lines[1]
    spec = load_sweep(path)
    assert load_config(program_args(spec, expand(spec)[1])).clip.init_seed == 1


@pytest.mark.parametrize("macro", sorted(UNREADABLE_ARG_MACROS))
def test_macros_whose_form_eval_py_does_not_read_are_refused_with_the_fix(tmp_path, capsys, macro):
    err = _refused(capsys, _sweep(tmp_path, command=PROGRAM + ["experiment=tiny", macro]))
    assert macro in err and "replace" in err and "${args_no_hyphens}" in err and "clip.init_seed" in err


@pytest.mark.parametrize("command, expected", [
    (PROGRAM + ["${arg_no_hyphens}"], "unknown macro ${arg_no_hyphens}"),  # W&B's agent would drop it silently
    (PROGRAM + ["${args_no_hyphens}", "${envvar:lower}"], "unknown macro ${envvar:lower}"),  # not the agent's pattern
    (["${env}", "${interpreter}", "${args_no_hyphens}", "${program}"], "before ${program}"),
    (PROGRAM + ["${interpreter}", "${args_no_hyphens}"], "after ${program}"),
    (PROGRAM + ["${args_no_hyphens}", "${args_append_hydra}"], "2 times"),
    (["${env}", "${interpreter}", "${args_no_hyphens}"], "0 times"),
    (["${env}", "${interpreter}", "train.py", "${args_no_hyphens}"], "0 times"),
    (PROGRAM + ["eval.py", "${args_no_hyphens}"], "2 times"),
    ("python eval.py", "list of words"),
], ids=["unknown", "envvar-lowercase", "values-before-program", "interpreter-after-program", "values-twice",
        "no-program", "another-program", "program-twice", "not-a-list"])
def test_malformed_commands_are_refused(tmp_path, capsys, command, expected):
    assert expected in _refused(capsys, _sweep(tmp_path, command=command))


def test_unknown_macro_names_the_closest_one(tmp_path, capsys):
    assert "Did you mean '${args_no_hyphens}'" in _refused(capsys, _sweep(tmp_path, command=PROGRAM + ["${args_no_hyphen}"]))


@pytest.mark.parametrize("swept, token", [
    ("clip.init_seed", "clip.init_seed=3"),
    ("clip.init_seed", "+clip.init_seed=3"),
    ("purifier.clipure_cos.num_steps", "purifier.clipure_cos={num_steps: 3}"),  # a section holding the swept key
], ids=["key", "plus-key", "section"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_command_that_hard_codes_a_swept_key_is_refused(tmp_path, capsys, swept, token, where):
    words = [token, "${args_no_hyphens}"] if where == "before" else ["${args_no_hyphens}", token]
    path = _sweep(tmp_path, parameters={swept: {"values": [1, 2]}},
                  command=PROGRAM + ["experiment=tiny", "purifier=clipure_cos", *words])
    err = _refused(capsys, path)
    assert f"'{token}'" in err and f"'{swept}'" in err and "remove" in err


def test_a_command_that_sets_the_run_folder_is_refused(tmp_path, capsys):
    err = _refused(capsys, _sweep(tmp_path, command=PROGRAM + ["experiment=tiny", "run_dir=/tmp/x", "${args_no_hyphens}"]))
    assert "run_dir" in err


def test_a_group_choice_next_to_a_swept_key_below_it_is_accepted_and_envvar_is_expanded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SWEEP_TEST_SAMPLES", "5")
    path = _sweep(tmp_path, parameters={"purifier.clipure_cos.step_size": {"values": [1.0, 30.0]}},
                  command=PROGRAM + ["experiment=tiny", "purifier=clipure_cos", "purifier.clipure_cos.norm_scope=sample",
                                     "data.num_samples=${envvar:SWEEP_TEST_SAMPLES}", "${args_no_hyphens}"])
    lines = _dry_run(capsys, path)
    assert len(lines) == 2 and all("data.num_samples=5 purifier.clipure_cos.step_size=" in line for line in lines)


def test_words_before_the_program_are_named_as_left_to_the_agent(tmp_path, capsys, caplog):
    path = _sweep(tmp_path, command=["${env}", "OMP_NUM_THREADS=1", "${interpreter}", "${program}", "experiment=tiny",
                                     "${args_no_hyphens}"])
    with caplog.at_level("WARNING"):
        assert len(_dry_run(capsys, path)) == 2
    assert "OMP_NUM_THREADS=1" in caplog.text and "wandb agent" in caplog.text


def test_unquoted_macros_in_a_flow_list_get_a_quoting_hint(tmp_path, capsys):
    path = tmp_path / "flow.yaml"
    path.write_text("program: eval.py\nmethod: grid\nparameters: {seed: {values: [0]}}\n"
                    "command: [${env}, ${interpreter}, ${program}, ${args_no_hyphens}]\n")
    with pytest.raises(SystemExit) as info:
        sweep_script.main([str(path), "--dry-run", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "must be quoted" in err and "Traceback" not in err


def test_a_program_other_than_eval_py_is_refused(tmp_path, capsys):
    err = _refused(capsys, _sweep(tmp_path, program="train.py"))
    assert "train.py" in err and "wandb agent" in err


# ------------------------------------------------------------------------------------------------- the metric

def test_metric_names_are_what_an_evaluation_logs(tmp_path):
    """The names the metric check accepts against the metrics a real test loop logs, with and without attacks: the
    final ``test/`` numbers it returns and the ``live/`` numbers its logger (here CSV) records after every batch."""
    import csv

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import CSVLogger
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from clipure_lit.attacks.adapters import classifier_from_model
    from clipure_lit.attacks.presets import attack_config, resolve_attacks
    from clipure_lit.callbacks.data_timing import DataWaitTimer
    from clipure_lit.callbacks.robust_eval import RobustEvalCallback
    from clipure_lit.callbacks.running import RunningAccuracy
    from clipure_lit.models.lit_module import ZeroShotLitModule

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(-1)
    loader = DataLoader(TensorDataset(x, y, torch.arange(8)), batch_size=4)
    for attacks in ([], ["apgd_ce", "square"]):
        callbacks = [RunningAccuracy(log_live=True), DataWaitTimer()]  # the order eval_callbacks builds
        if attacks:
            specs = resolve_attacks(attack_config(run=attacks, n_iter=2, n_queries=5, checks=False))
            callbacks.insert(0, RobustEvalCallback(specs, checks=False))
        logger = CSVLogger(tmp_path, name=f"attacks_{len(attacks)}")
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=logger, enable_model_summary=False,
                             enable_checkpointing=False, enable_progress_bar=False, inference_mode=False,
                             default_root_dir=str(tmp_path), callbacks=callbacks)
        (returned,) = trainer.test(ZeroShotLitModule(classifier_from_model(net)), loader, verbose=False)
        with open(f"{logger.log_dir}/metrics.csv", newline="") as fh:
            live = [n for n in csv.DictReader(fh).fieldnames if n.startswith("live/")]
        assert live, "no live numbers in metrics.csv"
        logged = set(returned) | set(live)
        names = metric_names(attacks)
        assert set(names) <= set(logged), sorted(set(names) - set(logged))
        assert ("test/robust_acc/worst_case" in names) == bool(attacks)
        assert all(n in names for n in logged if not n.startswith(("test/flags/", "test/checks/",
                                                                   "test/time_per_sample/checks")))


@pytest.mark.parametrize("name, expected", [
    ("test/robust_acc/worst_cas", "Did you mean 'test/robust_acc/worst_case'"),  # a robust metric of no attack
    ("test/robust_accc/worst_case", "Did you mean 'test/robust_acc/worst_case'"),
    ("test/clean_accuracy", "Did you mean 'test/clean_acc'"),
    ("robust_acc", "not a name eval.py logs"),
    ("test/flags/weak_grad/aa_clipure", "only when a masking check"),
])
def test_a_metric_eval_py_does_not_log_is_refused_with_the_closest_name(tmp_path, capsys, name, expected):
    path = _sweep(tmp_path, metric={"name": name, "goal": "maximize"},
                  command=PROGRAM + ["experiment=tiny", "attack=aa_clipure", "${args_no_hyphens}"])
    err = _refused(capsys, path)
    assert expected in err and name in err


def test_a_robust_metric_of_runs_without_attacks_is_refused(tmp_path, capsys):
    err = _refused(capsys, _sweep(tmp_path, metric={"name": "test/robust_acc/worst_case", "goal": "maximize"}))
    assert "run-0000" in err and "attack.run is []" in err and "attack=aa_clipure" in err and "test/clean_acc" in err


def test_a_metric_only_some_runs_log_is_refused(tmp_path, capsys):
    path = _sweep(tmp_path, metric={"name": "test/robust_acc/square", "goal": "minimize"},
                  parameters={"attack.run": {"values": [["square"], ["aa_clipure"]]}})
    err = _refused(capsys, path)
    assert "run-0001" in err and "['aa_clipure']" in err and "test/robust_acc/worst_case" in err


def test_a_metric_every_run_logs_is_accepted(tmp_path, capsys):
    path = _sweep(tmp_path, metric={"name": "test/robust_acc/aa_clipure", "goal": "minimize"},
                  command=PROGRAM + ["experiment=tiny", "attack=aa_clipure", "${args_no_hyphens}"])
    assert len(_dry_run(capsys, path)) == 2


@pytest.mark.parametrize("metric, expected", [
    ({"name": "test/clean_acc"}, "no goal, and W&B's default is minimize"),
    ({"name": "test/clean_acc", "goal": "maximise"}, "Did you mean 'maximize'"),
    ({"goal": "maximize"}, "a name and a goal"),
])
def test_a_metric_without_a_valid_goal_is_refused(tmp_path, capsys, metric, expected):
    assert expected in _refused(capsys, _sweep(tmp_path, metric=metric))


# --------------------------------------------------------------------------------------------- the parameters

MALFORMED = {
    "grid-min-max": ("grid", {"min": 0.1, "max": 1.0}, "grid enumerates values"),
    "empty-values": ("grid", {"values": []}, "non-empty list"),
    "values-not-list": ("grid", {"values": 3}, "non-empty list"),
    "unknown-distribution": ("random", {"distribution": "uniformm", "min": 0.0, "max": 1.0}, "Did you mean 'uniform'"),
    "deprecated-distribution": ("random", {"distribution": "log_uniform", "min": 0, "max": 1}, "log_uniform_values"),
    "min-above-max": ("random", {"distribution": "uniform", "min": 2.0, "max": 1.0}, "not below max"),
    "min-equals-max": ("grid", {"min": 3, "max": 3}, "not below max"),
    "q-without-q-distribution": ("random", {"distribution": "uniform", "min": 0.0, "max": 1.0, "q": 0.1}, "q_uniform"),
    "q-not-positive": ("random", {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0}, "q: 0"),
    "value-and-values": ("grid", {"value": 1, "values": [1, 2]}, "both value and values"),
    "nested": ("grid", {"parameters": {"init_seed": {"values": [0, 1]}}}, "'clip.init_seed.init_seed: {values"),
    "not-a-mapping": ("grid", 3, "not a mapping"),
    "unknown-field": ("grid", {"valus": [0, 1]}, "Did you mean 'values'"),
    "no-form": ("grid", {"distribution": None}, "distribution"),
    "min-without-max": ("random", {"distribution": "uniform", "min": 0.0}, "max is missing"),
    "field-of-another-distribution": ("random", {"distribution": "normal", "mu": 0.0, "min": 1.0}, "not ['min']"),
    "int-uniform-floats": ("random", {"distribution": "int_uniform", "min": 0.5, "max": 3.0}, "needs integers"),
    "log-values-not-positive": ("random", {"distribution": "log_uniform_values", "min": 0.0, "max": 1.0}, "positive"),
    "negative-sigma": ("random", {"distribution": "normal", "sigma": -1.0}, "sigma: -1.0"),
    "min-not-a-number": ("random", {"distribution": "uniform", "min": "a", "max": 1.0}, "not a number"),
    "probabilities-not-summing-to-1": ("random", {"values": [0, 1], "probabilities": [0.3, 0.3]}, "summing to 1"),
    "probabilities-without-values": ("random", {"distribution": "categorical_w_probabilities", "probabilities": [1.0]},
                                     "values is missing"),
    "probabilities-in-a-grid": ("grid", {"values": [0, 1], "probabilities": [0.5, 0.5]}, "grid enumerates values"),
    "null-value": ("grid", {"values": [0, None]}, "'None'"),
    "null-in-a-list-value": ("grid", {"value": [1, None]}, "'None'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_parameters_are_refused_with_the_parameter_and_the_fix(tmp_path, capsys, case):
    method, entry, expected = MALFORMED[case]
    err = _refused(capsys, _sweep(tmp_path, method=method, parameters={"clip.init_seed": entry}), "--count", "2")
    assert "parameter 'clip.init_seed'" in err and expected in err


def _form(distribution: str) -> dict:
    """A well-formed parameter of ``distribution``, with every field it takes."""
    fields = {"value": 1, "values": [1, 2], "probabilities": [0.25, 0.75], "min": 1, "max": 4, "mu": 0.0, "sigma": 1.0,
              "q": 1, "a": 2.0, "b": 3.0}
    required, optional = DISTRIBUTIONS[distribution]
    if distribution not in ("int_uniform", "q_uniform"):
        fields.update(min=0.5, max=4.0)
    return {"distribution": distribution, **{k: fields[k] for k in required | optional}}


@pytest.mark.parametrize("distribution", list(DISTRIBUTIONS))
def test_every_w_and_b_distribution_is_accepted_and_planned(tmp_path, distribution):
    """The checks are not stricter than W&B: each distribution (each with all its fields) passes W&B's own schema,
    load_sweep and the engine; the grid-able ones in a grid too."""
    for method in ("random", "grid") if distribution in GRID_DISTRIBUTIONS else ("random",):
        path = _sweep(tmp_path, method=method, parameters={"clip.init_seed": _form(distribution)})
        assert schema_violations(yaml.safe_load(path.read_text())) == []
        spec = load_sweep(path)
        plan = expand(spec, count=3) if method == "random" else expand(spec)
        assert plan and all("clip.init_seed" in p for p in plan)


def test_inferred_forms_follow_w_and_b(tmp_path):
    """Without distribution: value is a constant, values categorical, integer min/max every integer in a grid."""
    path = _sweep(tmp_path, parameters={"clip.init_seed": {"min": 1, "max": 3}, "data.num_samples": {"value": 4}})
    assert expand(load_sweep(path)) == [{"clip.init_seed": s, "data.num_samples": 4} for s in (1, 2, 3)]


def test_a_parameter_that_is_not_a_config_key_is_refused_by_eval_py_rules(tmp_path, capsys):
    """Each run's config is composed as eval.py composes it before anything starts: eval.py's own paragraph."""
    path = _sweep(tmp_path, parameters={"data.num_sample": {"values": [4, 6]}})
    with pytest.raises(SystemExit) as info:
        sweep_script.main([str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "Unknown config key 'data.num_sample'" in err and "Did you mean 'data.num_samples'" in err


@pytest.mark.parametrize("changes, argv, expected", [
    ({"method": "random"}, [], "--count"),
    ({"method": "bayes"}, [], "bayes"),
    ({"method": "grdi"}, [], "Did you mean 'grid'"),
    ({"parameters": {}}, [], "parameters must be a mapping"),
    ({"run_cap": 5}, [], "run_cap"),
    ({"colour": "blue"}, [], "colour"),  # anything else W&B's schema refuses, in the same form
], ids=["random-without-count", "bayes", "method-typo", "no-parameters", "run-cap", "unknown-key"])
def test_other_sweep_level_problems_are_one_paragraph(tmp_path, capsys, changes, argv, expected):
    assert expected in _refused(capsys, _sweep(tmp_path, **changes), *argv)


# ---------------------------------------------------------------------------------------------- early_terminate
LIVE_CLEAN = {"name": "live/clean_acc", "goal": "maximize"}  # logged after every batch: what hyperband compares


@pytest.mark.parametrize("metric, fix", [
    ({"name": "test/clean_acc", "goal": "maximize"}, "live/clean_acc"),
    ({"name": "test/robust_acc/worst_case", "goal": "maximize"}, "live/robust_acc/worst_case"),
    ({"name": "test/num_samples", "goal": "minimize"}, "live/robust_acc/worst_case"),
])
def test_early_terminate_on_a_metric_logged_only_at_the_end_is_refused(tmp_path, capsys, metric, fix):
    err = _refused(capsys, _sweep(tmp_path, early_terminate={"type": "hyperband", "min_iter": 2}, metric=metric))
    assert "logs only once" in err and f"Fix: metric: {{name: {fix}" in err


def test_live_metrics_are_accepted_and_checked_per_run(tmp_path, capsys):
    """live/robust_acc/<attack> is checked against each run's attacks, as test/ metrics are."""
    good = _sweep(tmp_path, metric={"name": "live/robust_acc/worst_case", "goal": "maximize"},
                  command=PROGRAM + ["experiment=tiny", "attack=aa_clipure", "${args_no_hyphens}"])
    assert len(_dry_run(capsys, good)) == 2
    err = _refused(capsys, _sweep(tmp_path, metric={"name": "live/robust_acc/square", "goal": "maximize"},
                                  command=PROGRAM + ["experiment=tiny", "attack=aa_clipure", "${args_no_hyphens}"]))
    assert "would not log metric live/robust_acc/square" in err and "live/robust_acc/aa_clipure" in err


@pytest.mark.parametrize("stop, expected", [
    ({"type": "hyperband"}, "neither min_iter nor max_iter with s"),
    ({"type": "hyperbandd", "min_iter": 3}, "W&B's only type is hyperband"),
    ({"type": "hyperband", "min_iter": 3, "eta": 1}, "eta 1"),
    ({"type": "hyperband", "min_iter": 0}, "min_iter 0"),
    ({"type": "hyperband", "min_iter": 2.5}, "not an integer"),
    ({"type": "hyperband", "min_iter": 3, "strict": True}, "unknown field 'strict'"),
    ("hyperband", "must be a mapping"),
])
def test_malformed_early_terminate_is_refused(tmp_path, capsys, stop, expected):
    err = _refused(capsys, _sweep(tmp_path, early_terminate=stop, metric=LIVE_CLEAN))
    assert "early_terminate" in err and expected in err


@pytest.mark.parametrize("stop", [{"type": "hyperband", "min_iter": 3}, {"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3}])
def test_hyperband_is_accepted_and_named_as_not_applied_by_sweep_py(tmp_path, capsys, caplog, stop):
    path = _sweep(tmp_path, early_terminate=stop, metric=LIVE_CLEAN)
    assert schema_violations(yaml.safe_load(path.read_text())) == []
    with caplog.at_level("WARNING"):
        assert len(_dry_run(capsys, path)) == 2
    assert "early_terminate" in caplog.text and "to the end" in caplog.text
