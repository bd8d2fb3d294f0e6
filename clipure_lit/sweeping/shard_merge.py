"""Merge the shards of one evaluation (``<run_dir>/shards/<i>/``, or runs found under ``--from`` folders:
:mod:`.shard_runs`) into ``<run_dir>``: ``samples.csv``,
``results.json``, ``results.png``, ``config.yaml``, ``environment.json`` and ``timings.json`` as one process
evaluating the whole selection writes them.

Every shard evaluates whole batches of the one-process run (:func:`clipure_lit.data.datasets.shard_ids`) and a
batch's random draws are seeded from its sample ids, so the merged per-sample table, and every accuracy, interval
and count computed from it, equals the one-process run's. What is per process is merged as one process would have
recorded it: the first-batch masking checks are shard 0's (its first batch is the one-process run's first batch),
the end-of-run checks are recomputed on the merged summary, and times per sample are summed over the shards'
batches (shard 0's checks time only) and divided by the sample count. Only the times differ from a one-process run,
as they do between any two runs.

Merging refuses (``ConfigError``) shards that are not finished, whose resolved configs differ in anything but
``data.shard``, whose code differs (git commit, package versions in ``environment.json``), or whose sample ids
overlap or do not cover the selection.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from clipure_lit.attacks.checks import final_checks
from clipure_lit.attacks.presets import adapt_to_classes, resolve_attacks
from clipure_lit.callbacks.resume import config_differences, merge_records, read_progress
from clipure_lit.callbacks.results_writer import write_results
from clipure_lit.config.loader import to_plain
from clipure_lit.data.datamodule import ZeroShotDataModule
from clipure_lit.errors import ConfigError
from clipure_lit.results import read_json, summarise, table_from_columns, write_json
from clipure_lit.run_folder import exclusive_run_folder, run_log, write_config
from clipure_lit.sweeping.run_status import DONE, run_state
from clipure_lit.sweeping.shard_runs import saved_config, shard_folders

log = logging.getLogger(__name__)

SHARD_KEYS = ("data.shard",)  # the only keys in which the runs of one shard set differ


def whole_selection(cfg: DictConfig) -> ZeroShotDataModule:
    """The data module of the one-process run of ``cfg`` (no shard): its ``sample_ids`` are every shard's."""
    data = OmegaConf.merge(cfg.data, {"num_shards": 1, "shard": None})
    module = ZeroShotDataModule(data)
    module.setup("test")
    return module


def _unfinished(folders: list[Path], finish: str) -> None:
    """Refuse when a shard has no ``results.json``, naming each one and what it holds; ``finish``: the fix's way
    to finish them."""
    missing = []
    for i, folder in enumerate(folders):
        shard = run_state(folder)  # what --status shows for it
        if shard.state == DONE:
            continue
        missing.append(f"shard {i} ({folder}: " + (f"stopped or running, {shard.done} samples done)" if shard.records
                                                    else "not started)"))
    if missing:
        raise ConfigError(f"Cannot merge: {len(missing)} of the {len(folders)} shards are not finished: "
                          f"{'; '.join(missing)}. A merged result must hold every sample. Fix: finish them {finish}, then "
                          "merge again.")


def _check_configs(folders: list[Path], expected: dict) -> list[dict]:
    """Every shard's saved config against shard 0's, and shard 0's against the config of this command (each with
    its own ``data.shard``); returns the saved configs."""
    configs = [saved_config(folder) for folder in folders]
    problems = []
    for i, config in enumerate(configs):
        against = {**expected, "data": {**expected["data"], "shard": config.get("data", {}).get("shard")}}
        diffs = [d for d in config_differences(against, config) if d.split(":", 1)[0] not in SHARD_KEYS]
        if diffs:
            problems.append(f"shard {i} ({folders[i]}): " + "; ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else ""))
    if problems:
        raise ConfigError("Cannot merge: the shards' resolved configs differ from this command's in more than the "
                          f"shard key, so their samples were not evaluated alike: {' | '.join(problems)}. Fix: merge "
                          "with the arguments the shards were launched with, or run the differing shards again with "
                          "the same arguments (the launcher moves a shard whose config changed aside and reruns it).")
    return configs


def _check_code(folders: list[Path]) -> list[dict]:
    """The git commit and package versions of every shard against shard 0's; returns the environments."""
    envs = [read_json(folder / "environment.json") for folder in folders]
    first = envs[0]
    problems = []
    for i, env in enumerate(envs[1:], start=1):
        diffs = []
        if env.get("git_commit") != first.get("git_commit"):
            diffs.append(f"git commit {first.get('git_commit')} -> {env.get('git_commit')}")
        packages = first.get("packages", {}) | env.get("packages", {})
        diffs += [f"{name} {first.get('packages', {}).get(name)} -> {env.get('packages', {}).get(name)}"
                  for name in sorted(packages) if first.get("packages", {}).get(name) != env.get("packages", {}).get(name)]
        if diffs:
            problems.append(f"shard {i} against shard 0: {', '.join(diffs)}")
    if problems:
        raise ConfigError("Cannot merge: the shards ran different code (environment.json), so their numbers are not "
                          f"one evaluation: {'; '.join(problems)}. Fix: run the differing shards again with the same "
                          "checkout and packages (delete their folders and launch them again).")
    return envs


def _check_ids(shard_ids: list[list[int]], selection: list[int], folders: list[Path]) -> None:
    """The shards' sample ids must be disjoint and together be the selection."""
    owner: dict[int, int] = {}
    overlaps = []
    for i, ids in enumerate(shard_ids):
        for sid in ids:
            if sid in owner and owner[sid] != i:
                overlaps.append((sid, owner[sid], i))
            owner.setdefault(sid, i)
    if overlaps:
        sid, a, b = overlaps[0]
        raise ConfigError(f"Cannot merge: {len(overlaps)} sample id(s) were evaluated by more than one shard, e.g. "
                          f"id {sid} by shards {a} ({folders[a]}) and {b} ({folders[b]}). Fix: run every shard of one "
                          "shard set with the same data.num_shards (eval.py --shards N launches them so).")
    missing = sorted(set(selection) - set(owner))
    extra = sorted(set(owner) - set(selection))
    if missing or extra:
        raise ConfigError(f"Cannot merge: the shards' {len(owner)} sample ids are not the {len(selection)} selected "
                          f"ones: {len(missing)} missing (e.g. {missing[:3]}), {len(extra)} not selected (e.g. "
                          f"{extra[:3]}). Fix: launch the shards again with the arguments of this command (the data "
                          "they selected differs, or a shard folder holds another run).")


def _times(records_per_shard: list[list[dict]], num_samples: int) -> tuple[dict, dict]:
    """``(time_per_sample_s, steady_time_per_sample_s)`` over every shard's batches, as one process would record them:
    the total seconds per key over all samples (checks: shard 0's, the first batch's); the steady state over each
    shard's batches after its first, for the keys timed inside a batch (``clean``, ``attack/<name>``)."""
    total: dict[str, float] = {}
    steady: dict[str, float] = {}
    steady_rows = 0
    for k, records in enumerate(records_per_shard):
        for b, record in enumerate(records):
            for key, seconds in record.get("times", {}).items():
                if key != "checks" or k == 0:
                    total[key] = total.get(key, 0.0) + seconds
                if b > 0 and (key == "clean" or key.startswith("attack/")):
                    steady[key] = steady.get(key, 0.0) + seconds
            if b > 0:
                steady_rows += len(record["columns"].get("label", {}).get("ids", []))
    per_sample = {key: total[key] / max(num_samples, 1) for key in sorted(total)}
    return per_sample, ({key: steady[key] / steady_rows for key in sorted(steady)} if steady_rows else {})


def _flags(first: dict, results: list[dict], summary: dict, specs) -> tuple[dict, dict, dict]:
    """``(flags, flag_messages, checks)``: shard 0's (its first-batch checks ran on the one-process run's first batch),
    the end-of-run checks recomputed on the merged ``summary``, AutoAttack's warning counts summed over shards."""
    flags, messages, checks = dict(first.get("flags", {})), dict(first.get("flag_messages", {})), dict(first.get("checks", {}))
    for found in final_checks(summary, specs):
        flags[found.flag] = 1.0 if found.raised else 0.0
        messages.pop(found.flag, None)
        checks.pop(found.flag, None)
        if found.raised and found.message:
            messages[found.flag] = found.message
        if found.value is not None:
            checks[found.flag] = found.value
    warnings: dict[str, int] = {}
    for shard in results:
        for text, count in (shard.get("checks", {}).get("autoattack_warnings") or {}).items():
            warnings[text] = warnings.get(text, 0) + int(count)
    if warnings:
        checks["autoattack_warnings"] = warnings
    return flags, messages, checks


def merge_shards(cfg: DictConfig, run_dir: Path, num_shards: int, finish: str,
                 folders: list[Path] | None = None) -> dict:
    """Merge the ``num_shards`` shards of ``cfg`` (composed without shard keys) and write the run folder ``run_dir``;
    returns ``results.json``'s content. ``folders``: the shards' run folders in shard order (default: those in
    ``run_dir/shards/``); ``finish``: how to finish unfinished shards (the error's fix, e.g. "with `<command>`").

    Raises:
        ConfigError: a shard is not finished, the shards' configs or code differ, or their sample ids overlap or do
            not cover the selection.
    """
    run_dir = Path(run_dir)
    folders = shard_folders(run_dir, num_shards) if folders is None else [Path(f) for f in folders]
    _unfinished(folders, finish)
    expected = json.loads(json.dumps(to_plain(OmegaConf.merge(cfg, {"data": {"num_shards": num_shards}})), default=str))
    _check_configs(folders, expected)
    envs = _check_code(folders)
    data = whole_selection(cfg)
    records = [read_progress(folder) for folder in folders]
    columns = [merge_records(r)[0] for r in records]
    _check_ids([c["label"][0].tolist() if "label" in c else [] for c in columns], data.sample_ids, folders)
    everything = {name: [] for c in columns for name in c}
    for c in columns:
        for name, chunk in c.items():
            everything[name].append(chunk)
    table = table_from_columns({name: (torch.cat([ids for ids, _ in parts]), torch.cat([v for _, v in parts]))
                                for name, parts in everything.items()})
    results = [read_json(folder / "results.json") for folder in folders]
    first = results[0]
    order = list(first.get("attacks", {}))
    summary = summarise(table, order=order)
    summary["attacks"] = dict(first.get("attacks", {}))
    summary["time_per_sample_s"], summary["steady_time_per_sample_s"] = _times(records, len(table))
    specs = [adapt_to_classes(spec, len(data.classnames)) for spec in resolve_attacks(cfg.attack)]
    summary["flags"], summary["flag_messages"], summary["checks"] = _flags(first, results, summary, specs)
    env = {**envs[0], "sample_ids_sha256": data.ids_hash(), "num_samples": data.num_samples,
           "skipped_images": [str(p) for p in data.skipped_files]}
    extra = {"environment": env, **{k: first[k] for k in ("purifiers",) if k in first},
             "shards": {"num_shards": num_shards, "folders": [str(f) for f in folders]}}
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_run_folder(run_dir), run_log(run_dir):  # the merge's own log.txt
        write_config(run_dir, cfg)
        write_json(run_dir / "environment.json", env)
        phases: dict[str, float] = {}
        counts: dict[str, float] = {}
        for folder in folders:
            timings = read_json(folder / "timings.json") if (folder / "timings.json").is_file() else {}
            for key, seconds in timings.get("phases_s", {}).items():
                phases[key] = phases.get(key, 0.0) + seconds
            for key, value in timings.get("counts", {}).items():
                counts[key] = counts.get(key, 0) + value
        write_json(run_dir / "timings.json", {"phases_s": phases, "counts": counts,
                                              "note": f"wall clock summed over the {num_shards} shards' processes "
                                                      "(each shard's own is in its folder's timings.json, the folders "
                                                      "listed in results.json under shards); per-sample "
                                                      "times of the test loop's parts are in results.json "
                                                      "(time_per_sample_s)"})
        payload, _ = write_results(run_dir, table, summary, order, extra)
        log.info("merged %d shards (%d samples) into %s", num_shards, len(table), run_dir)
    return payload
