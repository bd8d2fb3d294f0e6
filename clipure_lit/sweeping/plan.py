"""Read a W&B sweep file, check it against what eval.py does, and expand it into the list of runs it describes.

The file is the one ``wandb sweep`` takes (``program``, ``method``, ``parameters``, ``command``, ``metric``,
``early_terminate``). :func:`load_sweep` checks it against the ``sweeps`` package's own schema, the one ``wandb
sweep`` applies, so a file that runs locally also runs on the W&B server, and against what its runs would do: each
parameter is a form W&B can draw from (and a grid can enumerate) with values that reach eval.py unchanged, the
command passes the swept values in a form eval.py reads, and the metric is a name eval.py logs.
:func:`check_extra_args` refuses fixed arguments (in the command or after the sweep file) that set a swept key, and
:func:`check_metric` checks the metric against each composed run (its attacks decide which robust accuracies it
logs). Every refusal is one ``ConfigError`` paragraph naming the file, the key and the fix.

Grid sweeps are enumerated completely; random sweeps draw ``--count`` configurations with a seeded generator, so
the plan is the same every time it is made. The plan is what the launcher executes and resumes; :func:`select_runs`
picks a part of it by index or by value.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import random
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from clipure_lit.attacks.presets import resolve_attacks
from clipure_lit.errors import ConfigError, DataNotFoundError

log = logging.getLogger(__name__)

SUPPORTED_METHODS = ("grid", "random")
# Methods that need the W&B server (its metric feedback or a custom controller).
SERVER_METHODS = ("bayes", "custom")
# The only program a local sweep runs; its config is validated (and resumed) with eval.py's own rules.
PROGRAM = "eval.py"
# Arguments the launcher owns for every run: the run folder and whether it continues an earlier attempt.
LAUNCHER_KEYS = ("run_dir", "resume")

# W&B's command macros. The agent replaces a token that is exactly "${name}" by what the name gives (an unknown
# name by nothing, silently) and "${envvar:NAME}" anywhere in a token by that environment variable (by NAME when it
# is unset). The parameter macros below give the swept values in different forms; eval.py reads key=value, and
# +key=value / ++key=value (its loader drops the leading +), and nothing else.
RUN_MACROS = ("${env}", "${interpreter}", "${program}")
READABLE_ARG_MACROS = {"${args_no_hyphens}": "", "${args_append_hydra}": "+", "${args_override_hydra}": "++"}
UNREADABLE_ARG_MACROS = {
    "${args}": "--key=value arguments",
    "${args_no_boolean_flags}": "--key=value arguments (--key alone for true, nothing for false)",
    "${args_no_equals}": "--key value pairs",
    "${args_json}": "one JSON object as a single argument",
    "${args_json_file}": "the path of a .json file (eval.py reads .yaml files only)",
    "${args_dict}": "the parameter names alone, without their values",
}
MACROS = RUN_MACROS + tuple(READABLE_ARG_MACROS) + tuple(UNREADABLE_ARG_MACROS)
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")  # the agent's own pattern
EXAMPLE_COMMAND = "command: [\"${env}\", \"${interpreter}\", \"${program}\", \"${args_no_hyphens}\"]"

# W&B's parameter distributions: the fields each needs and the ones it may add. Without ``distribution`` W&B infers
# it: value -> constant, values -> categorical (with probabilities: categorical_w_probabilities), integer min/max
# -> int_uniform, other min/max -> uniform.
DISTRIBUTIONS: dict[str, tuple[frozenset, frozenset]] = {
    "constant": (frozenset({"value"}), frozenset()),
    "categorical": (frozenset({"values"}), frozenset()),
    "categorical_w_probabilities": (frozenset({"values", "probabilities"}), frozenset()),
    "int_uniform": (frozenset({"min", "max"}), frozenset()),
    "uniform": (frozenset({"min", "max"}), frozenset()),
    "q_uniform": (frozenset({"min", "max"}), frozenset({"q"})),
    "log_uniform_values": (frozenset({"min", "max"}), frozenset()),
    "q_log_uniform_values": (frozenset({"min", "max"}), frozenset({"q"})),
    "inv_log_uniform_values": (frozenset({"min", "max"}), frozenset()),
    "normal": (frozenset(), frozenset({"mu", "sigma"})),
    "q_normal": (frozenset(), frozenset({"mu", "sigma", "q"})),
    "log_normal": (frozenset(), frozenset({"mu", "sigma"})),
    "q_log_normal": (frozenset(), frozenset({"mu", "sigma", "q"})),
    "beta": (frozenset(), frozenset({"a", "b"})),
    "q_beta": (frozenset(), frozenset({"a", "b", "q"})),
}
# Distributions whose min/max are base-e exponents; the sweeps package (and so this checker) refuses them.
DEPRECATED_DISTRIBUTIONS = {"log_uniform": "log_uniform_values", "inv_log_uniform": "inv_log_uniform_values",
                            "q_log_uniform": "q_log_uniform_values"}
PARAMETER_FIELDS = ("value", "values", "probabilities", "distribution", "min", "max", "mu", "sigma", "q", "a", "b")
# What W&B's grid can enumerate (int_uniform: every integer from min to max; q_uniform: min, min + q, ... below max).
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
_POSITIVE_MIN = ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values")
_NUMERIC_FIELDS = ("min", "max", "mu", "sigma", "q", "a", "b")

# The keys of early_terminate (W&B's hyperband stopping, the only type).
EARLY_TERMINATE_FIELDS = ("type", "min_iter", "max_iter", "s", "eta")
METRIC_GOALS = ("minimize", "maximize")

# The metrics an evaluation logs (ZeroShotLitModule.on_test_epoch_end): these for every run; per attack of
# attack.run (and "worst_case" when it has one) the robust ones; the time per sample of each part. Masking-check
# flags and values (test/flags/..., test/checks/...) are logged only when a check records them.
CLEAN_METRICS = ("test/clean_acc", "test/clean_correct", "test/clean_acc_ci_low", "test/clean_acc_ci_high",
                 "test/num_samples", "test/time_per_sample/clean", "test/time_per_sample/data_loading")
ROBUST_METRIC_PREFIXES = ("test/robust_acc/", "test/robust_correct/", "test/robust_acc_ci_low/",
                          "test/robust_acc_ci_high/")
ATTACK_TIME_PREFIX = "test/time_per_sample/attack/"
_OCCASIONAL_METRIC_PREFIXES = ("test/flags/", "test/checks/", "test/time_per_sample/checks")
# The live numbers logged after every batch (clipure_lit.callbacks.running, not imported: it brings in torch and
# Lightning; a test checks these names against what a real test loop logs): what a sweep's early_terminate can act
# on, and at the end equal to the test/ numbers.
LIVE_METRICS = ("live/samples_done", "live/clean_acc")
LIVE_ROBUST_PREFIX = "live/robust_acc/"


@dataclass
class SweepSpec:
    """A sweep file: its name (``name`` or the file stem), the program, the search method, ``parameters``
    (``{dotted key: W&B parameter spec}``), the ``command`` template, the optimised ``metric``, the parsed file
    (``raw``) and the file's ``path``."""

    name: str
    program: str
    method: str
    parameters: dict
    command: list = field(default_factory=list)
    metric: dict | None = None
    raw: dict = field(default_factory=dict)
    path: str = ""

    @property
    def swept_keys(self) -> list[str]:
        return list(self.parameters)

    @property
    def origin(self) -> str:
        """How error messages name the sweep: its file, else its name."""
        return f"Sweep file '{self.path}'" if self.path else f"Sweep '{self.name}'"


def _quiet_import_sweeps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the engine warns about pydantic v1 names on import
        import sweeps  # heavy: the sweep engine (~0.2 s, pydantic) is only needed to check and expand sweeps

    return sweeps


def schema_violations(raw: dict) -> list[str]:
    """What the ``sweeps`` package's schema (the one ``wandb sweep`` applies) finds wrong in a sweep dict, each
    message once and on one line."""
    sweeps = _quiet_import_sweeps()
    try:
        found = list(sweeps.schema_violations_from_proposed_config(raw))
    except ValueError as exc:  # raised (not listed) for a malformed parameter entry
        found = [str(exc)]
    return list(dict.fromkeys(" ".join(str(v).split()) for v in found))


def _closest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _holds_none(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_none(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_none(v) for v in value.values())
    return False


def _distribution(entry: dict) -> str | None:
    """The distribution W&B gives the parameter ``entry`` (named, or inferred from its fields)."""
    if "distribution" in entry:
        return entry["distribution"]
    if "value" in entry:
        return "constant"
    if "values" in entry:
        return "categorical_w_probabilities" if "probabilities" in entry else "categorical"
    if "min" in entry and "max" in entry:
        ints = all(isinstance(entry[k], int) and not isinstance(entry[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    return None


def parameter_problem(name: str, entry, method: str) -> str | None:
    """What is wrong with the W&B parameter ``entry`` of swept key ``name`` in a ``method`` sweep, with its fix, or
    None. Covers W&B's whole parameter syntax (``value``, ``values``, ``probabilities``, ``distribution`` and its
    ``min``/``max``/``mu``/``sigma``/``q``/``a``/``b``) and what eval.py needs on top (no nested parameters, no
    null values)."""
    forms = "{values: [...]}, {value: ...}, or {distribution: <name>, min: ..., max: ...}"
    if not isinstance(entry, dict):
        return f"is {entry!r}, not a mapping. Fix: give it one of W&B's forms: {forms}."
    if "parameters" in entry:
        inner = next(iter(entry["parameters"] or {}), "<key>") if isinstance(entry["parameters"], dict) else "<key>"
        return (f"holds nested parameters (parameters: inside a parameter), which W&B passes to the run as one "
                f"dictionary; eval.py's sweeps use one dotted key per swept value. Fix: write each as its own "
                f"parameter, e.g. '{name}.{inner}: {{values: [...]}}'.")
    unknown = [k for k in entry if k not in PARAMETER_FIELDS]
    if unknown:
        return (f"has the unknown field '{unknown[0]}'.{_closest(unknown[0], PARAMETER_FIELDS)} A W&B parameter takes "
                f"{list(PARAMETER_FIELDS)}. Fix the field name.")
    if "value" in entry and "values" in entry:
        return ("has both value and values. Fix: keep values: [...] to sweep several values, or value: ... for one "
                "constant.")
    dist = _distribution(entry)
    if dist is None:
        return (f"has no value, values, min/max or distribution ({sorted(entry)}). Fix: give it one of W&B's forms: "
                f"{forms}.")
    if not isinstance(dist, str) or dist not in DISTRIBUTIONS:
        if isinstance(dist, str) and dist in DEPRECATED_DISTRIBUTIONS:
            return (f"uses distribution {dist}, whose min and max are base-e exponents (W&B has deprecated it). Fix: "
                    f"use distribution: {DEPRECATED_DISTRIBUTIONS[dist]} with min and max as the limit values.")
        return (f"has the unknown distribution '{dist}'.{_closest(dist, DISTRIBUTIONS)} W&B's distributions: "
                f"{list(DISTRIBUTIONS)}. Fix the distribution.")
    required, optional = DISTRIBUTIONS[dist]
    missing = sorted(required - set(entry))
    if missing:
        return (f"uses distribution {dist}, which needs {' and '.join(sorted(required))}; {', '.join(missing)} is "
                "missing. Fix: add it.")
    extra = sorted(set(entry) - required - optional - {"distribution"})
    if "q" in extra:
        quantised = [d for d in DISTRIBUTIONS if d.startswith("q_")]
        return (f"has q, which only the quantised distributions take ({quantised}), but its distribution is {dist}. "
                f"Fix: use distribution: q_{dist.removeprefix('q_')} to draw multiples of q, or drop q.")
    if extra:
        takes = sorted(required | optional) or ["no other field"]
        return (f"uses distribution {dist}, which takes {takes}, not {extra}. Fix: drop {', '.join(extra)} or change "
                "the distribution.")
    if "values" in entry and (not isinstance(entry["values"], list) or not entry["values"]):
        return (f"has values: {entry['values']!r}; W&B needs a non-empty list. Fix: list at least one value, e.g. "
                "values: [1, 2].")
    if "probabilities" in entry:
        probs = entry["probabilities"]
        if (not isinstance(probs, list) or len(probs) != len(entry["values"])
                or not all(_is_number(p) and p >= 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6)):
            return (f"has probabilities {probs!r} for {len(entry['values'])} values; W&B needs one non-negative number "
                    "per value, summing to 1. Fix the probabilities.")
    for key in _NUMERIC_FIELDS:
        if key in entry and not _is_number(entry[key]):
            return f"has {key}: {entry[key]!r}, not a number. Fix: give {key} a number."
    if dist == "int_uniform" and not all(isinstance(entry[k], int) for k in ("min", "max")):
        return (f"uses int_uniform with min {entry['min']!r} and max {entry['max']!r}; it needs integers. Fix: use "
                "integers, or distribution: uniform for real numbers.")
    if "min" in entry and "max" in entry and not entry["min"] < entry["max"]:
        return (f"has min {entry['min']} not below max {entry['max']}; W&B needs min < max. Fix: correct the limits "
                "(for a single value use value: ...).")
    if dist in _POSITIVE_MIN and entry["min"] <= 0:
        return (f"uses {dist} with min {entry['min']}; its limits are values on a log scale and must be positive. "
                "Fix: use a min above 0.")
    for key, low, strict in (("q", 0, True), ("sigma", 0, False), ("a", 0, False), ("b", 0, False)):
        if key in entry and (entry[key] <= low if strict else entry[key] < low):
            return f"has {key}: {entry[key]}; W&B needs it {'above' if strict else 'at least'} {low}. Fix the value."
    if method == "grid" and dist not in GRID_DISTRIBUTIONS:
        return (f"uses distribution {dist} in a grid sweep, and a grid enumerates values ({list(GRID_DISTRIBUTIONS)} "
                "only; int_uniform gives every integer from min to max). Fix: list the values with values: [...], or "
                "use method: random with --count.")
    if any(key in entry and _holds_none(entry[key]) for key in ("value", "values")):
        return ("has a null value; W&B's agent passes it to eval.py as the text 'None', not as null, so `wandb agent` "
                "and sweep.py would run different configs. Fix: remove the null value (a key at its default needs no "
                "parameter), or sweep a value that means the same.")
    return None


def _envvar(token: str) -> str:
    """``token`` with each ``${envvar:NAME}`` replaced as the W&B agent replaces it (NAME itself when unset)."""
    return _ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), token)


def _check_command(where: str, raw: dict) -> list[str]:
    """The command of the sweep dict ``raw``, checked: it runs the program once, passes the swept values exactly once
    in a form eval.py reads, and uses only W&B's macros. Tokens before the program are the agent's business: sweep.py
    runs the program with its own Python (a warning names any it leaves out)."""
    swept = list(raw["parameters"])
    command = raw.get("command")
    if command is None or command == []:
        raise ConfigError(
            f"{where} has no command, so `wandb agent` runs W&B's default '${{env}} ${{interpreter}} ${{program}} "
            f"${{args}}', and ${{args}} passes the swept values as --key=value, which eval.py does not read (it takes "
            f"key=value): every run would fail. Fix: add {EXAMPLE_COMMAND} (fixed arguments such as "
            "attack=aa_clipure go before ${args_no_hyphens}).")
    if not isinstance(command, list) or any(isinstance(t, (dict, list)) or t is None for t in command):
        raise ConfigError(f"{where}: command must be a list of words, got {command!r} (W&B ignores any other form and "
                          f"runs its default command). Fix: {EXAMPLE_COMMAND}.")
    tokens = [str(t) for t in command]
    for token in tokens:
        if token.startswith("${") and token.endswith("}") and token not in MACROS and not _ENVVAR.fullmatch(token):
            raise ConfigError(
                f"{where}: the command holds the unknown macro {token}, which `wandb agent` replaces by nothing."
                f"{_closest(token, MACROS)} W&B's macros: {list(MACROS)} and ${{envvar:NAME}}. Fix the macro.")
    runs = [i for i, t in enumerate(tokens) if t == "${program}" or t == str(raw["program"])]
    if len(runs) != 1:
        raise ConfigError(
            f"{where}: the command names the program ({raw['program']}, as ${{program}}) {len(runs)} times; it must run "
            f"it once. Fix: {EXAMPLE_COMMAND}.")
    before, after = tokens[:runs[0]], tokens[runs[0] + 1:]
    for token in before:
        if token in READABLE_ARG_MACROS or token in UNREADABLE_ARG_MACROS:
            raise ConfigError(f"{where}: the command has {token} before ${{program}}, where the values would go to the "
                              f"interpreter, not to {raw['program']}. Fix: move it after ${{program}}.")
    ignored = [t for t in before if t not in ("${env}", "${interpreter}") and not re.fullmatch(r"python[0-9.]*", t)]
    if ignored:
        log.warning("%s: the command's %s before ${program} is used by `wandb agent` only; sweep.py runs %s with its "
                    "own Python (%s).", where, " ".join(ignored), raw["program"], sys.executable)
    for token in after:
        if token in ("${env}", "${interpreter}"):
            raise ConfigError(f"{where}: the command has {token} after ${{program}}; `wandb agent` would pass its path "
                              f"to {raw['program']} as an argument. Fix: keep {token} before ${{program}}.")
        if token in UNREADABLE_ARG_MACROS:
            raise ConfigError(
                f"{where}: the command passes the swept values with {token}, which gives "
                f"{UNREADABLE_ARG_MACROS[token]}; eval.py reads key=value arguments only, so the runs would fail or "
                f"not get the swept values ({swept}). Fix: replace {token} with ${{args_no_hyphens}}.")
    passed = [t for t in after if t in READABLE_ARG_MACROS]
    if not passed:
        raise ConfigError(
            f"{where}: the command passes no swept value to {raw['program']} (no ${{args_no_hyphens}}), so every run "
            f"would get the same arguments and the sweep would compare identical runs; swept keys: {swept}. Fix: end "
            f"the command with ${{args_no_hyphens}}, e.g. {EXAMPLE_COMMAND}.")
    if len(passed) > 1:
        raise ConfigError(f"{where}: the command passes the swept values {len(passed)} times ({', '.join(passed)}). "
                          "Fix: keep one ${args_no_hyphens}.")
    return list(command)


def metric_names(attacks: list[str]) -> list[str]:
    """The metric names every evaluation whose ``attack.run`` resolves to the attack names ``attacks`` logs (what a
    sweep may optimise): clean accuracy, counts, intervals and times; per attack, and for the worst case over them
    when there is one, robust accuracy, counts and intervals; the live numbers logged after every batch."""
    robust = list(attacks) + (["worst_case"] if attacks else [])
    return (list(CLEAN_METRICS) + [f"{prefix}{name}" for name in robust for prefix in ROBUST_METRIC_PREFIXES]
            + [f"{ATTACK_TIME_PREFIX}{name}" for name in attacks]
            + list(LIVE_METRICS) + [f"{LIVE_ROBUST_PREFIX}{name}" for name in robust])


def _check_metric_shape(where: str, metric) -> None:
    """``metric``: a name of the form eval.py logs and an explicit goal."""
    if metric is None:
        return
    example = "metric: {name: test/robust_acc/worst_case, goal: maximize}"
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise ConfigError(f"{where}: metric must be a mapping with a name and a goal, got {metric!r}. Fix: {example}.")
    goal = metric.get("goal")
    if goal not in METRIC_GOALS:
        said = "has no goal, and W&B's default is minimize" if goal is None else f"has goal {goal!r}"
        raise ConfigError(f"{where}: metric {metric['name']} {said}.{_closest(goal, METRIC_GOALS) if goal else ''} The "
                          f"goal must be one of {list(METRIC_GOALS)}. Fix: set it, e.g. {example}.")
    name = metric["name"]
    if name.startswith(_OCCASIONAL_METRIC_PREFIXES):
        raise ConfigError(f"{where}: metric {name} is logged only when a masking check records it, so W&B would compare "
                          "runs that lack it. Fix: optimise a metric every run logs, such as test/robust_acc/worst_case.")
    forms = (list(CLEAN_METRICS) + [f"{p}<attack>" for p in ROBUST_METRIC_PREFIXES] + [f"{ATTACK_TIME_PREFIX}<attack>"]
             + list(LIVE_METRICS) + [f"{LIVE_ROBUST_PREFIX}<attack>"])
    per_attack = ROBUST_METRIC_PREFIXES + (ATTACK_TIME_PREFIX, LIVE_ROBUST_PREFIX)
    if name in CLEAN_METRICS or name in LIVE_METRICS or any(name.startswith(p) and len(name) > len(p) for p in per_attack):
        return
    raise ConfigError(
        f"{where}: metric {name} is not a name eval.py logs, so W&B would have nothing to optimise."
        f"{_closest(name, metric_names(['<attack>']))} eval.py logs {forms} (<attack>: each entry of attack.run, and "
        "worst_case over them). Fix the name.")


def _check_early_terminate(where: str, stop) -> None:
    """``early_terminate``: W&B's hyperband shape. sweep.py stops no run early (a warning says so)."""
    if stop is None:
        return
    fix = ("Fix: early_terminate: {type: hyperband, min_iter: 3} (or max_iter and s; eta > 1 optional), or remove "
           "early_terminate")
    if not isinstance(stop, dict):
        raise ConfigError(f"{where}: early_terminate must be a mapping, got {stop!r}. {fix}.")
    unknown = [k for k in stop if k not in EARLY_TERMINATE_FIELDS]
    problem = None
    if stop.get("type") != "hyperband":
        problem = f"type {stop.get('type')!r}: W&B's only type is hyperband"
    elif unknown:
        problem = f"the unknown field '{unknown[0]}' (its fields: {list(EARLY_TERMINATE_FIELDS)})"
    elif "min_iter" not in stop and not ("max_iter" in stop and "s" in stop):
        problem = "neither min_iter nor max_iter with s"
    elif any(k in stop and (not isinstance(stop[k], int) or isinstance(stop[k], bool)) for k in ("min_iter", "max_iter")):
        problem = "a min_iter or max_iter that is not an integer"
    elif "min_iter" in stop and stop["min_iter"] < 1:
        problem = f"min_iter {stop['min_iter']} (it must be at least 1)"
    elif "s" in stop and not _is_number(stop["s"]):
        problem = f"s {stop['s']!r} (a number)"
    elif "eta" in stop and not (_is_number(stop["eta"]) and stop["eta"] > 1):
        problem = f"eta {stop['eta']!r} (a number above 1)"
    if problem:
        close = _closest(unknown[0], EARLY_TERMINATE_FIELDS) if unknown and "unknown" in problem else ""
        raise ConfigError(f"{where}: early_terminate has {problem}.{close} {fix}.")
    log.warning("%s: early_terminate is used by W&B's server only: sweep.py runs every planned run to the end.", where)


def _check_early_terminate_metric(where: str, stop, metric) -> None:
    """Hyperband compares runs by their metric's history: one of the ``live/`` numbers eval.py logs after every batch.
    A ``test/`` metric is logged once, when a run ends, so early termination would never act on it."""
    if stop is None or not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        return
    name = metric["name"]
    if name in LIVE_METRICS or name.startswith(LIVE_ROBUST_PREFIX):
        return
    live = name.replace("test/", "live/", 1) if name.startswith(("test/clean_acc", "test/robust_acc/")) else None
    fix = f"metric: {{name: {live}, goal: {metric.get('goal', 'maximize')}}}" if live else (
        "metric: {name: live/robust_acc/worst_case, goal: maximize}")
    raise ConfigError(f"{where}: early_terminate acts on the history of metric {name}, which eval.py logs only once, "
                      "when a run ends, so no run would ever be stopped early. The numbers logged after every batch "
                      f"are {list(LIVE_METRICS)} and {LIVE_ROBUST_PREFIX}<attack> (and worst_case); at the end they "
                      f"equal the test/ numbers. Fix: {fix}, or remove early_terminate.")


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and check a sweep file (see the module docstring for what is checked).

    Raises:
        DataNotFoundError: the file does not exist.
        ConfigError: it is not a mapping or not YAML; lacks program/method/parameters; names a program other than
            ``eval.py`` or a method that needs the W&B server; a parameter that W&B cannot draw or a grid cannot
            enumerate, or whose value would reach eval.py changed; a command without the swept values in a form
            eval.py reads, or with an unknown macro; a metric eval.py does not log or without a goal; a malformed
            early_terminate; anything else the W&B sweep schema refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"Sweep file not found: '{path}'. The shipped sweeps are in sweeps/.")
    where = f"Sweep file '{path}'"
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        hint = (" A macro inside a [...] list must be quoted: [\"${env}\", \"${interpreter}\", ...]."
                if "${" in text else "")
        raise ConfigError(f"Could not parse sweep file '{path}': {' '.join(str(exc).split())}. Fix the YAML "
                          f"syntax.{hint}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping (program, method, parameters, ...), got {type(raw).__name__}. "
                          "Fix: write it as a W&B sweep file (see sweeps/ for examples).")
    known = list(_quiet_import_sweeps().config.schema.sweep_config_jsonschema["properties"])
    unknown = [k for k in raw if k not in known]
    if unknown:
        hint = (" The number of runs of a random search is not part of the file: pass --count to sweep.py (or "
                "`wandb agent --count`)." if "run_cap" in unknown else "")
        raise ConfigError(f"{where} has the key '{unknown[0]}', which the W&B sweep schema does not know (`wandb sweep` "
                          f"would reject it).{_closest(unknown[0], known)} Its keys: {known}. Fix: remove or rename "
                          f"it.{hint}")
    for key in ("program", "method", "parameters"):
        if key not in raw:
            raise ConfigError(f"{where} has no '{key}' (a W&B sweep file needs program, method, parameters). "
                              f"Fix: add {key} (see sweeps/ for examples).")
    if not isinstance(raw["program"], str) or Path(raw["program"]).name != PROGRAM:
        raise ConfigError(f"{where}: program {raw['program']!r} is not {PROGRAM}; sweep.py runs evaluation sweeps (their "
                          f"configs are checked, resumed and reported as eval.py runs). Fix: program: {PROGRAM}; run "
                          "sweeps of another program with `wandb sweep` and `wandb agent`.")
    method = raw["method"]
    if method in SERVER_METHODS:
        raise ConfigError(f"{where}: method '{method}' cannot run offline (it needs the W&B server's metric feedback). "
                          f"Fix: use method {' or '.join(SUPPORTED_METHODS)} with sweep.py, or run this file with "
                          "`wandb sweep` and `wandb agent`.")
    if method not in SUPPORTED_METHODS:
        raise ConfigError(f"{where}: method {method!r} is not a W&B method.{_closest(method, SUPPORTED_METHODS)} "
                          f"Methods: {list(SUPPORTED_METHODS)} (and {list(SERVER_METHODS)} on W&B's server). Fix the "
                          "method.")
    parameters = raw["parameters"]
    if not isinstance(parameters, dict) or not parameters:
        raise ConfigError(f"{where}: parameters must be a mapping of dotted config keys to W&B parameters, got "
                          f"{parameters!r}. Fix: e.g. parameters: {{attack.eps: {{values: [1, 2, 4]}}}}.")
    for name, entry in parameters.items():
        problem = parameter_problem(str(name), entry, method)
        if problem:
            raise ConfigError(f"{where}: parameter '{name}' {problem}")
    command = _check_command(where, raw)
    _check_metric_shape(where, raw.get("metric"))
    _check_early_terminate(where, raw.get("early_terminate"))
    _check_early_terminate_metric(where, raw.get("early_terminate"), raw.get("metric"))
    violations = schema_violations(raw)  # anything else W&B's own schema refuses (names, types), in the same form
    if violations:
        raise ConfigError(f"{where} does not follow the W&B sweep schema (`wandb sweep` would reject it): "
                          + "; ".join(violations) + ". Fix the file.")
    return SweepSpec(name=raw.get("name", path.stem), program=raw["program"], method=method, parameters=parameters,
                     command=command, metric=raw.get("metric"), raw=raw, path=str(path))


def check_metric(spec: SweepSpec, cfg, run: str) -> None:
    """The sweep's metric must be one that the run ``run``, with the composed eval.py config ``cfg``, logs: its
    robust accuracies depend on its ``attack.run``. A sweep without a metric passes.

    Raises:
        ConfigError: the run would not log the metric (a typo, an attack the run does not have, or no attack at all).
    """
    if not spec.metric:
        return
    name = spec.metric["name"]
    attacks = [s.name for s in resolve_attacks(cfg.attack)]
    names = metric_names(attacks)
    if name in names:
        return
    if not attacks:
        fix = ("give every run attacks (e.g. attack=aa_clipure in the command or after the sweep file), or optimise "
               "test/clean_acc")
    elif "test/robust_acc/worst_case" in names and name.startswith(ROBUST_METRIC_PREFIXES):
        fix = "optimise a metric every run logs, such as test/robust_acc/worst_case (the worst case over its attacks)"
    else:
        fix = "fix the name"
    raise ConfigError(
        f"{spec.origin}: {run} would not log metric {name} (its attack.run is {attacks}), so W&B would compare runs "
        f"that lack it.{_closest(name, names)} The metrics it logs: {names}. Fix: {fix}.")


def _plain(value):
    """numpy scalars (what the sweep engine returns) -> Python scalars, which YAML and OmegaConf accept."""
    return value.item() if hasattr(value, "item") else value


def check_count(spec: SweepSpec, count: int | None) -> None:
    """``count`` is what a random search draws; a grid takes none.

    Raises:
        ConfigError: a count for a grid, or none (or one below 1) for a random search.
    """
    if spec.method == "grid" and count is not None:
        raise ConfigError(f"--count is a random-search option, and {spec.origin[0].lower()}{spec.origin[1:]} is a grid. "
                          "Fix: drop --count; to run a part of the grid, use --runs 0-3,7 (by index) or --where "
                          "key=value (by value).")
    if spec.method == "random" and (count is None or count < 1):
        raise ConfigError(f"{spec.origin} is a random search, which needs a number of runs (W&B's sweep files hold "
                          "none). Fix: pass --count N (e.g. --count 20).")


def expand(spec: SweepSpec, count: int | None = None, seed: int = 0) -> list[dict]:
    """The planned configurations, each a ``{dotted key: value}`` dict, in the order they will run.

    A grid is enumerated completely (``count`` must be None: a part of a grid is chosen with
    :func:`select_runs`); a random search draws ``count`` configurations, seeded by ``seed``.

    Raises:
        ConfigError: a count that does not fit the method, or parameters W&B's engine cannot plan (for a spec made
            by :func:`load_sweep` that is caught there, with the parameter named).
    """
    check_count(spec, count)
    sweeps = _quiet_import_sweeps()
    import jsonschema  # the engine's own dependency: its schema errors, raised when it cannot plan the parameters

    config = {"method": spec.method, "parameters": spec.parameters}
    if spec.metric:
        config["metric"] = spec.metric
    state = random.getstate()
    random.seed(seed)  # the engine draws random configurations from the stdlib generator
    try:
        runs, plan = [], []
        while count is None or len(plan) < count:
            try:
                proposal = sweeps.next_run(config, runs)
            except (ValueError, TypeError, KeyError, jsonschema.ValidationError) as exc:  # the engine's own checks
                raise ConfigError(f"{spec.origin}: W&B's sweep engine cannot plan its parameters: "
                                  f"{' '.join(str(exc).split())}. Fix the parameters.") from None
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
    """A value as an argument: YAML (flow style for lists and mappings). The W&B agent writes Python's ``str``
    instead (``['a', 'b']``, ``True``), which eval.py reads as the same value; null, which it would not, is refused
    by :func:`load_sweep`."""
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def command_args(spec: SweepSpec, params: dict, python: str = sys.executable) -> list[str]:
    """Expand the sweep's ``command`` for one run as the W&B agent does: ``${interpreter}`` is ``python``,
    ``${program}`` the program, ``${args_no_hyphens}`` / ``${args_append_hydra}`` / ``${args_override_hydra}`` the
    swept values as ``key=value`` / ``+key=value`` / ``++key=value``, ``${envvar:NAME}`` that environment variable;
    ``${env}`` (the agent's ``/usr/bin/env``) is left out.

    Raises:
        ConfigError: a macro whose values eval.py cannot read (refused by :func:`load_sweep` already).
    """
    argv = []
    for token in map(str, spec.command):
        if token == "${env}":
            continue
        if token == "${interpreter}":
            argv.append(python)
        elif token == "${program}":
            argv.append(spec.program)
        elif token in READABLE_ARG_MACROS:
            argv += [f"{READABLE_ARG_MACROS[token]}{k}={_format_value(v)}" for k, v in params.items()]
        elif token in UNREADABLE_ARG_MACROS:
            raise ConfigError(f"{spec.origin}: command macro {token} gives {UNREADABLE_ARG_MACROS[token]}, which eval.py "
                              "does not read. Fix: use ${args_no_hyphens}.")
        else:
            argv.append(_envvar(token))
    return argv


def program_args(spec: SweepSpec, params: dict) -> list[str]:
    """The arguments the program receives for one run (what follows ``${program}`` in the expanded command)."""
    argv = command_args(spec, params, python="python")
    return argv[argv.index(spec.program) + 1:]


def _key(token: str) -> str | None:
    return token.split("=", 1)[0].lstrip("+") if "=" in token else None


def _sets_swept(spec: SweepSpec, key: str, groups: tuple[str, ...]) -> str | None:
    """The swept key that an argument for ``key`` would set (the key, or a whole section holding it; a config
    ``group=choice`` is not such a section: it only picks a file), or None."""
    for swept in spec.swept_keys:
        if key == swept or (key not in groups and swept.startswith(key + ".")):
            return swept
    return None


def check_extra_args(spec: SweepSpec, extra: list[str], groups: tuple[str, ...] | None = None) -> None:
    """Refuse fixed arguments, the command's own (its words after the program) and the ``extra`` ones given to every
    run, that would silently make runs identical or fight the launcher. ``groups``: the config groups of the
    program (``group=choice`` arguments; default: eval.py's).

    Raises:
        ConfigError: an argument sets a swept key (or a whole section holding one), or a key the launcher owns
            (``run_dir``, ``resume``).
    """
    if groups is None:
        from clipure_lit.config.loader import GROUPS  # heavy: the loader imports the purifier registry (torch)

        groups = GROUPS
    tokens = [str(t) for t in spec.command]
    runs = [i for i, t in enumerate(tokens) if t in ("${program}", str(spec.program))]
    for token in tokens[runs[0] + 1:] if runs else []:
        key = _key(token)
        if key is None:
            continue
        if key in LAUNCHER_KEYS:
            raise ConfigError(f"{spec.origin}: the command sets {key} ('{token}'), so every run `wandb agent` starts would "
                              f"share it (sweep.py gives each run its own folder). Fix: remove it from the command.")
        swept = _sets_swept(spec, key, groups)
        if swept:
            raise ConfigError(
                f"{spec.origin}: the command sets '{token}', and the sweep varies '{swept}': the fixed value would fight "
                f"the swept one (after ${{args_no_hyphens}} every run would get it). Fix: remove '{token}' from the "
                f"command; the values of '{swept}' come from its parameter.")
    for token in extra:
        key = _key(token)
        if key is None:
            continue
        if key in LAUNCHER_KEYS:
            raise ConfigError(f"Extra argument '{token}': sweep.py sets {key} for every run itself (each run has its own "
                              "folder under --out and is resumed when it was interrupted). Fix: drop it; use --out for "
                              "the sweep folder.")
        swept = _sets_swept(spec, key, groups)
        if swept:
            raise ConfigError(
                f"Extra argument '{token}' overrides '{swept}', which sweep '{spec.name}' varies: every run would get "
                f"the same value and the sweep would compare identical runs. Fix: drop it, or choose the values "
                f"with --where {swept}=<value> (or edit the sweep file).")
