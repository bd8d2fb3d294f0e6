"""The progress display in a real ``trainer.test``: its running robust accuracy ends equal to the run's final number,
it hears AutoAttack's sub-attacks and restarts within a batch, logs one line per batch without a terminal, and draws
a live display (and no console lines) on one."""

from __future__ import annotations

import io
import logging

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clipure_lit.attacks.adapters import classifier_from_model
from clipure_lit.attacks.presets import attack_config, resolve_attacks
from clipure_lit.callbacks.progress import EvalProgress, accuracy_text
from clipure_lit.callbacks.robust_eval import RobustEvalCallback
from clipure_lit.models.lit_module import ZeroShotLitModule

LOGGER = "clipure_lit.callbacks.progress"


class Recording(EvalProgress):
    """Keeps every sub-attack step it is told about."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = []

    def sub_attack(self, name, step):
        self.steps.append((name, step))
        super().sub_attack(name, step)


def _run(tmp_path, progress: EvalProgress, caplog):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(-1)
    y[:3] = (y[:3] + 1) % 10  # three wrong: clean accuracy 70%
    loader = DataLoader(TensorDataset(x, y, torch.arange(10)), batch_size=4)  # batches of 4, 4, 2
    # A small budget, so that some points survive APGD-CE and APGD-T runs over its target classes.
    specs = resolve_attacks(attack_config(run=["aa_clipure", "square"], n_iter=2, eps=3, n_queries=5,
                                          entries={"aa_clipure": {"n_target_classes": 2}}))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_model_summary=False, enable_checkpointing=False,
                         inference_mode=False, default_root_dir=str(tmp_path),
                         callbacks=[RobustEvalCallback(specs, checks=False), progress])
    module = ZeroShotLitModule(classifier_from_model(net))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trainer.test(module, loader, verbose=False)
    return module


def test_running_robust_accuracy_ends_equal_to_the_final_numbers_and_one_line_per_batch(tmp_path, caplog):
    progress = Recording(title="toy", live=False)
    module = _run(tmp_path, progress, caplog)
    summary = module.summary
    expected = {"clean": [summary["clean"]["correct"], 10]}
    expected |= {name: [summary["robust"][name]["correct"], 10] for name in ("aa_clipure", "square")}
    assert progress.running == expected == progress.final
    assert 0 < expected["aa_clipure"][0] < 7  # the attack breaks some points, not all
    lines = [r for r in caplog.records if r.name == LOGGER and getattr(r, "console", True)]
    assert len(lines) == 3
    last = lines[-1].getMessage()
    assert last.startswith("toy: 10/10 samples (batch 3/3)") and "ETA" in last
    assert f"aa_clipure {accuracy_text(*expected['aa_clipure'])}" in last and "[" in accuracy_text(*expected["aa_clipure"])
    attacks = {(name, step.attack) for name, step in progress.steps}
    assert {("aa_clipure", "apgd-ce"), ("aa_clipure", "apgd-t"), ("square", "square")} <= attacks
    targeted = [step for name, step in progress.steps if step.attack == "apgd-t" and step.run > 0]
    assert targeted and max(s.run for s in targeted) == 2 and all(s.runs == 2 for s in targeted)
    assert targeted[-1].describe() == "apgd-t 2/2"
    assert [s.describe() for n, s in progress.steps if s.attack == "apgd-t" and s.run == 0][0] == "apgd-t starting"


def test_on_a_terminal_a_live_display_replaces_the_console_lines(tmp_path, caplog):
    from rich.console import Console

    screen = io.StringIO()
    progress = EvalProgress(title="toy", console=Console(file=screen, force_terminal=True, width=160))
    module = _run(tmp_path, progress, caplog)
    text = screen.getvalue()
    final = module.summary["robust"]["aa_clipure"]
    assert "toy: clean" in text and "aa_clipure" in text and f"robust {accuracy_text(final['correct'], 10)}" in text
    assert all(getattr(r, "console", True) is False for r in caplog.records if r.name == LOGGER)  # log file only


def test_the_padding_of_a_distributed_sampler_is_not_counted():
    """7 samples over 2 processes in batches of 2: the sampler pads its global order to 8 with a repeat of sample 0,
    which rank 1's second batch holds last (global position 7); every other item, and every item without such a sampler, is real."""
    from types import SimpleNamespace

    from torch.utils.data import DistributedSampler

    data = TensorDataset(torch.arange(7))
    seen = {}
    for rank in (0, 1):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
        loader = DataLoader(data, batch_size=2, sampler=sampler)
        trainer = SimpleNamespace(test_dataloaders=[loader])
        for b, (ids,) in enumerate(loader):
            padded = EvalProgress._padded(trainer, b, len(ids), torch.device("cpu"))
            seen[rank, b] = (ids.tolist(), padded.tolist())
    assert seen == {(0, 0): ([0, 2], [False, False]), (0, 1): ([4, 6], [False, False]),
                    (1, 0): ([1, 3], [False, False]), (1, 1): ([5, 0], [False, True])}
    real = [i for (ids, pad) in seen.values() for i, p in zip(ids, pad) if not p]
    assert sorted(real) == list(range(7)) and sum(p for _, pad in seen.values() for p in pad) == 1
    plain = SimpleNamespace(test_dataloaders=[DataLoader(data, batch_size=2)])
    assert not EvalProgress._padded(plain, 3, 1, torch.device("cpu")).any()
