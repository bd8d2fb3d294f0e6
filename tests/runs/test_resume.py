"""Resumable evaluation: an interrupted run, resumed with the same config, gives exactly the numbers and the
per-sample table of an uninterrupted run; a different config or a forgotten resume=true is refused."""

from __future__ import annotations

import json

import pytest

import eval as eval_script
from clipure_lit.errors import ConfigError

from conftest import crash_after_batch, needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

ATTACKS = ["attack.run=[fast,transfer_clip]", "attack.entries.fast.base=apgd_ce", "attack.n_iter=2", "attack.eps=1",
           "attack.entries.aa_clipure.n_restarts=1", "attack.entries.aa_clipure.n_target_classes=2", "trainer.num_threads=1"]


def _purifier() -> list[str]:
    from clipure_lit.purifiers import list_purifiers

    # A batch-coupled purifier is the demanding case: results depend on the batch composition, which resume keeps.
    # purifier.clipure_cos.batch_size=null: these runs are at batch 3 with a partial last batch on purpose.
    return ["purifier=clipure_cos", "purifier.clipure_cos.batch_size=null"] if "clipure_cos" in list_purifiers() else []




def _with_crash(monkeypatch, after: int) -> None:
    import clipure_lit.evaluation as evaluation

    original = evaluation.eval_callbacks
    monkeypatch.setattr(evaluation, "eval_callbacks", lambda cfg, run_dir: [crash_after_batch(after)] + original(cfg, run_dir))


def _args(tmp_path, *extra):
    return tiny_args(tmp_path, "data.num_samples=11", "data.batch_size=3", *_purifier(), *ATTACKS, *extra)


def _numbers(results: dict) -> dict:
    return {k: results[k] for k in ("num_samples", "clean", "robust", "flags")}


@needs_shared_cifar
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    full = eval_script.main(_args(tmp_path / "full"))

    args = _args(tmp_path / "cut")
    _with_crash(monkeypatch, after=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        eval_script.main(args)
    monkeypatch.undo()
    progress = tmp_path / "cut" / "run" / "progress" / "rank0.jsonl"
    assert len(progress.read_text().splitlines()) == 2  # the 2 finished batches are on disk, the 3rd is lost
    with open(progress, "a") as fh:
        fh.write('{"columns": {"label": {"ids": [1, 2')  # a torn line from a kill in the middle of a write

    resumed = eval_script.main(args + ["resume=true", "trainer.enable_progress_bar=true"])
    assert _numbers(resumed) == _numbers(full)
    same = (tmp_path / "full" / "run" / "samples.csv").read_text() == (tmp_path / "cut" / "run" / "samples.csv").read_text()
    assert same
    lines = progress.read_text().splitlines()
    assert lines[2].startswith('{"columns": {"label": {"ids": [1, 2') and len(lines) == 3 + 2  # torn line kept apart
    done = [i for line in lines[:2] + lines[3:] for i in json.loads(line)["columns"]["label"]["ids"]]
    assert sorted(done) == sorted(set(done)) and len(done) == 11  # finished batches were not evaluated again

    again = eval_script.main(args + ["resume=true"])  # resuming a finished run recomputes nothing, changes nothing
    assert _numbers(again) == _numbers(full)


@needs_shared_cifar
def test_resume_refuses_a_different_config_and_unflagged_reuse(tmp_path, monkeypatch):
    args = tiny_args(tmp_path, "data.num_samples=4", "data.batch_size=2", "trainer.num_threads=1")
    _with_crash(monkeypatch, after=2)
    with pytest.raises(RuntimeError):
        eval_script.main(args)
    monkeypatch.undo()
    with pytest.raises(SystemExit):  # eval.py reports ConfigErrors as one paragraph and exits with status 2
        eval_script.main(args + ["resume=true", "data.batch_size=1", "attack.eps=8"])
    from clipure_lit.config.loader import load_config
    from clipure_lit.evaluation import run_eval

    with pytest.raises(ConfigError, match=r"differs in 2 key\(s\): attack.eps: None -> 8.0; data.batch_size: 2 -> 1"):
        run_eval(load_config(args + ["resume=true", "data.batch_size=1", "attack.eps=8"]))
    with pytest.raises(ConfigError, match="resume=true"):
        run_eval(load_config(args))
    with pytest.raises(ConfigError, match="run_dir"):
        run_eval(load_config(["experiment=tiny", "logger=none", "resume=true"]))
    assert eval_script.main(args + ["resume=true", "trainer.enable_progress_bar=true"])["num_samples"] == 4
