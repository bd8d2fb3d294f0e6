"""Sweep files and everything sweep.py decides before a run starts: the W&B schema, the planned configurations,
the choice of runs, refused extra arguments, and the SLURM submission (recorded by a fake ``sbatch``)."""

from __future__ import annotations

import os
import pickle
import stat
from functools import partial

import pytest

import sweep as sweep_script
from clipure_lit.config.loader import GROUPS, load_config
from clipure_lit.config.validate import validate_config
from clipure_lit.errors import ConfigError
from clipure_lit.reporting.findings import load_findings
from clipure_lit.sweeping.findings_runs import part_args
from clipure_lit.sweeping.plan import (check_extra_args, check_metric, expand, load_sweep, program_args,
                                       schema_violations, select_runs)

from conftest import PROJECT_ROOT, tiny_sweep_yaml

SWEEP_FILES = sorted((PROJECT_ROOT / "sweeps").rglob("*.yaml"))  # findings/ included

# The tiny runs have no attack, so the metric they all log is the clean accuracy.
TINY = tiny_sweep_yaml(**{"clip.init_seed": [0, 1], "data.num_samples": [4, 6]}).replace("test/robust_acc/worst_case",
                                                                                        "test/clean_acc")


@pytest.fixture
def tiny_sweep(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_the_required_sweeps_ship():
    names = {p.stem for p in SWEEP_FILES}
    assert {"cos_step_size_x_steps", "blank_x_class_templates", "grad_mode_x_attack", "epsilon", "diff_timestep_x_noise",
            "purifier_comparison", "cos_random_search", "cos_step_size_early_stop"} <= names


def _arguments_of(path) -> list[list[str]]:
    """The extra arguments each use of a shipped sweep file gives its runs: none for sweeps/*.yaml; for
    sweeps/findings/*.yaml those of every study part that runs it (findings/studies.yaml)."""
    if path.parent.name != "findings":
        return [[]]
    findings = load_findings(PROJECT_ROOT / "findings" / "studies.yaml")
    spec = load_sweep(path)
    uses = [part_args(findings.common, part.args, spec) for study in findings.studies for part in study.parts
            if (PROJECT_ROOT / part.sweep).resolve() == path.resolve()]
    assert uses, f"{path} is run by no study of findings/studies.yaml"
    return uses


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.relative_to(PROJECT_ROOT / "sweeps").as_posix())
def test_sweep_file_follows_the_wandb_schema_and_every_planned_run_validates(path):
    """Every check sweep.py makes before a run starts passes for the shipped files, with the arguments they are run
    with: the schema, the parameters and command (load_sweep), the fixed arguments, each run's composed config and
    the metric it must log (the findings sweeps get their attacks from findings/studies.yaml)."""
    import yaml

    assert schema_violations(yaml.safe_load(path.read_text())) == []  # the schema `wandb sweep` applies
    spec = load_sweep(path)
    assert spec.program == "eval.py" and "${args_no_hyphens}" in spec.command
    # early termination needs the number logged after every batch; it ends equal to the final one
    wanted = "live/robust_acc/worst_case" if spec.raw.get("early_terminate") else "test/robust_acc/worst_case"
    if path.name == "shards.yaml":  # one evaluation in parts, nothing to optimise: a metric any evaluation logs
        wanted = "test/clean_acc"
    assert spec.metric["name"] == wanted and spec.metric["goal"] == "maximize"
    plan = expand(spec, count=4) if spec.method == "random" else expand(spec)
    for extra in _arguments_of(path):
        check_extra_args(spec, extra, groups=GROUPS)
        for index, params in enumerate(plan[:6] if not extra else plan[:2]):
            # raises ConfigError on any bad key or value; the top-level sweeps name data and weights this machine
            # lacks (ImageNet, the LAION prior), which only their file checks would refuse
            cfg = load_config(program_args(spec, params) + extra,
                              validate=None if extra else partial(validate_config, files=False))
            check_metric(spec, cfg, f"run-{index:04d}")


def test_schema_violations_are_refused_with_the_fix(tmp_path):
    bad = tmp_path / "capped.yaml"
    bad.write_text("program: eval.py\nmethod: random\nrun_cap: 5\nparameters: {seed: {values: [1, 2]}}\n")
    with pytest.raises(ConfigError, match=r"run_cap.*--count"):
        load_sweep(bad)
    bayes = tmp_path / "bayes.yaml"
    bayes.write_text("program: eval.py\nmethod: bayes\nmetric: {name: test/clean_acc, goal: maximize}\n"
                     "parameters: {seed: {values: [1]}}\n")
    with pytest.raises(ConfigError, match="bayes"):
        load_sweep(bayes)
    missing = tmp_path / "nothing.yaml"
    missing.write_text("method: grid\n")
    with pytest.raises(ConfigError, match="program"):
        load_sweep(missing)


def test_cos_sweep_covers_odd_even_released_and_small_steps():
    plan = expand(load_sweep(PROJECT_ROOT / "sweeps" / "cos_step_size_x_steps.yaml"))
    steps = {p["purifier.clipure_cos.num_steps"] for p in plan}
    sizes = {p["purifier.clipure_cos.step_size"] for p in plan}
    assert {9, 10, 11} <= steps and 30.0 in sizes and min(sizes) <= 1.0
    assert len(plan) == len(steps) * len(sizes)  # a full grid


def test_random_plan_is_seeded_and_count_is_a_random_search_option():
    spec = load_sweep(PROJECT_ROOT / "sweeps" / "cos_random_search.yaml")
    assert expand(spec, count=4, seed=1) == expand(spec, count=4, seed=1)
    assert expand(spec, count=4, seed=1) != expand(spec, count=4, seed=2)
    assert all(isinstance(p["purifier.clipure_cos.step_size"], float) for p in expand(spec, count=4))
    with pytest.raises(ConfigError, match="--count"):
        expand(spec)
    with pytest.raises(ConfigError, match="random-search option.*--runs.*--where"):
        expand(load_sweep(PROJECT_ROOT / "sweeps" / "epsilon.yaml"), count=3)


def test_a_part_of_a_grid_by_index_or_by_value():
    spec = load_sweep(PROJECT_ROOT / "sweeps" / "epsilon.yaml")  # attack.eps [1, 2, 4, 8] x purifier [none, clipure_cos]
    plan = expand(spec)
    assert select_runs(spec, plan, "0-2,7") == [0, 1, 2, 7]
    picked = select_runs(spec, plan, where=["attack.eps=[4,8]", "purifier=clipure_cos"])
    assert [plan[i] for i in picked] == [{"attack.eps": 4, "purifier": "clipure_cos"}, {"attack.eps": 8, "purifier": "clipure_cos"}]
    assert select_runs(spec, plan, "0-3", where=["attack.eps=2"]) == [i for i in range(4) if plan[i]["attack.eps"] == 2]
    for bad, match in ((("9",), "outside the plan"), (("x",), "cannot read")):
        with pytest.raises(ConfigError, match=match):
            select_runs(spec, plan, *bad)
    with pytest.raises(ConfigError, match="not a swept key"):
        select_runs(spec, plan, where=["attack.norm=L2"])
    with pytest.raises(ConfigError, match="select no run"):
        select_runs(spec, plan, where=["attack.eps=3"])


def test_extra_arguments_may_not_set_swept_or_launcher_keys():
    spec = load_sweep(PROJECT_ROOT / "sweeps" / "cos_step_size_x_steps.yaml")
    with pytest.raises(ConfigError, match="overrides 'purifier.clipure_cos.step_size'.*--where"):
        check_extra_args(spec, ["purifier.clipure_cos.step_size=30"])
    with pytest.raises(ConfigError, match="overrides"):
        check_extra_args(spec, ["purifier.clipure_cos={step_size: 30}"])  # a whole section holding a swept key
    with pytest.raises(ConfigError, match="run_dir"):
        check_extra_args(spec, ["run_dir=/tmp/x"])
    check_extra_args(spec, ["purifier=clipure_cos", "purifier.clipure_cos.momentum=0.5", "data.num_samples=8"],
                     groups=("purifier",))


def _exit_2_message(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        sweep_script.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_extra_arguments_stop_the_sweep_before_any_run_with_eval_py_message(tmp_path, tiny_sweep, capsys, monkeypatch):
    import eval as eval_script

    out = tmp_path / "out"
    err = _exit_2_message(capsys, [str(tiny_sweep), "--out", str(out), "data.num_sample=4"])
    with pytest.raises(SystemExit):
        eval_script.main(["experiment=tiny", "data.num_sample=4", "--cfg"])
    assert capsys.readouterr().err == err  # word for word what eval.py says
    assert "clip.init_seed" in _exit_2_message(capsys, [str(tiny_sweep), "--out", str(out), "clip.init_seed=3"])
    # The old flat purifier key (a moved key) and a key of a purifier the runs do not use: eval.py's own errors.
    step = PROJECT_ROOT / "sweeps" / "cos_step_size_x_steps.yaml"
    assert "has moved" in _exit_2_message(capsys, [str(step), "--out", str(out / "s"), "purifier.step_size=30"])
    assert "--count" in _exit_2_message(capsys, [str(tiny_sweep), "--out", str(out), "--count", "2"])
    assert "suite=none" in _exit_2_message(capsys, [str(tiny_sweep), "--out", str(out), "suite=demo"])
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert "wandb login" in _exit_2_message(capsys, [str(tiny_sweep), "--out", str(out), "--wandb", "online"])
    assert not (out / "run-0000").exists() and not (out / "state.json").exists()  # nothing was launched


def test_dry_run_lists_each_run_and_what_it_would_do(tmp_path, tiny_sweep, capsys):
    out = tmp_path / "out"
    sweep_script.main([str(tiny_sweep), "--out", str(out), "--dry-run", "--where", "data.num_samples=6",
                       f"prompts.cache_dir={tmp_path}"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["run-0001", "[run]"], ["run-0003", "[run]"]]
    assert all("data.num_samples=6" in line and "logger=wandb logger.mode=offline" in line for line in lines)
    assert f"run_dir={out / 'run-0001'}" in lines[0] and not out.exists()  # a dry run writes nothing


def _fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` that records its argument and the submitted script, and an ``srun`` that only has to exist."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.txt"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\n{{ echo "ARGS: $*"; cat "$1"; }} >> "{record}"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod((bin_dir / tool).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_slurm_launcher_submits_one_job_array_with_the_requested_resources(tmp_path, tiny_sweep, monkeypatch, capsys):
    record = _fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "out"
    state = sweep_script.main([str(tiny_sweep), "--out", str(out), "--launcher", "slurm", "--partition", "gpu",
                               "--gpus-per-run", "2", "--time", "240", "--cpus-per-run", "16", "--parallel", "3",
                               "--slurm-arg", "account=proj", "--where", "clip.init_seed=1", "trainer=ddp"])
    script = record.read_text()
    assert script.count("ARGS: ") == 1  # one submission: an array
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --time=240", "#SBATCH --cpus-per-task=8", "#SBATCH --account=proj", "#SBATCH --signal=USR2@90",
                 "#SBATCH --job-name=clipure-tiny_sweep"):
        assert line in script, line
    assert "srun" in script and "-m submitit.core._submit" in script
    assert {k: v["job_id"] for k, v in state.items()} == {"run-0002": "4242_0", "run-0003": "4242_1"}
    assert all(v["status"] == "submitted" for v in state.values())
    submitted = pickle.loads((out / ".submitit" / "4242_1_submitted.pkl").read_bytes())
    command = submitted.function
    assert command.argv[1:4] == ["eval.py", "experiment=tiny", "clip.init_seed=1"]
    assert f"run_dir={out / 'run-0003'}" in command.argv and "trainer=ddp" in command.argv
    assert hasattr(command, "checkpoint")  # preempted or timed-out array tasks are requeued and resume
    assert "squeue -j 4242" in capsys.readouterr().out
    # Lightning refuses a devices count that differs from the tasks per node: refused here, before submission.
    with pytest.raises(SystemExit) as info:
        sweep_script.main([str(tiny_sweep), "--out", str(tmp_path / "o2"), "--launcher", "slurm", "--gpus-per-run", "2",
                           "trainer=gpu"])
    assert info.value.code == 2 and "trainer.devices=2" in capsys.readouterr().err


def test_a_preempted_slurm_run_stops_its_command_and_is_resubmitted_with_resume(tmp_path):
    """What submitit calls on preemption or at the time limit (``checkpoint``), on a stand-in command."""
    import sys
    import threading

    from clipure_lit.sweeping.job import RequeueableRunCommand, group_alive, read_pid

    command = RequeueableRunCommand([sys.executable, "-c", "import time; time.sleep(120)", "run_dir=x"], cwd=str(tmp_path),
                                    log_path=str(tmp_path / "stdout.log"), pid_path=str(tmp_path / "pid"), grace_s=5)
    codes = []
    worker = threading.Thread(target=lambda: codes.append(command()))
    worker.start()
    for _ in range(200):
        if read_pid(tmp_path / "pid"):
            break
        threading.Event().wait(0.05)
    pgid = read_pid(tmp_path / "pid")
    again = command.checkpoint()
    worker.join(timeout=30)
    assert codes == [-15] and not group_alive(pgid)  # stopped by SIGTERM, nothing left in its process group
    assert again.function.argv[-2:] == ["run_dir=x", "resume=true"] and hasattr(again.function, "checkpoint")
    assert (tmp_path / "stdout.log").read_text().startswith("==== ")


def test_mcnemar_exact_values():
    from clipure_lit.utils.mcnemar import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert abs(mcnemar_exact(0, 10) - 2 / 1024) < 1e-12  # 2 * 0.5^10
    assert abs(mcnemar_exact(1, 9) - 2 * 11 / 1024) < 1e-12
