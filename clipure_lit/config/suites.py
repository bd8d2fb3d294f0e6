"""The runs of a suite (``suite=demo``, ``suite=zeroshot13``): which entries it selects and the arguments each
entry's run is composed from. Used by :mod:`clipure_lit.suite` to run them and by the config loader to compose and
check every entry when the suite's own config is composed, so that ``--cfg`` and the start of a suite refuse an
entry that its run would refuse, before the first run starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig

from clipure_lit.config.schema import BlankAnchorSource
from clipure_lit.errors import ConfigError, DataNotFoundError

# Arguments that the suite sets itself for each dataset.
SUITE_OWNED = ("suite", "suite.", "data=", "run_dir=", "prompts.class_templates=", "prompts.blank_templates=", "name=")


def entry_name(entry) -> str:
    """The row label and run-folder name of a suite entry (its ``name``, else its ``data`` choice)."""
    return entry.name or entry.data


def selected_entries(cfg: DictConfig) -> list:
    """The entries of ``cfg.suite`` that ``suite.only`` keeps (all when empty)."""
    return [e for e in cfg.suite.datasets if not cfg.suite.only or e.data in cfg.suite.only or e.name in cfg.suite.only]


def dataset_argv(cfg: DictConfig, argv: Sequence[str], entry, run_dir: Path) -> list[str]:
    """The arguments of one dataset's run: the user's, minus what the suite owns, plus the dataset's choices."""
    base = [a for a in argv if not a.startswith(SUITE_OWNED)]
    blank = BlankAnchorSource(cfg.suite.blank)
    if blank == BlankAnchorSource.custom and not cfg.prompts.blank_prompt:
        raise ConfigError("suite.blank=custom needs prompts.blank_prompt='<prompt>' (e.g. \"a photo of a .\").")
    # suite.name='' as well as suite=none: a suite defined in a YAML file argument (merged after the group choice)
    # would otherwise make every entry a suite again.
    extra = ["suite=none", "suite.name=''", f"run_dir={run_dir}", f"name={cfg.name}-{entry_name(entry)}"]
    if entry.data:
        extra.append(f"data={entry.data}")
    if entry.templates:
        extra.append(f"prompts.class_templates={entry.templates}")
        if blank == BlankAnchorSource.dataset:
            extra.append(f"prompts.blank_templates={entry.templates}")
    if blank == BlankAnchorSource.imagenet80:
        extra.append("prompts.blank_templates=openai_imagenet_80")
    return base + extra + list(entry.overrides)


def check_suite_entries(cfg: DictConfig, argv: Sequence[str], compose: Callable[[list[str]], DictConfig]) -> None:
    """Compose (``compose(argv)``: the loader with its checks) every selected entry of ``cfg``'s suite as its run
    will be composed. An entry whose data is missing passes (the suite skips it and says so); any other refusal is
    raised, prefixed with the entry's name.

    Raises:
        ConfigError: no entry selected, an unknown data choice, or an entry the run would refuse.
    """
    from clipure_lit.config.loader import list_choices  # the loader imports this module

    entries = selected_entries(cfg)
    unknown = [e.data for e in entries if e.data and e.data not in list_choices("data")]
    if unknown:
        raise ConfigError(f"Suite '{cfg.suite.name}' names data choices that do not exist: {unknown}. Valid: {list_choices('data')}.")
    if not entries:
        raise ConfigError(f"Suite '{cfg.suite.name}' selects no dataset (suite.only={list(cfg.suite.only)}). Fix: name "
                          f"entries of the suite in suite.only, or suite.only=[] for all of them.")
    for entry in entries:
        try:
            compose(dataset_argv(cfg, argv, entry, Path(cfg.output_root) / "suite-entry"))
        except DataNotFoundError:
            continue
        except ConfigError as exc:
            raise ConfigError(f"Suite '{cfg.suite.name}', entry '{entry_name(entry)}' (overrides "
                              f"{list(entry.overrides)}): {exc}") from None
