"""Everything that turns results into text, tables and plots, one module per role.

* ``format``: the number formatters every table and sentence uses (percentages, intervals, counts, points, ms);
* ``summary``: the table ``eval.py`` prints for one run, a suite, or a suite of defences;
* ``ablation``: a group of run folders (a sweep, any runs) -> ``report.csv`` / ``.md`` / ``.tex``, plots, McNemar
  comparisons;
* ``sweep_plots``: a report's ``acc_vs_<key>.png`` (every attack, styled by its gradient, against a varying key);
* ``latex``: a report's ``report.tex`` (booktabs table with intervals, best values in bold, flags, caption);
* ``run_cells``: the cells every report table shares (flags that fired, steady-state times);
* ``config_keys``: the settings a group of runs holds fixed, and the fewest varying keys that tell them apart;
* ``run_description``: a run's model, defence and attacks in words (captions, titles, legends);
* ``plot_style``: what every accuracy plot shares (looks per gradient family, dodge, wrapped captions, stable PNGs);
* ``suite_tables``: the dataset x defence tables and plot of a suite, and the merge of several suites;
* ``plots``: the PNG of one evaluation;
* ``interpret``: one plain sentence per evaluated defence.

Importing the package does no work: the public functions below are re-exported lazily from their modules.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "pct": "clipure_lit.reporting.format",
    "pct_entry": "clipure_lit.reporting.format",
    "pct_ci_counts": "clipure_lit.reporting.format",
    "points": "clipure_lit.reporting.format",
    "ms": "clipure_lit.reporting.format",
    "format_eval": "clipure_lit.reporting.summary",
    "format_summary": "clipure_lit.reporting.summary",
    "format_suite": "clipure_lit.reporting.summary",
    "format_defences": "clipure_lit.reporting.summary",
    "collect_runs": "clipure_lit.reporting.ablation",
    "build_report": "clipure_lit.reporting.ablation",
    "format_report": "clipure_lit.reporting.ablation",
    "paired_comparisons": "clipure_lit.reporting.ablation",
    "write_tables": "clipure_lit.reporting.suite_tables",
    "average": "clipure_lit.reporting.suite_tables",
    "defence_name": "clipure_lit.reporting.suite_tables",
    "compare_suites": "clipure_lit.reporting.suite_tables",
    "plot_results": "clipure_lit.reporting.plots",
    "explain": "clipure_lit.reporting.interpret",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipure_lit.reporting' has no attribute {name!r}")
