"""One evaluation split into N shards: ``eval.py <overrides> --shards N`` runs N ordinary, resumable eval.py runs
in ``<run_dir>/shards/<i>/`` that differ only by ``data.shard`` (``data.num_shards=N``), through the sweep launcher
(local processes, or one SLURM job array with one task per shard; state.json with every attempt, resume of
interrupted shards, stopping on Ctrl-C), then merges them into ``<run_dir>`` (:mod:`.shard_merge`). ``--merge``
merges finished shards (after a SLURM launch); ``--status`` shows how far they are (:mod:`.run_status`). With
``--from DIR``, both read shard runs that something else launched (a W&B agent sweeping ``data.shard``, sweep.py)
from the run folders under ``DIR`` (:mod:`.shard_runs`).

``run_dir`` is the given ``run_dir=...``, else ``<output_root>/<name>/shards<N>-<hash>``, the hash being that of
the resolved config's keys that change per-sample results: the same command finds the same shard set again.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shlex
from pathlib import Path

from omegaconf import DictConfig

from clipure_lit.config.loader import load_config, to_plain
from clipure_lit.errors import ConfigError
from clipure_lit.sweeping import outcomes as oc
from clipure_lit.sweeping.launcher import (SweepOptions, SweepResult, _check_devices, _Run, add_slurm_arguments,
                                           check_launcher, decide, launch_runs, slurm_options)
from clipure_lit.sweeping.run_status import status_text
from clipure_lit.sweeping.shard_merge import merge_shards
from clipure_lit.sweeping.shard_runs import found_shard_runs, require_every_shard

log = logging.getLogger(__name__)

FLAGS = ("--shards", "--merge", "--status")  # the eval.py options that this module handles
OWNED = ("data.num_shards", "data.shard", "resume", "run_dir")  # set per shard by the launcher
EVAL_PY = Path(__file__).resolve().parents[2] / "eval.py"


def wants_shards(argv: list[str]) -> bool:
    """True when eval.py's arguments ask for a shard set or a status view."""
    return any(a.split("=", 1)[0] in FLAGS for a in argv)


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~") if "=" in arg else ""


def shard_set_dir(cfg: DictConfig, num_shards: int) -> Path:
    """The shard set's folder (absolute: SLURM jobs may start elsewhere): ``run_dir``, else
    ``<output_root>/<name>/shards<N>-<12 hex digits>`` of the resolved config's result-relevant keys."""
    if cfg.run_dir:
        return Path(cfg.run_dir).absolute()
    from clipure_lit.callbacks.resume import config_differences  # heavy (Lightning): only for a derived folder

    keys = "\n".join(config_differences({}, to_plain(cfg)))
    digest = hashlib.sha256(keys.encode()).hexdigest()[:12]
    return (Path(cfg.output_root) / str(cfg.name) / f"shards{num_shards}-{digest}").absolute()


def shard_args(overrides: list[str], folder: Path, shard: int, num_shards: int, resume: bool) -> list[str]:
    """The eval.py arguments of one shard: the user's (without ``run_dir``), then the keys the launcher owns."""
    kept = [a for a in overrides if _key(a) != "run_dir"]
    return kept + [f"data.num_shards={num_shards}", f"data.shard={shard}", f"run_dir={folder}"] + \
        (["resume=true"] if resume else [])


def check_overrides(overrides: list[str]) -> None:
    """Refuse the keys the launcher sets per shard (``run_dir`` names the shard set's folder and is allowed)."""
    owned = [a for a in overrides if _key(a) in OWNED and _key(a) != "run_dir"]
    if owned:
        raise ConfigError(f"eval.py --shards sets {', '.join(OWNED[:3])} of each shard itself, so {', '.join(owned)} "
                          "would be overridden. Fix: leave them out (a launch of the same command resumes stopped "
                          "shards and skips finished ones; run_dir=<folder> names the shard set's folder).")


def launch_shards(cfg: DictConfig, overrides: list[str], run_dir: Path, num_shards: int, opts: SweepOptions) -> SweepResult:
    """Launch the shards that are not finished (:func:`~clipure_lit.sweeping.launcher.launch_runs`): each shard's
    command is composed and checked as eval.py would before anything starts."""
    check_launcher(opts, "eval.py --shards")
    out = run_dir / "shards"
    names = [str(i) for i in range(num_shards)]

    def classify(k: int, state: dict, waiting: dict) -> _Run:
        folder = out / names[k]
        args = shard_args(overrides, folder, k, num_shards, resume=False)
        shard_cfg = load_config(args)
        if shard_cfg.suite.name:
            raise ConfigError(f"eval.py --shards splits one evaluation, and these arguments run suite "
                              f"'{shard_cfg.suite.name}' (several). Fix: add suite=none, or shard each of its runs.")
        _check_devices(shard_cfg, opts, f"shard {k}")
        run = _Run(k, {"data.shard": k}, folder, "run", str(EVAL_PY), args, id=names[k],
                   resume_args=shard_args(overrides, folder, k, num_shards, resume=True))
        return decide(run, to_plain(shard_cfg), out, opts, state, waiting)

    return launch_runs(out, names, opts, f"clipure-shards-{cfg.name}", classify, f"{num_shards} shards of {run_dir}")


def format_launch(result: SweepResult, command: str) -> str:
    """What a launch did: the SLURM job, or each shard that did not finish with its reason and log, and what to run
    next (resume, merge, status)."""
    lines = []
    base = shlex.split(command)
    merge, status = shlex.join(base + ["--merge"]), shlex.join(base + ["--status"])
    if result.launcher == "slurm" and result.job_id:
        submitted = [r for r, a in result.actions.items() if a in ("run", "resume", "rerun")]
        lines.append(f"submitted {len(submitted)} shard(s) as SLURM job {result.job_id} (array tasks "
                     f"{', '.join(result.state[r]['job_id'] for r in submitted)}); logs: {result.out}/<shard>/stdout.log")
    statuses = {r: result.state.get(r, {}).get("status", "?") for r in result.actions}
    finished = sum(1 for s in statuses.values() if s == "finished")
    lines.append(f"shards: {finished} of {len(statuses)} finished")
    for name, status_now in statuses.items():
        if status_now in ("failed", "interrupted"):
            entry = result.state[name]
            lines.append(f"  {status_now}: shard {name} ({entry.get('reason') or oc.describe_exit(entry.get('returncode'))}) "
                         f"log: {entry.get('log', result.out / name / 'stdout.log')}")
    if result.held:
        lines.append(f"failed shards are launched again only with --retry-failed: {command} --retry-failed")
    if finished < len(statuses):
        lines.append(f"resume (finished batches are kept): {command}")
        lines.append(f"status: {status}")
        lines.append(f"merge when every shard is finished: {merge}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="eval.py's key=value / group=choice arguments")
    parser.add_argument("--shards", type=int, metavar="N", help="split the evaluation into N shards of whole batches")
    parser.add_argument("--merge", action="store_true", help="merge the finished shards into the run folder")
    parser.add_argument("--status", action="store_true",
                        help="show how far the shards (or, without --shards, the run folder run_dir=...) are")
    parser.add_argument("--from", dest="sources", action="append", metavar="DIR",
                        help="with --merge or --status: the shard runs are the run folders in DIR (or DIR itself), "
                             "launched elsewhere, e.g. by a W&B agent (runs/wandb/<sweep id>); repeat for several")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: processes on this machine (default); slurm: one SLURM job array")
    parser.add_argument("--parallel", type=int, help="shards at the same time (local: default 1; slurm: default all)")
    parser.add_argument("--gpus", default="", help="local: comma-separated GPU ids, one per concurrent shard")
    parser.add_argument("--retry-failed", action="store_true", help="launch again the shards whose last attempt failed")
    add_slurm_arguments(parser)
    return parser


def estimate_args(argv: list[str]) -> list[str]:
    """The config arguments whose cost ``eval.py ... --shards N [launcher options] --estimate`` estimates: the
    overrides plus ``data.num_shards=N data.shard=0`` (the estimate then gives the time per shard of the whole
    selection); launcher options change no
    cost and are dropped."""
    args = _parser().parse_intermixed_args(argv)
    shard = [f"data.num_shards={args.shards}", "data.shard=0"] if args.shards is not None and args.shards > 1 else []
    return list(args.overrides) + shard


def main(argv: list[str], run_cli) -> dict:
    """``eval.py`` with ``--shards N`` (launch; merge once every shard has finished), ``--shards N --merge``
    or ``--status``; returns the merged ``results.json`` content (``{}`` when nothing was merged). ``run_cli``:
    eval.py's (:func:`clipure_lit.cli.run_cli`: composes the config, one-paragraph errors). Exits with status 2 for
    bad input, 1 when a shard failed or was interrupted from outside, 128 + n when stopped by signal n."""
    from clipure_lit.reporting import format_eval

    args = _parser().parse_intermixed_args(argv)
    overrides = list(args.overrides)
    outcome: dict = {"exit": 0}

    def job(cfg: DictConfig) -> dict:
        if args.shards is None:
            if not args.status:
                raise ConfigError("--merge needs --shards N (the number of shards the evaluation was split into).")
            if not cfg.run_dir:
                raise ConfigError("--status without --shards shows the run folder named by run_dir=<folder>, and none "
                                  "is given. Fix: pass run_dir=<folder>, or --shards N with the shard set's arguments.")
            return {"text": status_text(Path(cfg.run_dir))}
        if args.shards < 1:
            raise ConfigError(f"--shards {args.shards}: expected a number of shards >= 1.")
        check_overrides(overrides)
        run_dir = shard_set_dir(cfg, args.shards)
        command = shlex.join(["python", "eval.py", *overrides, "--shards", str(args.shards)])
        if args.sources:
            if not (args.merge or args.status):
                raise ConfigError("--from reads shard runs launched elsewhere (a W&B agent, sweep.py) and goes with "
                                  "--merge or --status; eval.py --shards N without them launches its own shards. Fix: "
                                  "add --merge (or --status), or leave --from out.")
            sources = [Path(s) for s in args.sources]
            found = found_shard_runs(sources, args.shards)
            if args.status:
                return {"text": status_text(run_dir, args.shards, found=found)}
            finish = ("where they were launched (a W&B agent continues a requeued run in its folder; by hand: the "
                      "shard's arguments with run_dir=<its folder> resume=true)")
            merged = merge_shards(cfg, run_dir, args.shards, finish, require_every_shard(found, sources))
            return {**merged, "text": format_eval(merged)}
        if args.status:
            return {"text": status_text(run_dir, args.shards)}
        if not args.merge:
            opts = SweepOptions(launcher=args.launcher, parallel=args.parallel, gpus=[g for g in args.gpus.split(",") if g],
                                wandb="off", retry_failed=args.retry_failed, resubmit=args.resubmit,
                                slurm=slurm_options(args))
            result = launch_shards(cfg, overrides, run_dir, args.shards, opts)
            text = format_launch(result, command)
            if result.stopped_by is not None:
                outcome["exit"] = 128 + int(result.stopped_by)
            elif result.failed or result.interrupted:
                outcome["exit"] = 1
            done = all(result.state.get(r, {}).get("status") == "finished" for r in result.actions)
            if not done:  # a SLURM launch merges when the same command (or --merge) finds every shard finished
                return {"text": text}
            log.info("every shard finished: merging them into %s", run_dir)
        merged = merge_shards(cfg, run_dir, args.shards,
                              f"with `{command}` (it resumes stopped shards and skips finished ones)")
        return {**merged, "text": format_eval(merged)}

    result = run_cli(overrides, "eval.py", "Shards of one evaluation.", job, lambda r: r["text"])
    if outcome["exit"]:
        raise SystemExit(outcome["exit"])
    return {k: v for k, v in result.items() if k != "text"}
