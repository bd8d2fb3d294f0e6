"""Merging the shards of one evaluation (``eval.py ... --shards N --merge``), on shards run in this process as
ordinary eval.py runs (``data.num_shards`` / ``data.shard``): the merged run folder equals the one-process run's
(samples.csv byte for byte, every metric, flag and check of results.json, the sample-id hash); a shard whose config
or code differs, a missing or an unfinished shard is refused with one paragraph naming it (exit status 2, nothing
written); the status view reads the shards; ``--launcher slurm`` submits the N shards as one job array."""

from __future__ import annotations

import json
import shutil

import pytest

import eval as eval_script

from conftest import needs_shared_cifar
from test_slurm_outcomes import FakeSlurm

pytestmark = needs_shared_cifar

# 4 batches of 2; one attack of one iteration: a few seconds per run on a CPU.
ARGS = ["experiment=tiny", "logger=none", "trainer.enable_progress_bar=false", "trainer.num_threads=1",
        "data.num_samples=8", "data.batch_size=2", "attack.run=[apgd_ce]", "attack.n_iter=1"]
METRICS = ("num_samples", "clean", "robust", "attacks", "flags", "flag_messages", "checks", "purifiers")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A one-process run (``one``) and the same evaluation as 2 shards of a shard set (``set``), not merged."""
    root = tmp_path_factory.mktemp("shards")
    cache = f"prompts.cache_dir={root / 'text'}"
    eval_script.main([*ARGS, cache, f"run_dir={root / 'one'}"])
    for k in range(2):
        eval_script.main([*ARGS, cache, "data.num_shards=2", f"data.shard={k}", f"run_dir={root / 'set' / 'shards' / str(k)}"])
    return root


def _merge(root, folder, *extra):
    return eval_script.main([*ARGS, f"prompts.cache_dir={root / 'text'}", f"run_dir={folder}", "--shards", "2", *extra])


def _refused(root, folder, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _merge(root, folder, "--merge")
    assert exc.value.code == 2 and not (folder / "results.json").exists()
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot merge") and "Traceback" not in err
    return err


def test_merged_shards_equal_the_one_process_run(runs, tmp_path, capsys):
    folder = tmp_path / "set"
    shutil.copytree(runs / "set", folder)
    merged = _merge(runs, folder, "--merge")
    one = json.loads((runs / "one" / "results.json").read_text())
    assert (folder / "samples.csv").read_bytes() == (runs / "one" / "samples.csv").read_bytes()
    assert {k: merged[k] for k in METRICS} == {k: one[k] for k in METRICS}
    assert json.loads((folder / "results.json").read_text()) == merged
    assert merged["environment"]["sample_ids_sha256"] == one["environment"]["sample_ids_sha256"]
    assert set(merged["time_per_sample_s"]) == set(one["time_per_sample_s"])  # times: summed over shards, not equal
    assert {"config.yaml", "environment.json", "timings.json", "results.png", "log.txt"} <= {p.name for p in folder.iterdir()}
    assert "clean" in capsys.readouterr().out  # the one-process summary table

    capsys.readouterr()
    _merge(runs, folder, "--status")
    status = capsys.readouterr().out
    assert "shards: 2: 2 done (0, 1)" in status and "samples: 8 of 8 done" in status
    assert "robust: apgd_ce" in status and "worst case" in status


def test_a_shard_whose_config_differs_is_refused(runs, tmp_path, capsys):
    folder = tmp_path / "set"
    shutil.copytree(runs / "set", folder)
    saved = folder / "shards" / "1" / "progress" / "config.json"
    config = json.loads(saved.read_text())
    config["config"]["attack"]["eps"] = 8.0
    saved.write_text(json.dumps(config))
    err = _refused(runs, folder, capsys)
    assert "shard 1" in err and "attack.eps: None -> 8.0" in err and "shard 0" not in err


def test_a_shard_run_by_other_code_is_refused(runs, tmp_path, capsys):
    folder = tmp_path / "set"
    shutil.copytree(runs / "set", folder)
    env_file = folder / "shards" / "1" / "environment.json"
    env = json.loads(env_file.read_text())
    commit = env["git_commit"]
    env["git_commit"] = "0123abc"
    env_file.write_text(json.dumps(env))
    err = _refused(runs, folder, capsys)
    assert f"shard 1 against shard 0: git commit {commit} -> 0123abc" in err


def test_a_missing_or_unfinished_shard_is_refused_with_the_command_that_finishes_it(runs, tmp_path, capsys):
    folder = tmp_path / "set"
    shutil.copytree(runs / "set", folder)
    shutil.rmtree(folder / "shards" / "1")
    err = _refused(runs, folder, capsys)
    assert f"shard 1 ({folder / 'shards' / '1'}: not started)" in err and "python eval.py experiment=tiny" in err
    assert "--shards 2`" in err and "--merge`" not in err

    shutil.copytree(runs / "set" / "shards" / "1", folder / "shards" / "1")
    (folder / "shards" / "1" / "results.json").unlink()
    err = _refused(runs, folder, capsys)
    assert f"shard 1 ({folder / 'shards' / '1'}: stopped or running, 4 samples done)" in err and "shard 0" not in err


def test_the_status_of_a_single_run_folder(runs, capsys):
    capsys.readouterr()
    eval_script.main([f"run_dir={runs / 'one'}", "--status"])
    out = capsys.readouterr().out
    assert "state: done" in out and "samples: 8 of 8 done; ETA 0:00:00" in out and "clean" in out


def test_slurm_submits_the_shards_as_one_job_array(tmp_path, monkeypatch, capsys):
    slurm = FakeSlurm(tmp_path, monkeypatch)
    folder = tmp_path / "set"
    eval_script.main([*ARGS, f"run_dir={folder}", "--shards", "3", "--launcher", "slurm", "--time", "30"])
    assert slurm.submissions() == 1
    script = slurm.scripts()[0]
    assert "--array=0-2%3" in script and "--time=30" in script
    state = json.loads((folder / "shards" / "state.json").read_text())
    assert [state[str(k)]["job_id"] for k in range(3)] == ["4242_0", "4242_1", "4242_2"]
    out = capsys.readouterr().out
    assert "submitted 3 shard(s) as SLURM job 4242" in out and "--shards 3 --merge" in out


def _as_runs_elsewhere(runs, root):
    """The shard set's two runs as a W&B agent leaves them: ``<root>/<run id>/``, named after no shard."""
    root.mkdir(parents=True)
    shutil.copytree(runs / "set" / "shards" / "1", root / "x1f3")  # listed first: the shard is read from the config
    shutil.copytree(runs / "set" / "shards" / "0", root / "y9a2")
    return root


def test_shard_runs_launched_elsewhere_merge_from_their_folder(runs, tmp_path, capsys):
    sweep = _as_runs_elsewhere(runs, tmp_path / "wandb" / "sweep1")
    capsys.readouterr()
    _merge(runs, tmp_path / "merged", "--status", "--from", str(sweep))
    status = capsys.readouterr().out
    assert "shards: 2: 2 done (0, 1)" in status and "samples: 8 of 8 done" in status
    merged = _merge(runs, tmp_path / "merged", "--merge", "--from", str(sweep))
    assert (tmp_path / "merged" / "samples.csv").read_bytes() == (runs / "one" / "samples.csv").read_bytes()
    one = json.loads((runs / "one" / "results.json").read_text())
    assert {k: merged[k] for k in METRICS} == {k: one[k] for k in METRICS}
    assert merged["shards"]["folders"] == [str(sweep / "y9a2"), str(sweep / "x1f3")]


def _refused_from(root, folder, capsys, *sources) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _merge(root, folder, "--merge", *[a for s in sources for a in ("--from", str(s))])
    assert exc.value.code == 2 and not (folder / "results.json").exists()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_runs_found_elsewhere_that_are_not_one_run_per_shard_are_refused(runs, tmp_path, capsys):
    sweep = _as_runs_elsewhere(runs, tmp_path / "sweep")
    out = tmp_path / "merged"
    shutil.copytree(runs / "set" / "shards" / "0", sweep / "z0b7")  # an earlier attempt of shard 0 kept beside it
    err = _refused_from(runs, out, capsys, sweep)
    assert f"2 runs of shard 0 ({sweep / 'y9a2'}, {sweep / 'z0b7'})" in err and "Fix: move" in err
    shutil.rmtree(sweep / "z0b7")

    shutil.copytree(runs / "one", sweep / "whole")  # not a shard: another run in the folder
    err = _refused_from(runs, out, capsys, sweep)
    assert f"{sweep / 'whole'} (data.num_shards=1, data.shard=None)" in err and "not shards of this 2-shard set" in err
    shutil.rmtree(sweep / "whole")

    shutil.rmtree(sweep / "x1f3")  # shard 1 not started yet
    err = _refused_from(runs, out, capsys, sweep)
    assert f"1 of the 2 shards have no run under {sweep}: shard(s) 1" in err
    capsys.readouterr()
    _merge(runs, out, "--status", "--from", str(sweep))
    assert "shards: 2: 1 done (0), 0 running, 0 stopped, 1 not started (1)" in capsys.readouterr().out

    err = _refused_from(runs, out, capsys, tmp_path / "nowhere")
    assert f"--from '{tmp_path / 'nowhere'}' is not a folder" in err
    (tmp_path / "empty").mkdir()
    err = _refused_from(runs, out, capsys, tmp_path / "empty")
    assert "holds no run folder" in err
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _merge(runs, out, "--from", str(sweep))  # a launch: --from reads runs launched elsewhere
    assert exc.value.code == 2 and "--from reads shard runs launched elsewhere" in capsys.readouterr().err


def test_shards_whose_sample_ids_overlap_or_leave_samples_out_are_refused(runs, tmp_path, capsys):
    folder = tmp_path / "set"
    shutil.copytree(runs / "set", folder)
    shutil.rmtree(folder / "shards" / "1")
    shutil.copytree(folder / "shards" / "0", folder / "shards" / "1")  # shard 0's samples twice, shard 1's never
    err = _refused(runs, folder, capsys)
    assert "4 sample id(s) were evaluated by more than one shard" in err and "by shards 0" in err

    shutil.rmtree(folder / "shards" / "1")
    shutil.copytree(runs / "set" / "shards" / "1", folder / "shards" / "1")
    progress = folder / "shards" / "1" / "progress" / "rank0.jsonl"
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text("".join(lines[:-1]))  # the store lost its last batch: 2 samples no shard evaluated
    err = _refused(runs, folder, capsys)
    assert "the shards' 6 sample ids are not the 8 selected ones: 2 missing" in err
