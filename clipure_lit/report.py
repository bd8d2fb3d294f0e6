"""A plain-text summary table of an evaluation's ``results.json``."""

from __future__ import annotations


def _pct(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{100 * entry['acc']:6.2f}%  [{100 * lo:5.1f}, {100 * hi:5.1f}]  ({entry['correct']}/{entry['total']})"


def format_summary(results: dict) -> str:
    times = results.get("time_per_sample_s", {})
    rows = [("clean", results["clean"], times.get("clean"))]
    rows += [(f"robust: {name}", entry, times.get(f"attack/{name}")) for name, entry in results.get("robust", {}).items()]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  accuracy [95% CI]                 time/sample",
             "-" * (width + 48)]
    for name, entry, seconds in rows:
        t = f"{1000 * seconds:8.1f} ms" if seconds is not None else ""
        lines.append(f"{name:<{width}}  {_pct(entry):<32}  {t}")
    lines.append(f"run folder: {results.get('run_dir', '?')} (results.json, samples.csv, config.yaml)")
    return "\n".join(lines)


def format_suite(summary: dict) -> str:
    """The suite's Markdown table plus the skipped datasets and where the files are."""
    from pathlib import Path

    out = Path(summary["run_dir"])
    lines = [(out / "suite.md").read_text().rstrip()]
    for row in summary["rows"]:
        if row.get("status") == "skipped":
            lines.append(f"skipped {row['dataset']}: {row['reason']}")
    lines.append(f"suite folder: {out} (suite.csv, suite.md, suite.png, one folder per dataset)")
    return "\n".join(lines)
