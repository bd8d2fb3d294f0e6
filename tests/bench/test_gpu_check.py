"""bench/gpu_check.py: its CPU smoke run end to end, its report writer, its budget, and (on a CUDA machine) the
device-parity and released-precision checks it runs there."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from bench import gpu_check as gc
from bench.gpu_check import Entry

PART_NAMES = [p for p, _ in gc.PARTS]


def entries(payload: dict, part: str, status: str | None = None) -> list[dict]:
    return [e for e in payload["entries"] if e["part"] == part and (status is None or e["status"] == status)]


@pytest.mark.slow  # the whole GPU check at toy sizes (~25 s): in the slow tier, which CI runs after `make test`
def test_cpu_smoke_runs_every_part_and_writes_both_reports(tmp_path, capfd):
    benchmarks_md = tmp_path / "BENCHMARKS.md"
    benchmarks_md.write_text("# Benchmarks\n\ntable\n")
    # A budget that never bites on a loaded machine (the budget itself is tested below): every part must run.
    code = gc.main(["--cpu-smoke", "--budget-s", "900", "--out-dir", str(tmp_path / "out"), "--work-dir",
                    str(tmp_path / "work"), "--benchmarks-md", str(benchmarks_md)])
    out = capfd.readouterr().out.strip().splitlines()
    payload = json.loads((tmp_path / "out" / "gpu_check_cpu_smoke.json").read_text())
    assert code == gc.EXIT_PASS and payload["verdict"] == "PASS", [e for e in payload["entries"] if e["status"] == "fail"]
    assert out[-1] == gc.verdict_line(payload) and out[-1].startswith("gpu-check PASS: ")
    # Structure: one record per part, in order; counts add up; every entry well formed; skips and fails say why.
    assert payload["mode"] == "cpu_smoke" and [p["name"] for p in payload["parts"]] == PART_NAMES
    assert sum(payload["counts"].values()) == len(payload["entries"])
    assert payload["machine"]["torch"] and payload["device"]["main"] == "cpu"
    for e in payload["entries"]:
        assert e["part"] in PART_NAMES and e["status"] in gc.STATUSES and e["name"]
        assert e["status"] not in ("skip", "fail") or e["detail"].strip()
    # Every part did its work.
    assert {e["extra"]["mode"] for e in entries(payload, "parity", "pass") if e["extra"].get("purifier") == "clipure_cos"} \
        == set(gc.GRAD_MODES)
    compared = [e for e in entries(payload, "parity", "pass") if "grad_err" in e["extra"]]
    assert {e["extra"]["purifier"] for e in compared} == set(gc.ALL_PURIFIERS)
    assert all(e["extra"]["logit_err"] == 0 == e["extra"]["grad_err"] for e in compared)  # the CPU against itself
    assert len(entries(payload, "precision", "pass")) == 2
    assert len(entries(payload, "eval", "pass")) == len(gc.PROFILES["cpu_smoke"]["eval_purifiers"])
    assert [e["detail"] for e in entries(payload, "gpu_tests")] == ["no CUDA device"] * len(entries(payload, "gpu_tests"))
    assert entries(payload, "gpu_tests", "skip") and "--ddp-cpu" in entries(payload, "ddp", "skip")[0]["detail"]
    throughput = entries(payload, "throughput", "measured")
    assert len(throughput) == len(gc.THROUGHPUT_CASES) and all(e["value"] > 0 and e["unit"] == "images/s" for e in throughput)
    memory = entries(payload, "memory", "measured")
    assert {(e["extra"]["steps"], e["extra"]["checkpointing"], e["extra"]["batch"]) for e in memory} == {
        (s, c, b) for s in (1, 3) for c in (True, False) for b in (2, 4)}
    assert all("not judged on the CPU" in e["detail"] for e in entries(payload, "memory", "skip"))
    # The Markdown report renders the same payload; BENCHMARKS.md is left alone by a smoke run.
    md = (tmp_path / "out" / "gpu_check_cpu_smoke.md").read_text()
    assert gc.verdict_line(payload) in md and "| parity | toy clipure_cos @full | pass |" in md
    assert "## Throughput" in md and "## Peak memory" in md and "CPU smoke" in md
    assert benchmarks_md.read_text() == "# Benchmarks\n\ntable\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_exits_with_status_3_and_writes_nothing(tmp_path, capfd):
    assert gc.main(["--out-dir", str(tmp_path)]) == gc.EXIT_NO_CUDA == 3
    assert "no CUDA device" in capfd.readouterr().err and not list(tmp_path.iterdir())


def test_a_spent_budget_skips_every_case_with_its_reason(tmp_path):
    payload = gc.run_check("cpu_smoke", 0.0, PART_NAMES, tmp_path)
    assert payload["verdict"] == "PASS" and payload["counts"]["pass"] == payload["counts"]["measured"] == 0
    assert {e["part"] for e in payload["entries"]} == set(PART_NAMES)
    reasons = [e["detail"] for e in payload["entries"] if e["part"] != "ddp"]
    assert reasons and all("budget" in r or "no time left" in r or "not judged" in r for r in reasons), reasons
    assert payload["elapsed_s"] < 10


def test_clock_and_budget_share_time_and_carry_what_a_part_leaves():
    budget = gc.Budget(100.0, [("a", 0.5), ("b", 0.5)])
    clock = budget.open("a")
    assert 49 < clock.allowance_s <= 50 and clock.skip_reason(10) is None
    assert "part budget spent" in clock.skip_reason(60)
    budget.close(clock)  # "a" used almost nothing: "b" gets its own share and what "a" left
    assert budget.open("b").allowance_s > 95
    assert "run budget spent" in gc.Budget(0.0, [("a", 1.0)]).open("a").skip_reason(1)


def test_entries_must_say_why_they_fail_or_skip_and_one_failure_fails_the_run():
    with pytest.raises(ValueError, match="must say why"):
        Entry("parity", "x", "skip")
    with pytest.raises(ValueError, match="status"):
        Entry("parity", "x", "passed")
    report = gc.Report("cuda", 10)
    report.add(Entry("parity", "a", "pass"))
    assert report.verdict == "PASS"
    report.add(Entry("eval", "b", "fail", detail="RuntimeError: Expected all tensors to be on the same device"))
    payload = report.payload(3.0, {"main": "cuda:0"}, {})
    assert payload["verdict"] == "FAIL" and payload["counts"] == {"pass": 1, "fail": 1, "skip": 0, "measured": 0}
    assert gc.verdict_line(payload).startswith("gpu-check FAIL: 1 passed, 1 failed, 0 skipped, 0 measured in 3 s")


def test_parity_comparison_fails_outside_tolerance_and_on_non_finite_numbers():
    logits, grad = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.5]])
    exact = gc.compare((logits, grad), (logits.clone(), grad.clone()), 1.0)
    assert exact == (0.0, 0.0) and gc.parity_entry("toy", "cos", "full", exact, "cuda").status == "pass"
    off = gc.compare((logits, grad), (logits + 1e-3, grad), 1.0)
    assert off[0] == pytest.approx(5e-4, rel=1e-3) and gc.parity_entry("toy", "cos", "full", off, "cuda").status == "fail"
    # A masked (~0) gradient is compared on plain CLIP's scale, not its own.
    tiny = gc.compare((logits, grad * 1e-9), (logits, grad * 2e-9), plain_grad_norm=1.0)
    assert tiny[1] < 1e-8
    broken = gc.compare((logits, grad), (logits, grad * math.nan), 1.0)
    assert gc.parity_entry("toy", "cos", "full", broken, "cuda").status == "fail"


def memory_rows(added: dict[tuple[int, bool], float]) -> list[Entry]:
    return [Entry("memory", f"T={s} {c}", "measured", value=a, extra={"steps": s, "checkpointing": c, "added_mb": a})
            for (s, c), a in added.items()]


def test_memory_flatness_is_judged_on_cuda_only():
    cuda = gc.Context({}, gc.Devices(torch.device("cuda", 0), torch.device("cpu")), Path("."), gc.Report("cuda", 1))
    cpu = gc.Context({}, gc.Devices(torch.device("cpu"), torch.device("cpu")), Path("."), gc.Report("cpu_smoke", 1))
    flat = memory_rows({(2, True): 100, (20, True): 104, (2, False): 120, (20, False): 1200})
    growing = memory_rows({(2, True): 100, (20, True): 400, (2, False): 120, (20, False): 1200})
    assert gc.flatness_entry(cuda, "m", 2, flat).status == "pass"
    assert gc.flatness_entry(cuda, "m", 2, growing).status == "fail"
    assert gc.flatness_entry(cpu, "m", 2, flat).status == "skip"
    assert gc.flatness_entry(cuda, "m", 2, flat[:2]).status == "skip"  # T cases missing (budget)


def write_samples(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True)
    with open(path / "samples.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_ddp_comparison_needs_every_sample_once_and_identical_clean_predictions(tmp_path):
    rows = [{"sample_id": i, "label": i % 3, "clean_pred": i % 3, "adv_pred/a": 0} for i in range(4)]
    one = write_samples(tmp_path / "one", rows)
    assert gc.compare_runs(one, write_samples(tmp_path / "same", rows), 4).status == "pass"
    flipped = [dict(r, clean_pred=9) if r["sample_id"] == 2 else r for r in rows]
    assert gc.compare_runs(one, write_samples(tmp_path / "clean", flipped), 4).status == "fail"
    assert gc.compare_runs(one, write_samples(tmp_path / "short", rows[:3]), 4).status == "fail"
    one_attack = [dict(r, **{"adv_pred/a": 1}) if r["sample_id"] == 0 else r for r in rows]
    assert gc.compare_runs(one, write_samples(tmp_path / "adv", one_attack), 4).status == "pass"  # within the limit


def test_junit_results_become_entries(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="tests.test_x" name="test_ok"/>'
                   '<testcase classname="tests.test_x" name="test_skip"><skipped message="no CUDA device"/></testcase>'
                   '<testcase classname="tests.test_x" name="test_bad"><failure message="assert 1 == 2">tb</failure>'
                   "</testcase></testsuite></testsuites>")
    assert gc.parse_junit(xml) == [("tests.test_x::test_ok", "pass", "pass"),
                                   ("tests.test_x::test_skip", "skip", "no CUDA device"),
                                   ("tests.test_x::test_bad", "fail", "assert 1 == 2")]


def cuda_payload() -> dict:
    report = gc.Report("cuda", 480)
    report.add(Entry("throughput", "ViT-B-32 clean forward, batch 32", "measured", value=1234.5, unit="images/s",
                     extra={"model": "ViT-B-32", "case": "clean forward", "batch": 32, "median_s": 0.0259}))
    report.add(Entry("memory", "ViT-B-32 step", "measured", value=2048.0, unit="MB",
                     extra={"model": "ViT-B-32", "steps": 10, "checkpointing": True, "batch": 2, "peak_mb": 2048.0,
                            "added_mb": 300.0}))
    report.add(Entry("memory", "ViT-B-32 memory flat in T with step checkpointing, batch 2", "pass", value=0.02, unit="x"))
    report.add(Entry("ddp", "2-process evaluation", "skip", detail="needs 2 or more visible GPUs; 1 visible"))
    report.parts.append(gc.PartRecord("throughput", 100.0, 12.0))
    payload = report.payload(300.0, {"main": "cuda:0", "name": "NVIDIA H100", "capability": "9.0", "memory_gb": 80.0,
                                     "cuda": "13.0", "cuda_devices": 1, "memory_metric": "torch.cuda.max_memory_allocated"}, {})
    return {**payload, "machine": {"cpu": "x", "cpu_count": 16, "torch": "2.14.1", "git_commit": "abc"}, "command": "c"}


def test_markdown_report_and_benchmarks_section_render_the_json(tmp_path):
    payload = cuda_payload()
    md = gc.render_markdown(payload)
    assert "| ViT-B-32 | clean forward | 32 | 1234.5 | 0.0259 |" in md and "| ViT-B-32 | 2 | 10 | on | 2048 | 300 |" in md
    assert "| ddp | 2-process evaluation | skip |  |  | needs 2 or more visible GPUs; 1 visible |" in md
    assert "NVIDIA H100" in md and "| throughput | 100 | 12.0 | 0 | 0 | 0 | 1 |" in md
    section = gc.benchmarks_section(payload)
    assert section.startswith("## GPU\n") and "gpu-check PASS" in section and "1234.5" in section and "0.020 (pass)" in section
    assert "has not run on a GPU yet" in gc.benchmarks_section(None)
    assert "has not run on a GPU yet" in gc.benchmarks_section({**payload, "mode": "cpu_smoke"})
    # The section is replaced in place (other sections kept), inserted before the benchmark list when absent.
    text = "# Benchmarks\n\ntable\n\n## What each benchmark measures\n\n- x\n"
    once = gc.replace_section(text, gc.benchmarks_section(None))
    assert once.index("## GPU") < once.index("## What each") and once.endswith("- x\n")
    twice = gc.replace_section(once, section)
    assert twice.count("## GPU") == 1 and "1234.5" in twice and "has not run" not in twice and twice.endswith("- x\n")


def test_markdown_only_renders_from_the_json_without_a_device(tmp_path):
    out, md = tmp_path / "out", tmp_path / "BENCHMARKS.md"
    out.mkdir()
    md.write_text("# Benchmarks\n\n## What each benchmark measures\n")
    assert gc.main(["--markdown-only", "--out-dir", str(out), "--benchmarks-md", str(md)]) == 0
    assert "has not run on a GPU yet" in md.read_text()
    (out / "gpu_check.json").write_text(json.dumps(cuda_payload()))
    assert gc.main(["--markdown-only", "--out-dir", str(out), "--benchmarks-md", str(md)]) == 0
    assert "1234.5" in md.read_text() and "1234.5" in (out / "gpu_check.md").read_text()


def test_purifier_overrides_come_from_the_one_config_table():
    assert gc.purifier_args("clipure_cos", "toy", batch_size=None) == ["purifier=clipure_cos", "purifier.clipure_cos.batch_size=null"]
    real = gc.purifier_args("clipure_diff", "ViT-L-14", batch_size=None)
    assert real[0] == "purifier=clipure_diff" and f"{gc.PURIFIER_CONFIG['clipure_diff']['keys']['prior_dim']}=768" in real
    with pytest.raises(KeyError):
        gc.purifier_args("jpeg", "toy", num_steps=3)
    from clipure_lit.config.loader import load_config

    # Every group and key resolves in the current config schema (groups differ between model kinds only for Diff).
    cases = [(name, "toy") for name in gc.PURIFIER_CONFIG] + [("clipure_diff", "small"), ("clipure_diff", "ViT-B-32")]
    for name, model in cases:
        keys = gc.PURIFIER_CONFIG[name]["keys"]
        knobs = {k: v for k, v in (("batch_size", None), ("num_steps", 2), ("norm_scope", "sample"),
                                   ("gradient_checkpointing", False)) if k in keys}
        load_config([*gc.MODELS[model]["args"], *gc.purifier_args(name, model, **knobs)])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_part_with_two_cpu_processes_matches_one(tmp_path):
    ctx = gc.Context(gc.PROFILES["cpu_smoke"], gc.Devices(torch.device("cpu"), torch.device("cpu")), tmp_path,
                     gc.Report("cpu_smoke", 300), ddp_cpu=True)
    gc.part_ddp(ctx, gc.Budget(300, [("ddp", 1.0)]).open("ddp"))
    assert [e.status for e in ctx.report.entries] == ["pass"], [e.detail for e in ctx.report.entries]


@pytest.mark.gpu
def test_cuda_matches_cpu_for_every_purifier_and_gradient_mode_and_fp16_masks_exactly(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    profile = {**gc.PROFILES["cuda"], "parity": {"toy": gc.ALL_PURIFIERS}, "precision_model": "toy"}
    ctx = gc.Context(profile, gc.Devices(torch.device("cuda", 0), torch.device("cpu")), tmp_path, gc.Report("cuda", 120))
    budget = gc.Budget(120, [("parity", 0.8), ("precision", 0.2)])
    gc.part_parity(ctx, budget.open("parity"))
    gc.part_precision(ctx, budget.open("precision"))
    failed = [(e.name, e.detail) for e in ctx.report.entries if e.status != "pass"]
    assert not failed and len(ctx.report.entries) > 5 * len(gc.ALL_PURIFIERS)


def test_operation_counts_grow_with_the_steps_and_hardly_with_the_batch(tmp_path):
    one = gc.count_ops("toy", steps=(1, 2), batch=1, throughput=False, work=tmp_path)
    three = gc.count_ops("toy", steps=(1,), batch=3, throughput=False, work=tmp_path)
    assert all(abs(three[k] - one[k]) <= 0.02 * one[k] for k in three)  # a few batch-dependent reductions, no more
    on = [one[f"CLIPure-Diff attack step, T={t}, checkpointing on"] for t in (1, 2)]
    off = [one[f"CLIPure-Diff attack step, T={t}, checkpointing off"] for t in (1, 2)]
    assert 0 < off[0] < on[0] < on[1] and off[0] < off[1]  # a checkpointed step runs again in the backward pass
