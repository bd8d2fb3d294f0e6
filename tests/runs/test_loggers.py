"""Loggers through Lightning: CSV by default, W&B offline without credentials (real wandb, no network)."""

from __future__ import annotations

import pytest

import eval as eval_script

from conftest import needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`


def _without_logger(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("logger=")]


@needs_shared_cifar
def test_csv_logger_records_the_metrics(tmp_path):
    eval_script.main(_without_logger(tiny_args(tmp_path, "data.num_samples=8")) + ["logger=csv"])
    text = (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    assert "test/clean_acc" in text


@needs_shared_cifar
def test_wandb_logger_runs_offline_without_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    from clipure_lit.loggers import wandb_credentials_present

    assert not wandb_credentials_present()
    metrics = eval_script.main(_without_logger(tiny_args(tmp_path, "data.num_samples=8")) + ["logger=wandb"])
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert metrics["clean"]["total"] == 8


def test_online_mode_is_only_used_with_credentials(monkeypatch, tmp_path):
    from clipure_lit.loggers import wandb_credentials_present

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_credentials_present()
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_credentials_present()
    pytest.importorskip("wandb")


@needs_shared_cifar
def test_run_folder_is_self_describing_and_wandb_gets_table_and_plot(tmp_path, monkeypatch):
    import json

    import wandb

    logged = {}
    real_log = wandb.sdk.wandb_run.Run.log

    def spy(self, data, *args, **kwargs):
        logged.update(data)
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    args = _without_logger(tiny_args(tmp_path, "data.num_samples=8")) + ["logger=wandb", "attack.run=[apgd_ce]", "attack.n_iter=2"]
    eval_script.main(args)
    run = tmp_path / "run"
    for name in ("config.yaml", "environment.json", "results.json", "samples.csv", "results.png"):
        assert (run / name).is_file(), name
    env = json.loads((run / "environment.json").read_text())
    assert set(env) >= {"packages", "git_commit", "sample_ids_sha256", "checkpoints"}
    assert isinstance(logged.get("test/samples"), wandb.Table) and isinstance(logged.get("test/results_plot"), wandb.Image)
