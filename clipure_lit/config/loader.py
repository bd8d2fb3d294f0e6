"""Compose a run config: schema defaults <- ``conf/<group>/<choice>.yaml`` <- experiment <- ``key=value``.

Command-line tokens (the form W&B sweeps emit with ``${args_no_hyphens}``):

* ``group=choice`` selects ``conf/<group>/<choice>.yaml`` for a config group (``clip``, ``data``, ``prompts``,
  ``purifier``, ``attack``, ``trainer``, ``logger``, ``experiment``);
* ``dotted.key=value`` overrides one value (YAML syntax: ``trainer.devices=[0,1]``, ``clip.pretrained=null``);
* ``path/to/file.yaml`` merges a whole file at the root.

``conf/eval.yaml`` names the default choice of each group. An experiment file may carry a ``defaults:`` mapping
of group choices and any root-level values; choices given on the command line win over the experiment's.

The purifier section is composed twice: once with every registered purifier's section, to learn the final
``purifier.latent`` / ``purifier.pixel`` choices, then with only those purifiers' sections, so the saved config
holds exactly the keys that the run reads. A key of a purifier that is not chosen is an error, not a no-op.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from clipure_lit.config.schema import RunCfg, purifier_schema
from clipure_lit.config.suites import check_suite_entries
from clipure_lit.config.validate import validate_config
from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.purifiers.registry import config_sections, get_entry, space_of

# Keys of the former flat purifier section -> where they live now (an error names the new key; nothing is aliased).
_ASCENT_KEYS = ("num_steps", "step_size", "momentum", "grad_mode", "norm_scope", "batch_size", "diagnostics")
MOVED_KEYS = {**{f"purifier.{k}": f"purifier.clipure_cos.{k} (CLIPure-Cos) or purifier.clipure_diff.{k} (CLIPure-Diff)"
                 for k in _ASCENT_KEYS},
              "purifier.gradient_checkpointing": "purifier.clipure_diff.gradient_checkpointing (CLIPure-Cos has none)",
              "purifier.diff": "purifier.clipure_diff (e.g. purifier.diff.t_min -> purifier.clipure_diff.t_min, "
                               "purifier.diff.prior.checkpoint -> purifier.clipure_diff.prior.checkpoint)"}

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
        detail = " ".join(str(exc).split())
        raise ConfigError(f"Could not parse YAML file '{path}': {detail}. Fix the YAML syntax at the line and column "
                          "shown: indent with spaces (no tabs), put a space after every ':', close every bracket and quote, "
                          "and quote values that contain ': ' or start with a special character such as '{', '[', '*' or '@'.") from None
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
        moved = MOVED_KEYS.get(full_key)
        if moved is not None:
            raise ConfigError(f"Config key '{full_key}' (from {source}) has moved: every purifier's keys now live under "
                              f"purifier.<purifier name>. Fix: use {moved}.") from None
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
                schema: type = RunCfg, validate: Callable[[DictConfig], None] | None = None,
                composed_from: list[str] | None = None, check_entries: bool | None = None) -> DictConfig:
    """Build the validated run config from command-line style arguments.

    Args:
        argv: tokens such as ``["purifier=clipure_cos", "purifier.step_size=10"]``.
        conf_dir: the ``conf/`` folder holding the config groups.
        root: name of the root file in ``conf_dir`` that lists the default group choices.
        schema: the dataclass that types the config (``RunCfg`` for evaluation).
        validate: registry and compatibility checks (default: :func:`clipure_lit.config.validate.validate_config`).
        composed_from: when given, receives the names of what was merged, in merge order (``conf/<group>/<choice>.yaml``
            files, the root file, the experiment, YAML files, ``command-line override '<key=value>'``).
        check_entries: compose and check every entry of a suite the config selects (``suite.name`` set) as its run
            will be composed, with ``validate`` (:func:`clipure_lit.config.suites.check_suite_entries`). Default: only
            with the default ``validate`` (``--help``, which composes without checks, skips them).

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

    sources: list[tuple[DictConfig, str]] = []
    for group in GROUPS[:-1]:
        choice = choices.get(group)
        if choice and group not in schema.__dataclass_fields__:
            raise ConfigError(f"Config group '{group}' is not used by {root}.py (choice '{choice}'); remove it.")
        if choice:
            sources.append((OmegaConf.create({group: _group_file(group, str(choice), conf_dir)}), f"conf/{group}/{choice}.yaml"))
    sources.append((root_cfg, f"conf/{root}.yaml"))
    if experiment_body is not None:
        sources.append((experiment_body, f"conf/experiment/{experiment}.yaml"))
    for file in files:
        sources.append((_read_yaml(Path(file), "override"), file))
    for item in overrides:
        try:
            sources.append((OmegaConf.from_dotlist([item]), f"command-line override '{item}'"))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"Cannot parse override '{item}': {_first_line(exc)}") from None

    if composed_from is not None:
        composed_from.extend(name for _, name in sources)
    if "purifier" not in schema.__dataclass_fields__:
        cfg = _compose(schema, sources)
    else:
        chosen = _purifier_choices(_compose(schema, sources, purifiers=None))
        _refuse_unread_purifier_keys(sources, chosen)
        cfg = _compose(schema, sources, purifiers=chosen)
        cfg.purifier = _picklable_purifier_section(cfg.purifier, chosen)

    if check_entries is None:
        check_entries = validate is None
    if validate is None:
        validate = validate_config
    validate(cfg)
    if check_entries and "suite" in schema.__dataclass_fields__ and cfg.suite.name:
        check_suite_entries(cfg, list(argv), lambda entry_argv: load_config(
            entry_argv, conf_dir, root, schema, validate, check_entries=False))
    return cfg


def _compose(schema: type, sources: list[tuple[DictConfig, str]], purifiers: list[str] | None = ()) -> DictConfig:
    """Merge ``sources`` in order into the structured ``schema``; with a purifier section typed by
    :func:`purifier_schema` for ``purifiers`` (None: every registered purifier; ``()``: the schema has none)."""
    cfg = OmegaConf.structured(schema)
    if purifiers != ():
        cfg.purifier = OmegaConf.structured(purifier_schema(purifiers))
    for update, source in sources:
        cfg = _merge(cfg, update, source)
    return cfg


def _purifier_choices(cfg: DictConfig) -> list[str]:
    """The chosen ``[latent, pixel]`` purifier names, each checked against the registry."""
    get_entry(cfg.purifier.latent, "latent")
    get_entry(cfg.purifier.pixel, "pixel")
    return [cfg.purifier.latent, cfg.purifier.pixel]


def _refuse_unread_purifier_keys(sources: list[tuple[DictConfig, str]], chosen: list[str]) -> None:
    """A ``purifier.<name>.*`` key set by any source for a purifier the run does not use would change nothing:
    a sweep over it would give identical runs. Refuse it, naming the source."""
    sections = config_sections()
    for update, source in sources:
        node = update.get("purifier") if isinstance(update, DictConfig) else None
        if not isinstance(node, DictConfig):
            continue
        for name in node.keys():
            if name in sections and name not in chosen:
                raise ConfigError(
                    f"Config key 'purifier.{name}' (from {source}) configures the '{name}' purifier, but this run uses "
                    f"purifier.latent={chosen[0]} and purifier.pixel={chosen[1]}, which do not read it: the value would "
                    f"change nothing. Fix: select the purifier (purifier={name} or purifier.{space_of(name)}={name}), "
                    f"or set the key of a chosen purifier ({', '.join(f'purifier.{n}.*' for n in chosen if n in sections) or 'none has keys'}).")


def _picklable_purifier_section(node: DictConfig, chosen: list[str]) -> DictConfig:
    """The composed purifier section without its dynamically made dataclass (which cannot be pickled into
    DDP-spawned processes): the run-level keys, plus each chosen purifier's section typed by its own dataclass."""
    out = OmegaConf.create({key: node[key] for key in ("latent", "pixel", "seed")})
    for name in config_sections(chosen):
        out[name] = OmegaConf.structured(OmegaConf.to_object(node[name]))
    OmegaConf.set_struct(out, True)
    return out


def to_yaml(cfg: DictConfig) -> str:
    """The fully resolved config as YAML (what is saved with every run and logged to W&B)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_plain(cfg: DictConfig) -> dict:
    """The fully resolved config as plain Python containers (enums as their string values)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
