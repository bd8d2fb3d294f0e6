"""Read a W&B sweep file and expand it into the list of runs it describes.

The file is the one ``wandb sweep`` takes (``program``, ``method``, ``parameters``, ``command``). Grid sweeps are
enumerated completely; random sweeps draw ``run_cap`` (or ``count``) configurations with a seeded generator, so
the plan is the same every time it is made. The plan is what the launcher executes and resumes.
"""

from __future__ import annotations

import random
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from clipure_lit.errors import ConfigError, DataNotFoundError

SUPPORTED_METHODS = ("grid", "random")


@dataclass
class SweepSpec:
    name: str
    program: str
    method: str
    parameters: dict
    command: list = field(default_factory=list)
    run_cap: int | None = None
    metric: dict | None = None
    raw: dict = field(default_factory=dict)


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"Sweep file not found: '{path}'. The shipped sweeps are in sweeps/.")
    raw = yaml.safe_load(path.read_text()) or {}
    for key in ("program", "method", "parameters"):
        if key not in raw:
            raise ConfigError(f"Sweep file '{path}' has no '{key}' (a W&B sweep file needs program, method, parameters).")
    if raw["method"] not in SUPPORTED_METHODS:
        raise ConfigError(f"Sweep file '{path}': method '{raw['method']}' cannot run offline (it needs the W&B server's "
                          f"metric feedback). Local methods: {list(SUPPORTED_METHODS)}; use `wandb sweep` for it.")
    return SweepSpec(name=raw.get("name", path.stem), program=raw["program"], method=raw["method"], parameters=raw["parameters"],
                     command=raw.get("command") or ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
                     run_cap=raw.get("run_cap"), metric=raw.get("metric"), raw=raw)


def _plain(value):
    """numpy scalars (what the sweep engine returns) -> Python scalars, which YAML and OmegaConf accept."""
    return value.item() if hasattr(value, "item") else value


def expand(spec: SweepSpec, count: int | None = None, seed: int = 0) -> list[dict]:
    """The planned configurations, each a ``{dotted key: value}`` dict, in the order they will run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the engine warns about pydantic v1 names on import
        from sweeps import RunState, next_run  # heavy: the sweep engine (~0.2 s, pydantic) only expands sweeps

    config = {"method": spec.method, "parameters": spec.parameters}
    if spec.metric:
        config["metric"] = spec.metric
    limit = count or spec.run_cap
    if spec.method == "random" and not limit:
        raise ConfigError(f"Random sweep '{spec.name}' needs a number of runs: set run_cap in the file or pass --count.")
    state = random.getstate()
    random.seed(seed)  # the engine draws random configurations from the stdlib generator
    try:
        runs, plan = [], []
        while limit is None or len(plan) < limit:
            proposal = next_run(config, runs)
            if proposal is None:
                break
            proposal.state = RunState.finished
            runs.append(proposal)
            plan.append({key: _plain(entry["value"]) for key, entry in proposal.config.items()})
    finally:
        random.setstate(state)
    return plan


def _format_value(value) -> str:
    """A value as W&B's ``${args_no_hyphens}`` would write it (YAML flow style for lists)."""
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def command_args(spec: SweepSpec, params: dict, python: str = sys.executable) -> list[str]:
    """Expand the sweep's ``command`` macros for one run, as the W&B agent does."""
    argv = []
    for token in spec.command:
        if token == "${env}":
            continue
        if token == "${interpreter}":
            argv.append(python)
        elif token == "${program}":
            argv.append(spec.program)
        elif token == "${args_no_hyphens}":
            argv += [f"{k}={_format_value(v)}" for k, v in params.items()]
        elif token in ("${args}", "${args_json}", "${args_json_file}"):
            raise ConfigError(f"Sweep '{spec.name}': command macro {token} is not understood by eval.py; use ${{args_no_hyphens}}.")
        else:
            argv.append(str(token))
    return argv
