"""A batch-coupled purifier (``norm_scope=batch``) runs at the batch size it declares, or its config is refused when
it is composed: another ``data.batch_size``, an ``attack.batch_size`` other than null or that size, and a partial last
batch (at composition from ``data.num_samples``, and once the data is set up from the number of images). Every shipped
sweep, experiment, suite and README example composes; ``batch_size=null`` is accepted and flagged."""

from __future__ import annotations

import json
import re
import shlex
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipure_lit.config.loader import list_choices, load_config
from clipure_lit.config.validate import validate_config
from clipure_lit.errors import ConfigError

from conftest import PROJECT_ROOT

COS = "purifier.clipure_cos"
NO_FILES = partial(validate_config, files=False)  # shipped configs name data and weights this machine may lack


def refusal(*argv: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(list(argv))
    message = str(info.value)
    assert "\n" not in message, "errors are one paragraph"
    return message


def assert_names_the_fixes(message: str, key: str, size: int) -> None:
    assert f"{key}.norm_scope=batch" in message and f"{key}.batch_size={size}" in message
    assert f"{key}.norm_scope=sample" in message and f"{key}.batch_size=null" in message


@pytest.mark.parametrize("argv, names", [
    (["data.batch_size=32"], "data.batch_size=32"),
    (["data.batch_size=8", "data.num_samples=8"], "data.batch_size=8"),  # the 8-image case: batch 8 is not batch 2
    (["data.batch_size=2", "attack.batch_size=1"], "attack.batch_size=1"),
    (["data.batch_size=2", "attack.batch_size=4"], "attack.batch_size=4"),
])
def test_another_data_or_attack_batch_size_is_refused_naming_both_keys_and_the_fixes(argv, names):
    message = refusal("purifier=clipure_cos", *argv)
    assert names in message and f"{COS}.batch_size=2" in message
    assert_names_the_fixes(message, COS, 2)
    fix = "data.batch_size=2" if names.startswith("data") else "attack.batch_size=null"
    assert f"Fix: set {fix}" in message


@pytest.mark.parametrize("argv, per_process, multiple", [
    (["data.num_samples=5"], "", 2),
    (["data.num_samples=6", "trainer=ddp_cpu"], "2 processes share as 3 each", 4),  # ceil(6 / 2) = 3 per process
])
def test_a_partial_last_batch_is_refused_with_a_sample_count_that_fits(argv, per_process, multiple):
    message = refusal("purifier=clipure_cos", "data.batch_size=2", *argv)
    assert "last batch would hold 1 image(s)" in message and per_process in message
    assert f"data.num_samples to a multiple of {multiple}" in message
    assert_names_the_fixes(message, COS, 2)


@pytest.mark.parametrize("argv", [
    ["data.batch_size=2", "data.num_samples=6"],
    ["data.batch_size=2", "attack.batch_size=2", "data.num_samples=8", "trainer=ddp_cpu"],
    ["data.batch_size=2", "data.num_samples=null"],  # the count is checked when the data is set up
    ["data.batch_size=32", f"{COS}.norm_scope=sample", "data.num_samples=5"],  # no coupling: any batch
    ["data.batch_size=32", f"{COS}.batch_size=null", "data.num_samples=5"],  # batch-dependent on purpose
])
def test_the_declared_batch_and_the_three_fixes_compose(argv):
    load_config(["purifier=clipure_cos", *argv])


@pytest.mark.parametrize("argv, key, size", [
    (["purifier=clipure_diff_cifar10_small"], "purifier.clipure_diff", 2),
    (["purifier=clipure_cos_plus_jpeg"], COS, 2),
    (["purifier=clipure_pixel", "purifier.clipure_pixel.norm_scope=batch", "purifier.clipure_pixel.batch_size=4"],
     "purifier.clipure_pixel", 4),
])
def test_every_batch_coupled_purifier_is_held_to_its_batch_size(argv, key, size):
    assert_names_the_fixes(refusal(*argv, "data.batch_size=3"), key, size)
    load_config([*argv, f"data.batch_size={size}", f"data.num_samples={4 * size}"])


# ------------------------------------------------------------------------------------------------ entry points
def test_eval_and_cfg_exit_2_with_one_paragraph_before_anything_is_built(tmp_path, capsys, monkeypatch):
    import eval as eval_script
    from clipure_lit import evaluation

    def built(*args, **kwargs):
        raise AssertionError("the run started although its config is refused")

    monkeypatch.setattr(evaluation, "run_eval", built)
    for extra in ([], ["--cfg"]):
        with pytest.raises(SystemExit) as info:
            eval_script.main(["purifier=clipure_cos", "data.batch_size=8", f"run_dir={tmp_path / 'run'}", *extra])
        captured = capsys.readouterr()
        assert info.value.code == 2 and captured.out == ""
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert "data.batch_size=8" in captured.err and f"{COS}.batch_size=2" in captured.err
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_a_partial_batch_known_only_from_the_data_is_refused_before_the_model(tmp_path, capsys, monkeypatch):
    import eval as eval_script
    from clipure_lit import evaluation

    def built(*args, **kwargs):
        raise AssertionError("the model was built before the number of images was checked")

    monkeypatch.setattr(evaluation, "build_classifier", built)
    ids = tmp_path / "ids.txt"
    ids.write_text("0\n1\n2\n3\n4\n")
    with pytest.raises(SystemExit) as info:
        eval_script.main(["purifier=clipure_cos", "data.batch_size=2", f"data.ids_file={ids}", "logger=none",
                          f"run_dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert f"5 images (listed in data.ids_file={ids})" in err and "multiple of 2" in err
    assert not (tmp_path / "run" / "results.json").exists()


# ------------------------------------------------------------------------------------------------ the flag
class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16))

    def encode_image(self, x):
        return F.normalize(self.net(x), dim=-1)


@pytest.mark.parametrize("batch_size, scope, says", [
    (None, "batch", "ClipureCos declares no batch size (purifier.<name>.batch_size=null)"),
    (2, "batch", "the run used the declared batch size 2"),
    (None, "sample", None),
])
def test_declared_batch_coupling_is_flagged_without_attacks(batch_size, scope, says):
    from clipure_lit.attacks.checks import declared_batch_dependence
    from clipure_lit.models.classifier import PurifiedZeroShotClassifier
    from clipure_lit.purifiers.clipure_cos import ClipureCos, ClipureCosCfg

    from clipure_lit.purifiers.step import NormScope

    latent = ClipureCos(torch.randn(16), ClipureCosCfg(batch_size=batch_size, norm_scope=NormScope(scope)))
    finding = declared_batch_dependence(PurifiedZeroShotClassifier(_Encoder(), nn.Linear(16, 10), latent=latent))
    assert finding.flag == "batch_dependent" and finding.raised == (says is not None)
    if says:
        assert says in finding.message and "norm_scope=sample" in finding.message


@pytest.mark.e2e
def test_batch_dependent_results_on_purpose_are_flagged_in_results_json(tmp_path):
    import eval as eval_script

    metrics = eval_script.main(["clip=tiny_random", "purifier=clipure_cos", f"{COS}.batch_size=null", f"{COS}.num_steps=2",
                                "data.num_samples=3", "data.batch_size=3", "logger=none", f"run_dir={tmp_path / 'run'}",
                                f"prompts.cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false"])
    assert metrics["flags"]["batch_dependent"] == 1.0 and "batch_size=null" in metrics["flag_messages"]["batch_dependent"]
    assert {"class": "ClipureCos", "batch_size": None}.items() <= metrics["purifiers"][1].items()
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["flags"]["batch_dependent"] == 1.0


# ------------------------------------------------------------------------------------------------ shipped files
def _sweep_runs(path, every: bool) -> list[list[str]]:
    """The arguments of each planned run of a shipped sweep (a random search: 8 draws). Unless ``every``, one run
    per combination of the values that decide batch coupling (the purifier, its norm scope and batch size, batch
    sizes, sample count), which is what this refusal depends on."""
    from clipure_lit.sweeping.plan import expand, load_sweep, program_args

    spec = load_sweep(path)
    plan = expand(spec, count=8) if spec.method == "random" else expand(spec)
    chosen, seen = [], set()
    for params in plan:
        decisive = tuple(sorted((k, repr(v)) for k, v in params.items()
                                if k in ("purifier", "data.num_samples") or k.endswith(("batch_size", "norm_scope"))))
        if every or decisive not in seen:
            seen.add(decisive)
            chosen.append(program_args(spec, params))
    return chosen


TOP_SWEEPS = sorted((PROJECT_ROOT / "sweeps").glob("*.yaml"))  # sweeps/findings/ is checked with its studies


@pytest.mark.parametrize("path", TOP_SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_composes(path):
    for argv in _sweep_runs(path, every=False):
        load_config(argv, validate=NO_FILES)


@pytest.mark.slow
@pytest.mark.parametrize("path", TOP_SWEEPS, ids=lambda p: p.name)
def test_every_planned_run_of_every_shipped_sweep_composes(path):
    for argv in _sweep_runs(path, every=True):
        load_config(argv, validate=NO_FILES)


@pytest.mark.parametrize("experiment", [e for e in list_choices("experiment") if not e.startswith("train_")])
def test_every_experiment_and_the_runs_of_its_suite_compose(experiment):
    load_config([f"experiment={experiment}"], validate=NO_FILES, check_entries=True)


@pytest.mark.parametrize("suite", list_choices("suite"))
def test_every_suite_composes_its_entries(suite):
    load_config([f"suite={suite}"], validate=NO_FILES, check_entries=True)


_SWEEP_FLAGS = {"--dry-run", "--resubmit", "--retry-failed", "--merge", "--status", "--estimate"}  # launcher options without a value


def readme_examples() -> list[tuple[str, list[str]]]:
    """``(program, arguments)`` of every eval.py and sweep.py command of README.md: its bash blocks (continuation lines
    joined, comments dropped, ``make run ARGS="..."`` read as eval.py) and inline ``python eval.py ...`` spans;
    ``--help``, ``--cfg``, ``--verbose``, ``--estimate`` and ``...`` placeholders are dropped, and sweep.py's own options."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if language in ("", "bash"):
            lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    lines += re.findall(r"`(python eval\.py [^`]+)`", re.sub(r"\n", " ", text))
    examples = []
    for line in map(str.strip, lines):
        if line.startswith("#"):
            continue
        make = re.search(r'make run ARGS="([^"]*)"', line)
        tokens = shlex.split(make.group(1)) if make else shlex.split(line, comments=True)
        program = "eval.py" if make else next((t for t in tokens if t in ("eval.py", "sweep.py")), None)
        if program is None or "mean_blur" in line:  # mean_blur: the README's example of a purifier to add
            continue
        args = tokens if make else tokens[tokens.index(program) + 1:]
        if program == "sweep.py" or {"--shards", "--status"} & set(args):  # the launcher's options (eval.py --shards)
            kept, skip = [], False
            for token in args:
                if skip:
                    skip = False
                elif token.startswith("--"):
                    skip = token not in _SWEEP_FLAGS and "=" not in token
                else:
                    kept.append(token)
            args = kept
        examples.append((program, [a for a in args if a not in ("--help", "-h", "--cfg", "--verbose", "-v", "--estimate", "...")]))
    return examples


@pytest.mark.slow
def test_every_readme_example_composes():
    examples = readme_examples()
    assert sum(p == "eval.py" for p, _ in examples) >= 15 and sum(p == "sweep.py" for p, _ in examples) >= 5
    for program, args in examples:
        if program == "eval.py":
            load_config(args, validate=NO_FILES, check_entries=True)
            continue
        sweep_file, extra = PROJECT_ROOT / args[0], args[1:]
        if sweep_file.suffix != ".yaml":
            continue  # `sweep.py --help` and the like
        for argv in _sweep_runs(sweep_file, every=False):
            load_config(argv + extra, validate=NO_FILES)
