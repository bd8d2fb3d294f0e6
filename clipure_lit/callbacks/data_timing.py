"""Time the test loop spends waiting for batches, recorded like the clean pass and the attacks.

The wait of batch k is the wall clock from the end of batch k-1 (or the start of the epoch, which includes creating
the loader's iterator and its workers) to the start of batch k: fetching and collating the batch, plus
Lightning's own bookkeeping. It is added to the module's per-batch times under ``data_loading``, so it reaches
``time_per_sample_s`` in ``results.json`` and the resumable progress log. The callback must come after every
callback that works in ``on_test_batch_end`` (attacks, progress files), or their time would count as waiting.
"""

from __future__ import annotations

import time

import pytorch_lightning as pl


class DataWaitTimer(pl.Callback):
    """Adds ``data_loading`` seconds to ``pl_module.add_time`` at every test batch (see module docstring)."""

    key = "data_loading"

    def __init__(self) -> None:
        self._last_end: float | None = None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._last_end = time.perf_counter()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._last_end is not None:
            pl_module.add_time(self.key, time.perf_counter() - self._last_end)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._last_end = time.perf_counter()
