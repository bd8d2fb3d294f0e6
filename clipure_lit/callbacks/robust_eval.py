"""Robust evaluation inside Lightning's test loop: every configured attack runs on every test batch.

Needs ``Trainer(inference_mode=False)`` (attacks differentiate through the classifier). Per batch, after the
module's clean pass, each attack crafts adversarial examples on its attacked view (gradient mode, transfer
source) and adds the defended classifier's predictions as the column ``adv_pred/<attack>`` of
``pl_module.store``; the module gathers, de-duplicates, summarises and logs everything at the end of the epoch.
The masking checks (:mod:`clipure_lit.attacks.checks`) run once, on the first batch, and again on the summary.

Listeners (:meth:`RobustEvalCallback.add_listener`, e.g. the progress display) hear, on this process, when each
attack starts on a batch, where AutoAttack is within it (:class:`~clipure_lit.attacks.autoattack.SubAttackStep`) and
how many of the batch's samples stayed correct.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Protocol, Sequence

import pytorch_lightning as pl
import torch

from clipure_lit.attacks.autoattack import MessageDigest, SubAttackStep
from clipure_lit.attacks.checks import Finding, final_checks, first_batch_checks
from clipure_lit.attacks.execute import ViewCache, run_attack
from clipure_lit.attacks.presets import adapt_to_classes
from clipure_lit.attacks.spec import AttackSpec
from clipure_lit.errors import ConfigError
from clipure_lit.utils.console import CONSOLE

log = logging.getLogger(__name__)
checks_log = logging.getLogger("clipure_lit.attacks.checks")


class AttackListener(Protocol):
    """What a listener of :class:`RobustEvalCallback` implements (all calls on the process running the attack)."""

    def attack_started(self, name: str, batch_size: int) -> None: ...

    def sub_attack(self, name: str, step: SubAttackStep) -> None: ...

    def attack_finished(self, name: str, hits: torch.Tensor, seconds: float) -> None:
        """``hits``: ``[B]`` bool, sample i of the batch still correctly classified after the attack."""


def safe_name(name: str) -> str:
    """An attack name usable as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)


class RobustEvalCallback(pl.Callback):
    """Runs ``specs`` on every test batch and records per-sample adversarial predictions.

    Args:
        specs: resolved attacks (:func:`clipure_lit.attacks.presets.resolve_attacks`).
        run_dir: where ``adversarial/<attack>/`` goes when ``save_adversarial``.
        save_adversarial: save ``x_adv`` (float32), labels and predictions per batch.
        checks: run the gradient-masking checks.
    """

    def __init__(self, specs: Sequence[AttackSpec], run_dir: str | Path | None = None, save_adversarial: bool = False,
                 checks: bool = True) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"Attack names must be unique; got {names}.")
        self.specs = list(specs)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.save_adversarial = save_adversarial
        self.checks = checks
        if save_adversarial and self.run_dir is None:
            raise ConfigError("attack.save_adversarial=true needs a run folder (run_dir) to write to.")
        self._adapted: list[AttackSpec] | None = None
        self._views: ViewCache | None = None
        self._digest: MessageDigest | None = None
        self._counts: dict[str, list[int]] = {}
        self._listeners: list[AttackListener] = []

    def add_listener(self, listener: AttackListener) -> None:
        """Tell ``listener`` about every attack on every batch from now on (once per listener)."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    # --------------------------------------------------------------------------------------------- lifecycle
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage != "test":
            return
        if trainer.test_loop.inference_mode:
            raise ConfigError(
                "RobustEvalCallback needs gradients in the test loop, but the Trainer runs it under "
                "torch.inference_mode (Lightning's default). Fix: set trainer.inference_mode=false in the config, or "
                "pass Trainer(inference_mode=False)."
            )
        if self._final_checks not in pl_module.summary_hooks:
            pl_module.summary_hooks.append(self._final_checks)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._adapted = None
        self._views = ViewCache(pl_module.classifier)
        self._digest = MessageDigest()
        self._counts = {s.name: [0, 0] for s in self.specs}
        for spec in self.specs:
            pl_module.attack_info[spec.name] = spec.describe()

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if outputs is None:  # a batch finished by the run being resumed
            return
        x, y, ids = batch
        classifier = pl_module.classifier
        classifier.eval()
        if self._adapted is None:
            self._first_batch(pl_module, x, y, int(outputs["num_classes"]))
        parts = []
        for spec in self._adapted:
            for listener in self._listeners:
                listener.attack_started(spec.name, int(y.numel()))
            on_step = self._step_reporter(spec.name) if self._listeners else None
            outcome = run_attack(spec, classifier, self._views, x, y, ids, self._digest, on_step)
            pl_module.store.add(f"adv_pred/{spec.name}", ids, outcome.adv_pred)
            pl_module.add_time(f"attack/{spec.name}", outcome.seconds)
            hits = outcome.adv_pred.to(y.device) == y  # [B]
            correct = int(hits.sum())
            for listener in self._listeners:
                listener.attack_finished(spec.name, hits, outcome.seconds)
            counts = self._counts[spec.name]
            counts[0] += correct
            counts[1] += int(y.numel())
            pl_module.log(f"rob/{spec.name}", counts[0] / counts[1], prog_bar=True, logger=False, on_step=True,
                          on_epoch=False, batch_size=int(y.numel()))
            parts.append(f"{spec.name} {counts[0]}/{counts[1]}")
            if self.save_adversarial:
                self._save(trainer, spec, ids, y, outcome)
        clean = int((outputs["pred"] == y).sum())
        # This process's own counts (the progress display shows the global ones).
        log.debug("[rank %d] batch %d: %d/%d clean; robust so far: %s", trainer.global_rank, batch_idx, clean,
                  int(y.numel()), ", ".join(parts))
        if self._digest.warnings:
            pl_module.checks["autoattack_warnings"] = dict(self._digest.warnings)

    # ----------------------------------------------------------------------------------------------- helpers
    def _step_reporter(self, name: str):
        def report(step: SubAttackStep) -> None:
            for listener in self._listeners:
                listener.sub_attack(name, step)

        return report

    def _first_batch(self, pl_module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"Attacks need images in [0, 1] at attack resolution; this batch spans "
                             f"[{float(x.min()):.3f}, {float(x.max()):.3f}]. Fix: remove Normalize from the data transforms "
                             "(mean/std normalisation belongs inside the model).")
        self._adapted = [adapt_to_classes(s, num_classes) for s in self.specs]
        for spec in self._adapted:
            pl_module.attack_info[spec.name] = spec.describe()
            for note in spec.notes:
                log.info("attack %s: %s", spec.name, note)
        if not self.checks or pl_module.checks_done:
            return
        start = time.perf_counter()
        findings = first_batch_checks(pl_module.classifier, self._views, self._adapted, x.detach().float(), y)
        pl_module.add_time("checks", time.perf_counter() - start)
        record(pl_module, findings)

    def _final_checks(self, pl_module, summary: dict) -> None:
        """Summary hook: called by the module with the gathered summary (identical on every rank)."""
        if self.checks:
            record(pl_module, final_checks(summary, self._adapted or self.specs))

    def _save(self, trainer: pl.Trainer, spec: AttackSpec, ids: torch.Tensor, y: torch.Tensor, outcome) -> None:
        folder = self.run_dir / "adversarial" / safe_name(spec.name)
        folder.mkdir(parents=True, exist_ok=True)
        first, last = int(ids.min()), int(ids.max())
        torch.save({"ids": ids.cpu(), "label": y.cpu(), "x_adv": outcome.x_adv.float().cpu(),
                    "adv_pred": outcome.adv_pred.cpu(), "attack": spec.describe()},
                   folder / f"rank{trainer.global_rank}_ids{first}-{last}.pt")


def record(pl_module, findings: list[Finding]) -> None:
    """Store findings on the module and log each raised one as a warning (once per process): its full message goes
    to the log file, the console gets one line naming the flag (the summary prints the message in full)."""
    for f in findings:
        pl_module.add_finding(f.flag, f.raised, f.value, f.message)
        if f.raised:
            checks_log.warning("[flag %s] %s See docs/evaluation.md#flags.", f.flag, f.message, extra={CONSOLE: False})
            checks_log.warning("masking flag raised: %s (explained in the summary)", f.flag)
