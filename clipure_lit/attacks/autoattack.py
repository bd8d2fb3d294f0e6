"""Adapter over ``pyautoattack`` (fra31's AutoAttack, never vendored): one :class:`AttackSpec` -> one
``AutoAttack`` object with the spec's budgets, run with the caller's RNG state protected.

pyautoattack 0.2.0 quirks handled here: keyword-only constructor (``attacks=``, not ``attacks_to_run=``);
``run_standard_evaluation(x, y, batch_size=)`` returns ``(x_adv, y_adv)``; APGD's step-size schedule
(``n_iter_2``, ``n_iter_min``, ``size_decr``) is computed from ``n_iter`` in ``__init__`` and must be recomputed
when ``n_iter`` changes; the global torch RNG is reseeded by every attack; messages go to the
``auto-attack`` logger (progress at DEBUG, its checks at WARNING); its dynamic-defence check counts autograd calls
in a module-level dict that it never resets, so after one model that differentiates inside its forward (CLIPure-Diff)
every later run in the process would warn "dynamic defense": :func:`run_autoattack` resets it before each run.

Progress inside one call (:class:`SubAttackMonitor`) comes from pyautoattack itself, not from a copy of its loop:
its DEBUG messages name the sub-attack being run ("running apgd-t") and each internal batch it finished
("apgd-t - 1/2 - ..."), and each of its attack objects calls ``attack_single_run`` once per restart (per target
class and restart for the targeted attacks).
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from pyautoattack import AutoAttack
from pyautoattack import checks as aa_checks
from torch import Tensor, nn

from clipure_lit.utils.seed import cuda_devices
from clipure_lit.attacks.spec import AttackSpec
from clipure_lit.attacks.config import AutoAttackVersion

AA_LOGGER = "auto-attack"


def set_apgd_iterations(apgd, n_iter: int) -> None:
    """Set an APGD attack's iterations and the schedule fields derived from them (as in its ``__init__``)."""
    apgd.n_iter = int(n_iter)
    apgd.n_iter_orig = int(n_iter)
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def build_autoattack(model: nn.Module, spec: AttackSpec, device: torch.device | str):
    """An ``AutoAttack`` configured by ``spec`` (unset budgets keep AutoAttack's values for the version)."""
    custom = spec.version == AutoAttackVersion.custom
    aa = AutoAttack(model, attacks=list(spec.attacks) if custom else None, device=device, eps=float(spec.eps),
                    norm=spec.norm.value, seed=int(spec.seed), version=spec.version.value)
    if spec.n_iter is not None:
        set_apgd_iterations(aa.apgd, spec.n_iter)
        set_apgd_iterations(aa.apgd_targeted, spec.n_iter)
        aa.fab.n_iter = int(spec.n_iter)
    if spec.n_restarts is not None:
        aa.apgd.n_restarts = int(spec.n_restarts)
    if spec.n_target_classes is not None:
        aa.apgd_targeted.n_target_classes = int(spec.n_target_classes)
        aa.fab.n_target_classes = int(spec.n_target_classes)
    if spec.n_queries is not None:
        aa.square.n_queries = int(spec.n_queries)
    if spec.eot_samples is not None:
        aa.apgd.eot_iter = int(spec.eot_samples)
        aa.apgd_targeted.eot_iter = int(spec.eot_samples)
    return aa


class MessageDigest(logging.Filter):
    """Counts AutoAttack's messages at INFO and above and lets each distinct one through once.

    Messages are compared with their numbers masked, so "there are 3 points with zero gradient" and "... 5
    points ..." count as one kind. :attr:`counts` maps the first text of each kind to its number of occurrences.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.warnings: dict[str, int] = {}
        self._first: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        text = record.getMessage()
        key = re.sub(r"\d+(\.\d+)?", "#", text)
        first = self._first.setdefault(key, text)
        self.counts[first] = self.counts.get(first, 0) + 1
        if record.levelno >= logging.WARNING:
            self.warnings[first] = self.counts[first]
        return self.counts[first] == 1

    @contextmanager
    def installed(self) -> Iterator["MessageDigest"]:
        logger = logging.getLogger(AA_LOGGER)
        logger.addFilter(self)
        try:
            yield self
        finally:
            logger.removeFilter(self)


@dataclass(frozen=True)
class SubAttackStep:
    """Where AutoAttack is within one call: sub-attack ``attack`` (its own name: ``apgd-ce``, ``apgd-t``, ``fab-t``,
    ``square``, ...), the ``run``-th of its ``runs`` planned restarts (target classes x restarts for the targeted
    ones; fewer are run when every point is already broken), on internal batch ``part`` of ``parts`` (AutoAttack
    splits the points still robust into batches of ``attack.batch_size``)."""

    attack: str
    run: int
    runs: int
    part: int = 1
    parts: int = 1

    def describe(self) -> str:
        """``apgd-t 3/9`` (the third of nine runs), ``apgd-t starting`` before its first run, and with several internal
        batches ``apgd-t 3/9 (batch 2/4)``."""
        text = f"{self.attack} {self.run}/{self.runs}" if self.run else f"{self.attack} starting"
        return text + (f" (batch {self.part}/{self.parts})" if self.parts > 1 else "")


def planned_runs(aa, attack: str) -> int:
    """How many times ``attack``'s object calls ``attack_single_run`` on one internal batch (at most)."""
    if attack in ("apgd-ce", "apgd-dlr"):
        return int(aa.apgd.n_restarts)
    if attack == "apgd-t":
        return int(aa.apgd_targeted.n_target_classes) * int(aa.apgd_targeted.n_restarts)
    if attack == "fab":
        return int(aa.fab.n_restarts)
    if attack == "fab-t":  # AutoAttack runs it with one restart per target class
        return int(aa.fab.n_target_classes)
    if attack == "square":
        return int(aa.square.n_restarts)
    return 1


class SubAttackMonitor(logging.Handler):
    """Reports AutoAttack's position to ``on_step(SubAttackStep)`` while :meth:`installed` (module docstring).

    Reads AutoAttack's DEBUG messages, so the ``auto-attack`` logger is set to DEBUG while installed (its records
    still reach the run's log file; the console shows them only with ``--verbose``).
    """

    _RUNNING = re.compile(r"^running (\S+)$")
    _PART_DONE = re.compile(r"^(\S+) - (\d+)/(\d+) - ")

    def __init__(self, aa, on_step: Callable[[SubAttackStep], None]) -> None:
        super().__init__(level=logging.DEBUG)
        self.aa = aa
        self.on_step = on_step
        self.attack: str | None = None
        self.run = 0
        self.part, self.parts = 1, 1

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        started = self._RUNNING.match(text)
        if started:
            self.attack, self.run, self.part, self.parts = started.group(1), 0, 1, 1
            self._report()
            return
        done = self._PART_DONE.match(text)
        if done and done.group(1) == self.attack:
            self.part, self.parts, self.run = int(done.group(2)) + 1, int(done.group(3)), 0
            self.part = min(self.part, self.parts)

    def _report(self) -> None:
        if self.attack is not None:
            self.on_step(SubAttackStep(self.attack, self.run, planned_runs(self.aa, self.attack), self.part, self.parts))

    def _counted(self, method):
        def attack_single_run(*args, **kwargs):
            self.run += 1
            self._report()
            return method(*args, **kwargs)

        return attack_single_run

    @contextmanager
    def installed(self) -> Iterator["SubAttackMonitor"]:
        logger = logging.getLogger(AA_LOGGER)
        level = logger.level
        objects = [self.aa.apgd, self.aa.apgd_targeted, self.aa.fab, self.aa.square]
        for obj in objects:  # an instance attribute shadows the class's method for this AutoAttack only
            obj.attack_single_run = self._counted(obj.attack_single_run)
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.DEBUG:
            logger.setLevel(logging.DEBUG)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)
            for obj in objects:
                obj.__dict__.pop("attack_single_run", None)


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec,
                   digest: MessageDigest | None = None,
                   on_step: Callable[[SubAttackStep], None] | None = None) -> tuple[Tensor, Tensor]:
    """Run AutoAttack on one batch.

    Args:
        model: images ``[B, 3, H, W]`` in [0, 1] -> logits ``[B, K]``; called in its current mode.
        x, y: the batch and its labels (AutoAttack attacks only the points ``model`` classifies correctly).
        spec: what to run; ``spec.batch_size`` (None: ``B``) is AutoAttack's internal batch size.
        digest: collects (and de-duplicates) AutoAttack's log messages.
        on_step: called with a :class:`SubAttackStep` whenever AutoAttack starts a sub-attack or a restart.

    Returns:
        ``(x_adv [B, 3, H, W], y_adv [B])``: adversarial images (``x`` where no attack succeeded) and ``model``'s
        predictions on them, as returned by ``run_standard_evaluation``. The global RNG state is unchanged.
    """
    digest = digest or MessageDigest()
    for name in aa_checks.funcs:  # the dynamic-defence check is then about this model (module docstring)
        aa_checks.funcs[name] = 0
    with torch.random.fork_rng(devices=cuda_devices(x)), torch.enable_grad(), digest.installed():
        aa = build_autoattack(model, spec, x.device)
        monitor = SubAttackMonitor(aa, on_step).installed() if on_step is not None else nullcontext()
        with monitor:
            x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=int(spec.batch_size or x.shape[0]))
    return x_adv.detach(), y_adv.detach()
