"""Per-sample results keyed by ``sample_id``: the primary artefact of an evaluation.

Producers (the clean pass, each attack) add columns batch by batch on their own process with
:meth:`SampleStore.add`; :meth:`SampleStore.gather` collects every column from every process, drops the DDP
padding duplicates and aligns the columns on the sorted sample ids. Every metric is computed from that table,
once per sample.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from clipure_lit.utils.distributed import gather_varlen, unique_by_id
from clipure_lit.utils.stats import wilson_interval

MISSING = -1


class SampleStore:
    """Per-process, per-column lists of ``(ids [B], values [B])`` chunks."""

    def __init__(self) -> None:
        self._chunks: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def reset(self) -> None:
        self._chunks.clear()

    def add(self, column: str, ids: Tensor, values: Tensor) -> None:
        self._chunks.setdefault(column, []).append((ids.detach().long().cpu(), values.detach().cpu()))

    @property
    def columns(self) -> list[str]:
        return list(self._chunks)

    def gather(self, module) -> "SampleTable":
        """Collective: every rank must call it with the same columns in the same order."""
        device = module.device
        merged: dict[str, tuple[Tensor, Tensor]] = {}
        for name, chunks in self._chunks.items():
            ids = torch.cat([c[0] for c in chunks]).to(device)
            values = torch.cat([c[1] for c in chunks]).to(device)
            merged[name] = unique_by_id(gather_varlen(module, ids).cpu(), gather_varlen(module, values).cpu())
        all_ids = torch.unique(torch.cat([ids for ids, _ in merged.values()])) if merged else torch.zeros(0, dtype=torch.long)
        table = SampleTable(all_ids)
        for name, (ids, values) in merged.items():
            column = torch.full((all_ids.numel(),), MISSING, dtype=values.dtype)
            column[torch.searchsorted(all_ids, ids)] = values
            table.columns[name] = column
        return table


@dataclass
class SampleTable:
    """Columns aligned on ``ids`` (sorted, unique). Conventional columns: ``label``, ``clean_pred``,
    ``adv_pred/<attack>``."""

    ids: Tensor
    columns: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.numel())

    def attack_names(self) -> list[str]:
        return [c.split("/", 1)[1] for c in self.columns if c.startswith("adv_pred/")]

    def write_csv(self, path: Path) -> None:
        names = list(self.columns)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["sample_id", *names])
            for row, sample_id in enumerate(self.ids.tolist()):
                writer.writerow([sample_id, *(self.columns[n][row].item() for n in names)])


def accuracy_entry(correct: Tensor) -> dict:
    """``{"acc", "correct", "total", "ci95": [lo, hi]}`` for a boolean vector."""
    k, n = int(correct.sum()), int(correct.numel())
    lo, hi = wilson_interval(k, n)
    return {"acc": k / n if n else math.nan, "correct": k, "total": n, "ci95": [lo, hi]}


def summarise(table: SampleTable) -> dict:
    """Clean accuracy, robust accuracy per attack and the worst case over attacks, each with counts and a 95%
    Wilson interval. A sample counts as robust to an attack only if its adversarial prediction is its label
    (samples misclassified when clean are non-robust, as in AutoAttack)."""
    label = table.columns["label"]
    out = {"num_samples": len(table), "clean": accuracy_entry(table.columns["clean_pred"] == label), "robust": {}}
    worst = table.columns["clean_pred"] == label
    for name in table.attack_names():
        correct = table.columns[f"adv_pred/{name}"] == label
        out["robust"][name] = accuracy_entry(correct)
        worst = worst & correct
    if out["robust"]:
        out["robust"]["worst_case"] = accuracy_entry(worst)
    return out


def write_json(path: Path, payload: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str))
    tmp.replace(path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
