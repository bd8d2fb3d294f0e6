"""Regenerate the plot gallery in docs/gallery/: every kind of plot the project writes, drawn by the project's own
plotting code from small synthetic runs (seeded, made in seconds, no model), with a README that shows them.

    python scripts/make_gallery.py            # or: make gallery

The numbers are invented to exercise the plots (intervals, a skipped dataset, two sweeps whose run folders share
names, a key without a plot); they are not results.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from clipure_lit.reporting.ablation import build_report, format_report
from clipure_lit.reporting.plots import plot_results
from clipure_lit.reporting.suite_tables import write_tables
from clipure_lit.results import SampleTable, summarise, write_json

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"


def synthetic_results(n: int, clean: float, robust: dict[str, float], seed: int,
                      attack_seed: int | None = None) -> tuple[SampleTable, dict]:
    """A per-sample table of ``n`` samples whose clean accuracy is about ``clean`` and whose robust accuracy under
    each attack is about ``robust[attack]`` (robust samples are a subset of the clean-correct ones), and its
    summary as ``results.json`` holds it. Runs with the same ``seed`` share labels and clean predictions (the same
    samples and model); ``attack_seed`` (default: ``seed``) draws the attacks' outcomes."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 10, (n,), generator=g)
    correct = torch.rand(n, generator=g) < clean
    g = torch.Generator().manual_seed(seed if attack_seed is None else attack_seed)
    columns = {"label": label, "clean_pred": torch.where(correct, label, (label + 1) % 10)}
    for name, acc in robust.items():
        keep = correct & (torch.rand(n, generator=g) < acc / max(clean, 1e-9))
        columns[f"adv_pred/{name}"] = torch.where(keep, label, (label + 2) % 10)
    table = SampleTable(torch.arange(n), columns)
    return table, summarise(table, order=list(robust))


def write_run(folder: Path, config: dict, table: SampleTable, summary: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    table.write_csv(folder / "samples.csv", order=list(summary["robust"]))
    write_json(folder / "results.json", {**summary, "run_dir": str(folder)})


def suite_row(name: str, table_summary: dict) -> dict:
    worst = table_summary["robust"].get("worst_case")
    return {"dataset": name, "status": "done", "num_samples": table_summary["num_samples"],
            "clean": table_summary["clean"]["acc"], "clean_ci95": table_summary["clean"]["ci95"],
            "robust": worst["acc"] if worst else None, "robust_ci95": worst["ci95"] if worst else None}


def make(out: Path, work: Path) -> str:
    """Write the gallery's PNGs into ``out`` (intermediate run folders under ``work``); returns the report text."""
    out.mkdir(parents=True, exist_ok=True)
    # One evaluation: results.png.
    _, results = synthetic_results(100, 0.74, {"aa_clipure@purifier": 0.05, "aa_clipure@full": 0.0,
                                               "aa_clipure@bpda_identity": 0.01, "transfer_clip": 0.02}, seed=0)
    plot_results(results, out / "results.png")

    # A suite of datasets, two defences, one dataset skipped (its files are missing offline).
    columns = {}
    for j, (defence, scale) in enumerate((("ViT-B-32/none", 0.0), ("ViT-B-32/clipure_cos", 0.6))):
        rows = []
        for i, (dataset, clean, n) in enumerate((("zs_cifar10", 0.88, 200), ("zs_cifar100", 0.62, 200), ("zs_stl10", 0.96, 100),
                                                 ("zs_dtd", 0.0, 0), ("zs_pcam", 0.55, 50), ("imagenet", 0.6, 100))):
            if dataset == "zs_dtd":
                rows.append({"dataset": dataset, "status": "skipped", "reason": "files missing"})
                continue
            _, summary = synthetic_results(n, clean, {"aa": scale * clean}, seed=100 * j + i)
            rows.append(suite_row(dataset, summary))
        columns[defence] = rows
    write_tables(work, columns)
    shutil.copy(work / "suite.png", out / "suite_datasets.png")

    # A suite of defences on the same samples (the main job's form): one row per defence.
    rows = []
    for i, (defence, robust) in enumerate((("undefended", 0.0), ("clipure_cos_as_released", 0.03),
                                           ("clipure_cos_per_sample", 0.02), ("clipure_diff_eot", 0.12))):
        _, summary = synthetic_results(100, 0.74 if i < 3 else 0.6, {"aa": robust}, seed=10 if i < 3 else 11, attack_seed=i)
        rows.append(suite_row(defence, summary))
    write_tables(work, {"": rows}, row_label="defence")
    shutil.copy(work / "suite.png", out / "suite_defences.png")

    # report.py over sweep folders whose runs share names (run-0000, ...): steps x step size, the even/odd pattern of
    # released CLIPure-Cos, and a third folder with the per-sample norm, a key that is not a number (no plot of it).
    for sweep, step_size, scope, steps_run in (("sweep_a", 30.0, "batch", range(1, 7)), ("sweep_b", 10.0, "batch", range(1, 7)),
                                               ("sweep_c", 30.0, "sample", (2, 4))):
        for k, steps in enumerate(steps_run):
            if scope == "sample":
                robust = 0.02
            else:
                robust = (0.45 if steps % 2 == 0 else 0.1) if step_size == 30.0 else 0.05 + 0.02 * steps
            config = {"purifier": {"clipure_cos": {"num_steps": steps, "step_size": step_size, "norm_scope": scope}}}
            table, summary = synthetic_results(60, 0.7, {"aa": robust}, seed=1000, attack_seed=100 * steps + int(step_size))
            write_run(work / sweep / f"run-{k:04d}", config, table, summary)
    summary = build_report([work / "sweep_a", work / "sweep_b", work / "sweep_c"], out=work / "report")
    for png in summary["plots"]:
        shutil.copy(png, out / f"report_{Path(png).name}")
    return format_report(summary)


README = """# Plot gallery

The plots the project writes, as they look now. Regenerate with `make gallery` (`python scripts/make_gallery.py`):
it draws each plot with the project's own plotting code from small **synthetic** runs (seeded, no model, a few
seconds), so the numbers are invented and only the form matters. Every accuracy carries its 95% Wilson interval.

## One evaluation: `results.png`
Clean accuracy, each attack and the per-sample worst case (red), with 95% Wilson intervals.

![results.png](results.png)

## A suite of datasets: `suite.png`
Clean (light) and worst-case robust accuracy per dataset and defence, with 95% Wilson intervals; a dataset that was
not evaluated (here `zs_dtd`, files missing offline) is marked with its status instead of a bar, so it cannot be
read as 0%; the last group is the average over the finished datasets excluding ImageNet (hatched; its interval
combines the datasets' intervals as independent errors of the mean).

![suite of datasets](suite_datasets.png)

## A suite of defences on the same samples (the main job): `suite.png`
One group per defence, no average (defences are not averaged).

![suite of defences](suite_defences.png)

## `report.py` over three sweep folders: `acc_vs_<key>.png`
Worst-case robust (solid) and clean (dashed) accuracy against each numeric key that varies, one line per
combination of the other varying keys, every point with its 95% Wilson interval; two values are enough for a plot.

![accuracy against num_steps](report_acc_vs_purifier_clipure_cos_num_steps.png)

![accuracy against step_size](report_acc_vs_purifier_clipure_cos_step_size.png)

What `report.py` printed for these runs: run labels are unique across the folders (each holds `run-0000` ...),
each paired comparison names its metric, and a key without a plot says why.

```
{report}
```
"""


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(GALLERY), help="gallery folder (default: docs/gallery)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for old in out.glob("*.png"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        report = make(out, Path(tmp))
    # The report's paths point into the temporary folder: keep only what does not depend on it.
    lines = [line for line in report.splitlines() if not line.startswith("report folder:")]
    (out / "README.md").write_text(README.replace("{report}", "\n".join(lines)))
    print(f"gallery written to {out}: {', '.join(sorted(p.name for p in out.glob('*.png')))}")
    return out


if __name__ == "__main__":
    main()
