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
import torch.distributed as dist
from torch import Tensor

from clipure_lit.utils.distributed import gather_varlen, unique_by_id
from clipure_lit.utils.stats import wilson_interval

MISSING = -1


class SampleStore:
    """Per-process, per-column lists of ``(ids [B], values [B])`` chunks.

    :meth:`mark` / :meth:`since_mark` give the chunks added since the last mark (one finished batch, which the
    resume log appends to disk).
    """

    def __init__(self) -> None:
        self._chunks: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self._marks: dict[str, int] = {}

    def reset(self) -> None:
        self._chunks.clear()
        self._marks.clear()

    def add(self, column: str, ids: Tensor, values: Tensor) -> None:
        self._chunks.setdefault(column, []).append((ids.detach().long().cpu(), values.detach().cpu()))

    @property
    def columns(self) -> list[str]:
        return list(self._chunks)

    def mark(self) -> None:
        self._marks = {name: len(chunks) for name, chunks in self._chunks.items()}

    def since_mark(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{column: (ids, values)}`` of everything added since the last :meth:`mark`."""
        out = {}
        for name, chunks in self._chunks.items():
            new = chunks[self._marks.get(name, 0):]
            if new:
                out[name] = (torch.cat([c[0] for c in new]), torch.cat([c[1] for c in new]))
        return out

    def gather(self, module) -> "SampleTable":
        """Collective: every rank must call it. Ranks may hold different columns (a rank that only skipped
        finished batches holds none); the union is gathered, each sample id is kept once."""
        device = module.device
        local = {name: str(chunks[0][1].dtype).replace("torch.", "") for name, chunks in self._chunks.items() if chunks}
        schema: dict[str, str] = {}
        for part in all_gather_object(module, local):
            schema.update(part)
        merged: dict[str, tuple[Tensor, Tensor]] = {}
        for name in sorted(schema):
            chunks = self._chunks.get(name, [])
            dtype = getattr(torch, schema[name])
            ids = torch.cat([c[0] for c in chunks]) if chunks else torch.zeros(0, dtype=torch.long)
            values = torch.cat([c[1] for c in chunks]) if chunks else torch.zeros(0, dtype=dtype)
            merged[name] = unique_by_id(gather_varlen(module, ids.to(device)).cpu(),
                                        gather_varlen(module, values.to(device)).cpu())
        all_ids = torch.unique(torch.cat([ids for ids, _ in merged.values()])) if merged else torch.zeros(0, dtype=torch.long)
        table = SampleTable(all_ids)
        for name, (ids, values) in merged.items():
            column = torch.full((all_ids.numel(),), MISSING, dtype=values.dtype)
            column[torch.searchsorted(all_ids, ids)] = values
            table.columns[name] = column
        return table


def all_gather_object(module, obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process). Collective."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@dataclass
class SampleTable:
    """Columns aligned on ``ids`` (sorted, unique). Conventional columns: ``label``, ``clean_pred``,
    ``adv_pred/<attack>``."""

    ids: Tensor
    columns: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.numel())

    def attack_names(self, order: list[str] | None = None) -> list[str]:
        """Attack columns' names: those in ``order`` first (in that order), then the rest sorted."""
        names = [c.split("/", 1)[1] for c in self.columns if c.startswith("adv_pred/")]
        first = [n for n in (order or []) if n in names]
        return first + sorted(n for n in names if n not in first)

    def column_order(self, order: list[str] | None = None) -> list[str]:
        """``label``, ``clean_pred``, the attack columns (see :meth:`attack_names`), then any other column."""
        lead = [c for c in ("label", "clean_pred") if c in self.columns]
        attacks = [f"adv_pred/{n}" for n in self.attack_names(order)]
        return lead + attacks + sorted(c for c in self.columns if c not in lead and c not in attacks)

    def write_csv(self, path: Path, order: list[str] | None = None) -> None:
        """One row per sample: ``sample_id`` then :meth:`column_order` (attacks in ``order``)."""
        names = self.column_order(order)
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


def summarise(table: SampleTable, order: list[str] | None = None) -> dict:
    """Clean accuracy, robust accuracy per attack and the worst case over attacks, each with counts and a 95%
    Wilson interval. A sample counts as robust to an attack only if its adversarial prediction is its label
    (samples misclassified when clean are non-robust, as in AutoAttack). The worst case is per sample: robust
    to every attack (and correct when clean). Attacks are listed in ``order`` (then the others, sorted)."""
    label = table.columns["label"]
    out = {"num_samples": len(table), "clean": accuracy_entry(table.columns["clean_pred"] == label), "robust": {}}
    worst = table.columns["clean_pred"] == label
    for name in table.attack_names(order):
        column = table.columns[f"adv_pred/{name}"]
        missing = int((column == MISSING).sum())
        if missing:
            raise RuntimeError(f"Attack '{name}' has no result for {missing} of {len(table)} samples; every attack must "
                               "score every sample. This is a bug: please report it with the run folder.")
        correct = column == label
        out["robust"][name] = accuracy_entry(correct)
        worst = worst & correct
    if out["robust"]:
        out["robust"]["worst_case"] = accuracy_entry(worst)
    return out


def table_from_columns(columns: dict[str, tuple[Tensor, Tensor]]) -> SampleTable:
    """A table on the sample ids of ``columns["label"]`` from ``{column: (ids, values)}`` chunks (progress records,
    possibly with repeated ids: each id is kept once); a column's samples outside ``label``'s are dropped and its
    missing ones are :data:`MISSING`."""
    merged = {name: unique_by_id(ids, values) for name, (ids, values) in columns.items()}
    table = SampleTable(merged["label"][0])
    for name, (ids, values) in merged.items():
        column = torch.full((len(table),), MISSING, dtype=values.dtype)
        keep = torch.isin(ids, table.ids)
        column[torch.searchsorted(table.ids, ids[keep])] = values[keep]
        table.columns[name] = column
    return table


def summarise_finished(table: SampleTable, order: list[str] | None = None) -> dict:
    """:func:`summarise` over the samples finished so far; only the clean numbers when an attack lacks results for
    some of them (a run stopped between its clean pass and its attacks)."""
    try:
        return summarise(table, order)
    except RuntimeError:
        return summarise(SampleTable(table.ids, {k: table.columns[k] for k in ("label", "clean_pred")}))


def merge_flags(parts: list[dict]) -> dict:
    """Combine per-rank ``{"flags", "messages", "checks"}``: a flag is raised if any rank raised it; measured
    values and messages come from the first rank that has them."""
    merged: dict = {"flags": {}, "messages": {}, "checks": {}}
    for part in parts:
        for name, value in part.get("flags", {}).items():
            merged["flags"][name] = max(merged["flags"].get(name, 0.0), float(value))
        for key in ("messages", "checks"):
            for name, value in part.get(key, {}).items():
                merged[key].setdefault(name, value)
    return merged


def write_json(path: Path, payload: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str))
    tmp.replace(path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
