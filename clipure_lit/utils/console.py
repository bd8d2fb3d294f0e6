"""What the console shows, and the full log every run folder keeps.

Two console modes, chosen by the entry points (``log_level=info``, the default, or ``log_level=debug`` /
``--verbose``):

* **quiet** (``info``): this project's messages at INFO and above, other libraries' warnings and errors only, and
  none of the known upstream noise in :data:`NOISE` (Lightning's "Tip" lines, deprecation warnings raised inside
  the pinned libraries). Python warnings are routed through :mod:`logging` (logger ``py.warnings``), so the same
  rules apply to them.
* **verbose** (``debug``): everything the libraries print, as without this module, plus this project's DEBUG
  messages and AutoAttack's own progress messages.

Whatever the mode, :func:`log_to_file` writes every record that reaches the root logger (all levels the loggers
let through, noise included) to a file: the run folder's ``log.txt``.

A record logged with ``extra={CONSOLE: False}`` goes to files only (e.g. a per-batch progress line while a live
progress display already shows it).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator

class LogLevel(str, Enum):
    """The ``log_level`` key: ``info`` is the quiet console, ``debug`` shows everything (``--verbose``)."""

    info = "info"
    debug = "debug"


CONSOLE = "console"  # LogRecord attribute: False keeps the record off the console
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OUR_LOGGERS = ("clipure_lit", "__main__")
# AutoAttack's logger: its progress messages are DEBUG records (shown with --verbose, always in log.txt).
AUTOATTACK_LOGGER = "auto-attack"
# Libraries that attach a console handler of their own (and stop propagation) when imported before logging is set up.
_SELF_HANDLING = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")

# Known upstream noise, dropped from the quiet console (kept in log.txt): each pattern names where it comes from.
NOISE = (
    re.compile("\N{ELECTRIC LIGHT BULB} Tip:"),  # Lightning's advertisements for its cloud products
    re.compile(r"LeafSpec.*is deprecated"),  # Lightning's _pytree with torch >= 2.10
    re.compile(r"torch\.distributed\.nn\.functional\.all_gather is deprecated"),  # lightning_fabric with torch >= 2.10
    # Lightning's advice for a DDP test loop; the evaluation de-duplicates the sampler's padding by sample id.
    re.compile(r"Using `DistributedSampler` with the dataloaders\. During `trainer\.test\(\)`"),
)


def is_noise(record: logging.LogRecord) -> bool:
    """True when ``record`` matches one of the known upstream noise patterns (:data:`NOISE`)."""
    text = record.getMessage()
    return any(p.search(text) for p in NOISE)


class ConsoleFilter(logging.Filter):
    """Decides what the console shows (module docstring): everything when ``verbose``; otherwise this project's
    records at INFO and above and other loggers' at WARNING and above, minus :data:`NOISE`. A record with
    ``console=False`` never passes."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, CONSOLE, True) is False:
            return False
        if self.verbose:
            return True
        ours = record.name.split(".")[0] in OUR_LOGGERS
        if record.levelno < (logging.INFO if ours else logging.WARNING):
            return False
        return ours or not is_noise(record)


class StderrHandler(logging.StreamHandler):
    """A stream handler that writes to ``sys.stderr`` as it is at each record, so that a live progress display that
    redirects stderr keeps log lines above itself, and pytest's capture sees them."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ assigns it
        pass


def _adopt_library_handlers() -> dict[str, tuple[bool, list[logging.Handler]]]:
    """Make the libraries that print through a console handler of their own propagate to the root logger instead
    (removing that handler); returns what was changed, ``{logger: (propagate, removed handlers)}``."""
    saved = {}
    for name in _SELF_HANDLING:
        lg = logging.getLogger(name)
        own = [h for h in lg.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               and getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)]
        saved[name] = (lg.propagate, own)
        for h in own:
            lg.removeHandler(h)
        if own:
            lg.propagate = True
    return saved


def _is_ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_clipure_console", False)


def make_console_handler(verbose: bool) -> logging.Handler:
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    handler.addFilter(ConsoleFilter(verbose))
    handler._clipure_console = True  # type: ignore[attr-defined]
    return handler


@contextmanager
def console_logging(verbose: bool = False) -> Iterator[logging.Handler]:
    """Route logging and Python warnings to the console in the quiet or verbose mode (module docstring) for the
    duration of the block, then restore the previous logging state (handlers, levels, warning capture).

    The root logger is set to INFO; in verbose mode this project's loggers and AutoAttack's are set to DEBUG.
    Libraries that installed a console handler of their own (Lightning does when imported before logging is set
    up) are made to propagate to the root logger instead, so that one set of rules applies.
    """
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved_levels = {name: logging.getLogger(name).level for name in (*OUR_LOGGERS, AUTOATTACK_LOGGER)}
    saved_self = _adopt_library_handlers()
    for h in [h for h in root.handlers if _is_ours(h)]:  # nested use: one console handler at a time
        root.removeHandler(h)
    handler = make_console_handler(verbose)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if verbose:
        for name in (*OUR_LOGGERS, AUTOATTACK_LOGGER):
            logging.getLogger(name).setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(saved_root[0])
        for h in saved_root[1]:
            if h not in root.handlers:
                root.addHandler(h)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for name, (propagate, own) in saved_self.items():
            lg = logging.getLogger(name)
            lg.propagate = propagate
            for h in own:
                lg.addHandler(h)


def ensure_console_logging(verbose: bool = False) -> bool:
    """In a process without logging set up (one started by DDP's spawn inherits none), set it up as
    :func:`console_logging` does, for the rest of the process. Returns True when it did, False (doing nothing) when
    the root logger already had handlers."""
    root = logging.getLogger()
    if root.handlers:
        return False
    _adopt_library_handlers()
    root.addHandler(make_console_handler(verbose))
    root.setLevel(logging.INFO)
    if verbose:
        for name in (*OUR_LOGGERS, AUTOATTACK_LOGGER):
            logging.getLogger(name).setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    return True


def add_log_file(path: str | Path, rank: int = 0) -> Path:
    """Append every record reaching the root logger to ``path`` (``<stem>.rank<r><suffix>`` for ``rank`` > 0) for the
    rest of the process (a spawned process's share of the run's log); returns the file's path."""
    path = _ranked(Path(path), rank)
    logging.getLogger().addHandler(_file_handler(path))
    return path


def _ranked(path: Path, rank: int) -> Path:
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _file_handler(path: Path) -> logging.FileHandler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    return handler


def process_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not launched by one)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


@contextmanager
def log_to_file(folder: str | Path, name: str = "log.txt") -> Iterator[Path]:
    """Append every record that reaches the root logger to ``<folder>/<name>`` for the duration of the block
    (``log.rank<r>.txt`` in a process of rank r > 0); yields the file's path."""
    path = _ranked(Path(folder) / name, process_rank())
    handler = _file_handler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
