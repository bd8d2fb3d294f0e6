"""A suite that evaluated nothing is an error (exit status 2, one paragraph naming every skipped dataset), unless
suite.allow_skipped=true."""

from __future__ import annotations

import json

import pytest

import eval as eval_script

from conftest import tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`


def _all_missing(tmp_path, *extra):
    args = [a for a in tiny_args(tmp_path) if not a.startswith("run_dir=")]
    return args + ["suite.name=missing", "suite.datasets=[{data: zs_dtd, templates: dtd}]", "data.download=false",
                   f"run_dir={tmp_path / 'suite'}", *extra]


def test_a_suite_with_every_dataset_skipped_exits_2_unless_allowed(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        eval_script.main(_all_missing(tmp_path))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "evaluated nothing" in err and "zs_dtd" in err and "suite.allow_skipped=true" in err and "Traceback" not in err
    assert json.loads((tmp_path / "suite" / "suite.json").read_text())["rows"][0]["status"] == "skipped"
    summary = eval_script.main(_all_missing(tmp_path, "suite.allow_skipped=true"))
    assert [r["status"] for r in summary["rows"]] == ["skipped"]
