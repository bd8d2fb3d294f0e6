"""Offline W&B runs in tests: an eval.py subprocess stopped by a signal after some finished batches, and its run file
(``offline-run-<time>-<id>/run-<id>.wandb``) read back record by record with wandb's own protobuf classes
(``wandb.proto.wandb_internal_pb2.Record``). wandb 0.31 writes the file from its Go core and ships no Python reader
for it, so the framing (LevelDB's log format, which W&B uses) is decoded here."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

from conftest import PROJECT_ROOT

# Launcher and agent variables a pytest session may itself run under (SLURM, torchrun, a W&B agent).
_LAUNCH_PREFIXES = ("SLURM_", "TORCHELASTIC_", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_", "MASTER_",
                    "LOCAL_WORLD_SIZE", "WANDB_SWEEP_", "WANDB_RUN_ID", "SUBMITIT_")


def clean_env(**extra: str) -> dict:
    """This session's environment without launcher or agent variables, offline (W&B, model hub), with the project
    on ``PYTHONPATH``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCH_PREFIXES)}
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **extra}


def finished_batches(run_dir: Path) -> list[dict]:
    """The complete lines of ``<run_dir>/progress/rank0.jsonl`` (one per finished batch)."""
    path = Path(run_dir) / "progress" / "rank0.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{") and line.endswith("}")]


def stop_eval(args: list[str], run_dir: Path, signum: int, after: int, env: dict, log: Path,
              timeout: float = 240) -> int:
    """Run ``eval.py args`` in a subprocess, send it ``signum`` once ``after`` batches are finished in ``run_dir``,
    and return its exit status (the test fails if the run ends first, or after ``timeout`` seconds)."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "eval.py", *args], cwd=PROJECT_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while len(finished_batches(run_dir)) < after:
            assert proc.poll() is None, f"eval.py ended before {after} batches: {Path(log).read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {after} finished batches in {timeout} s"
            time.sleep(0.2)
        proc.send_signal(signum)
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_files(run_dir: Path) -> list[Path]:
    """The offline W&B run files under ``<run_dir>/wandb``, oldest launch first."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)


def wandb_records(path: Path):
    """The protobuf records of an offline W&B run file: a 7-byte header (``:W&B``, magic, version), then records in
    32 KiB blocks, each fragment with a 7-byte header (CRC32C, little-endian length, type: 1 full, 2 first,
    3 middle, 4 last); a block's tail shorter than a header is padding."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, pending = 7, 32 * 1024, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero fill
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def finished_records(path: Path, timeout: float = 30) -> list:
    """:func:`wandb_records` of a run that was finished: wandb's core process writes the file after ``run.finish()``
    has returned (it has done so when the process that logged it has exited), so this waits up to ``timeout``
    seconds for the run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if of_type(records, "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def of_type(records: list, kind: str) -> list:
    """The payloads of the records whose ``record_type`` is ``kind`` (``run``, ``exit``, ``preempting``, ...)."""
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def summary_of(records: list) -> dict:
    """The run's summary as the file leaves it: every summary update and removal replayed in order (a key of a
    nested update is its path joined with ``/``)."""
    summary: dict = {}
    for record in of_type(records, "summary"):
        for item in record.update:
            summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        for item in record.remove:
            summary.pop(item.key or "/".join(item.nested_key), None)
    return summary


def history_of(records: list) -> list[dict]:
    """The run's history rows in the order they were logged, each ``{key: value}`` (a nested key joined with ``/``)."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.item}
            for record in of_type(records, "history")]


def removed_keys(records: list) -> set:
    """Every summary key the file removes."""
    return {item.key or "/".join(item.nested_key) for record in of_type(records, "summary") for item in record.remove}
