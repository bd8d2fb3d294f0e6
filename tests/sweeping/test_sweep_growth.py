"""sweep.py and a grown run: a finished run whose data.num_samples grew is resumed (not skipped, not moved aside as
stale); the same size is skipped and any other change is still a changed config."""

from __future__ import annotations

import json

from clipure_lit.config.loader import to_plain
from clipure_lit.sweeping.launcher import config_changes, grew

from conftest import tiny_cfg


def _saved_run(tmp_path, *overrides: str):
    run_dir = tmp_path / "run-0000"
    (run_dir / "progress").mkdir(parents=True)
    config = json.loads(json.dumps(to_plain(tiny_cfg(*overrides)), default=str))
    (run_dir / "progress" / "config.json").write_text(json.dumps({"config": config}))
    return run_dir


def test_grown_size_resumes_and_other_changes_stay_changes(tmp_path):
    run_dir = _saved_run(tmp_path, "data.num_samples=8")
    for size, grown in (("16", True), ("null", True), ("8", False)):
        resolved = to_plain(tiny_cfg(f"data.num_samples={size}"))
        assert grew(run_dir, resolved) is grown and config_changes(run_dir, resolved) == []
    smaller = to_plain(tiny_cfg("data.num_samples=4"))
    assert not grew(run_dir, smaller) and config_changes(run_dir, smaller) == ["data.num_samples: 8 -> 4"]
    other = to_plain(tiny_cfg("data.num_samples=16", "data.subset_seed=3"))
    assert config_changes(run_dir, other) == ["data.subset_seed: 0 -> 3"]
