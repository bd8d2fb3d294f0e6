"""Shared command-line behaviour of ``eval.py`` and ``train.py``: help text, config printing, console mode, error
reporting."""

from __future__ import annotations

import dataclasses
import sys
from enum import Enum
from typing import Callable, Sequence

from clipure_lit.config.loader import GROUPS, list_choices, load_config, to_yaml
from clipure_lit.config.schema import RunCfg
from clipure_lit.errors import ClipureError
from clipure_lit.utils.console import LogLevel, console_logging

USAGE = """usage: python {prog} [group=choice ...] [dotted.key=value ...] [file.yaml ...] [--cfg] [--verbose] [--help]

{what}

Config groups (files in conf/<group>/):
{groups}

Keys (schema defaults; override with key=value, YAML syntax for values; purifier.<name>.* keys exist only when
that purifier is chosen with purifier.latent / purifier.pixel or a purifier=<file> choice):
{keys}

Examples:
  python {prog} experiment=tiny
  python {prog} clip=vitl14_openai data=imagenet data.root=/data/imagenet/val prompts=imagenet
  python {prog} experiment=tiny purifier.latent=identity data.num_samples=32

--cfg prints the composed config and exits.
--verbose (or log_level=debug) shows everything the libraries print; by default the console shows this project's
messages, warnings, progress and the summary. <run folder>/log.txt always holds the full log.
Errors in the config are reported before any model is built.
"""


def _schema_lines(cls, prefix: str = "") -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        if "help_schema" in f.metadata:  # a section whose keys are known only from a registry (the purifiers)
            lines += _schema_lines(f.metadata["help_schema"](), f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines += _schema_lines(type(default), f"{prefix}{f.name}.")
            continue
        shown = default.value if isinstance(default, Enum) else default
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"  {prefix}{f.name}: {type_name} = {shown!r}")
    return lines


def help_text(prog: str, what: str, schema: type) -> str:
    groups = "\n".join(f"  {g:<11} {', '.join(list_choices(g)) or '-'}" for g in GROUPS)
    return USAGE.format(prog=prog, what=what, groups=groups, keys="\n".join(_schema_lines(schema)))


VERBOSE_FLAGS = ("--verbose", "-v")


def expand_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--verbose`` / ``-v`` replaced by the override it stands for, ``log_level=debug`` (so that the
    arguments can be composed again, e.g. per dataset of a suite)."""
    verbose = any(a in VERBOSE_FLAGS for a in argv)
    return [a for a in argv if a not in VERBOSE_FLAGS] + (["log_level=debug"] if verbose else [])


def run_cli(argv: Sequence[str] | None, prog: str, what: str, job: Callable[[object], dict],
            report: Callable[[dict], str] | None = None, root: str = "eval", schema: type | None = None,
            validate: Callable | None = None) -> dict:
    """Parse ``argv``, run ``job(cfg)`` and print its report. User errors exit with status 2 and one paragraph.

    ``--verbose`` (``-v``) is the same as ``log_level=debug``. The job runs inside
    :func:`clipure_lit.utils.console.console_logging` in the mode the composed ``log_level`` asks for, and the
    report is printed last.
    """
    argv = expand_flags(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(prog, what, schema or RunCfg))
        return {}

    show_cfg = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    try:
        kwargs = {"schema": schema} if schema is not None else {}
        cfg = load_config(argv, root=root, validate=validate, **kwargs)
        if show_cfg:
            print(to_yaml(cfg))
            return {}
        with console_logging(verbose=LogLevel(cfg.log_level) == LogLevel.debug):
            metrics = job(cfg)
            if report is not None:
                print(report(metrics), flush=True)
    except ClipureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return metrics
