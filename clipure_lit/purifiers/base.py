"""The purifier contract shared by pixel-space and latent-space purifiers.

* pixel purifiers map images ``[B, 3, H, W]`` in [0, 1] to images of the same shape, in [0, 1];
* latent purifiers map unit-norm image embeddings ``[B, D]`` to unit-norm embeddings ``[B, D]``.

Each purifier declares its ``space``, whether it is ``stochastic`` (its output depends on random draws, which
come only from the ``generator`` it is given, never from the global RNG that AutoAttack reseeds), whether it is
``batch_coupled`` (output i depends on other samples of the batch), whether it is ``differentiable`` (autograd
gives a meaningful input gradient) and whether it ``needs_grad`` (runs autograd inside its forward, so the test
loop must not be in inference mode).

Gradient semantics are part of the contract: :meth:`Purifier.with_grad_mode` returns the purifier as an attack
in a given :class:`GradMode` should differentiate it. The default returns the purifier unchanged (a purifier
whose gradient is what autograd gives); purifiers with an inner optimisation override it.

A purifier's configuration is a dataclass deriving from :class:`PurifierConfig`, declared in the purifier's own
module and registered with it; its keys live under ``purifier.<registered name>.*``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class Space(str, Enum):
    pixel = "pixel"
    latent = "latent"
    any = "any"  # works in both spaces (the identity)


class GradMode(str, Enum):
    """Gradient semantics of an optimisation-based purifier.

    ``as_released``: the inner gradient is computed without ``create_graph`` (as in the official code), so each
    step's direction is a constant for autograd; attacks then see a near-zero input gradient.
    ``full``: ``create_graph=True``, the exact white-box gradient through every purification step.
    """

    as_released = "as_released"
    full = "full"


class PurifierConfig:
    """Base of every purifier's config dataclass (the fields are the ``purifier.<name>.*`` keys).

    Subclasses override the hooks they need; ``where`` is the key prefix (``purifier.<name>``) to name in messages.
    """

    def validate(self, where: str) -> None:
        """Raise :class:`~clipure_lit.errors.ConfigError` for a bad value. Runs on every composed config, before
        anything is built, so it must not need the files or the model."""

    def check_files(self, where: str) -> None:
        """Raise within seconds, before CLIP is loaded, when a weight file the purifier needs is missing."""

    def weight_files(self, where: str) -> dict[str, str]:
        """``{key: path or hub id}`` of the weight files this purifier loads (hashed into ``environment.json``)."""
        return {}

    def local_files(self, where: str) -> dict[str, str]:
        """``{key: path}`` of the files this purifier reads from the local disk and can never download. Checked when
        the config is composed (``--cfg``, a sweep's dry run, the run itself), so a wrong path is refused before
        anything starts. Hub ids, which a run may download, belong in :meth:`check_files` instead."""
        return {}

    def batch_coupled(self) -> bool:
        """Whether these settings make output i depend on the other samples of the batch (a batch-wide norm)."""
        return False

    def declared_batch_size(self) -> int | None:
        """The batch size the results of a :meth:`batch_coupled` purifier are meant for: composing a run whose
        ``data.batch_size`` differs is refused (``clipure_lit.config.validate.check_batch_coupling``). None: no size
        is declared, so batch-dependent results are accepted on purpose (and flagged in the results)."""
        return None


class Purifier(nn.Module):
    """Base class; subclasses implement :meth:`forward`."""

    space: ClassVar[Space] = Space.any
    stochastic: ClassVar[bool] = False
    batch_coupled: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True
    needs_grad: ClassVar[bool] = False

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def check_evaluation_batch(self, batch: int, data_batch: int | None) -> None:
        """Called by the test loop with the size ``batch`` of each data batch it evaluates (``data_batch``: the
        loader's batch size, ``data.batch_size``), never for the smaller batches that checks and attacks pass
        through the purifier (single samples, the points still robust). A purifier whose output depends on the batch
        warns here when that differs from what its config names. Default: nothing."""

    def with_grad_mode(self, mode: GradMode) -> "Purifier":
        """This purifier as an attack in gradient mode ``mode`` differentiates it, sharing weights and buffers.

        Default: unchanged (autograd through :meth:`forward` is the purifier's gradient in every mode).
        """
        return self

    def generator_or_fallback(self, generator: torch.Generator | None, device: torch.device) -> torch.Generator:
        """``generator`` when given (the classifier's); otherwise a private stream seeded with ``self.seed`` (for
        direct calls), never the global RNG that AutoAttack reseeds."""
        if generator is not None:
            return generator
        fallback = getattr(self, "_fallback", None)
        if fallback is None or fallback.device != device:
            fallback = torch.Generator(device=device).manual_seed(int(getattr(self, "seed", 0)))
            self._fallback = fallback
        return fallback

    def describe(self) -> dict[str, Any]:
        """Properties logged with every run."""
        return {"class": type(self).__name__, "space": self.space.value, "stochastic": self.stochastic,
                "batch_coupled": self.batch_coupled, "differentiable": self.differentiable}


def shallow_copy_with(purifier: Purifier, **attributes: Any) -> Purifier:
    """A shallow copy of ``purifier`` (same weights, buffers and submodules) with ``attributes`` replaced; the
    implementation of :meth:`Purifier.with_grad_mode` for purifiers whose mode is a plain attribute."""
    clone = copy.copy(purifier)
    clone.__dict__.update(attributes)
    return clone


class BatchSizeWarning:
    """Warns once when a batch-coupled purifier is evaluated at another batch size than the one its config names.

    Composing such a config is refused already (``clipure_lit.config.validate.check_batch_coupling``: the data
    batch, the attack batch and a partial last batch), so this is the backstop for what the config cannot tell: the
    number of processes of ``trainer.devices=-1`` / ``auto``, whose distributed sampler deals the samples out and can
    leave one process a partial batch, and a classifier built from Python without a config.

    ``key`` is the config prefix of the purifier (``purifier.clipure_cos``), so the message names the keys to fix.
    It is checked on the evaluation's data batches only (:meth:`Purifier.check_evaluation_batch`): the masking checks
    classify single samples and AutoAttack passes only the points still robust, which is part of the evaluation
    protocol (docs/evaluation.md, "Batch-coupled purifiers"), not a setting to fix.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.warned = False

    def check(self, name: str, batch: int, expected: int | None, coupled: bool, data_batch: int | None = None) -> None:
        """Warn (once) when ``batch`` differs from ``expected`` for a ``coupled`` purifier. A ``batch`` smaller than
        ``data_batch == expected`` is the last, partial batch of a sample count that ``expected`` does not divide,
        and the message says so."""
        if not coupled or expected is None or batch == expected or self.warned:
            return
        self.warned = True
        if data_batch is not None and data_batch == expected and batch < data_batch:
            log.warning("%s normalises its step over the whole batch (%s.norm_scope=batch), so its output depends on the "
                        "batch: the last batch holds %d sample(s), because the number of samples is not a multiple of "
                        "%s.batch_size=%d, and those are purified at batch size %d. Fix: choose data.num_samples as a "
                        "multiple of %d, or %s.norm_scope=sample. (Warned once.)",
                        name, self.key, batch, self.key, expected, batch, expected, self.key)
            return
        log.warning("%s normalises its step over the whole batch (%s.norm_scope=batch), so its output depends on the "
                    "batch: it is evaluated at batch size %d but %s.batch_size=%d. Results are not comparable to a run at "
                    "%d. Fix: set data.batch_size=%d, or %s.norm_scope=sample. (Warned once.)",
                    name, self.key, batch, self.key, expected, expected, expected, self.key)


class IdentityPurifier(Purifier):
    """``x -> x``: the undefended baseline, valid in both spaces."""

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return x


@dataclass
class BuildContext:
    """What a purifier factory may use besides its own config section: the resolved run config, the loaded CLIP
    pieces and the purifier seed (``purifier.seed``)."""

    cfg: Any  # the run config (DictConfig)
    backbone: Any  # ClipBackbone
    tokenizer: Callable
    text_cache: Any  # TextEmbeddingCache
    classnames: list[str]

    @property
    def seed(self) -> int:
        return int(self.cfg.purifier.seed)
