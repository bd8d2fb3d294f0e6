"""Prompt templates and class names as data, never retyped.

Sources:
* open_clip's ``zero_shot_metadata``: the 80 OpenAI ImageNet templates (``openai_imagenet_80``), the 7 simple
  ones (``simple_imagenet_7``) and the 1000 ImageNet class names (``imagenet1k``);
* CLIP_benchmark's ``en_zeroshot_classification_templates.json`` and ``en_classnames.json``: every other
  dataset's templates (``cifar10``, ``cars``, ...) and class names;
* a user JSON file in CLIP_benchmark's format: ``path.json`` (a list, or a mapping with one key) or
  ``path.json:key``.

Templates are ``str.format`` strings with a ``{c}`` placeholder; the positional ``{}`` style is read as ``{c}``.
Class templates without a placeholder would give every class the same prompts, so they are refused
(:func:`require_class_placeholder`). The blank prompts of CLIPure are the templates formatted with an empty class
name, keeping their artefacts ("a bad photo of a .", "a  in a video game.").
"""

from __future__ import annotations

import functools
import json
import string
from importlib import resources

from clipure_lit.errors import ConfigError
from clipure_lit.utils.paths import find_path

OPEN_CLIP_TEMPLATE_SETS = ("openai_imagenet_80", "simple_imagenet_7")


@functools.lru_cache(maxsize=None)
def _clip_benchmark_json(filename: str) -> dict:
    return json.loads((resources.files("clip_benchmark.datasets") / filename).read_text(encoding="utf-8"))


def clip_benchmark_templates() -> dict[str, list[str]]:
    return _clip_benchmark_json("en_zeroshot_classification_templates.json")


def clip_benchmark_classnames() -> dict[str, list[str]]:
    return _clip_benchmark_json("en_classnames.json")


def available_template_sets() -> list[str]:
    return sorted(set(OPEN_CLIP_TEMPLATE_SETS) | set(clip_benchmark_templates()))


def available_classname_sets() -> list[str]:
    return sorted({"imagenet1k"} | set(clip_benchmark_classnames()))


def _from_json_file(spec: str, kind: str) -> list[str] | None:
    """Load ``path.json`` or ``path.json:key``; None when ``spec`` is not a JSON file reference."""
    path_part, _, key = spec.partition(".json")
    if not _ and not spec.endswith(".json"):
        return None
    path_str = path_part + ".json"
    key = key.lstrip(":")
    found = find_path(path_str)
    if found is None:
        raise ConfigError(f"{kind} file '{path_str}' does not exist. Fix the path (relative paths start at the current directory).")
    try:
        data = json.loads(found.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{kind} file '{path_str}' is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
                          "Fix the file: a JSON list of strings, or an object mapping names to lists (CLIP_benchmark's "
                          "format).") from None
    if isinstance(data, list):
        return [str(x) for x in data]
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} file '{path_str}' must hold a list or a mapping of name -> list, got {type(data).__name__}.")
    if not key:
        if len(data) != 1:
            raise ConfigError(f"{kind} file '{path_str}' has several entries {sorted(data)}; pick one with '{path_str}:<key>'.")
        key = next(iter(data))
    if key not in data:
        raise ConfigError(f"{kind} file '{path_str}' has no entry '{key}'. Entries: {sorted(data)}.")
    return [str(x) for x in data[key]]


def _lookup(name: str, kind: str, open_clip_sets: dict, table: dict, valid: list[str], fix: str) -> list[str]:
    """A named list: from a JSON file (``path.json[:key]``), open_clip's sets (name -> loader), then CLIP_benchmark's
    ``table``; otherwise a :class:`ConfigError` listing ``valid`` and ``fix``."""
    from_file = _from_json_file(name, kind)
    if from_file is not None:
        return from_file
    if name in open_clip_sets:
        return open_clip_sets[name]()
    if name in table:
        return list(table[name])
    raise ConfigError(f"Unknown {kind.lower()} set '{name}'. Valid sets: {valid}, {fix}")


def _open_clip_templates(name: str) -> list[str]:
    from open_clip import zero_shot_metadata as meta  # heavy: open_clip pulls timm and torchvision

    fns = meta.OPENAI_IMAGENET_TEMPLATES if name == "openai_imagenet_80" else meta.SIMPLE_IMAGENET_TEMPLATES
    # open_clip stores them as callables; calling with the placeholder itself yields the format string.
    return [fn("{c}") for fn in fns]


def _open_clip_imagenet_classnames() -> list[str]:
    from open_clip import IMAGENET_CLASSNAMES  # heavy: open_clip pulls timm and torchvision

    return list(IMAGENET_CLASSNAMES)


def normalise_template(template: str, where: str) -> str:
    """``template`` with its placeholder spelled ``{c}``: ``{}`` (positional) becomes ``{c}``; any other field, a
    conversion or a malformed brace is a :class:`ConfigError` naming ``where``."""
    out = []
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"Template {template!r} in {where} is not a valid format string ({exc}). Fix: write the class "
                          "name as {c} (or {}) and double literal braces ({{ and }}).") from None
    for literal, field, spec, conversion in parts:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        if field not in ("", "c", "0") or spec or conversion:
            raise ConfigError(f"Template {template!r} in {where} has the field {{{field}}}; templates take one placeholder "
                              "for the class name, {c} (or {}). Fix the template.")
        out.append("{c}")
    return "".join(out)


def get_templates(name: str) -> list[str]:
    """Templates of a named set as ``{c}`` format strings (``{}`` placeholders are read as ``{c}``)."""
    sets = {n: (lambda n=n: _open_clip_templates(n)) for n in OPEN_CLIP_TEMPLATE_SETS}
    templates = _lookup(name, "Template", sets, clip_benchmark_templates(), available_template_sets(),
                        "or a JSON file 'path.json[:key]' in CLIP_benchmark's format.")
    return [normalise_template(t, f"template set '{name}'") for t in templates]


def require_class_placeholder(templates: list[str], key: str, name: str) -> None:
    """Class templates must contain the class name: without ``{c}`` every class gets the same prompt, and the
    classifier guesses. A :class:`ConfigError` names the key, the set and the templates without it."""
    missing = [t for t in templates if "{c}" not in t]
    if missing:
        raise ConfigError(f"{key}='{name}' has {len(missing)} template(s) without a class-name placeholder, e.g. "
                          f"{missing[0]!r}: every class would get the same prompt. Fix: write the class name as {{c}} "
                          "(or {}) in every template, or choose another set.")


def get_classnames(name: str) -> list[str]:
    """Class names of a named set (``imagenet1k`` from open_clip, others from CLIP_benchmark) or a JSON file."""
    return _lookup(name, "Class-name", {"imagenet1k": _open_clip_imagenet_classnames}, clip_benchmark_classnames(),
                   available_classname_sets(), "a JSON file 'path.json[:key]', or null to use the dataset's own class names.")


def format_prompts(templates: list[str], classname: str) -> list[str]:
    return [t.format(c=classname) for t in templates]


def blank_prompts(templates: list[str]) -> list[str]:
    """Templates with the class name removed, exactly as ``template.format(c="")`` leaves them."""
    return format_prompts(templates, "")
