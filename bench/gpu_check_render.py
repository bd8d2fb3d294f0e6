"""The GPU check's reports: ``gpu_check.{json,md}`` and BENCHMARKS.md's GPU section (bench/gpu_check.py)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness import REPO, RESULTS, write_result
from bench.gpu_check_common import MEMORY_FLAT_RATIO, STATUSES, verdict_line


# ---------------------------------------------------------------------------------------------------- rendering
def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    text = f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return f"{text} {unit}".strip()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def throughput_table(entries: list[dict]) -> list[str]:
    rows = [e for e in entries if e["part"] == "throughput" and e["status"] == "measured"]
    if not rows:
        return []
    lines = ["| model | case | batch | images/s | median s |", "|---|---|---|---|---|"]
    for e in rows:
        x = e["extra"]
        lines.append(f"| {x['model']} | {x['case']} | {x['batch']} | {e['value']:.1f} | {x['median_s']:.4f} |")
    return lines


def memory_table(entries: list[dict]) -> list[str]:
    rows = [e for e in entries if e["part"] == "memory" and e["status"] == "measured"]
    if not rows:
        return []
    lines = ["| model | batch | T | checkpointing | peak MB | added by the step, MB |", "|---|---|---|---|---|---|"]
    for e in sorted(rows, key=lambda e: (e["extra"]["model"], e["extra"]["batch"], not e["extra"]["checkpointing"],
                                         e["extra"]["steps"])):
        x = e["extra"]
        lines.append(f"| {x['model']} | {x['batch']} | {x['steps']} | {'on' if x['checkpointing'] else 'off'} | "
                     f"{x['peak_mb']:.0f} | {x['added_mb']:.0f} |")
    return lines


def device_line(payload: dict) -> str:
    d, m = payload.get("device", {}), payload.get("machine", {})
    where = f"{d.get('name', d.get('main', '?'))}" + (f" (compute capability {d['capability']}, {d['memory_gb']} GB, CUDA "
                                                      f"{d['cuda']})" if "capability" in d else "")
    return (f"Measured on: {where}, {d.get('cuda_devices', 0)} visible GPU(s); host {m.get('cpu', '?')}, "
            f"{m.get('cpu_count', '?')} cores, torch {m.get('torch', '?')}, commit `{m.get('git_commit')}`.")


def render_markdown(payload: dict) -> str:
    """The full report (``gpu_check.md``) from a ``gpu_check.json`` payload."""
    title = "GPU check" if payload["mode"] == "cuda" else "GPU check: CPU smoke run (the CPU stands in for the device)"
    lines = [f"# {title}", "", f"`{verdict_line(payload)}`", "", device_line(payload), "",
             f"Command: `{payload.get('command', '')}`", "", "## Parts", "",
             "| part | budget s | used s | passed | failed | skipped | measured |", "|---|---|---|---|---|---|---|"]
    for p in payload["parts"]:
        n = {s: sum(e["part"] == p["name"] and e["status"] == s for e in payload["entries"]) for s in STATUSES}
        lines.append(f"| {p['name']} | {p['budget_s']:.0f} | {p['seconds']:.1f} | {n['pass']} | {n['fail']} | {n['skip']} | "
                     f"{n['measured']} |{(' ' + p['note']) if p['note'] else ''}")
    lines += ["", "## Checks", "", "| part | check | status | value | limit | detail |", "|---|---|---|---|---|---|"]
    for e in payload["entries"]:
        if e["status"] != "measured":
            lines.append(f"| {e['part']} | {_cell(e['name'])} | {e['status']} | {_fmt(e['value'], e['unit'])} | "
                         f"{_cell(e['limit'])} | {_cell(e['detail'])} |")
    if throughput_table(payload["entries"]):
        lines += ["", "## Throughput", "", *throughput_table(payload["entries"])]
    if memory_table(payload["entries"]):
        lines += ["", f"## Peak memory of one full-gradient CLIPure-Diff attack step ({payload['device'].get('memory_metric')})",
                  "", *memory_table(payload["entries"])]
    return "\n".join(lines) + "\n"


def benchmarks_section(payload: dict | None) -> str:
    """The ``## GPU`` section of BENCHMARKS.md: the GPU figures of the last CUDA run, or a note that none exists."""
    lines = ["## GPU", ""]
    if payload is None or payload.get("mode") != "cuda":
        lines += ["`bench/gpu_check.py` has not run on a GPU yet: `make gpu-check` on a CUDA machine (estimated 4 minutes,",
                  "8 at most) fills this section from `bench/results/gpu_check.json` (README, \"GPU check\")."]
        return "\n".join(lines) + "\n"
    lines += [f"`{verdict_line(payload)}`. {device_line(payload)} Every check with its tolerance: "
              "[bench/results/gpu_check.md](bench/results/gpu_check.md). Throughput: images per second (batch / median "
              "seconds of interleaved repetitions); CLIP and priors with random weights.", ""]
    lines += throughput_table(payload["entries"]) or ["(no throughput figures: skipped, see the report)"]
    lines += ["", f"Peak memory of one full-gradient CLIPure-Diff attack step, released prior architecture "
                  f"(`{payload['device'].get('memory_metric')}`, reset per case):", ""]
    lines += memory_table(payload["entries"]) or ["(no memory figures: skipped, see the report)"]
    flat = [e for e in payload["entries"] if e["part"] == "memory" and e["status"] in ("pass", "fail")]
    if flat:
        lines += ["", "Memory flat in T with step checkpointing (growth T=2 -> 20 with / without, goal <= "
                      f"{MEMORY_FLAT_RATIO:g}): " + "; ".join(f"{e['name'].split(' memory')[0]} batch "
                                                              f"{e['name'].rsplit(' ', 1)[-1]}: {e['value']:.3f} ({e['status']})"
                                                              for e in flat) + "."]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str, heading: str = "## GPU", before: str = "## What each benchmark measures") -> str:
    """``text`` with its ``heading`` section replaced by ``section`` (inserted before ``before``, or appended)."""
    start = text.find(f"\n{heading}\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        return text[:start + 1] + section + ("\n" + text[end + 1:] if end >= 0 else "")
    at = text.find(f"\n{before}")
    if at >= 0:
        return text[:at + 1] + section + "\n" + text[at + 1:]
    return text.rstrip("\n") + "\n\n" + section


def read_cuda_payload(path: Path | None = None) -> dict | None:
    path = path or RESULTS / "gpu_check.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    return payload if payload.get("mode") == "cuda" else None


def write_reports(payload: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_result("gpu_check", payload, out_dir / f"{stem}.json")
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(render_markdown(json.loads(json_path.read_text())))
    return json_path, md_path


def update_benchmarks_md(payload: dict | None, path: Path | None = None) -> Path:
    path = path or REPO / "BENCHMARKS.md"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    path.write_text(replace_section(text, benchmarks_section(payload)))
    return path
