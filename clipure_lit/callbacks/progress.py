"""The progress display of an evaluation: per attack, samples done of total, running robust accuracy with its 95%
Wilson interval, time spent and time left, and, within a batch, AutoAttack's sub-attack and restart.

It is the run's Lightning progress bar (a :class:`~pytorch_lightning.callbacks.ProgressBar`, so Lightning adds no
bar of its own; ``trainer.enable_progress_bar=false`` leaves it out). On a terminal it is a live ``rich`` display
(one row for the clean pass, one per attack) that ends as the run's final numbers; without a terminal it logs one
line per batch instead (logger ``clipure_lit.callbacks.progress``), so a log file or CI output shows the same.
Either way every per-batch line reaches the run's ``log.txt``.

Numbers are global and count unique samples (:class:`~clipure_lit.callbacks.running.RunningAccuracy`: one small
all-reduce per batch under DDP, a ``DistributedSampler``'s padded repeats left out; the run's counts, which also feed
the logger's live numbers, or counts of its own when the run has none), so the running numbers, and the last line,
agree with the run's summary, which the display takes at the end. Batches finished by an earlier launch of a resumed
run count as done and their samples enter the running accuracies from the start.

Needs to come after :class:`~clipure_lit.callbacks.robust_eval.RobustEvalCallback` in the callback list (it reads
the attacks' outcomes of the batch when the batch ends); it subscribes to that callback's events in ``setup``.
"""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path

import torch
from pytorch_lightning.callbacks import ProgressBar
from clipure_lit.callbacks.robust_eval import RobustEvalCallback
from clipure_lit.callbacks.running import CLEAN, RunningAccuracy, padded_positions
from clipure_lit.attacks.autoattack import SubAttackStep
from clipure_lit.reporting.format import pct
from clipure_lit.utils.console import CONSOLE, add_log_file, ensure_console_logging
from clipure_lit.utils.stats import wilson_interval

log = logging.getLogger(__name__)



def clock(seconds: float | None) -> str:
    """``H:MM:SS`` (``-:--:--`` when unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def accuracy_text(correct: int, total: int) -> str:
    """``'12/30 40.0% [24.6, 57.7]'``: counts, accuracy and its 95% Wilson interval (``'0/0'`` before any sample)."""
    if total == 0:
        return "0/0"
    return f"{correct}/{total} {pct(correct / total, wilson_interval(correct, total), unit='%')}"


class EvalProgress(ProgressBar):
    """The evaluation's progress display (module docstring).

    Args:
        title: shown in front of every line (the run's name).
        live: True for the live display, False for one log line per batch, None to choose by whether stderr is a
            terminal.
        console: the ``rich.console.Console`` of the live display (default: one on stderr).
        refresh_per_second: how often the live display redraws (it also redraws on every event).
        log_file: the run's log file, appended to by a process that DDP's spawn started without logging (rank r > 0
            writes ``log.rank<r>.txt`` beside it).
        verbose: the console mode (``log_level=debug``) such a process sets up when it unpickles this display, before
            Lightning's distributed set-up prints anything.

    After the test loop, :attr:`running` holds the counts accumulated batch by batch (``{"clean": [correct,
    total], <attack>: [correct, total]}``) and :attr:`final` the same counts from the run's summary.
    """

    def __init__(self, title: str = "", live: bool | None = None, console=None, refresh_per_second: float = 4.0,
                 log_file: str | Path | None = None, verbose: bool = False) -> None:
        super().__init__()
        self.title = title
        self.log_file = log_file
        self.verbose = verbose
        self._own_logging = False
        self.live = live
        self.console = console
        self.refresh_per_second = refresh_per_second
        self._enabled = True
        self.attacks: list[str] = []
        self.counts = RunningAccuracy(log_live=False)  # replaced in setup by the run's counts, when it has them
        self._own_counts = True
        self.final: dict[str, list[int]] | None = None
        self.samples_total = 0
        self.attack_seconds: dict[str, float] = {}
        self.now: dict[str, str] = {}
        self._start = 0.0
        self._progress = None
        self._tasks: dict[str, int] = {}

    def __setstate__(self, state: dict) -> None:
        """Unpickled in a process DDP's spawn started: set up its console (quiet or verbose) right away."""
        self.__dict__.update(state)
        self._own_logging = ensure_console_logging(self.verbose)

    # ------------------------------------------------------------------------------------- the counts
    @property
    def running(self) -> dict[str, list[int]]:
        """``{"clean": [correct, total], <attack>: [correct, total]}`` so far (global, restored samples included)."""
        return {name: self.counts.running.get(name, [0, 0]) for name in (CLEAN, *self.attacks)}

    @property
    def samples_done(self) -> int:
        return self.counts.samples_done

    @property
    def samples_new(self) -> int:
        return self.counts.samples_new

    @property
    def batches_done(self) -> int:
        return self.counts.batches_done

    # ------------------------------------------------------------------------------------- ProgressBar API
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args, **kwargs) -> None:
        if self._progress is not None:
            self._progress.console.print(*args, **kwargs)
        else:
            print(*args, **kwargs)

    # ------------------------------------------------------------------------------------- RobustEval events
    def attack_started(self, name: str, batch_size: int) -> None:
        self.now[name] = "running"
        self._refresh(name)

    def sub_attack(self, name: str, step: SubAttackStep) -> None:
        self.now[name] = step.describe()
        self._refresh(name)

    def attack_finished(self, name: str, hits: torch.Tensor, seconds: float) -> None:
        self.attack_seconds[name] = self.attack_seconds.get(name, 0.0) + seconds
        self.now[name] = ""

    # ------------------------------------------------------------------------------------- Lightning hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "test":
            return
        self._own_logging = ensure_console_logging(self.verbose) or self._own_logging
        if self._own_logging and self.log_file is not None:  # a spawned process: its share of the run's log
            add_log_file(self.log_file, trainer.global_rank)
            self._own_logging = False  # once
        self.attacks = []
        for callback in trainer.callbacks:
            if isinstance(callback, RobustEvalCallback):
                callback.add_listener(self)
                self.attacks += [spec.name for spec in callback.specs]
        shared = [c for c in trainer.callbacks if isinstance(c, RunningAccuracy)]
        # The run's counts when it has them (they also feed the logger); else counts of its own, driven from here.
        self.counts = shared[0] if shared else RunningAccuracy(log_live=False)
        self._own_counts = not shared
        if self._own_counts:
            self.counts.setup(trainer, pl_module, stage)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        if self._own_counts:
            self.counts.on_test_epoch_start(trainer, pl_module)
        self.final = None
        self.attack_seconds = {}
        self.now = {}
        self.samples_total = self._count_samples(trainer)
        self._start = time.perf_counter()
        if self._enabled and self._wants_live():
            self._start_live()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._own_counts:  # collective under DDP: every rank takes part
            self.counts.on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if not self._enabled:
            return
        if self._progress is not None:
            for name in self.running:
                self._refresh(name)
        else:
            log.info("%s", self.batch_line(trainer))
            return
        log.info("%s", self.batch_line(trainer), extra={CONSOLE: False})  # the live display shows it already

    def on_test_end(self, trainer, pl_module) -> None:
        summary = getattr(pl_module, "summary", None) or {}
        if "clean" in summary:
            self.final = {CLEAN: [summary["clean"]["correct"], summary["clean"]["total"]]}
            for name in self.attacks:
                entry = summary.get("robust", {}).get(name)
                if entry is not None:
                    self.final[name] = [entry["correct"], entry["total"]]
        if self._enabled:
            shown = self.final or self.running
            if self._progress is not None:
                for name in self.running:
                    self.now[name] = "done"
                    self._refresh(name, shown.get(name))
            log.info("%s: done in %s | %s", self.title or "evaluation", clock(time.perf_counter() - self._start),
                     " | ".join(f"{n} {accuracy_text(*shown[n])}" for n in shown), extra={CONSOLE: False})
        self._stop_live()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._stop_live()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop_live()

    # ------------------------------------------------------------------------------------- text
    def eta(self) -> float | None:
        """Seconds left for the whole test loop at the rate of the samples evaluated so far."""
        if self.samples_new == 0:
            return None
        return (time.perf_counter() - self._start) / self.samples_new * max(self.samples_total - self.samples_done, 0)

    def attack_eta(self, name: str) -> float | None:
        """Seconds this process will still spend in attack ``name`` at its rate so far."""
        spent = self.attack_seconds.get(name)
        if spent is None or self.samples_new == 0:
            return None
        return spent / self.samples_new * max(self.samples_total - self.samples_done, 0)

    def batch_line(self, trainer) -> str:
        """The line logged per batch without a terminal: samples and batches done, elapsed and remaining time,
        then the clean and each attack's running accuracy with its interval (and the attack's own times)."""
        batches = trainer.num_test_batches
        batches = int(sum(batches) if isinstance(batches, list) else batches)
        done = min(self.samples_done, self.samples_total) if self.samples_total else self.samples_done
        head = (f"{self.title + ': ' if self.title else ''}{done}/{self.samples_total} samples "
                f"(batch {self.batches_done}/{batches}), {clock(time.perf_counter() - self._start)} elapsed, "
                f"ETA {clock(self.eta())}")
        parts = [f"clean {accuracy_text(*self.running[CLEAN])}"]
        for name in self.attacks:
            parts.append(f"{name} {accuracy_text(*self.running[name])} ({clock(self.attack_seconds.get(name))} spent, "
                         f"ETA {clock(self.attack_eta(name))})")
        return " | ".join([head, *parts])

    # ------------------------------------------------------------------------------------- live display
    def _wants_live(self) -> bool:
        if self.live is not None:
            return self.live
        console = self._console()
        return console.is_terminal and not console.is_dumb_terminal

    def _console(self):
        if self.console is None:
            from rich.console import Console  # heavy-ish: only a progress display needs rich

            self.console = Console(stderr=True)
        return self.console

    def _start_live(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=20),
            TextColumn("{task.completed:>5.0f}/{task.total:.0f}"), TextColumn("{task.fields[acc]}"),
            TextColumn("{task.fields[timing]}"), TextColumn("[dim]{task.fields[now]}"),
            console=self._console(), refresh_per_second=self.refresh_per_second, redirect_stdout=True,
            redirect_stderr=True, transient=False)
        self._tasks = {}
        for name in (CLEAN, *self.attacks):  # the columns of a rich Progress are aligned as a table's
            label = f"{self.title}: {name}" if name == CLEAN and self.title else f"  {name}"
            self._tasks[name] = self._progress.add_task(label, total=max(self.samples_total, 1), acc="", timing="", now="")
        self._progress.start()

    def _refresh(self, name: str, counts: list[int] | None = None) -> None:
        if self._progress is None or name not in self._tasks:
            return
        correct, total = counts or self.running[name]
        label = "clean" if name == CLEAN else "robust"
        if name == CLEAN:
            timing = f"{clock(time.perf_counter() - self._start)} elapsed, ETA {clock(self.eta())}"
        else:
            timing = f"{clock(self.attack_seconds.get(name))} spent, ETA {clock(self.attack_eta(name))}"
        self._progress.update(self._tasks[name], completed=min(self.samples_done, self.samples_total),
                              acc=f"{label} {accuracy_text(correct, total)}", timing=timing, now=self.now.get(name, ""))

    def _stop_live(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @staticmethod
    def _padded(trainer, batch_idx: int, size: int, device) -> torch.Tensor:
        """See :func:`clipure_lit.callbacks.running.padded_positions`."""
        return padded_positions(trainer, batch_idx, size, device)

    @staticmethod
    def _count_samples(trainer) -> int:
        """Samples the test loop will see over all processes: the dataset, or fewer under ``limit_test_batches``."""
        batches = trainer.num_test_batches
        batches = int(sum(batches) if isinstance(batches, list) else batches)
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        size = getattr(loader, "batch_size", None) or 1
        limit = batches * size * max(trainer.world_size, 1)
        dataset = getattr(loader, "dataset", None)
        try:
            return min(len(dataset), limit) if dataset is not None else limit
        except TypeError:  # an iterable dataset without a length
            return limit
