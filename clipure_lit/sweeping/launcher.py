"""Execute a sweep plan: one subprocess per configuration, several at a time, resumable.

Layout of the sweep folder:
    plan.json            the planned configurations (made once; a resumed sweep reuses it)
    state.json           status, return code and duration of every run (updated as runs finish)
    <run id>/            an ordinary eval.py run folder (results.json, samples.csv, config.yaml, logs)
    <run id>/stdout.log  the run's output

A run whose ``results.json`` exists is finished and is skipped on resume. Runs get ``logger.group=<sweep name>``,
so offline W&B runs sync as one group later (``wandb sync <sweep folder>/*/wandb/offline-run-*``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from clipure_lit.errors import ConfigError
from clipure_lit.results import write_json
from clipure_lit.sweeping.plan import SweepSpec, command_args, expand

log = logging.getLogger(__name__)


def run_id(index: int) -> str:
    return f"run-{index:04d}"


def make_plan(spec: SweepSpec, out: Path, count: int | None, seed: int) -> list[dict]:
    """Load the saved plan of a resumed sweep, or expand and save a new one. A saved plan made from a different
    sweep definition is refused."""
    path = out / "plan.json"
    definition = {"sweep": spec.raw, "count": count, "seed": seed}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["definition"] != json.loads(json.dumps(definition)):
            raise ConfigError(f"'{out}' holds a different sweep (its plan.json was made from another file, count or seed). "
                              "Fix: use a new --out folder, or the same sweep file and options to resume.")
        return saved["runs"]
    runs = expand(spec, count=count, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {"definition": definition, "runs": runs})
    return runs


def run_sweep(spec: SweepSpec, out: Path, extra_args: list[str], parallel: int = 1, gpus: list[str] | None = None,
              count: int | None = None, seed: int = 0, python: str | None = None, dry_run: bool = False,
              timeout_s: float | None = None) -> dict:
    """Run every planned configuration not finished yet; returns the state dict (also in ``state.json``)."""
    out = Path(out)
    plan = make_plan(spec, out, count, seed)
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    todo = [(i, p) for i, p in enumerate(plan) if not (out / run_id(i) / "results.json").is_file()]
    log.info("sweep %s: %d runs planned, %d finished, %d to run", spec.name, len(plan), len(plan) - len(todo), len(todo))
    commands = {}
    for i, params in todo:
        argv = command_args(spec, params, python or sys.executable)
        commands[i] = argv + list(extra_args) + [f"run_dir={out / run_id(i)}", f"logger.group={spec.name}", f"name={spec.name}"]
    if dry_run:
        return {run_id(i): {"command": c} for i, c in commands.items()}
    slots = list(gpus or [])

    def launch(i: int, slot: int) -> tuple[int, int, float]:
        env = dict(os.environ)
        if slots:
            env["CUDA_VISIBLE_DEVICES"] = slots[slot % len(slots)]
        run_dir = out / run_id(i)
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(run_dir / "stdout.log", "w") as fh:
            try:
                code = subprocess.run(commands[i], stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                code = -9
        return i, code, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(launch, i, n) for n, (i, _) in enumerate(todo)]
        for done, future in enumerate(as_completed(futures), 1):
            i, code, seconds = future.result()
            state[run_id(i)] = {"params": plan[i], "returncode": code, "seconds": round(seconds, 2),
                                "status": "finished" if code == 0 else "failed"}
            write_json(state_path, state)  # after every run, so an interrupted sweep loses nothing
            log.info("[%d/%d] %s %s (%.1f s)%s", done, len(todo), run_id(i), state[run_id(i)]["status"], seconds,
                     "" if code == 0 else f": see {out / run_id(i) / 'stdout.log'}")
    return state


def format_sweep(state: dict, out: Path | str, dry_run: bool = False) -> str:
    """What ``sweep.py`` prints: with ``dry_run`` one line per planned run (its id and command); otherwise the
    finished and failed counts and the commands that report on and sync the sweep folder ``out``."""
    if dry_run:
        return "\n".join(f"{name} {' '.join(entry['command'])}" for name, entry in state.items())
    failed = [k for k, v in state.items() if v["status"] != "finished"]
    return (f"sweep folder: {out}; {len(state) - len(failed)} runs finished, {len(failed)} failed {failed if failed else ''}\n"
            f"report: python report.py {out}    sync to W&B later: wandb sync {out}/*/wandb/offline-run-*")
