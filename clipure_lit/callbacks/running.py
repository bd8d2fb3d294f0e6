"""Running accuracies of an evaluation, batch by batch, and the live numbers a logger (W&B, CSV) records from them.

After every batch of the test loop the counts grow by that batch: per column (``clean``, each attack, and
``worst_case`` when there are several attacks: a sample counts as robust only if it survived every attack) the
number of correct samples and of samples seen. They count unique samples: the positions a ``DistributedSampler``
pads with repeated samples are left out, and under DDP every process adds its batch with one small all-reduce, so
every rank holds the global counts. A resumed run starts from the counts of the samples its earlier launches
finished (restored from the module's store on the process that keeps them), so the running numbers always cover
every finished sample.

With ``log_live=True`` rank 0 logs, after each evaluated batch, to every logger of the trainer
(``logger.log_metrics(metrics, step=samples_done)``):

* ``live/samples_done``: unique samples finished (the step of every live metric; W&B's x-axis key
  ``trainer/global_step`` takes this value);
* ``live/clean_acc``, ``live/robust_acc/<attack>`` and, with any attack, ``live/robust_acc/worst_case``: accuracy
  over the finished samples, a fraction in [0, 1].

These are the numbers over the first samples in the evaluation's order, not the run's result; at the end they equal
the final ``test/`` numbers. A W&B sweep's ``early_terminate`` acts on them (each log is one "iteration").
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DistributedSampler

CLEAN = "clean"
WORST = "worst_case"
LIVE_PREFIX = "live/"


def live_metric_names(attacks: list[str]) -> list[str]:
    """Every metric name :class:`RunningAccuracy` logs for a run with these attacks (in this order)."""
    names = [f"{LIVE_PREFIX}samples_done", f"{LIVE_PREFIX}clean_acc"]
    names += [f"{LIVE_PREFIX}robust_acc/{a}" for a in attacks]
    if attacks:
        names.append(f"{LIVE_PREFIX}robust_acc/{WORST}")
    return names


def padded_positions(trainer, batch_idx: int, size: int, device) -> torch.Tensor:
    """``[size]`` bool: which items of this process's batch ``batch_idx`` are a ``DistributedSampler``'s padding.

    The sampler (no shuffling, ``drop_last=False``) extends the global order of ``len(dataset)`` indices to
    ``total_size`` by repeating its first ones and gives process ``r`` the positions ``r, r + W, r + 2W, ...``
    (``W`` processes): item ``j`` of batch ``b`` sits at global position ``r + (b * batch_size + j) * W``, a
    repeat when that is ``>= len(dataset)``. Without such a sampler nothing is padded."""
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    sampler = getattr(loader, "sampler", None)
    padded = torch.zeros(size, dtype=torch.bool, device=device)
    if not isinstance(sampler, DistributedSampler) or sampler.shuffle or sampler.drop_last:
        return padded
    world, rank = int(sampler.num_replicas), int(sampler.rank)
    first = batch_idx * int(loader.batch_size or size)
    positions = rank + (first + torch.arange(size, device=device)) * world
    return positions >= len(sampler.dataset)


def restored_counts(pl_module, attacks: list[str]) -> dict[str, list[int]]:
    """``{column: [correct, total]}`` over the samples an earlier launch finished that this process holds (its
    module's restored rows, gathered at the start of the test epoch); zeros when there are none."""
    counts = {name: [0, 0] for name in (CLEAN, *attacks, *([WORST] if attacks else []))}
    restored = getattr(pl_module, "_restored", None) or {}
    columns = restored.get("columns") or {}
    if "label" not in columns or "clean_pred" not in columns:
        return counts
    ids, labels = columns["label"]
    order = torch.argsort(ids)
    ids, labels = ids[order], labels[order]  # [N] sorted by sample id

    def correct_of(name: str) -> torch.Tensor | None:
        if name not in columns:
            return None
        cids, values = columns[name]
        found = torch.searchsorted(ids, cids)
        hit = torch.zeros(len(ids), dtype=torch.bool)
        hit[found] = values == labels[found]
        return hit  # [N]

    clean = correct_of("clean_pred")
    counts[CLEAN] = [int(clean.sum()), len(ids)]
    every = torch.ones(len(ids), dtype=torch.bool)
    for name in attacks:
        hit = correct_of(f"adv_pred/{name}")
        if hit is None:
            continue
        counts[name] = [int(hit.sum()), len(ids)]
        every &= hit
    if WORST in counts:
        counts[WORST] = [int(every.sum()), len(ids)]
    return counts


class RunningAccuracy(pl.Callback):
    """Global running counts per batch (module docstring); logs the live numbers when ``log_live``.

    Must come after :class:`~clipure_lit.callbacks.robust_eval.RobustEvalCallback` in the callback list: it hears
    each attack's outcome on the batch (it subscribes to that callback in ``setup``) and adds them when the batch ends.

    Attributes (global over processes, updated when a batch ends):
        running: ``{column: [correct, total]}`` over every finished sample (restored ones included).
        samples_done: unique samples finished, restored ones included; ``samples_new``: evaluated by this launch.
        batches_done: batches seen by the test loop (skipped, already finished batches included).
    """

    def __init__(self, log_live: bool = True) -> None:
        self.log_live = log_live
        self.attacks: list[str] = []
        self.running: dict[str, list[int]] = {}
        self.samples_done = self.samples_new = self.batches_done = 0
        self._hits: dict[str, torch.Tensor] = {}

    @property
    def columns(self) -> list[str]:
        return [CLEAN, *self.attacks, *([WORST] if self.attacks else [])]

    # --------------------------------------------------------------------------- RobustEval events (listener)
    def attack_started(self, name: str, batch_size: int) -> None:
        pass

    def sub_attack(self, name: str, step) -> None:
        pass

    def attack_finished(self, name: str, hits: torch.Tensor, seconds: float) -> None:
        self._hits[name] = hits  # [B] bool: still correct after the attack

    # --------------------------------------------------------------------------- Lightning hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "test":
            return
        from clipure_lit.callbacks.robust_eval import RobustEvalCallback  # one layer, no cycle: a local import keeps it light

        self.attacks = []
        for callback in trainer.callbacks:
            if isinstance(callback, RobustEvalCallback):
                callback.add_listener(self)
                self.attacks += [spec.name for spec in callback.specs]

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.running = restored_counts(pl_module, self.attacks)
        self.samples_done = self.samples_new = self.batches_done = 0
        self._hits = {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        _, y, _ = batch  # y: [B]
        real = ~padded_positions(trainer, batch_idx, int(y.numel()), y.device)  # [B] bool: not a sampler's repeat
        n = int(real.sum())
        evaluated = outputs is not None  # None: a batch finished by the launch being resumed (already counted)
        values = [n, n if evaluated else 0]
        if evaluated:
            robust_all = real.clone()
            values += [int(((outputs["pred"] == y) & real).sum()), n]
            for name in self.attacks:
                hits = self._hits.get(name)
                if hits is None:  # not run on this batch: no count, and no worst case for it
                    values += [0, 0]
                    robust_all = torch.zeros_like(real)
                    continue
                hits = hits.to(real.device)
                values += [int((hits & real).sum()), n]
                robust_all &= hits
            if self.attacks:
                values += [int(robust_all.sum()), n if all(a in self._hits for a in self.attacks) else 0]
        else:
            values += [0, 0] * len(self.columns)
        self._hits = {}
        if trainer.world_size > 1:  # collective: every rank takes part
            summed = trainer.strategy.reduce(torch.tensor(values, dtype=torch.long, device=pl_module.device), reduce_op="sum")
            values = [int(v) for v in summed.tolist()]
        self.samples_done += values[0]
        self.samples_new += values[1]
        self.batches_done += 1
        for i, name in enumerate(self.columns):
            self.running[name][0] += values[2 + 2 * i]
            self.running[name][1] += values[3 + 2 * i]
        if self.log_live and values[1] > 0 and trainer.is_global_zero:
            self._log(trainer)

    def live_metrics(self) -> dict[str, float]:
        """The live numbers now (module docstring); a column without samples yet is left out."""
        metrics: dict[str, float] = {f"{LIVE_PREFIX}samples_done": float(self.samples_done)}
        for name in self.columns:
            correct, total = self.running[name]
            if total:
                key = f"{LIVE_PREFIX}clean_acc" if name == CLEAN else f"{LIVE_PREFIX}robust_acc/{name}"
                metrics[key] = correct / total
        return metrics

    def _log(self, trainer) -> None:
        metrics = self.live_metrics()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self.samples_done)
