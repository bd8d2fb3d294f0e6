"""Growing a run: a larger data.num_samples on a finished run with resume=true evaluates only the samples it lacks
and gives the results.json numbers and samples.csv of a fresh run at the larger size; another selection is refused."""

from __future__ import annotations

import json

import pytest

import eval as eval_script
from clipure_lit.errors import ConfigError

from conftest import needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

# An attack with random starts and a batch-coupled purifier: results depend on the batch, so equality needs the
# grown run's batches to be a fresh run's.
SETTINGS = ["attack.run=[fast]", "attack.entries.fast.base=apgd_ce", "attack.n_iter=2", "attack.eps=1",
            "purifier=clipure_cos", "purifier.clipure_cos.batch_size=null", "trainer.num_threads=1"]


def _numbers(results: dict) -> dict:
    return {k: results[k] for k in ("num_samples", "clean", "robust", "flags")}


def _batches(run_dir) -> list[list[int]]:
    lines = (run_dir / "progress" / "rank0.jsonl").read_text().splitlines()
    return [json.loads(line)["columns"]["label"]["ids"] for line in lines]


@needs_shared_cifar
@pytest.mark.parametrize("small, large, batch", [(8, 16, 4), (6, 11, 4)])
def test_grown_run_equals_fresh_run(tmp_path, small, large, batch):
    fresh = eval_script.main(tiny_args(tmp_path / "fresh", f"data.num_samples={large}", f"data.batch_size={batch}",
                                       *SETTINGS))
    args = tiny_args(tmp_path / "grown", f"data.batch_size={batch}", *SETTINGS)
    eval_script.main(args + [f"data.num_samples={small}"])
    before = len(_batches(tmp_path / "grown" / "run"))
    grown = eval_script.main(args + [f"data.num_samples={large}", "resume=true"])
    assert _numbers(grown) == _numbers(fresh)
    assert (tmp_path / "grown" / "run" / "samples.csv").read_text() == (tmp_path / "fresh" / "run" / "samples.csv").read_text()
    new = [i for ids in _batches(tmp_path / "grown" / "run")[before:] for i in ids]
    # Only the samples the small run lacks; a partial last batch of the small run is evaluated again in the larger
    # run's batch (6 -> 11 at batch 4: the 5th and 6th samples again, within the batch of the 5th to 8th).
    order = [i for ids in _batches(tmp_path / "fresh" / "run") for i in ids]  # the fresh run's samples, in order
    assert new == order[small - small % batch:]
    again = eval_script.main(args + [f"data.num_samples={large}", "resume=true"])  # the grown run resumes as itself
    assert _numbers(again) == _numbers(fresh) and len(_batches(tmp_path / "grown" / "run")) == before + len(new) // batch + (len(new) % batch > 0)


@needs_shared_cifar
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_run_of_two_processes_grows_like_a_fresh_one(tmp_path):
    """Under DDP each process skips the batches it finished; the grown run's batches (the sampler's, per process)
    are a fresh two-process run's, so even the batch-coupled purifier gives its numbers and samples.csv."""
    ddp = ["trainer=ddp_cpu", "data.batch_size=4", *SETTINGS]
    fresh = eval_script.main(tiny_args(tmp_path / "fresh", "data.num_samples=16", *ddp))
    args = tiny_args(tmp_path / "grown", *ddp)
    eval_script.main(args + ["data.num_samples=8"])
    grown = eval_script.main(args + ["data.num_samples=16", "resume=true"])
    assert _numbers(grown) == _numbers(fresh)
    assert (tmp_path / "grown" / "run" / "samples.csv").read_text() == (tmp_path / "fresh" / "run" / "samples.csv").read_text()
    progress = tmp_path / "grown" / "run" / "progress"
    evaluated = [i for path in sorted(progress.glob("rank*.jsonl")) for line in path.read_text().splitlines()
                 for i in json.loads(line)["columns"]["label"]["ids"]]
    assert len(evaluated) == 16 and len(set(evaluated)) == 16  # the first 8 once, then only the 8 new ones


@needs_shared_cifar
def test_growth_refusals(tmp_path):
    from clipure_lit.config.loader import load_config
    from clipure_lit.evaluation import run_eval

    args = tiny_args(tmp_path, "data.batch_size=4", "trainer.num_threads=1", "data.subset=random")
    eval_script.main(args + ["data.num_samples=8"])
    with pytest.raises(ConfigError, match=r"data.num_samples: 8 -> 4"):  # shrinking is not growing
        run_eval(load_config(args + ["data.num_samples=4", "resume=true"]))
    with pytest.raises(ConfigError, match=r"data.subset_seed: 0 -> 5"):  # other keys still refuse
        run_eval(load_config(args + ["data.num_samples=16", "data.subset_seed=5", "resume=true"]))
    # The ids are compared, not only the keys: a finished sample that the larger selection lacks (the dataset's
    # files changed), or another order, is refused.
    progress = tmp_path / "run" / "progress" / "rank0.jsonl"
    kept = progress.read_text()
    first = json.loads(kept.splitlines()[0])
    for ids, why in ((first["columns"]["label"]["ids"][:-1] + [99999], "is not among the larger run's samples"),
                     (first["columns"]["label"]["ids"][::-1], "orders its samples differently")):
        first["columns"]["label"]["ids"] = ids
        progress.write_text(json.dumps(first) + "\n" + "\n".join(kept.splitlines()[1:]) + "\n")
        with pytest.raises(ConfigError, match=why):
            run_eval(load_config(args + ["data.num_samples=16", "resume=true"]))
    progress.write_text(kept)
    assert run_eval(load_config(args + ["data.num_samples=16", "resume=true"]))["num_samples"] == 16


@needs_shared_cifar
@pytest.mark.slow  # about 25 s: the tiny experiment's attacks on 16 samples
def test_readme_growing_commands_run_as_written(tmp_path):
    """The two commands of the README's "Growing a run", with the run folder and text cache under ``tmp_path``."""
    import re
    import shlex

    from conftest import PROJECT_ROOT

    section = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8").split("### Growing a run", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["python", "eval.py"]] * 2
    tiny = [f"prompts.cache_dir={tmp_path / 'text'}", "trainer.num_threads=1", "trainer.enable_progress_bar=false"]
    results = [eval_script.main([a.replace("runs/grow", str(tmp_path / "grow")) for a in c[2:]] + tiny) for c in commands]
    assert [r["num_samples"] for r in results] == [8, 16]
    assert len({i for ids in _batches(tmp_path / "grow") for i in ids}) == sum(map(len, _batches(tmp_path / "grow"))) == 16
