"""Compose a run config: schema defaults <- ``conf/<group>/<choice>.yaml`` <- experiment <- ``key=value``.

Command-line tokens (the form W&B sweeps emit with ``${args_no_hyphens}``):

* ``group=choice`` selects ``conf/<group>/<choice>.yaml`` for a config group (``clip``, ``data``, ``prompts``,
  ``purifier``, ``attack``, ``trainer``, ``logger``, ``experiment``);
* ``dotted.key=value`` overrides one value (YAML syntax: ``trainer.devices=[0,1]``, ``clip.pretrained=null``);
* ``path/to/file.yaml`` merges a whole file at the root.

``conf/eval.yaml`` names the default choice of each group. An experiment file may carry a ``defaults:`` mapping
of group choices and any root-level values; choices given on the command line win over the experiment's.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from clipure_lit.config.schema import RunCfg
from clipure_lit.errors import ConfigError, DataNotFoundError

GROUPS = ("clip", "data", "prompts", "purifier", "attack", "trainer", "logger", "suite", "experiment")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONF_DIR = PROJECT_ROOT / "conf"


def list_choices(group: str, conf_dir: Path = DEFAULT_CONF_DIR) -> list[str]:
    """Names of the YAML files available for a config group."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _read_yaml(path: Path, what: str) -> DictConfig:
    if not path.is_file():
        raise DataNotFoundError(f"{what} file not found: '{path}'. Check the path (relative paths are taken from the current directory).")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends: report the file, not the parser internals
        raise ConfigError(f"Could not parse YAML file '{path}': {exc}") from exc
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"YAML file '{path}' must contain a mapping of keys to values, got a {type(loaded).__name__}.")
    return loaded


def _group_file(group: str, choice: str, conf_dir: Path) -> DictConfig:
    path = conf_dir / group / f"{choice}.yaml"
    if not path.is_file():
        choices = list_choices(group, conf_dir)
        close = difflib.get_close_matches(choice, choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"Unknown choice '{choice}' for config group '{group}'. Valid choices: {choices}.{hint} "
            f"Fix: pass {group}=<one of those>, or add conf/{group}/{choice}.yaml."
        )
    return _read_yaml(path, f"config '{group}={choice}'")


def _split_argv(argv: Iterable[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """Split argv into group choices, YAML files and dotted overrides."""
    choices: dict[str, str] = {}
    files: list[str] = []
    overrides: list[str] = []
    for token in argv:
        if "=" not in token:
            if token.endswith((".yaml", ".yml")):
                files.append(token)
                continue
            raise ConfigError(
                f"Cannot read argument '{token}': expected 'group=choice', 'dotted.key=value' or a .yaml file "
                f"(groups: {list(GROUPS)}). Run with --help for the full list."
            )
        key, value = token.split("=", 1)
        key = key.lstrip("+")  # accept Hydra's '+key=value' spelling too
        if key in GROUPS:
            choices[key] = value
        else:
            overrides.append(f"{key}={value}")
    return choices, files, overrides


def _describe_keys(node: object) -> list[str]:
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _merge(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    """Merge ``update`` into the structured ``base``, turning OmegaConf errors into ConfigErrors that name
    the key, the value, what was expected and the source of the value."""
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as exc:
        full_key = exc.full_key or str(exc.key)
        parent_key = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        parent = OmegaConf.select(base, parent_key) if parent_key else base
        valid = _describe_keys(parent)
        leaf = full_key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" Did you mean '{(parent_key + '.') if parent_key else ''}{close[0]}'?" if close else ""
        raise ConfigError(
            f"Unknown config key '{full_key}' (from {source}). Valid keys under '{parent_key or '<root>'}': {valid}.{hint}"
        ) from None
    except ValidationError as exc:
        raise ConfigError(
            f"Invalid value for config key '{exc.full_key}' (from {source}): {_first_line(exc)}. "
            f"Fix the value; run with --help to see each key's type and default."
        ) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Invalid configuration (from {source}): {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def load_config(argv: Sequence[str] = (), conf_dir: Path | str = DEFAULT_CONF_DIR, root: str = "eval",
                schema: type = RunCfg, validate: Callable[[DictConfig], None] | None = None) -> DictConfig:
    """Build the validated run config from command-line style arguments.

    Args:
        argv: tokens such as ``["purifier=clipure_cos", "purifier.step_size=10"]``.
        conf_dir: the ``conf/`` folder holding the config groups.
        root: name of the root file in ``conf_dir`` that lists the default group choices.
        schema: the dataclass that types the config (``RunCfg`` for evaluation).
        validate: registry and compatibility checks (default: :func:`clipure_lit.config.validate.validate_config`).

    Returns:
        A structured ``DictConfig`` typed by :class:`RunCfg`, with every choice validated.

    Raises:
        ConfigError: unknown key, wrong type, unknown choice or incompatible options.
    """
    conf_dir = Path(conf_dir)
    cli_choices, files, overrides = _split_argv(argv)

    root_cfg = _read_yaml(conf_dir / f"{root}.yaml", "root config")
    choices = dict(root_cfg.pop("defaults", None) or {})
    experiment_body = None
    experiment = cli_choices.get("experiment", choices.get("experiment"))
    if experiment:
        experiment_body = _group_file("experiment", experiment, conf_dir)
        choices.update(experiment_body.pop("defaults", None) or {})
    choices.update({k: v for k, v in cli_choices.items() if k != "experiment"})

    cfg = OmegaConf.structured(schema)
    for group in GROUPS[:-1]:
        choice = choices.get(group)
        if choice and group not in cfg:
            raise ConfigError(f"Config group '{group}' is not used by {root}.py (choice '{choice}'); remove it.")
        if choice:
            cfg = _merge(cfg, OmegaConf.create({group: _group_file(group, str(choice), conf_dir)}), f"conf/{group}/{choice}.yaml")
    cfg = _merge(cfg, root_cfg, f"conf/{root}.yaml")
    if experiment_body is not None:
        cfg = _merge(cfg, experiment_body, f"conf/experiment/{experiment}.yaml")
    for file in files:
        cfg = _merge(cfg, _read_yaml(Path(file), "override"), file)
    for item in overrides:
        try:
            dotlist = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as exc:
            raise ConfigError(f"Cannot parse override '{item}': {_first_line(exc)}") from None
        cfg = _merge(cfg, dotlist, f"command-line override '{item}'")

    if validate is None:
        from clipure_lit.config.validate import validate_config as validate
    validate(cfg)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    """The fully resolved config as YAML (what is saved with every run and logged to W&B)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_plain(cfg: DictConfig) -> dict:
    """The fully resolved config as plain Python containers (enums as their string values)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
