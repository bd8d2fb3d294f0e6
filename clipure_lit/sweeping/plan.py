"""Read a W&B sweep file and expand it into the list of runs it describes.

The file is the one ``wandb sweep`` takes (``program``, ``method``, ``parameters``, ``command``, ``metric``) and is
checked against the ``sweeps`` package's own schema, the one ``wandb sweep`` applies, so a file that runs locally
also runs on the W&B server. Grid sweeps are enumerated completely; random sweeps draw ``--count`` configurations
with a seeded generator, so the plan is the same every time it is made. The plan is what the launcher executes
and resumes; :func:`select_runs` picks a part of it by index or by value.
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
# The only program a local sweep runs; its config is validated (and resumed) with eval.py's own rules.
PROGRAM = "eval.py"
# Arguments the launcher owns for every run: the run folder and whether it continues an earlier attempt.
LAUNCHER_KEYS = ("run_dir", "resume")


@dataclass
class SweepSpec:
    """A sweep file: its name (``name`` or the file stem), the program, the search method, ``parameters``
    (``{dotted key: W&B parameter spec}``), the ``command`` template and the optimised ``metric``."""

    name: str
    program: str
    method: str
    parameters: dict
    command: list = field(default_factory=list)
    metric: dict | None = None
    raw: dict = field(default_factory=dict)

    @property
    def swept_keys(self) -> list[str]:
        return list(self.parameters)


def _quiet_import_sweeps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the engine warns about pydantic v1 names on import
        import sweeps  # heavy: the sweep engine (~0.2 s, pydantic) is only needed to check and expand sweeps

    return sweeps


def schema_violations(raw: dict) -> list[str]:
    """What the ``sweeps`` package's schema (the one ``wandb sweep`` applies) finds wrong in a sweep dict."""
    sweeps = _quiet_import_sweeps()
    try:
        return list(sweeps.schema_violations_from_proposed_config(raw))
    except ValueError as exc:  # raised (not listed) for a malformed parameter entry
        return [str(exc)]


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and check a sweep file.

    Raises:
        DataNotFoundError: the file does not exist.
        ConfigError: it is not a mapping, violates the sweep schema, lacks program/method/parameters, names a
            method that needs the W&B server, or a program other than ``eval.py``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"Sweep file not found: '{path}'. The shipped sweeps are in sweeps/.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Could not parse sweep file '{path}': {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Sweep file '{path}' must be a mapping (program, method, parameters, ...), got {type(raw).__name__}.")
    for key in ("program", "method", "parameters"):
        if key not in raw:
            raise ConfigError(f"Sweep file '{path}' has no '{key}' (a W&B sweep file needs program, method, parameters).")
    violations = schema_violations(raw)
    if violations:
        hint = (" The number of runs of a random search is not part of the file: pass --count to sweep.py "
                "(or `wandb agent --count`)." if any("run_cap" in v for v in violations) else "")
        raise ConfigError(f"Sweep file '{path}' does not follow the W&B sweep schema (`wandb sweep` would reject it): "
                          + "; ".join(violations) + f". Fix the file.{hint}")
    if raw["method"] not in SUPPORTED_METHODS:
        raise ConfigError(f"Sweep file '{path}': method '{raw['method']}' cannot run offline (it needs the W&B server's "
                          f"metric feedback). Local methods: {list(SUPPORTED_METHODS)}; use `wandb sweep` for it.")
    if Path(raw["program"]).name != PROGRAM:
        raise ConfigError(f"Sweep file '{path}': program '{raw['program']}' is not {PROGRAM}; sweep.py runs evaluation "
                          f"sweeps (their configs are checked, resumed and reported as eval.py runs).")
    return SweepSpec(name=raw.get("name", path.stem), program=raw["program"], method=raw["method"], parameters=raw["parameters"],
                     command=raw.get("command") or ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
                     metric=raw.get("metric"), raw=raw)


def _plain(value):
    """numpy scalars (what the sweep engine returns) -> Python scalars, which YAML and OmegaConf accept."""
    return value.item() if hasattr(value, "item") else value


def check_count(spec: SweepSpec, count: int | None) -> None:
    """``count`` is what a random search draws; a grid takes none.

    Raises:
        ConfigError: a count for a grid, or none (or one below 1) for a random search.
    """
    if spec.method == "grid" and count is not None:
        raise ConfigError(f"--count is a random-search option, and sweep '{spec.name}' is a grid. Fix: drop --count; "
                          "to run a part of the grid, use --runs 0-3,7 (by index) or --where key=value (by value).")
    if spec.method == "random" and (count is None or count < 1):
        raise ConfigError(f"Random sweep '{spec.name}' needs a number of runs. Fix: pass --count N (e.g. --count 20).")


def expand(spec: SweepSpec, count: int | None = None, seed: int = 0) -> list[dict]:
    """The planned configurations, each a ``{dotted key: value}`` dict, in the order they will run.

    A grid is enumerated completely (``count`` must be None: a part of a grid is chosen with
    :func:`select_runs`); a random search draws ``count`` configurations, seeded by ``seed``.
    """
    check_count(spec, count)
    sweeps = _quiet_import_sweeps()
    config = {"method": spec.method, "parameters": spec.parameters}
    if spec.metric:
        config["metric"] = spec.metric
    state = random.getstate()
    random.seed(seed)  # the engine draws random configurations from the stdlib generator
    try:
        runs, plan = [], []
        while count is None or len(plan) < count:
            proposal = sweeps.next_run(config, runs)
            if proposal is None:
                break
            proposal.state = sweeps.RunState.finished
            runs.append(proposal)
            plan.append({key: _plain(entry["value"]) for key, entry in proposal.config.items()})
    finally:
        random.setstate(state)
    return plan


def _parse_indices(text: str, size: int) -> list[int]:
    indices: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                indices += range(low, high + 1)
            else:
                indices.append(int(part))
        except ValueError:
            raise ConfigError(f"--runs '{text}': cannot read '{part}'. Fix: run indices such as --runs 0-3,7.") from None
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise ConfigError(f"--runs '{text}': index {bad[0]} is outside the plan (run indices 0-{size - 1}). "
                          "Fix: use --dry-run to list the planned runs.")
    return sorted(set(indices))


def select_runs(spec: SweepSpec, plan: list[dict], runs: str | None = None, where: list[str] | None = None) -> list[int]:
    """Indices of the planned runs to launch: all, or those listed in ``runs`` (``"0-3,7"``) and matching every
    ``where`` condition (``"purifier.clipure_cos.num_steps=10"``, the value in YAML syntax, or a list
    ``"key=[1,2]"`` for any of several values). Works for grids and random searches alike.

    Raises:
        ConfigError: bad syntax, an index outside the plan, a key that is not swept, or nothing selected.
    """
    chosen = _parse_indices(runs, len(plan)) if runs else list(range(len(plan)))
    for condition in where or []:
        key, sep, text = condition.partition("=")
        if not sep:
            raise ConfigError(f"--where '{condition}' needs the form key=value (e.g. --where {spec.swept_keys[0]}=10).")
        if key not in spec.parameters:
            raise ConfigError(f"--where '{condition}': '{key}' is not a swept key of '{spec.name}'. "
                              f"Swept keys: {spec.swept_keys}.")
        try:
            wanted = yaml.safe_load(text)
        except yaml.YAMLError:
            wanted = text
        values = wanted if isinstance(wanted, list) and not any(isinstance(plan[i][key], list) for i in chosen) else [wanted]
        chosen = [i for i in chosen if any(plan[i][key] == v or str(plan[i][key]) == str(v) for v in values)]
    if not chosen:
        raise ConfigError(f"--runs/--where select no run of '{spec.name}' ({len(plan)} planned). "
                          "Fix: use --dry-run to list the planned runs and their values.")
    return chosen


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
            raise ConfigError(f"Sweep '{spec.name}': command macro {token} is not understood by eval.py; "
                              "use ${args_no_hyphens}.")
        else:
            argv.append(str(token))
    return argv


def program_args(spec: SweepSpec, params: dict) -> list[str]:
    """The arguments the program receives for one run (what follows ``${program}`` in the expanded command)."""
    argv = command_args(spec, params, python="python")
    return argv[argv.index(spec.program) + 1:]


def _key(token: str) -> str | None:
    return token.split("=", 1)[0].lstrip("+") if "=" in token else None


def check_extra_args(spec: SweepSpec, extra: list[str], groups: tuple[str, ...] = ()) -> None:
    """Refuse extra arguments that would silently make runs identical or fight the launcher.

    Raises:
        ConfigError: an argument sets a swept key (or a whole section holding one; a config ``group=choice`` is not
            such a section: it only picks a file), or a key the launcher owns (``run_dir``, ``resume``).
    """
    for token in extra:
        key = _key(token)
        if key is None:
            continue
        if key in LAUNCHER_KEYS:
            raise ConfigError(f"Extra argument '{token}': sweep.py sets {key} for every run itself (each run has its own "
                              "folder under --out and is resumed when it was interrupted). Fix: drop it; use --out for "
                              "the sweep folder.")
        for swept in spec.swept_keys:
            if key == swept or (key not in groups and swept.startswith(key + ".")):
                raise ConfigError(
                    f"Extra argument '{token}' overrides '{swept}', which sweep '{spec.name}' varies: every run would get "
                    f"the same value and the sweep would compare identical runs. Fix: drop it, or choose the values "
                    f"with --where {swept}=<value> (or edit the sweep file).")
