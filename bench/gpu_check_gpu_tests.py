"""GPU check part ``gpu_tests``: ``pytest -m gpu`` in a subprocess, one entry per test (bench/gpu_check.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.harness import REPO
from bench.gpu_check_common import Clock, Context, Entry


# ------------------------------------------------------------------------------------------------ part: gpu_tests
def parse_junit(path: Path) -> list[tuple[str, str, str]]:
    """``[(test id, pass|fail|skip, message)]`` from a pytest JUnit XML file."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        status, message = "pass", ""
        for child in case:
            if child.tag in ("failure", "error"):
                lines = (child.text or "").strip().splitlines()
                status, message = "fail", child.get("message") or (lines[-1] if lines else child.tag)
            elif child.tag == "skipped" and status == "pass":
                status, message = "skip", child.get("message") or "skipped"
        rows.append((name, status, " ".join(message.split())[:400] or status))
    return rows


def part_gpu_tests(ctx: Context, clock: Clock) -> None:
    xml = ctx.work / "gpu_tests.xml"
    targets = ctx.profile["pytest_targets"]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *targets]
    timeout = clock.left()
    if timeout < 5:
        ctx.report.add(Entry("gpu_tests", "pytest -m gpu", "skip", detail=clock.skip_reason(5.0) or "no time left"))
        return
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        ctx.report.add(Entry("gpu_tests", "pytest -m gpu " + " ".join(targets), "skip",
                             detail=f"did not finish within the part's {timeout:.0f} s (--budget-s)"))
        return
    if done.returncode == 5:
        ctx.report.add(Entry("gpu_tests", "pytest -m gpu " + " ".join(targets), "skip", detail="no gpu-marked tests collected"))
        return
    rows = parse_junit(xml) if xml.is_file() else []
    if not rows:
        tail = " ".join((done.stdout + done.stderr).split()[-60:])
        ctx.report.add(Entry("gpu_tests", "pytest -m gpu " + " ".join(targets), "fail",
                             detail=f"exit status {done.returncode}, no test results: {tail}"))
        return
    for name, status, message in rows:
        ctx.report.add(Entry("gpu_tests", name, status, detail="" if status == "pass" else message))
