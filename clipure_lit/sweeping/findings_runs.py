"""Compute the runs behind the findings document, and keep the files the document is made from.

``recompute`` runs every part of every study (``findings/studies.yaml``) as a sweep into
``<runs root>/<study>/<part>/`` with the same launcher as ``sweep.py``: running it again resumes (finished runs are
skipped, interrupted ones continue, runs whose config changed run again). ``freeze`` copies, from each finished run,
the three files the document reads (``config.yaml``, ``results.json``, ``samples.csv``) into a folder meant to be
committed; it refuses to replace an existing copy unless asked to.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.reporting.findings import COMMITTED_FILES, Findings
from clipure_lit.sweeping.launcher import SweepOptions, SweepResult, run_sweep
from clipure_lit.sweeping.plan import SweepSpec, load_sweep

log = logging.getLogger(__name__)


def recompute(findings: Findings, runs_root: str | Path, studies: list[str] | None = None,
              opts: SweepOptions | None = None) -> list[tuple[str, SweepResult]]:
    """Run (or resume) the parts of ``studies`` (default: all). Every part's sweep file and arguments are checked
    before the first run starts. Stops at the first part that fails or is interrupted."""
    known = [s.name for s in findings.studies]
    unknown = sorted(set(studies or []) - set(known))
    if unknown:
        raise ConfigError(f"--study {unknown}: no such study in {findings.source}; studies: {known}.")
    chosen = [s for s in findings.studies if not studies or s.name in studies]
    opts = opts or SweepOptions(wandb="off")
    plans = [(s, p, load_sweep(p.sweep)) for s in chosen for p in s.parts]
    # Every part is checked (composed and validated as eval.py would) before any of them runs.
    for study, part, spec in plans:
        run_sweep(spec, Path(runs_root) / study.name / part.name, part_args(findings.common, part.args, spec),
                  dataclasses.replace(opts, dry_run=True))
    results = []
    for study, part, spec in plans:
        log.info("findings: study %s, part %s", study.name, part.name)
        result = run_sweep(spec, Path(runs_root) / study.name / part.name, part_args(findings.common, part.args, spec),
                           opts)
        results.append((f"{study.name}/{part.name}", result))
        if result.stopped_by is not None or result.failed:
            break
    return results


def part_args(common: list[str], args: list[str], spec: SweepSpec) -> list[str]:
    """The arguments of a part's runs: the study file's ``common`` ones, then the part's own (which win, coming
    later). A common argument whose key the part's sweep varies is left out: the document's promise is "every run,
    unless a part sets it otherwise", and a swept key is set by the part (``attack.n_iter`` in a convergence study)."""
    swept = set(spec.swept_keys)
    return [a for a in common if a.split("=", 1)[0].lstrip("+~") not in swept] + list(args)


def _portable_run_dir(src: Path, target: Path, runs_root: Path) -> None:
    """The copies name their run folder relative to the current folder (``runs/findings/...``; else relative to the
    runs' root), not by the absolute path of the machine that ran them. config.yaml and results.json record it."""
    src = src.resolve()
    try:
        relative = src.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        relative = (Path(runs_root.resolve().name) / src.relative_to(runs_root.resolve())).as_posix()
    for name in ("config.yaml", "results.json"):
        path = target / name
        path.write_text(path.read_text().replace(str(src), relative))


def freeze(findings: Findings, runs_root: str | Path, dest: str | Path, overwrite: bool = False,
           studies: list[str] | None = None) -> int:
    """Copy ``config.yaml``, ``results.json`` and ``samples.csv`` of every finished run of every part into
    ``dest/<study>/<part>/<run>/``. Returns the number of runs copied. With ``studies``, only those studies are
    copied and only their folders in ``dest`` are replaced; the other studies' committed runs stay."""
    runs_root, dest = Path(runs_root), Path(dest)
    if runs_root.resolve() == dest.resolve():
        raise ConfigError(f"--freeze: the runs ({runs_root}) and the destination are the same folder.")
    known = [s.name for s in findings.studies]
    unknown = sorted(set(studies or []) - set(known))
    if unknown:
        raise ConfigError(f"--study {unknown}: no such study in {findings.source}; studies: {known}.")
    chosen = [s for s in findings.studies if not studies or s.name in studies]
    replaced = [dest / s.name for s in chosen] if studies else [dest]
    if any(p.exists() and any(p.iterdir()) for p in replaced) and not overwrite:
        raise ConfigError(f"--freeze would replace the committed runs in '{dest}'"
                          + (f" of {sorted(studies)}" if studies else "") + ". Fix: add --overwrite to replace them "
                          "(the document is then made from the new runs), or choose another destination.")
    copied, missing = [], []
    for study in chosen:
        for part in study.parts:
            folder = runs_root / study.name / part.name
            for results in sorted(folder.glob("run-*/results.json")):
                run = results.parent
                if not all((run / f).is_file() for f in COMMITTED_FILES):
                    missing.append(str(run))
                    continue
                copied.append((run, dest / study.name / part.name / run.name))
            if not any(folder.glob("run-*/results.json")):
                missing.append(str(folder))
    if missing:
        raise DataNotFoundError(f"--freeze: unfinished runs or parts: {missing[:5]}{' ...' if len(missing) > 5 else ''}. "
                                "Fix: finish them first (`python report.py --findings --recompute`).")
    for folder in replaced:
        if folder.exists() and overwrite:
            shutil.rmtree(folder)
    for src, target in copied:
        target.mkdir(parents=True, exist_ok=True)
        for name in COMMITTED_FILES:
            shutil.copyfile(src / name, target / name)
        _portable_run_dir(src, target, runs_root)
    log.info("froze %d runs into %s", len(copied), dest)
    return len(copied)
