"""W&B tells how a run ended (real wandb, offline; each run file is read back record by record): a run stopped by
SIGTERM records exit code 143 and what it finished, resuming it continues the same W&B run (same id, a second
offline folder) up to the final summary, and a crashed run records a non-zero exit code and its partial numbers."""

from __future__ import annotations

import glob
import json
import signal
import subprocess
import sys

import pytest

import eval as eval_script

from conftest import crash_after_batch, PROJECT_ROOT, needs_shared_cifar, tiny_args
from wandb_offline import (clean_env, finished_batches, finished_records, of_type, removed_keys, run_files, stop_eval, summary_of,
                           wandb_records)

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

# 30 batches of a 40-iteration attack: long enough to be stopped after the second one even on an idle machine, where
# 20 batches of 5 iterations could all finish between two polls of the progress folder.
ARGS = ["logger=wandb", "data.num_samples=60", "data.batch_size=2", "attack.run=[apgd_ce]", "attack.n_iter=40",
        "attack.eps=1", "attack.checks=false", "trainer.num_threads=1"]


def _args(tmp_path, *extra: str) -> list[str]:
    return [a for a in tiny_args(tmp_path, *ARGS, *extra) if a != "logger=none"]


def expected_partial(run_dir) -> dict:
    """The partial numbers computed here from the progress file: finished samples, clean and robust correct."""
    rows = {}
    for batch in finished_batches(run_dir):
        cols = {name: dict(zip(c["ids"], c["values"])) for name, c in batch["columns"].items()}
        for i, label in cols["label"].items():
            rows[i] = (label, cols["clean_pred"][i], cols["adv_pred/apgd_ce"][i])
    clean = sum(label == clean for label, clean, _ in rows.values())
    robust = sum(label == adv for label, _, adv in rows.values())
    worst = sum(label == clean == adv for label, clean, adv in rows.values())
    return {"done": len(rows), "clean": clean, "robust": robust, "worst": worst}


@needs_shared_cifar
@pytest.mark.slow  # a launch stopped mid-run by SIGTERM, then resumed
@pytest.mark.timeout(600)
def test_stopped_run_records_exit_143_and_its_partial_numbers_and_resuming_continues_the_same_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    args = _args(tmp_path)
    code = stop_eval(args, run_dir, signal.SIGTERM, after=2, env=clean_env(), log=tmp_path / "first.log")
    assert code == 143, (tmp_path / "first.log").read_text()[-3000:]

    [first] = run_files(run_dir)
    records = list(wandb_records(first))
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert first.name == f"run-{run_id}.wandb" and of_type(records, "run")[0].run_id == run_id
    assert [e.exit_code for e in of_type(records, "exit")] == [143]
    assert of_type(records, "preempting") == []  # nothing requeues a plain run: a failed run, not a preempted one
    summary = summary_of(records)
    want = expected_partial(run_dir)
    assert 2 <= want["done"] < 60
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGTERM"
    assert summary["test/samples_done"] == want["done"] and summary["test/samples_total"] == 60
    partial = summary["test/partial"]
    assert partial["clean_correct"] == want["clean"] and partial["clean_acc"] == pytest.approx(want["clean"] / want["done"])
    assert partial["robust_correct"] == {"apgd_ce": want["robust"], "worst_case": want["worst"]}
    assert partial["robust_acc"]["apgd_ce"] == pytest.approx(want["robust"] / want["done"])
    assert "test/clean_acc" not in summary  # the final metrics' keys hold final numbers only

    # resume=true continues the same W&B run: a second offline folder of the same run id, which `wandb sync`
    # uploads after the first as one run; its summary is the final one, the partial keys removed.
    done = subprocess.run([sys.executable, "eval.py", *args, "resume=true"], cwd=PROJECT_ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    files = run_files(run_dir)
    assert len(files) == 2 and files[0] == first and files[1].parent != first.parent
    assert files[1].name == f"run-{run_id}.wandb" and files[1].parent.name.endswith(f"-{run_id}")
    records = list(wandb_records(files[1]))
    again = of_type(records, "run")[0]
    before = of_type(list(wandb_records(first)), "run")[0]
    assert (again.run_id, again.project, again.entity, again.display_name) == (
        before.run_id, before.project, before.entity, before.display_name)
    assert [e.exit_code for e in of_type(records, "exit")] == [0]
    summary = summary_of(records)
    results = json.loads((run_dir / "results.json").read_text())
    assert summary["status"] == "finished"
    assert summary["test/samples_done"] == summary["test/samples_total"] == results["num_samples"] == 60
    assert summary["test/clean_acc"] == pytest.approx(results["clean"]["acc"])
    assert summary["test/robust_acc/apgd_ce"] == pytest.approx(results["robust"]["apgd_ce"]["acc"])
    assert {"test/partial", "stopped_by", "error"} <= removed_keys(records)
    assert not {"test/partial", "stopped_by", "error"} & set(summary)
    sync = results["wandb"]["sync"]  # what the printed `wandb sync` command names: both launches
    assert sync == str(run_dir / "wandb" / f"offline-run-*-{run_id}") and f"wandb sync {sync}" in done.stdout
    assert sorted(glob.glob(sync)) == [str(f.parent) for f in files]




@needs_shared_cifar
def test_crashed_run_records_a_nonzero_exit_code_and_what_it_finished(tmp_path, monkeypatch):
    import clipure_lit.evaluation as evaluation

    original = evaluation.eval_callbacks
    monkeypatch.setattr(evaluation, "eval_callbacks", lambda cfg, run_dir: [crash_after_batch(3)] + original(cfg, run_dir))
    with pytest.raises(RuntimeError, match="simulated crash"):
        eval_script.main(_args(tmp_path, "data.num_samples=8", "attack.n_iter=1"))
    [path] = run_files(tmp_path / "run")
    records = finished_records(path)  # in this process: wandb's core may still be writing the file
    assert [e.exit_code for e in of_type(records, "exit")] == [1]
    summary = summary_of(records)
    want = expected_partial(tmp_path / "run")
    assert want["done"] == 4  # 2 finished batches of 2; the third was lost
    assert summary["status"] == "crashed" and summary["error"] == "RuntimeError: simulated crash"
    assert summary["test/samples_done"] == 4 and summary["test/samples_total"] == 8
    assert summary["test/partial"]["clean_correct"] == want["clean"]
    assert summary["test/partial"]["robust_correct"]["apgd_ce"] == want["robust"]
