"""A run launched by a W&B agent reports to its sweep. The agent is simulated offline: the environment it gives the
run (``WANDB_SWEEP_ID``, ``WANDB_RUN_ID``, ``WANDB_SWEEP_PARAM_PATH``, ``WANDB_PROJECT``) and the command a shipped
sweep file expands to; the offline run file is then read back record by record."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipure_lit.sweeping.plan import command_args, expand, load_sweep

from conftest import PROJECT_ROOT, needs_shared_cifar

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

TINY_ATTACK = ["experiment=tiny", "data.num_samples=4", "data.batch_size=4", "trainer.num_threads=1",
               "trainer.enable_progress_bar=false", "attack.n_iter=1", "attack.entries.aa_clipure.n_restarts=1",
               "attack.entries.aa_clipure.n_target_classes=2", "attack.checks=false"]


def wandb_records(path: Path):
    """The protobuf records of an offline W&B run file: a 7-byte header (``:W&B``, magic, version), then records in
    32 KiB blocks, each fragment with a 7-byte header (CRC32C, little-endian length, type: 1 full, 2 first,
    3 middle, 4 last); a block's tail shorter than a header is padding."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
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


@needs_shared_cifar
@pytest.mark.timeout(300)
def test_agent_launched_run_records_sweep_id_swept_config_and_the_sweep_metric(tmp_path):
    spec = load_sweep(PROJECT_ROOT / "sweeps" / "cos_step_size_x_steps.yaml")
    params = expand(spec)[1]
    params_file = tmp_path / "sweep-abc123" / "config-run7.yaml"  # what the agent writes for each run
    params_file.parent.mkdir()
    params_file.write_text("wandb_version: 1\n\n" + yaml.safe_dump({k: {"value": v} for k, v in params.items()}))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "abc123", "WANDB_RUN_ID": "run7",
           "WANDB_SWEEP_PARAM_PATH": str(params_file), "WANDB_PROJECT": "clipure_lit", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    # The agent runs the sweep's command as is: no logger=wandb in it (eval.py's default logger is CSV).
    argv = command_args(spec, params, python=sys.executable) + TINY_ATTACK + [
        f"run_dir={tmp_path / 'run'}", f"prompts.cache_dir={tmp_path / 'text'}"]
    done = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Launched by a W&B agent (sweep abc123, run run7)" in done.stderr

    files = list((tmp_path / "run" / "wandb").glob("offline-run-*-run7/run-run7.wandb"))
    assert len(files) == 1
    records = list(wandb_records(files[0]))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.sweep_id == "abc123" and run.run_id == "run7"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert {k: config[k] for k in params} == params  # the swept parameters, under the sweep's own keys
    summary = {u.key or "/".join(u.nested_key): json.loads(u.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    metric = spec.metric["name"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary[metric] == pytest.approx(results["robust"]["worst_case"]["acc"])
