"""LightningModule for zero-shot evaluation: clean accuracy per sample, plus columns added by attack callbacks."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import Tensor

from clipure_lit.utils.seed import batch_seed, seeded
from clipure_lit.results import SampleStore, SampleTable, all_gather_object, merge_flags, summarise

log = logging.getLogger(__name__)


def _loader_batch_size(trainer) -> int | None:
    """The test loader's batch size (``data.batch_size``), or None without a trainer or loader."""
    loaders = getattr(trainer, "test_dataloaders", None) if trainer is not None else None
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return getattr(loader, "batch_size", None)


class ZeroShotLitModule(pl.LightningModule):
    """Wraps an injected :class:`PurifiedZeroShotClassifier`.

    ``test_step`` records ``label`` and ``clean_pred`` per ``sample_id`` in :attr:`store`; attack callbacks add
    ``adv_pred/<attack>`` columns to the same store in ``on_test_batch_end``. At the end of the test epoch the
    store is gathered from every process and de-duplicated by sample id (:attr:`table`), then summarised
    (:attr:`summary`) and logged: ``test/clean_acc``, ``test/robust_acc/<attack>``, ``test/robust_acc/worst_case``,
    counts (``test/clean_correct``, ``test/robust_correct/<attack>``), 95% Wilson bounds, time per sample, and the
    masking-check flags (``test/flags/<flag>``, 0/1) recorded with :meth:`add_finding`.

    Times: ``summary["time_per_sample_s"]`` is every timed second over every sample (the first batch's warm-up and
    the first-batch checks included); ``summary["steady_time_per_sample_s"]`` holds, for the keys timed inside a
    batch (``clean``, ``attack/<name>``), the seconds per sample over the batches after the first one each process
    ran, so one-off costs (lazy initialisation, allocator growth, caches) do not weigh on it; it is empty when a
    process ran fewer than two batches. Both take the slowest process under DDP.

    Stochastic purifiers draw from a stream seeded per batch from ``(classifier seed, sample ids)``, so a batch's
    result does not depend on what ran before it (resumption, other attacks).

    Resumption: :meth:`restore` (called at setup by the resume callback) hands over samples finished by an
    earlier run; batches made only of finished samples are skipped by ``test_step`` and by attack callbacks
    (:meth:`batch_finished`).
    """

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.store = SampleStore()
        self.timings: dict[str, float] = {}
        self.table: SampleTable | None = None
        self.summary: dict = {}
        # Masking checks: flag -> 0/1, flag -> warning text, flag -> measured value.
        self.flags: dict[str, float] = {}
        self.flag_messages: dict[str, str] = {}
        self.checks: dict[str, Any] = {}
        # Set by attack callbacks: attack name -> description (written to results.json).
        self.attack_info: dict[str, dict] = {}
        # Called as hook(module, summary) with the gathered summary (same on every rank) before metrics are
        # logged; hooks may call add_finding.
        self.summary_hooks: list[Callable[[Any, dict], None]] = []
        self.finished_ids: set[int] = set()
        self._restored: dict | None = None
        self._batch_times: dict[str, float] = {}
        # (rows, {key: seconds}) per batch this process ran, in order; the open batch collects add_time calls from
        # test_step to the end of the batch's callbacks (waiting for the next batch is not part of it).
        self._batch_log: list[tuple[int, dict[str, float]]] = []
        self._open_batch: dict[str, float] | None = None
        self._new_findings: list[str] = []
        self._processed = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)

    # ----------------------------------------------------------------------------------------------- recording
    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds
        self._batch_times[key] = self._batch_times.get(key, 0.0) + seconds
        if self._open_batch is not None:
            self._open_batch[key] = self._open_batch.get(key, 0.0) + seconds

    def add_finding(self, flag: str, raised: bool, value: float | None = None, message: str = "") -> None:
        """Record a masking check's outcome (raised flags stay raised)."""
        self.flags[flag] = max(self.flags.get(flag, 0.0), 1.0 if raised else 0.0)
        if value is not None:
            self.checks[flag] = value
        if raised and message:
            self.flag_messages.setdefault(flag, message)
        self._new_findings.append(flag)

    @property
    def checks_done(self) -> bool:
        """True once first-batch checks were recorded (in this run or a restored one)."""
        return bool(self.flags)

    def batch_finished(self, ids: Tensor) -> bool:
        """True when every sample of the batch was finished by the run being resumed."""
        return bool(self.finished_ids) and all(int(i) in self.finished_ids for i in ids.reshape(-1).tolist())

    def take_batch_record(self) -> dict:
        """What this process added since the previous call: ``{"columns": {name: (ids, values)}, "times": {...},
        "findings": {...}}`` (empty columns for a skipped batch)."""
        columns = self.store.since_mark()
        self.store.mark()
        times, self._batch_times = self._batch_times, {}
        findings = {f: {"raised": self.flags.get(f, 0.0), "value": self.checks.get(f), "message": self.flag_messages.get(f, "")}
                    for f in dict.fromkeys(self._new_findings)}
        self._new_findings = []
        return {"columns": columns, "times": times, "findings": findings}

    def restore(self, columns: dict[str, tuple[Tensor, Tensor]], times: dict[str, float], num_samples: int,
                findings: dict[str, dict], keep_rows: bool) -> None:
        """Take over results of an interrupted run (applied at the start of the test epoch).

        Args:
            columns: ``{column: (ids, values)}`` of finished samples.
            times: summed seconds per timing key over the finished batches; ``num_samples``: their row count.
            findings: masking-check outcomes already recorded (first-batch checks are not repeated).
            keep_rows: put the rows in this process's store (one process only under DDP, to keep gathers small).
        """
        ids = columns.get("label", (torch.zeros(0, dtype=torch.long), None))[0]
        self.finished_ids = set(int(i) for i in ids.tolist())
        self._restored = {"columns": columns if keep_rows else {}, "times": times if keep_rows else {},
                          "num_samples": num_samples if keep_rows else 0, "findings": findings}

    # ------------------------------------------------------------------------------------------------- hooks
    def on_test_epoch_start(self) -> None:
        self.store.reset()
        self.timings.clear()
        self.flags.clear()
        self.flag_messages.clear()
        self.checks.clear()
        self._batch_times = {}
        self._batch_log = []
        self._open_batch = None
        self._new_findings = []
        self._processed = 0
        self.classifier.reset_generator()
        if self._restored is not None:
            for name, (ids, values) in self._restored["columns"].items():
                self.store.add(name, ids, values)
            self.timings.update(self._restored["times"])
            self._processed = self._restored["num_samples"]
            for flag, f in self._restored["findings"].items():
                self.add_finding(flag, bool(f.get("raised")), f.get("value"), f.get("message", ""))
            self._new_findings = []
        self.store.mark()

    def test_step(self, batch, batch_idx: int) -> dict | None:
        x, y, ids = batch  # [B, 3, H, W], [B], [B]
        if self.batch_finished(ids):
            return None
        data_batch = _loader_batch_size(self._trainer)
        for purifier in self.classifier.purifiers:  # the evaluation's batch, not the checks' or attacks' sub-batches
            purifier.check_evaluation_batch(int(ids.numel()), data_batch)
        self._open_batch = {}
        self._batch_log.append((int(ids.numel()), self._open_batch))
        start = time.perf_counter()
        with seeded(self.classifier, batch_seed(self.classifier.seed, "clean", ids)):
            logits = self.classifier(x)  # [B, K]
        self.add_time("clean", time.perf_counter() - start)
        pred = logits.argmax(dim=-1)
        self.store.add("label", ids, y)
        self.store.add("clean_pred", ids, pred)
        self._processed += int(ids.numel())
        return {"pred": pred, "num_classes": int(logits.shape[-1])}

    def on_test_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # Lightning calls the module's hook after every callback's, so the attacks' seconds are in the batch.
        self._open_batch = None

    def _steady_times(self) -> dict[str, float]:
        """Seconds per sample of each key timed inside batches, over the batches after the first one this process
        ran (the slowest process under DDP); empty when no process ran two batches. Collective."""
        later = self._batch_log[1:]  # the first batch carries the warm-up
        rows = sum(n for n, _ in later)
        mine = {key: sum(t.get(key, 0.0) for _, t in later) / rows for key in set().union(*(t for _, t in later))} if rows else {}
        steady: dict[str, float] = {}
        for per_rank in all_gather_object(self, mine):
            for key, value in per_rank.items():
                steady[key] = max(steady.get(key, 0.0), value)
        return dict(sorted(steady.items()))

    def on_test_epoch_end(self) -> None:
        self.table = self.store.gather(self)
        self.summary = summarise(self.table, order=list(self.attack_info))
        self.summary["attacks"] = dict(self.attack_info)
        # Time per sample: the slowest rank's wall clock over the samples that rank evaluated.
        times = {}
        for key in sorted(set().union(*[set(t) for t in all_gather_object(self, sorted(self.timings))])):
            per_sample = torch.tensor(self.timings.get(key, 0.0) / max(self._processed, 1), device=self.device)
            times[key] = float(self.all_gather(per_sample).max()) if self.trainer.world_size > 1 else float(per_sample)
        self.summary["time_per_sample_s"] = times
        self.summary["steady_time_per_sample_s"] = self._steady_times()
        for hook in self.summary_hooks:
            hook(self, self.summary)
        merged = merge_flags(all_gather_object(self, {"flags": self.flags, "messages": self.flag_messages,
                                                      "checks": self.checks}))
        self.summary["flags"] = merged["flags"]
        self.summary["flag_messages"] = merged["messages"]
        self.summary["checks"] = merged["checks"]
        clean = self.summary["clean"]
        metrics = {"test/clean_acc": clean["acc"], "test/num_samples": float(self.summary["num_samples"]),
                   "test/clean_correct": float(clean["correct"]),
                   "test/clean_acc_ci_low": clean["ci95"][0], "test/clean_acc_ci_high": clean["ci95"][1]}
        for name, entry in self.summary["robust"].items():
            metrics[f"test/robust_acc/{name}"] = entry["acc"]
            metrics[f"test/robust_correct/{name}"] = float(entry["correct"])
            metrics[f"test/robust_acc_ci_low/{name}"] = entry["ci95"][0]
            metrics[f"test/robust_acc_ci_high/{name}"] = entry["ci95"][1]
        for key, value in times.items():
            metrics[f"test/time_per_sample/{key}"] = value
        for flag, value in merged["flags"].items():
            metrics[f"test/flags/{flag}"] = value
        for flag, value in merged["checks"].items():
            if isinstance(value, (int, float)) and value == value:  # finite numbers only (NaN != NaN)
                metrics[f"test/checks/{flag}"] = float(value)
        # Values are already global (gathered and de-duplicated), so every rank holds the same numbers: a max over
        # ranks returns them exactly, and declaring the sync keeps Lightning from warning once per metric.
        self.log_dict(metrics, rank_zero_only=False, sync_dist=True, reduce_fx="max")
