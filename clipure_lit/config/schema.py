"""The run config: each package's section dataclass, composed here, with the defaults in code.

The YAML files in ``conf/<group>/`` only override these defaults, and ``key=value`` arguments override both.
OmegaConf checks keys and types against these classes; closed vocabularies are ``Enum``s so that a bad value
is rejected with the list of valid ones. Each section is declared next to what it configures (``clip.config``,
``data.config``, ``attacks.config``, ``loggers``); the purifier section holds the run-level choices and, for each
chosen purifier, the config dataclass its module registered (:func:`purifier_schema`). Open vocabularies (model
names, datasets, purifiers, template sets) are checked against their registries by ``clipure_lit.config.validate``
before anything is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, List, Optional

from clipure_lit.attacks.config import AttackCfg
from clipure_lit.clip.config import ClipCfg, PromptsCfg
from clipure_lit.data.config import DataCfg
from clipure_lit.loggers import LoggerCfg
from clipure_lit.purifiers.registry import config_sections
from clipure_lit.utils.console import LogLevel


@dataclass
class PurifierChoiceCfg:
    """The run-level purifier keys; each chosen purifier adds its own section ``purifier.<name>.*``."""

    # Latent purifier (acts on unit image embeddings [B, D]): identity, clipure_cos, clipure_diff.
    latent: str = "identity"
    # Pixel purifier (acts on images [B, 3, H, W] in [0, 1]): identity, diffpure, clipure_pixel, jpeg, bit_depth,
    # gaussian_noise (docs/pixel_purifiers.md).
    pixel: str = "identity"
    # Seed of the purifiers' own torch.Generator (stochastic purifiers never use the global RNG).
    seed: int = 0


def purifier_schema(names: Iterable[str] | None = None) -> type:
    """A dataclass with the :class:`PurifierChoiceCfg` keys plus one section per purifier in ``names`` (all
    registered purifiers when None) that declares keys. Used to compose and type-check the purifier section."""
    sections = config_sections(None if names is None else list(dict.fromkeys(names)))
    fields = [(name, cls, field(default_factory=cls)) for name, cls in sections.items()]
    return dataclasses.make_dataclass("PurifierCfg", fields, bases=(PurifierChoiceCfg,))


@dataclass
class TrainerCfg:
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    # Gradient attacks and optimisation-based purifiers need autograd in the test loop.
    inference_mode: bool = False
    limit_test_batches: Optional[Any] = None
    enable_progress_bar: bool = True
    # Threads per process for CPU runs (null: torch's default).
    num_threads: Optional[int] = None
    # In a SLURM job of its own: after a stop by SIGTERM or SIGUSR1 (the batch in flight finished), requeue the job
    # (scontrol requeue); its next start resumes. sweep.py's SLURM jobs are requeued by submitit instead.
    requeue_on_preempt: bool = False


@dataclass
class SuiteEntry:
    # Row label and run-folder name (default: ``data``).
    name: str = ""
    # A `data` group choice (conf/data/<data>.yaml) and the template set of its zero-shot head; empty: keep the
    # run's data and prompts (a suite of defences on the same samples).
    data: str = ""
    templates: str = ""
    # Extra arguments for this entry only (e.g. its data.root, a purifier=... choice, attack settings).
    overrides: List[str] = field(default_factory=list)


class BlankAnchorSource(str, Enum):
    """CLIPure's blank anchor in a suite: each dataset's own templates with the class removed, the 80 OpenAI
    ImageNet templates, or the single ``prompts.blank_prompt``."""

    dataset = "dataset"
    imagenet80 = "imagenet80"
    custom = "custom"


class SuiteCompare(str, Enum):
    datasets = "datasets"
    defences = "defences"


@dataclass
class SuiteCfg:
    # Name of the suite (empty: a single evaluation, no suite).
    name: str = ""
    datasets: List[SuiteEntry] = field(default_factory=list)
    # Restrict the run to these entries of the suite (names or data choices; empty: all).
    only: List[str] = field(default_factory=list)
    blank: BlankAnchorSource = BlankAnchorSource.dataset
    # ``datasets``: one row per dataset with the cross-dataset average; ``defences``: entries are defences on the
    # same samples, printed attack by attack with a sentence on what each row means.
    compare: SuiteCompare = SuiteCompare.datasets
    # A suite whose datasets were all skipped (missing offline) is an error (exit status 2) unless this is true.
    allow_skipped: bool = False


@dataclass
class RunCfg:
    # Name of the run; the run folder is ``<output_root>/<name>/<timestamp>`` unless ``run_dir`` is set.
    name: str = "eval"
    output_root: str = "runs"
    run_dir: Optional[str] = None
    # Continue an interrupted run in ``run_dir`` (same config): finished samples are not evaluated again.
    resume: bool = False
    seed: int = 0
    # Console output: info (quiet: this project's messages, other libraries' warnings) or debug (everything, as
    # --verbose). <run folder>/log.txt always holds the full log.
    log_level: LogLevel = LogLevel.info
    clip: ClipCfg = field(default_factory=ClipCfg)
    data: DataCfg = field(default_factory=DataCfg)
    prompts: PromptsCfg = field(default_factory=PromptsCfg)
    # The composed purifier section (run-level keys + the chosen purifiers' sections, see purifier_schema); typed
    # while composing, then stored without a dynamic class so the config pickles into DDP-spawned processes.
    purifier: Any = field(default_factory=lambda: dataclasses.asdict(PurifierChoiceCfg()),
                          metadata={"help_schema": purifier_schema})
    attack: AttackCfg = field(default_factory=AttackCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    logger: LoggerCfg = field(default_factory=LoggerCfg)
    suite: SuiteCfg = field(default_factory=SuiteCfg)

