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
MODEL = {"clip": {"arch": "ViT-C10-S4-32px", "pretrained": "checkpoints/vit_c10_s4_clip.safetensors"}}


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


def describe_attacks(summary: dict, purifier_mode: str | None = "as_released", eps: float = 4 / 255, n_iter: int = 20,
                     n_queries: int = 500, eot_samples: int = 4) -> dict:
    """``summary`` with what ``eval.py`` records next to the accuracies: ``attacks`` (each token's settings, read from
    its name: ``<preset>@<gradient mode>``, ``transfer_clip``, ``square``) and ``purifiers`` (undefended when
    ``purifier_mode`` is None, else CLIPure-Cos in that gradient mode)."""
    attacks = {}
    for token in summary["robust"]:
        if token == "worst_case":
            continue
        mode = token.split("@", 1)[1] if "@" in token else "purifier"
        square = token.startswith("square")
        attacks[token] = {"name": token, "version": "custom", "attacks": ["square"] if square else ["apgd-ce", "apgd-t"],
                          "norm": "Linf", "eps": eps, "grad_mode": mode, "eot_samples": eot_samples if mode == "eot" else None,
                          "n_iter": n_iter, "n_restarts": 5, "n_queries": n_queries if square else None,
                          "transfer_from": "undefended" if token.startswith("transfer") else None,
                          "kind": "black_box" if square else "transfer" if token.startswith("transfer") else "white_box"}
    identity = {"class": "IdentityPurifier", "differentiable": True}
    purifiers = [identity, identity if purifier_mode is None else {"class": "ClipureCos", "grad_mode": purifier_mode,
                                                                    "differentiable": purifier_mode == "full"}]
    return {**summary, "attacks": attacks, "purifiers": purifiers}


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
    # One evaluation: results.png, CLIPure-Cos as released under its own, the exact and the straight-through
    # gradient, transfer and Square.
    _, results = synthetic_results(100, 0.74, {"aa_clipure@purifier": 0.08, "aa_clipure@full": 0.0,
                                               "aa_clipure@bpda_identity": 0.01, "transfer_clip": 0.02, "square": 0.3}, seed=0)
    plot_results(describe_attacks(results), out / "results.png", config={**MODEL, "purifier": {"latent": "clipure_cos",
                 "clipure_cos": {"grad_mode": "as_released"}}})

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

    # report.py over sweep folders whose runs share names (run-0000, ...): steps x step size under the released and the
    # exact gradient, the even/odd pattern of released CLIPure-Cos, and a third folder with the per-sample norm, a key
    # that is not a number (drawn on categorical positions, only where it changes while the other keys stay fixed).
    for sweep, step_size, scope, steps_run in (("sweep_a", 30.0, "batch", range(1, 7)), ("sweep_b", 10.0, "batch", range(1, 7)),
                                               ("sweep_c", 30.0, "sample", (2, 4))):
        for k, steps in enumerate(steps_run):
            if scope == "sample":
                released = 0.02
            else:
                released = (0.45 if steps % 2 == 0 else 0.1) if step_size == 30.0 else 0.05 + 0.02 * steps
            config = {**MODEL, "data": {"batch_size": 20},
                      "purifier": {"latent": "clipure_cos", "clipure_cos": {"num_steps": steps, "step_size": step_size,
                                                                           "norm_scope": scope, "grad_mode": "as_released"}}}
            table, summary = synthetic_results(60, 0.7, {"aa_clipure@purifier": released, "aa_clipure@full": 0.0},
                                               seed=1000, attack_seed=100 * steps + int(step_size))
            summary = describe_attacks(summary)
            summary["flags"] = {"weak_grad/aa_clipure@purifier": float(steps % 2 == 0), "weak_grad/aa_clipure@full": 0.0,
                                "nondifferentiable_without_bpda/aa_clipure@purifier": 1.0, "robust_near_clean": 0.0}
            # Three batches of 20: the steady state leaves the first out; the first carried 60 ms of warm-up.
            steady = {"clean": 0.002 * steps, "attack/aa_clipure@purifier": 0.05 * steps, "attack/aa_clipure@full": 0.09 * steps}
            summary["steady_time_per_sample_s"] = steady
            summary["time_per_sample_s"] = {k: v + (0.06 / 3 if k == "clean" else 0.0) for k, v in steady.items()}
            write_run(work / sweep / f"run-{k:04d}", config, table, summary)
    summary = build_report([work / "sweep_a", work / "sweep_b", work / "sweep_c"], out=work / "report")
    for png in summary["plots"]:
        shutil.copy(png, out / f"report_{Path(png).name}")
    shutil.copy(work / "report" / "report.tex", out / "report.tex")
    return format_report(summary)


README = """# Plot gallery

The plots the project writes, as they look now. Regenerate with `make gallery` (`python scripts/make_gallery.py`):
it draws each plot with the project's own plotting code from small **synthetic** runs (seeded, no model, a few
seconds), so the numbers are invented and only the form matters. Every accuracy carries its 95% Wilson interval.

## One evaluation: `results.png`
Clean accuracy (grey), each attack coloured and hatched by the gradient it followed (released, exact, BPDA, transfer,
black-box: the legend lists the kinds drawn) and the per-sample worst case (cross-hatched), with 95% Wilson
intervals. The title names the model, the defence and the number of images; the caption each attack's
sub-attacks, radius, iterations or queries and gradient.

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
Clean accuracy (grey, dashed) and the robust accuracy under each attack, styled by its gradient (here the released
gradient, orange, against the exact one, red), with the per-sample worst case (black stars), against each key that
varies: one panel per combination of the other varying keys in which the key changes, numbers in numeric order,
other values (here `norm_scope`) in natural order on evenly spaced positions. Every point has its 95% Wilson
interval; series are shifted sideways by a small fixed step so that those at 0% stay visible. The title names the
model, the defence and the number of images; the caption each attack's radius, iterations and gradient.

![accuracy against num_steps](report_acc_vs_purifier_clipure_cos_num_steps.png)

![accuracy against step_size](report_acc_vs_purifier_clipure_cos_step_size.png)

![accuracy against norm_scope](report_acc_vs_purifier_clipure_cos_norm_scope.png)

What `report.py` printed for these runs: run labels are unique across the folders (each holds `run-0000` ...),
the flags that fired, steady-state times (first batch excluded), and each paired comparison names its metric.

```
{report}
```

And the [`report.tex`](report.tex) it wrote (booktabs; best value per column in bold, ties included; the caption
lists the attacks and every setting held fixed):

```latex
{latex}
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
    latex = (out / "report.tex").read_text().rstrip()
    (out / "README.md").write_text(README.replace("{report}", "\n".join(lines)).replace("{latex}", latex))
    print(f"gallery written to {out}: {', '.join(sorted(p.name for p in out.glob('*.png')))}")
    return out


if __name__ == "__main__":
    main()
