"""A launch whose size does not match ``trainer.devices`` x ``trainer.num_nodes`` (torchrun's or SLURM's processes and
nodes, read from their environment variables) is refused with one paragraph before the run folder exists; matching
launches and runs without a launcher pass."""

from __future__ import annotations

import subprocess
import sys

import pytest

from clipure_lit.config.loader import load_config
from clipure_lit.errors import ConfigError
from clipure_lit.run_folder import check_launch_size

from conftest import PROJECT_ROOT
from wandb_offline import clean_env

TORCHRUN_2X4 = {"TORCHELASTIC_RUN_ID": "eval-1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "0",
                "GROUP_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
SRUN_2X2 = {"SLURM_JOB_ID": "777", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "eval", "SLURM_NTASKS": "4",
            "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_NODEID": "0", "SLURM_NODELIST": "127.0.0.1"}
LAUNCH_PREFIXES = ("SLURM_", "TORCHELASTIC_", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                   "GROUP_")


@pytest.fixture
def launch(monkeypatch):
    """Sets a launcher's environment for this test, after removing any launcher variable of the session."""
    import os

    for name in list(os.environ):
        if name.startswith(LAUNCH_PREFIXES):
            monkeypatch.delenv(name)

    def set_env(env: dict) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    return set_env


def _cfg(*overrides: str):
    return load_config(["experiment=tiny", "trainer.strategy=ddp", *overrides])


def test_torchrun_two_nodes_without_num_nodes_is_refused_naming_the_keys_that_match(launch):
    launch(TORCHRUN_2X4)
    with pytest.raises(ConfigError) as err:
        check_launch_size(_cfg("trainer.devices=4"))
    text = str(err.value)
    assert "torchrun started 8 processes (WORLD_SIZE=8, LOCAL_WORLD_SIZE=4, 2 node(s))" in text
    assert "trainer.devices=4 x trainer.num_nodes=1 describes 4 x 1 = 4 processes" in text
    assert "Fix: pass trainer.devices=4 trainer.num_nodes=2" in text and "\n" not in text
    check_launch_size(_cfg("trainer.devices=4", "trainer.num_nodes=2"))  # the fix passes


@pytest.mark.parametrize("overrides", [("trainer.devices=2", "trainer.num_nodes=2"),  # 4 processes, not 8
                                       ("trainer.devices=8",),  # the product matches, but 2 nodes of 4, not 1 of 8
                                       ("trainer.devices=[0,1,2,3]",)])
def test_torchrun_other_mismatches_are_refused(launch, overrides):
    launch(TORCHRUN_2X4)
    with pytest.raises(ConfigError, match=r"Fix: pass trainer.devices=4 trainer.num_nodes=2"):
        check_launch_size(_cfg(*overrides))


def test_torchrun_without_group_world_size_counts_nodes_from_the_local_world_size(launch):
    launch({**TORCHRUN_2X4, "GROUP_WORLD_SIZE": ""})
    with pytest.raises(ConfigError, match=r"2 node\(s\)"):
        check_launch_size(_cfg("trainer.devices=4"))
    check_launch_size(_cfg("trainer.devices=4", "trainer.num_nodes=2"))


def test_srun_mismatches_are_refused_and_an_interactive_allocation_is_not_a_launch(launch):
    launch(SRUN_2X2)
    with pytest.raises(ConfigError) as err:
        check_launch_size(_cfg("trainer.devices=2"))
    text = str(err.value)
    assert "SLURM (srun) started 4 processes (SLURM_NTASKS=4, SLURM_NNODES=2, SLURM_NTASKS_PER_NODE=2)" in text
    assert "Fix: pass trainer.devices=2 trainer.num_nodes=2" in text and "--ntasks-per-node" in text
    with pytest.raises(ConfigError, match="trainer.devices=2 trainer.num_nodes=2"):
        check_launch_size(_cfg("trainer.devices=4", "trainer.num_nodes=2"))
    check_launch_size(_cfg("trainer.devices=2", "trainer.num_nodes=2"))
    launch({"SLURM_NTASKS_PER_NODE": "2(x2)"})  # SLURM's notation for 2 tasks on each of 2 nodes
    check_launch_size(_cfg("trainer.devices=2", "trainer.num_nodes=2"))
    launch({"SLURM_JOB_NAME": "interactive"})  # Lightning does not take an interactive allocation as a launch
    check_launch_size(_cfg("trainer.devices=1"))


def test_a_node_rank_beyond_num_nodes_is_refused_and_no_launcher_is_not_checked(launch):
    check_launch_size(_cfg("trainer.devices=2"))  # no launcher: Lightning starts the processes itself
    launch({"NODE_RANK": "1"})
    with pytest.raises(ConfigError, match=r"NODE_RANK=1, but trainer.num_nodes=1 counts nodes 0 to 0"):
        check_launch_size(_cfg())
    check_launch_size(_cfg("trainer.num_nodes=2"))


@pytest.mark.e2e
@pytest.mark.slow  # launches eval.py under several launchers' environments
@pytest.mark.timeout(240)
def test_eval_refuses_a_mismatched_launch_with_exit_2_before_creating_the_run_folder(tmp_path):
    for name, env, args in (("torchrun", TORCHRUN_2X4, ["trainer.devices=4", f"output_root={tmp_path / 'runs'}"]),
                            ("srun", SRUN_2X2, ["trainer.devices=2", f"run_dir={tmp_path / 'run'}"])):
        done = subprocess.run([sys.executable, "eval.py", "experiment=tiny", "trainer.strategy=ddp", *args,
                               f"prompts.cache_dir={tmp_path / 'text'}"], cwd=PROJECT_ROOT, env=clean_env(**env),
                              capture_output=True, text=True, timeout=200)
        assert done.returncode == 2, (name, done.stderr[-3000:])
        assert "Traceback" not in done.stderr and done.stderr.count("error: ") == 1, name
        assert "trainer.num_nodes=2" in done.stderr, name
        assert not (tmp_path / "runs").exists() and not (tmp_path / "run").exists(), name
