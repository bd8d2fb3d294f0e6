"""What a user sees: a small evaluation prints its per-batch progress lines and the summary, nothing else (no W&B
banners, no Lightning tips, no upstream deprecation warnings), ends with the run folder, and keeps the full log in
``<run folder>/log.txt``; ``--verbose`` / ``log_level=debug`` restores everything."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from clipure_lit.reporting import format_eval
from clipure_lit.results import read_json
from clipure_lit.utils.console import ConsoleFilter, console_logging, log_to_file

from conftest import PROJECT_ROOT, needs_shared_cifar

NOISE = ("wandb:", "\N{ELECTRIC LIGHT BULB} Tip", "LeafSpec", "GPU available", "TPU available", "INFO root:", "Traceback")
ARGS = ["experiment=tiny", "data.num_samples=8", "data.batch_size=4", "attack.run=[apgd_ce]", "attack.n_iter=2",
        "trainer.num_threads=1"]


def _argv(tmp_path, logger: str) -> list[str]:
    return [*ARGS, f"logger={logger}", f"run_dir={tmp_path / logger}", f"prompts.cache_dir={tmp_path / 'text_cache'}"]


def _check(out: str, run, logger: str) -> None:
    lines = out.rstrip("\n").splitlines()
    summary = format_eval(read_json(run / "results.json")).splitlines()
    assert [line for line in lines if any(n in line for n in NOISE)] == [], out
    # Exactly one progress line per batch, then the summary, whose last line is the run folder.
    assert len(lines) == 2 + len(summary), out
    assert all(line.startswith("INFO clipure_lit.callbacks.progress: tiny: ") for line in lines[:2])
    assert "8/8 samples (batch 2/2)" in lines[1] and "apgd_ce " in lines[1] and "ETA" in lines[1]
    assert lines[2:] == summary and lines[-1].startswith(f"run folder: {run}")
    full = (run / "log.txt").read_text()  # the full log keeps what the console leaves out
    assert "GPU available" in full and "8/8 samples" in full and "running apgd-ce" in full
    if logger == "wandb":  # W&B's files are unaffected: the offline run can still be synced
        (offline,) = (run / "wandb").glob("offline-run-*")
        assert list(offline.glob("run-*.wandb")) and f"wandb sync {offline}" in full
        assert f"W&B: offline run, upload it with: wandb sync {offline}" in lines  # in the summary, not from W&B


@pytest.mark.e2e
@pytest.mark.slow  # a fresh eval.py process with W&B next to an in-process run: about 15 s
@pytest.mark.timeout(300)
@needs_shared_cifar
def test_a_small_evaluation_prints_progress_and_summary_only_with_wandb_and_csv(tmp_path, capfd):
    """logger=wandb as a user runs it (a fresh process: W&B's banners and every import-time warning would show);
    logger=csv meanwhile in this process (what the console handler lets through)."""
    import eval as eval_script

    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "eval.py", *_argv(tmp_path, "wandb")], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    capfd.readouterr()
    eval_script.main(_argv(tmp_path, "csv"))
    captured = capfd.readouterr()
    _check(captured.err + captured.out, tmp_path / "csv", "csv")  # progress and warnings on stderr, then the summary
    out, _ = proc.communicate(timeout=280)
    assert proc.returncode == 0, out
    _check(out, tmp_path / "wandb", "wandb")


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
    def compose(argv):
        return load_config(argv, validate=lambda cfg: None)  # no registry checks: nothing here builds a model

    assert wandb_settings(compose(["experiment=tiny"])).silent
    assert not wandb_settings(compose(expand_flags(["experiment=tiny", "-v"]))).silent
