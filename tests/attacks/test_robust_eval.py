"""RobustEvalCallback in a real ``trainer.test``: per-sample results, worst case, flags, files, progress bar, and
the inference-mode guard."""

from __future__ import annotations

import csv
import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eval as eval_script
from clipure_lit.attacks.adapters import classifier_from_model
from clipure_lit.attacks.presets import attack_config, resolve_attacks
from clipure_lit.callbacks.robust_eval import RobustEvalCallback
from clipure_lit.errors import ConfigError
from clipure_lit.models.lit_module import ZeroShotLitModule

from conftest import needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

FAST = ["attack.run=[fast,fast@bpda_identity,transfer_clip,square]", "attack.entries.fast.base=apgd_ce", "attack.n_iter=2",
        "attack.n_queries=10", "attack.entries.aa_clipure.n_restarts=1", "attack.entries.aa_clipure.n_target_classes=2",
        "attack.eps=16", "trainer.num_threads=1"]


@needs_shared_cifar
def test_eval_reports_every_attack_and_the_worst_case_and_writes_the_files(tmp_path, capsys):
    metrics = eval_script.main(tiny_args(tmp_path, "data.num_samples=9", "data.batch_size=3", "attack.save_adversarial=true", *FAST))
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    names = ["fast", "fast@bpda_identity", "transfer_clip", "square"]
    assert list(results["robust"]) == names + ["worst_case"] and results == metrics | {"run_dir": results["run_dir"]}
    for name in names + ["worst_case"]:
        entry = results["robust"][name]
        assert entry["total"] == 9 and entry["ci95"][0] <= entry["acc"] <= entry["ci95"][1]
        assert results["robust"]["worst_case"]["correct"] <= min(entry["correct"], results["clean"]["correct"])
    assert results["attacks"]["transfer_clip"]["kind"] == "transfer" and results["attacks"]["square"]["kind"] == "black_box"
    assert results["attacks"]["fast"]["n_iter"] == 2 and results["attacks"]["fast"]["eps"] == pytest.approx(16 / 255)
    assert set(results["time_per_sample_s"]) >= {"clean", "checks", *(f"attack/{n}" for n in names)}
    assert results["flags"]["weak_grad/fast"] == 0.0 and "robust_near_clean" in results["flags"]
    assert results["clean"]["correct"] > 0 and results["robust"]["fast"]["correct"] < results["clean"]["correct"]

    rows = list(csv.DictReader(open(run / "samples.csv")))
    assert len(rows) == 9 and list(rows[0]) == ["sample_id", "label", "clean_pred", *(f"adv_pred/{n}" for n in names)]
    worst = sum(all(r[f"adv_pred/{n}"] == r["label"] for n in names) and r["clean_pred"] == r["label"] for r in rows)
    assert worst == results["robust"]["worst_case"]["correct"]  # the worst case is per sample

    from clipure_lit.config.loader import load_config
    from clipure_lit.data.datamodule import ZeroShotDataModule

    dm = ZeroShotDataModule(load_config([str(run / "config.yaml")]).data)
    dm.setup()
    saved = sorted((run / "adversarial" / "fast").glob("*.pt"))
    assert len(saved) == 3
    for path in saved:
        item = torch.load(path)
        x = torch.stack([dm.dataset.load(int(i))[0] for i in item["ids"]])
        assert (item["x_adv"] - x).abs().max() <= 16 / 255 + 1e-6
    out = capsys.readouterr().out
    assert "worst case (per sample)" in out and "bpda_identity" in out and "transfer:undefended" in out


def _toy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(-1)
    return classifier_from_model(net), DataLoader(TensorDataset(x, y, torch.arange(10)), batch_size=4)


def _trainer(tmp_path, callbacks, **kwargs):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_model_summary=False, enable_checkpointing=False,
                      default_root_dir=str(tmp_path), callbacks=callbacks, **kwargs)


def test_inference_mode_is_refused_at_setup_with_the_config_key(tmp_path):
    classifier, loader = _toy()
    callback = RobustEvalCallback(resolve_attacks(attack_config(run=["apgd_ce"], n_iter=2)))
    with pytest.raises(ConfigError, match=r"trainer\.inference_mode=false"):
        _trainer(tmp_path, [callback], enable_progress_bar=False).test(ZeroShotLitModule(classifier), loader, verbose=False)


def test_progress_bar_shows_running_robust_accuracy_and_flags_are_logged(tmp_path):
    classifier, loader = _toy()
    callback = RobustEvalCallback(resolve_attacks(attack_config(run=["apgd_ce"], n_iter=2, eps=16)))
    trainer = _trainer(tmp_path, [callback], inference_mode=False, enable_progress_bar=True)
    module = ZeroShotLitModule(classifier)
    (logged,) = trainer.test(module, loader, verbose=False)
    assert "rob/apgd_ce" in trainer.progress_bar_metrics
    assert logged["test/clean_acc"] == 1.0 and logged["test/robust_acc/apgd_ce"] < 1.0
    assert logged["test/robust_correct/apgd_ce"] == module.summary["robust"]["apgd_ce"]["correct"]
    assert logged["test/flags/zero_grad/apgd_ce"] == 0.0 and logged["test/flags/weak_grad/apgd_ce"] == 0.0
    assert "test/flags/robust_near_clean" in logged and "test/time_per_sample/attack/apgd_ce" in logged
