"""Every check that needs neither the model nor the images runs when the config is composed, so ``--cfg`` and a
sweep's dry run refuse what the run would: attacks and their gradient modes, value ranges, sample counts and the
local files a run reads (the decision on files: docs/errors.md, "missing files and weights"). Each refusal is exit
status 2 with one paragraph and no traceback, from ``eval.py`` and from ``eval.py --cfg`` alike."""

from __future__ import annotations

import pytest

import eval as eval_script
import sweep as sweep_script
from clipure_lit.config.loader import list_choices, load_config
from clipure_lit.errors import ConfigError, DataNotFoundError

from conftest import tiny_sweep_yaml

# (arguments, what the message must name): the cases seen, and one of each class of value.
REFUSED = [
    (["attack.run=[aa_clipure@ful]"], ["aa_clipure@ful", "'ful'", "attack.run=[aa_clipure@full]"]),
    (["attack.run=[aa_clipure@bpda]"], ["'bpda'", "aa_clipure@bpda_identity"]),
    (["attack.run=[apgd]"], ["Unknown attack 'apgd'", "apgd_ce"]),
    (["attack.eps=-4"], ["attack.eps=-4", "positive"]),
    (["attack.eps=0", "attack.norm=L2"], ["attack.eps=0", "positive"]),
    (["data.num_samples=0"], ["data.num_samples=0", "data.num_samples=null"]),
    (["attack.n_iter=0"], ["attack.n_iter=0", "attack.n_iter=null"]),
    (["attack.n_queries=-1"], ["attack.n_queries=-1"]),
    (["attack.eot_samples=0"], ["attack.eot_samples=0"]),
    (["attack.batch_size=0"], ["attack.batch_size=0", "attack.batch_size=null"]),
    (["data.batch_size=0"], ["data.batch_size=0"]),
    (["data.num_workers=-1"], ["data.num_workers=-1"]),
    (["data.image_size=0"], ["data.image_size=0"]),
    (["clip.logit_scale=0"], ["clip.logit_scale=0"]),
    (["attack.run=[mine]", "attack.entries.mine.base=apgd_ce", "attack.entries.mine.n_restarts=0"],
     ["attack.entries.mine.n_restarts"]),
    (["attack.run=[aa_clipure,aa_clipure]"], ["more than once"]),
    (["purifier=clipure_cos", "data.batch_size=2", "purifier.clipure_cos.momentum=1.5"], ["purifier.clipure_cos.momentum=1.5"]),
    (["resume=true"], ["resume=true", "run_dir"]),
]


def _refused_by_main(tmp_path, capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        eval_script.main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2, captured.err
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()  # before any folder or model
    return err


@pytest.mark.parametrize("argv, names", REFUSED, ids=[" ".join(argv) for argv, _ in REFUSED])
def test_refused_when_composed_by_eval_and_by_cfg(argv, names, tmp_path, capsys, monkeypatch):
    from clipure_lit import evaluation

    def started(*args, **kwargs):
        raise AssertionError("the run started although its config is refused")

    monkeypatch.setattr(evaluation, "run_eval", started)
    for extra in ([f"output_root={tmp_path / 'runs'}"], ["--cfg"]):
        err = _refused_by_main(tmp_path, capsys, [*argv, *extra])
        for fragment in names:
            assert fragment in err, (fragment, err)


def test_the_run_makes_the_same_checks_by_calling_them(tmp_path):
    """Where the run used to check (choosing the samples, resolving the attacks), it calls the composition's checks:
    a config built in Python without the loader gets the same message."""
    from omegaconf import OmegaConf

    from clipure_lit.attacks.presets import attack_config, resolve_attacks
    from clipure_lit.data.datamodule import ZeroShotDataModule

    composed = [str(_error(lambda: load_config(["data.num_samples=0"]))), str(_error(lambda: load_config(["attack.eps=-4"])))]
    data = OmegaConf.merge(load_config([]).data, {"num_samples": 0})
    at_setup = _error(lambda: ZeroShotDataModule(data).setup("test"))
    at_resolve = _error(lambda: resolve_attacks(attack_config(run=["apgd_ce"], eps=-4)))
    assert [str(at_setup), str(at_resolve)] == composed


def _error(call) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call()
    return info.value


# ------------------------------------------------------------------------------------------------------ files
def test_missing_local_files_are_refused_when_composed(tmp_path):
    absent = tmp_path / "absent"
    cases = {
        "data.root": ["data=image_folder", f"data.root={absent}"],
        "data.ids_file": [f"data.ids_file={absent}.txt"],
        "clip.pretrained": ["clip=tiny_random", f"clip.pretrained={absent}.safetensors"],
        "clip.tokenizer": ["clip=tiny_random", f"clip.tokenizer={absent}.py:tokenize"],
        "purifier.clipure_diff.prior.checkpoint": ["purifier=clipure_diff_tiny", f"purifier.clipure_diff.prior.checkpoint={absent}.pth"],
        "prompts.class_embeddings": [f"prompts.class_embeddings={absent}.safetensors"],
    }
    for key, argv in cases.items():
        with pytest.raises(DataNotFoundError) as info:
            load_config(argv)
        message = str(info.value)
        assert str(absent) in message and "\n" not in message, (key, message)
    assert "data.root" in str(_missing(["data=image_folder", f"data.root={absent}"]))  # names the key to fix


def _missing(argv) -> DataNotFoundError:
    with pytest.raises(DataNotFoundError) as info:
        load_config(argv)
    return info.value


def test_what_a_run_may_download_is_not_refused_offline_at_composition(monkeypatch):
    """Pretrained tags, hub ids and torchvision datasets with download=true compose offline; they are checked when the
    run starts (weights) or when the data is set up (downloads)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_config(["clip=vitb32_openai"])  # an OpenAI tag, not cached here
    load_config(["clip=fare2_vitl14"])  # an hf-hub id
    load_config(["purifier=diffpure"])  # a diffusers hub id
    load_config(["data=cifar10", "data.root=nowhere/cifar10"])  # data.download=true


def test_cfg_refuses_a_missing_data_root_but_help_shows_every_experiment(tmp_path, capsys):
    err = _refused_by_main(tmp_path, capsys, ["data=imagenet", "data.root=/nonexistent/imagenet/val", "--cfg"])
    assert "/nonexistent/imagenet/val" in err and "data.root" in err
    for experiment in list_choices("experiment"):
        if experiment.startswith("train_"):
            continue
        eval_script.main([f"experiment={experiment}", "--help"])
        out = capsys.readouterr().out
        assert "do not compose a valid config" not in out and f"  conf/experiment/{experiment}.yaml" in out
    # A suite's own config leaves the data to its entries, whose missing datasets the suite skips.
    eval_script.main(["experiment=imagenet_vitl14_paper", "--cfg"])
    assert "suite:" in capsys.readouterr().out


def test_sweep_dry_run_refuses_what_its_runs_would(tmp_path, capsys):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(tiny_sweep_yaml(**{"clip.init_seed": [0, 1]}).replace("test/robust_acc/worst_case", "test/clean_acc"))
    for extra, names in ((["data=image_folder", f"data.root={tmp_path / 'absent'}"], "absent"),
                         (["attack.run=[aa_clipure@ful]"], "aa_clipure@full")):
        with pytest.raises(SystemExit) as info:
            sweep_script.main([str(sweep_file), "--dry-run", f"--out={tmp_path / 'sweep'}", *extra])
        err = capsys.readouterr().err
        assert info.value.code == 2 and names in err and "Traceback" not in err, err


def test_a_suite_entry_the_run_would_refuse_is_refused_with_the_suite(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("suite:\n  name: mine\n  compare: defences\n  datasets:\n"
                     "    - {name: plain, overrides: [purifier=none]}\n"
                     "    - {name: cos, overrides: [purifier=clipure_cos]}\n")
    with pytest.raises(ConfigError, match=r"Suite 'mine', entry 'cos' .*data\.batch_size=32"):
        load_config([str(suite)])
    load_config([str(suite), "data.batch_size=2"])
