"""Wall-clock seconds per named phase of a run."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class PhaseTimer:
    """``with timer.phase("build_head"): ...`` adds the block's wall-clock seconds to ``timer.seconds["build_head"]``
    (a repeated phase sums), also when the block raises. ``counts`` holds counters a phase reports alongside (e.g.
    text embeddings read from the cache)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
