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
