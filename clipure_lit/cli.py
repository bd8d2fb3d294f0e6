"""Shared command-line behaviour of ``eval.py`` and ``train.py``: help text, config printing, console mode, error
reporting."""

from __future__ import annotations

import dataclasses
import sys
from enum import Enum
from typing import Callable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from clipure_lit.config.loader import GROUPS, list_choices, load_config, to_yaml
from clipure_lit.config.schema import RunCfg
from clipure_lit.errors import ClipureError
from clipure_lit.utils.console import LogLevel, console_logging

USAGE = """usage: python {prog} [group=choice ...] [dotted.key=value ...] [file.yaml ...] [--cfg] [--verbose] [--help]

{what}

Config groups (files in conf/<group>/; * marks the choice these arguments compose):
{groups}

Composed from (in merge order, later wins):
{sources}

Keys and the values these arguments compose (override with key=value, YAML syntax for values). purifier.<name>.*
keys exist only when that purifier is chosen with purifier.latent / purifier.pixel or a purifier=<file> choice;
the sections of purifiers not chosen show their defaults:
{keys}

Examples:
  python {prog} experiment=tiny
  python {prog} clip=vitl14_openai data=imagenet data.root=/data/imagenet/val prompts=imagenet
  python {prog} experiment=tiny purifier.latent=identity data.num_samples=32
  python {prog} experiment=tiny --help      (the keys as experiment=tiny composes them)

--cfg prints the composed config (after a comment listing the files it was composed from) and exits.
--verbose (or log_level=debug) shows everything the libraries print; by default the console shows this project's
messages, warnings, progress and the summary. <run folder>/log.txt always holds the full log.
Errors in the config are reported before any model is built.
"""

_UNSET = object()


def _shown(value):
    """A composed or default value as --help prints it (enums as their value, OmegaConf containers as Python)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return value


def _schema_lines(cls, prefix: str = "", cfg: DictConfig | None = None) -> list[str]:
    """One line per key of the dataclass ``cls``: ``  <key>: <type> = <value>``, the value taken from the composed
    ``cfg`` where it holds the key, else the schema default."""
    lines = []
    for f in dataclasses.fields(cls):
        if "help_schema" in f.metadata:  # a section whose keys are known only from a registry (the purifiers)
            lines += _schema_lines(f.metadata["help_schema"](), f"{prefix}{f.name}.", cfg)
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines += _schema_lines(type(default), f"{prefix}{f.name}.", cfg)
            continue
        composed = OmegaConf.select(cfg, f"{prefix}{f.name}", default=_UNSET) if cfg is not None else _UNSET
        shown = _shown(default if composed is _UNSET else composed)
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"  {prefix}{f.name}: {type_name} = {shown!r}")
    return lines


def _group_choice(group: str, sources: Sequence[str]) -> str | None:
    """The choice of ``group`` among the composed ``sources`` (``conf/<group>/<choice>.yaml``), if any."""
    for source in sources:
        if source.startswith(f"conf/{group}/") and source.endswith(".yaml"):
            return source[len(f"conf/{group}/"):-len(".yaml")]
    return None


def help_text(prog: str, what: str, schema: type, cfg: DictConfig | None = None, sources: Sequence[str] = (),
              note: str = "") -> str:
    """The ``--help`` text. With the composed ``cfg`` (and the ``sources`` it was composed from) each key shows
    its composed value and each group marks its composed choice; without it, the schema defaults."""
    groups = []
    for g in GROUPS:
        chosen = _group_choice(g, sources)
        names = [f"{c}*" if c == chosen else c for c in list_choices(g)]
        groups.append(f"  {g:<11} {', '.join(names) or '-'}")
    listed = "\n".join(f"  {s}" for s in sources) if cfg is not None else "  (nothing: the schema defaults are shown)"
    text = USAGE.format(prog=prog, what=what, groups="\n".join(groups), sources=listed,
                        keys="\n".join(_schema_lines(schema, cfg=cfg)))
    return text + (f"\n{note}\n" if note else "")


def composed_files_comment(sources: Sequence[str]) -> str:
    """The ``--cfg`` header: the sources of the composed config, in merge order, as YAML comments."""
    return "\n".join(["# composed from (in merge order; later wins):", *[f"#   {s}" for s in sources]])


VERBOSE_FLAGS = ("--verbose", "-v")


def expand_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--verbose`` / ``-v`` replaced by the override it stands for, ``log_level=debug`` (so that the
    arguments can be composed again, e.g. per dataset of a suite)."""
    verbose = any(a in VERBOSE_FLAGS for a in argv)
    return [a for a in argv if a not in VERBOSE_FLAGS] + (["log_level=debug"] if verbose else [])


def run_cli(argv: Sequence[str] | None, prog: str, what: str, job: Callable[[object], dict],
            report: Callable[[dict], str] | None = None, root: str = "eval", schema: type | None = None,
            validate: Callable | None = None) -> dict:
    """Parse ``argv``, run ``job(cfg)`` and print its report. User errors exit with status 2 and one paragraph,
    Ctrl-C (KeyboardInterrupt) with status 130 and one line; a job's own ``SystemExit`` (143 after SIGTERM) passes.

    ``--verbose`` (``-v``) is the same as ``log_level=debug``. The job runs inside
    :func:`clipure_lit.utils.console.console_logging` in the mode the composed ``log_level`` asks for, and the
    report is printed last.
    """
    argv = expand_flags(sys.argv[1:] if argv is None else argv)
    kwargs = {"schema": schema} if schema is not None else {}
    if "-h" in argv or "--help" in argv:
        sources: list[str] = []
        try:
            # Composed without the registry checks (they import model code): --help stays fast.
            cfg = load_config([a for a in argv if a not in ("-h", "--help", "--cfg")], root=root,
                              validate=lambda cfg: None, composed_from=sources, **kwargs)
            note = ""
        except ClipureError as exc:
            cfg, sources, note = None, [], f"(These arguments do not compose a valid config, so the schema defaults are shown: {exc})"
        print(help_text(prog, what, schema or RunCfg, cfg, sources, note))
        return {}

    show_cfg = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    try:
        sources = []
        cfg = load_config(argv, root=root, validate=validate, composed_from=sources, **kwargs)
        if show_cfg:
            print(composed_files_comment(sources))
            print(to_yaml(cfg))
            return {}
        with console_logging(verbose=LogLevel(cfg.log_level) == LogLevel.debug):
            metrics = job(cfg)
            if report is not None:
                print(report(metrics), flush=True)
    except ClipureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C outside an evaluation's test loop (which reports it itself): no traceback
        print("stopped: interrupted by SIGINT (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    return metrics
