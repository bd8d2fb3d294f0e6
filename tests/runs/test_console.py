"""What a user sees: a small evaluation prints its per-batch progress lines and the summary, nothing else (no W&B
banners, no Lightning tips, no upstream deprecation warnings), ends with the run folder, and keeps the full log in
``<run folder>/log.txt``; ``--verbose`` / ``log_level=debug`` restores everything."""

from __future__ import annotations

import logging

from clipure_lit.utils.console import ConsoleFilter, console_logging, log_to_file


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_the_quiet_console_drops_known_noise_and_other_libraries_info_and_verbose_keeps_everything():
    tip = _record("pytorch_lightning.utilities.rank_zero", logging.INFO, "\N{ELECTRIC LIGHT BULB} Tip: try litlogger")
    leaf = _record("py.warnings", logging.WARNING, "_pytree.py:21: `isinstance(treespec, LeafSpec)` is deprecated")
    theirs = _record("root", logging.INFO, "Loaded Tiny-ViT-32px model config.")
    ours = _record("clipure_lit.suite", logging.INFO, "[1/4] undefended")
    warning = _record("auto-attack", logging.WARNING, "it seems to be a randomized defense!")
    quiet, verbose = ConsoleFilter(verbose=False), ConsoleFilter(verbose=True)
    assert [quiet.filter(r) for r in (tip, leaf, theirs, ours, warning)] == [False, False, False, True, True]
    assert all(verbose.filter(r) for r in (tip, leaf, theirs, ours, warning))
    file_only = _record("clipure_lit.callbacks.progress", logging.INFO, "batch line")
    file_only.console = False
    assert not quiet.filter(file_only) and not verbose.filter(file_only)


def test_log_file_gets_every_record_and_python_warnings(tmp_path, capsys):
    import warnings

    with console_logging(verbose=False), log_to_file(tmp_path) as path, warnings.catch_warnings():
        warnings.simplefilter("always")  # over pytest's own filters
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("\N{ELECTRIC LIGHT BULB} Tip: noise")
        logging.getLogger("clipure_lit.test").info("ours")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)
        warnings.warn("a true warning from a library", UserWarning)
    assert path == tmp_path / "log.txt"
    text = path.read_text()
    assert "Tip: noise" in text and "ours" in text and "LeafSpec" in text and "a true warning" in text
    err = capsys.readouterr().err
    assert "ours" in err and "a true warning" in err and "Tip" not in err and "LeafSpec" not in err


def test_verbose_flag_means_log_level_debug_and_lets_wandb_print():
    from clipure_lit.cli import expand_flags
    from clipure_lit.config.loader import load_config
    from clipure_lit.loggers import wandb_settings

    assert expand_flags(["experiment=tiny", "--verbose"]) == ["experiment=tiny", "log_level=debug"]
    assert wandb_settings(load_config(["experiment=tiny"])).silent
    assert not wandb_settings(load_config(expand_flags(["experiment=tiny", "-v"]))).silent
