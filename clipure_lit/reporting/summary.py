"""The text ``eval.py`` prints. For one run, a table of its ``results.json``: clean and robust accuracy per attack
(with its gradient mode and kind), 95% Wilson intervals, time per sample, and the raised masking flags. For a suite,
its Markdown table; for a suite of defences, each defence's table and one sentence on what it means."""

from __future__ import annotations

import textwrap
from pathlib import Path

from clipure_lit.reporting.format import ms, pct_ci_counts
from clipure_lit.reporting.interpret import explain


def _mode(info: dict | None) -> str:
    if not info:
        return ""
    if info.get("kind") == "transfer":
        return f"transfer:{info.get('transfer_from')}"
    if info.get("kind") == "black_box":
        return "black-box"
    eot = info.get("eot_samples")
    return info.get("grad_mode", "") + (f" x{eot}" if eot and eot > 1 else "")


def format_summary(results: dict) -> str:
    """The table printed by ``eval.py`` (also readable from a saved ``results.json``)."""
    times = results.get("time_per_sample_s", {})
    attacks = results.get("attacks", {})
    rows = [("clean", "", results["clean"], times.get("clean"))]
    for name, entry in results.get("robust", {}).items():
        label = "worst case (per sample)" if name == "worst_case" else f"robust: {name}"
        rows.append((label, _mode(attacks.get(name)), entry, times.get(f"attack/{name}")))
    width = max(len(r[0]) for r in rows)
    mwidth = max([len(r[1]) for r in rows] + [len("gradient")])
    lines = [f"{'metric':<{width}}  {'gradient':<{mwidth}}  accuracy [95% CI]                 time/sample",
             "-" * (width + mwidth + 50)]
    for name, mode, entry, seconds in rows:
        t = f"{ms(seconds):>8} ms" if seconds is not None else ""
        lines.append(f"{name:<{width}}  {mode:<{mwidth}}  {pct_ci_counts(entry):<32}  {t}")
    raised = [flag for flag, value in results.get("flags", {}).items() if value]
    if raised:
        lines.append(f"\nmasking flags raised ({len(raised)}; docs/evaluation.md#flags):")
        messages = results.get("flag_messages", {})
        for flag in raised:
            text = f"- {flag}: {messages.get(flag, '')}"
            lines.extend(textwrap.wrap(text, width=110, subsequent_indent="    "))
    elif results.get("flags"):
        lines.append(f"\nmasking flags: none raised ({len(results['flags'])} checked)")
    wandb = results.get("wandb")
    if wandb:
        sync = wandb.get("sync", wandb["dir"])  # a resumed run: the folders of all its launches
        lines.append(f"W&B: offline run, upload it with: wandb sync {sync}" if wandb.get("offline")
                     else f"W&B: {wandb.get('url') or wandb['dir']}")
    lines.append(f"run folder: {results.get('run_dir', '?')} (results.json, samples.csv, config.yaml, log.txt)")
    return "\n".join(lines)


def _wandb_line(summary: dict) -> list[str]:
    """One line on a suite's W&B runs: the command that uploads the offline ones (the suite table's run and each
    run's)."""
    runs = [r["results"]["wandb"] for r in summary["rows"] if r.get("status") == "done" and r["results"].get("wandb")]
    if not runs:
        return []
    out = Path(summary["run_dir"])
    if any(w.get("offline") for w in runs):
        return [f"W&B: offline runs, upload them with: wandb sync {out}/wandb/offline-run-* {out}/*/wandb/offline-run-*"]
    return [f"W&B: {len(runs)} runs online"]


def format_eval(metrics: dict) -> str:
    """What ``eval.py`` prints for the dict an evaluation returns: :func:`format_summary` for one run's results,
    :func:`format_defences` for a suite of defences (``compare == "defences"``), :func:`format_suite` for a suite
    of datasets."""
    if "rows" not in metrics:
        return format_summary(metrics)
    return format_defences(metrics) if metrics.get("compare") == "defences" else format_suite(metrics)


def format_suite(summary: dict) -> str:
    """The suite's Markdown table plus the skipped datasets and where the files are."""
    out = Path(summary["run_dir"])
    lines = [(out / "suite.md").read_text().rstrip()]
    for row in summary["rows"]:
        if row.get("status") == "skipped":
            lines.append(f"skipped {row['dataset']}: {row['reason']}")
    lines += _wandb_line(summary)
    lines.append(f"suite folder: {out} (suite.csv, suite.md, suite.png, log.txt, one folder per dataset)")
    return "\n".join(lines)


def format_defences(summary: dict) -> str:
    """A suite of defences on the same samples: each defence's table (attack by attack), the masking flags that
    fired, and one sentence on what the row means."""
    done = [r for r in summary["rows"] if r.get("status") == "done"]
    undefended = next((r for r in done if all(p.get("class") == "IdentityPurifier" for p in r["results"].get("purifiers", []))), None)
    base = undefended["robust"] if undefended and undefended["robust"] is not None else None
    lines = []
    for row in summary["rows"]:
        lines.append(f"\n=== {row['dataset']} ===")
        if row.get("status") != "done":
            lines.append(f"skipped: {row.get('reason', '')}")
            continue
        table = format_summary(row["results"]).splitlines()
        lines.extend(line for line in table if not line.startswith(("run folder:", "W&B:")))  # said once, at the end
        lines.extend(textwrap.wrap("=> " + explain(row["results"], None if row is undefended else base), width=110,
                                   subsequent_indent="   "))
    out = Path(summary["run_dir"])
    lines += [""] + _wandb_line(summary)
    lines.append(f"folder: {out} (suite.csv, suite.md, suite.png, log.txt; one run folder per defence with results.json, "
                 "samples.csv)")
    return "\n".join(lines)
