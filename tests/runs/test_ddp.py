"""Multi-process evaluation counts each sample once and equals one process: two CPU processes of one launch
(``trainer=ddp_cpu``, ``ddp_spawn``), and two "nodes" on one machine (two processes on 127.0.0.1, one device each),
once in torchrun's environment and once in SLURM's (what Lightning's SLURMEnvironment reads). Without a run_dir the
nodes agree on one run folder named after the launcher's job id, and only rank 0 writes results and reports."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys

import pytest

import eval as eval_script
from clipure_lit.config.loader import load_config
from clipure_lit.errors import ConfigError
from clipure_lit.run_folder import make_run_dir

from conftest import PROJECT_ROOT, needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

# 7 samples over 2 ranks: the sampler pads with a repeated sample. attack.batch_size=1 makes every attack result a
# per-sample function (the batches differ between 1 and 2 processes; see the README's multi-GPU section).
ARGS = ["data.num_samples=7", "data.batch_size=2", "attack.run=[fast,square]", "attack.entries.fast.base=apgd_ce",
        "attack.n_iter=2", "attack.n_queries=5", "attack.eps=1", "attack.batch_size=1", "trainer.num_threads=1"]
TWO_NODES = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2", "trainer.strategy=ddp"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_environments(port_torchrun: int, port_slurm: int) -> dict[str, list[dict]]:
    torchrun = [{"RANK": str(r), "GROUP_RANK": str(r), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port_torchrun), "TORCHELASTIC_RUN_ID": "job7"}
                for r in (0, 1)]
    slurm = [{"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "eval", "SLURM_NTASKS": "2",
              "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_PROCID": str(r), "SLURM_NODEID": str(r),
              "SLURM_LOCALID": "0", "SLURM_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port_slurm)}
             for r in (0, 1)]
    return {"torchrun-job7": torchrun, "slurm-4242.0": slurm}


def _clean_env() -> dict:
    """This session's environment without any launcher variable (a pytest run may itself be inside SLURM)."""
    prefixes = ("SLURM_", "TORCHELASTIC_", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "MASTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


@pytest.mark.slow
@pytest.mark.timeout(420)
@needs_shared_cifar
def test_two_processes_and_two_nodes_count_each_sample_once_and_match_one_process(tmp_path, capfd):
    args = [a for a in tiny_args(tmp_path, *ARGS) if not a.startswith("run_dir=")] + [f"output_root={tmp_path / 'runs'}"]
    launches = _launch_environments(_free_port(), _free_port())
    procs = {}
    for name, ranks in launches.items():  # both two-node runs at once, in the background
        for rank, extra in enumerate(ranks):
            with open(tmp_path / f"{name}-{rank}.log", "w") as log:
                procs[name, rank] = subprocess.Popen([sys.executable, "eval.py", *args, *TWO_NODES], cwd=PROJECT_ROOT,
                                                     env={**_clean_env(), **extra}, stdout=log, stderr=subprocess.STDOUT)
    # Meanwhile, in this process: one process (the reference), and two spawned CPU processes (ddp_spawn under pytest).
    one = eval_script.main(tiny_args(tmp_path / "one", *ARGS))
    capfd.readouterr()
    two = eval_script.main(tiny_args(tmp_path / "two", *ARGS, "trainer=ddp_cpu", "trainer.enable_progress_bar=true",
                                     "logger=csv"))
    # Rank 0's progress shows global numbers (2 processes x 2 batches of 2), the end shows the summary's; the
    # spawned processes print no Lightning set-up lines or upstream warnings, and log into the run folder.
    err = capfd.readouterr().err
    assert "tiny: 7/7 samples (batch 2/2)" in err and "Tip" not in err and "Initializing distributed" not in err
    # The running counts leave the sampler's padded repeat out: the last batch line counts 7 samples, like the summary.
    last = next(line for line in err.splitlines() if "tiny: 7/7 samples (batch 2/2)" in line)
    assert re.search(r"clean \d+/7 ", last) and re.search(r"fast \d+/7 ", last) and re.search(r"square \d+/7 ", last), last
    log = (tmp_path / "two" / "run" / "log.txt").read_text()
    assert f"clean {two['clean']['correct']}/7 " in log.split("tiny: done in")[1]
    assert (tmp_path / "two" / "run" / "log.rank1.txt").is_file()
    # The live numbers rank 0 logs are global: both processes' samples (the padded repeat left out) as the step, and
    # at the end the run's own accuracies, not rank 0's half.
    rows = list(csv.DictReader((tmp_path / "two" / "run" / "csv" / "metrics.csv").open()))
    live = [r for r in rows if r.get("live/samples_done")]
    assert [float(r["live/samples_done"]) for r in live] == [4, 7] and [int(r["step"]) for r in live] == [4, 7]
    assert float(live[-1]["live/clean_acc"]) == pytest.approx(two["clean"]["acc"])
    for name in ("fast", "square", "worst_case"):
        assert float(live[-1][f"live/robust_acc/{name}"]) == pytest.approx(two["robust"][name]["acc"]), name
    codes = {key: proc.wait(timeout=400) for key, proc in procs.items()}
    logs = {key: (tmp_path / f"{key[0]}-{key[1]}.log").read_text() for key in procs}
    assert codes == {key: 0 for key in procs}, {k: logs[k][-2000:] for k, c in codes.items() if c}

    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == sorted(launches)  # one folder per run
    reference = (tmp_path / "one" / "run" / "samples.csv").read_text()
    runs = {"ddp_spawn": (tmp_path / "two" / "run", two)}
    runs.update({name: (tmp_path / "runs" / "tiny" / name, None) for name in launches})
    for name, (run_dir, returned) in runs.items():
        results = json.loads((run_dir / "results.json").read_text())
        for key in ("num_samples", "clean", "robust"):
            assert results[key] == one[key], (name, key)
            assert returned is None or returned[key] == one[key], (name, key)
        assert results["robust"]["fast"]["total"] == 7
        assert (run_dir / "samples.csv").read_text() == reference, name
        logged = [i for path in sorted((run_dir / "progress").glob("rank*.jsonl"))
                  for line in path.read_text().splitlines() for i in json.loads(line)["columns"]["label"]["ids"]]
        assert len(logged) == 8 and len(set(logged)) == 7, name  # the sampler's padding was evaluated, then dropped
    for name in launches:
        # Rank 0 reports; Lightning's sampler warning is replaced by one line; rank 1 neither prints nor warns.
        assert "de-duplicated by sample id" in logs[name, 0] and "run folder:" in logs[name, 0]
        assert "run folder:" not in logs[name, 1]
        assert not any("Using `DistributedSampler`" in logs[name, r] for r in (0, 1))


def test_separately_launched_nodes_without_a_job_id_need_a_run_dir(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for name in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NODE_RANK", "1")
    with pytest.raises(ConfigError, match=r"NODE_RANK=1.*run_dir=.*torchrun --rdzv-id"):
        make_run_dir(load_config(["experiment=tiny", "trainer.num_nodes=2", "trainer.strategy=ddp"]))
    monkeypatch.setenv("NODE_RANK", "0")
    with pytest.raises(ConfigError, match=r"trainer.num_nodes=2"):
        make_run_dir(load_config(["experiment=tiny", "trainer.num_nodes=2", "trainer.strategy=ddp"]))
