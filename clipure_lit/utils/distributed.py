"""Gather per-sample tensors from every process and keep each sample once; read what a multi-process launcher
(torchrun, srun, Lightning's own launcher) tells a process about its rank and job before any process group exists.

Under DDP, Lightning's test sampler pads the dataset by repeating samples so every rank gets the same number;
results are therefore keyed by ``sample_id`` and de-duplicated after gathering.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor


def gather_varlen(module, tensor: Tensor) -> Tensor:
    """All-gather a 1-D tensor whose length may differ per rank; returns the concatenation over ranks."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1:
        return tensor
    length = torch.tensor([tensor.numel()], device=tensor.device)
    lengths = module.all_gather(length).view(-1)  # [world]
    longest = int(lengths.max())
    padded = torch.zeros(longest, dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.numel()] = tensor
    gathered = module.all_gather(padded)  # [world, longest]
    return torch.cat([gathered[r, : int(lengths[r])] for r in range(gathered.shape[0])])


def unique_by_id(ids: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the first value of each id; returns ``(sorted unique ids, their values)``."""
    order = torch.argsort(ids, stable=True)
    ids, values = ids[order], values[order]
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[1:] = ids[1:] != ids[:-1]
    return ids[keep], values[keep]


def _srun_tasks() -> int:
    """Number of tasks of an ``srun`` launch (1 outside SLURM, in an interactive SLURM shell, or for one task)."""
    if os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):  # Lightning's rule for interactive allocations
        return 1
    try:
        return int(os.environ.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 1


def launcher_rank_is_zero() -> bool:
    """True unless the environment names this process a rank other than 0 of a multi-process launch: ``RANK``
    (torchrun), ``SLURM_PROCID`` (srun with several tasks), ``NODE_RANK`` / ``LOCAL_RANK`` (Lightning's own launcher,
    one launch per node). Readable before any process group exists."""
    if os.environ.get("RANK", "").isdigit():
        return int(os.environ["RANK"]) == 0
    if _srun_tasks() > 1 and os.environ.get("SLURM_PROCID", "").isdigit():
        return int(os.environ["SLURM_PROCID"]) == 0
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in ("NODE_RANK", "LOCAL_RANK"))


def slurm_job_id() -> str | None:
    """The id ``scontrol`` knows this SLURM job by: ``<array job id>_<array task id>`` for an array task, else
    ``SLURM_JOB_ID``; None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else job


def slurm_batch_job() -> bool:
    """True inside a SLURM job that is not an interactive allocation (Lightning's rule: job name ``bash`` or
    ``interactive``), i.e. one that SLURM may preempt and requeue."""
    return bool(os.environ.get("SLURM_JOB_ID")) and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def slurm_job_folder() -> str | None:
    """``slurm-<job id>[.<step id>]`` (:func:`slurm_job_id`) inside a SLURM batch job, else None: the same for every
    task of the job and for the job again after ``scontrol requeue`` (same id, steps numbered from 0 again)."""
    if not slurm_batch_job():
        return None
    step = os.environ.get("SLURM_STEP_ID")
    return f"slurm-{slurm_job_id()}" + (f".{step}" if step else "")


def launcher_job_name() -> str | None:
    """A name that every process of one multi-process launch derives alike from its launcher's job id, or None.

    ``slurm-<job id>[.<step id>]`` (``<array job id>_<array task id>`` for an array task) for an ``srun`` with
    several tasks; ``torchrun-<run id>`` for torchrun with a rendezvous id (``--rdzv-id``, or ``--standalone``)
    and more than one worker.
    """
    if _srun_tasks() > 1 and os.environ.get("SLURM_JOB_ID"):
        return slurm_job_folder()
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return "torchrun-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return None


def launched_without_job_id() -> str | None:
    """When this process is one of several started by separate launches that share no job id (torchrun's default
    static rendezvous, or Lightning's NODE_RANK launch), a short description of that launch; else None."""
    if os.environ.get("TORCHELASTIC_RUN_ID") == "none" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return "torchrun without --rdzv-id"
    if int(os.environ.get("NODE_RANK", "0") or 0) > 0:
        return f"a Lightning launch with NODE_RANK={os.environ['NODE_RANK']}"
    return None
