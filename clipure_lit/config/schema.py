"""Dataclass schemas for every config section, with the defaults in code.

The YAML files in ``conf/<group>/`` only override these defaults, and ``key=value`` arguments override both.
OmegaConf checks keys and types against these classes; closed vocabularies are ``Enum``s so that a bad value
is rejected with the list of valid ones. Open vocabularies (model names, datasets, purifiers, template sets)
are checked against their registries by ``clipure_lit.config.validate`` before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional


class Precision(str, Enum):
    """Numerical precision of the CLIP encoders.

    ``fp32``: everything in float32 (the default, and what attacks should use).
    ``mixed_fp16``: the released CLIPure mode: weights rounded to fp16, encoder matmul weights kept in fp16,
    LayerNorms and embeddings in fp32, images fed in fp16 (see docs/evaluation.md: it underflows gradients).
    """

    fp32 = "fp32"
    mixed_fp16 = "mixed_fp16"


class ResizeMode(str, Enum):
    """Interpolation used inside the model to go from attack resolution to the encoder's input size."""

    bicubic = "bicubic"
    bilinear = "bilinear"
    nearest = "nearest"


class SubsetMode(str, Enum):
    """How ``data.num_samples`` images are chosen: the first N in the dataset's canonical order, or N drawn
    with ``data.subset_seed`` (class-balanced when the dataset exposes its labels)."""

    first = "first"
    random = "random"


class GradMode(str, Enum):
    """Gradient semantics of an optimisation-based purifier.

    ``as_released``: the inner gradient is computed without ``create_graph`` (as in the official code), so each
    step's direction is a constant for autograd; attacks then see a near-zero input gradient.
    ``full``: ``create_graph=True``, the exact white-box gradient through every purification step.
    """

    as_released = "as_released"
    full = "full"


class NormScope(str, Enum):
    """Scope of the gradient normalisation in the ascent step: ``batch`` (released: Frobenius norm over the
    whole batch, so samples are coupled) or ``sample`` (per-sample L2 norm)."""

    batch = "batch"
    sample = "sample"


class LoggerName(str, Enum):
    csv = "csv"
    wandb = "wandb"
    none = "none"


class WandbMode(str, Enum):
    """``auto``: online when W&B credentials are configured, offline otherwise (never blocks on the network)."""

    auto = "auto"
    online = "online"
    offline = "offline"


@dataclass
class ClipCfg:
    # open_clip architecture name (``ViT-B-32``, ``ViT-L-14``, ...) or an ``hf-hub:org/repo`` id.
    arch: str = "ViT-B-32"
    # open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...), a local checkpoint path, or null for
    # random initialisation (tests).
    pretrained: Optional[str] = "openai"
    # Optional path to an open_clip model-config JSON; it is registered under its file stem, which must equal
    # ``arch``. Used for tiny test models and custom architectures.
    model_config: Optional[str] = None
    precision: Precision = Precision.fp32
    resize_mode: ResizeMode = ResizeMode.bicubic
    # Where open_clip caches downloaded weights (null: its default).
    cache_dir: Optional[str] = None
    # Override the logit scale (null: exp(model.logit_scale), which is 100 for OpenAI weights).
    logit_scale: Optional[float] = None
    # Seed for random initialisation when ``pretrained`` is null, so random test models are reproducible.
    init_seed: int = 0


@dataclass
class DataCfg:
    # Dataset registry name: cifar10, cifar100, imagenet, image_folder, imagenet_sample.
    name: str = "cifar10"
    # Where the dataset lives (a torchvision root for CIFAR, the val/ folder for ImageNet, a class-per-folder tree).
    root: str = "data/cifar10"
    # Allow torchvision to download CIFAR-10/100 into ``root`` when it is missing.
    download: bool = True
    split: str = "test"
    # Number of evaluated samples (null: all of them).
    num_samples: Optional[int] = 1000
    subset: SubsetMode = SubsetMode.first
    subset_seed: int = 0
    # A text file with one sample id per line; overrides ``num_samples``/``subset``.
    ids_file: Optional[str] = None
    # Attack resolution: images are resized (shorter side) and centre-cropped to this size before the attack.
    # null: the dataset's native size (32 for CIFAR); ImageNet-style datasets default to 224.
    image_size: Optional[int] = None
    # Class names: a set name (``cifar10``, ``imagenet1k``, any CLIP_benchmark dataset), a JSON file
    # (``path.json`` or ``path.json:key``), or null for the dataset's own.
    classnames: Optional[str] = None
    # For data.name=clip_benchmark: the CLIP_benchmark dataset name (``cars``, ``pets``, ``imagenet-r``,
    # ``wds/vtab/pcam``, ...); its builder loads the data from ``root``.
    benchmark: Optional[str] = None
    batch_size: int = 32
    num_workers: int = 0


@dataclass
class PromptsCfg:
    # Templates of the zero-shot head: ``openai_imagenet_80``, ``simple_imagenet_7``, any CLIP_benchmark dataset
    # name (``cifar10``, ``cars``, ...), or a JSON file in CLIP_benchmark's format (``path.json[:key]``).
    class_templates: str = "cifar10"
    # Templates of the blank anchor used by CLIPure: formatted with an empty class name. Released: the 80
    # OpenAI ImageNet templates.
    blank_templates: str = "openai_imagenet_80"
    # A single custom blank prompt (e.g. "a photo of a ."); when set it replaces ``blank_templates``.
    blank_prompt: Optional[str] = None
    # Directory of the on-disk cache of text embeddings (keyed by model, templates and class names).
    cache_dir: str = ".cache/clipure_lit/text"


@dataclass
class DiffPriorCfg:
    """Architecture and weights of the dalle2_pytorch DiffusionPrior used by CLIPure-Diff.

    Defaults are the released LAION ViT-L/14 prior (dim 768, depth 24, 32 heads, 1000 steps, cosine, x0).
    """

    dim: int = 768
    depth: int = 24
    heads: int = 32
    dim_head: int = 64
    ff_mult: int = 4
    normformer: bool = True
    # Dropout rates are architecture fields only: the prior always runs in eval mode.
    attn_dropout: float = 0.05
    ff_dropout: float = 0.05
    # Number of (null) text-token slots of the network (dalle2 default 256, as released); 1 for small test priors.
    max_text_len: int = 256
    timesteps: int = 1000
    beta_schedule: str = "cosine"
    predict_x_start: bool = True
    # Scale applied to unit embeddings before diffusion (null: sqrt(dim), as the prior was trained).
    image_embed_scale: Optional[float] = None
    # Path to the prior checkpoint (state dict, or a dict with ``ema_model``/``model``). null: random weights
    # (only for tests).
    checkpoint: Optional[str] = None


@dataclass
class DiffCfg:
    # Timestep range of the denoising loss (released: uniform in [900, 999], one t per batch).
    t_min: int = 900
    t_max: int = 999
    t_per_sample: bool = False
    # (t, noise) draws averaged per step (released: 1).
    n_noise: int = 1
    prior: DiffPriorCfg = field(default_factory=DiffPriorCfg)


class DiffusionSampler(str, Enum):
    """Reverse process of DiffPure: ``ddpm`` (ancestral, stochastic) or ``ddim`` (deterministic when
    ``ddim_eta=0``; the forward diffusion to t* is random in both)."""

    ddpm = "ddpm"
    ddim = "ddim"


@dataclass
class DiffPureUNetCfg:
    """Architecture of a randomly initialised ``diffusers.UNet2DModel``, used when ``purifier.diffpure.model`` is
    null (tests and smoke runs only: a random UNet does not denoise). Defaults: a 0.7 M-parameter 32x32 UNet."""

    sample_size: int = 32
    block_out_channels: List[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    down_block_types: List[str] = field(default_factory=lambda: ["DownBlock2D", "AttnDownBlock2D"])
    up_block_types: List[str] = field(default_factory=lambda: ["AttnUpBlock2D", "UpBlock2D"])
    # GroupNorm groups; must divide every entry of block_out_channels.
    norm_num_groups: int = 32
    # Seed of the random initialisation (the global RNG is neither used nor disturbed).
    init_seed: int = 0


@dataclass
class DiffPureCfg:
    """Pixel-space diffusion purification (Nie et al. 2022): diffuse the image to t*, denoise back to 0."""

    # A diffusers checkpoint: a hub id (``google/ddpm-cifar10-32``) or a local folder written by
    # ``save_pretrained``. null: a random UNet built from ``unet`` (tests only; a warning is logged).
    model: Optional[str] = None
    # Folder of the UNet inside ``model`` (null: the root if it holds config.json, else ``unet/``).
    subfolder: Optional[str] = None
    # Hugging Face cache folder for hub ids (null: the hub's default).
    cache_dir: Optional[str] = None
    # Diffusion time t* as a fraction of the training schedule (DiffPure CIFAR-10: 0.1): the image is noised to
    # timestep round(t_star * T) - 1 and denoised to 0.
    t_star: float = 0.1
    # Reverse steps (null: one per noise level, round(t_star * T), DiffPure's full chain). Must divide
    # round(t_star * T): the chain visits every (round(t_star * T) / num_steps)-th timestep.
    num_steps: Optional[int] = None
    sampler: DiffusionSampler = DiffusionSampler.ddpm
    # DDIM noise weight (0: deterministic reverse process; 1: DDPM-like variance). Ignored by ddpm.
    ddim_eta: float = 0.0
    # Clamp the predicted x0 to [-1, 1] at every step (diffusers' default for sampling). false: no clamp, so
    # the attack gradient is not zeroed where the prediction saturates.
    clip_sample: bool = False
    # Take the noise schedule from the checkpoint's scheduler_config.json when it has one; otherwise (and for a
    # random UNet) the keys below define it.
    schedule_from_checkpoint: bool = True
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    # Interpolation between the attack resolution and the UNet's sample_size (used only when they differ).
    resize_mode: ResizeMode = ResizeMode.bilinear
    # Recompute each reverse step (UNet call + scheduler step) in the backward pass instead of storing its
    # activations: same gradient, memory per step reduced to one image tensor.
    gradient_checkpointing: bool = True
    unet: DiffPureUNetCfg = field(default_factory=DiffPureUNetCfg)


@dataclass
class ClipurePixelCfg:
    """CLIPure-Cos's objective ascended in pixel space: x <- proj(x + step_size * m), with m the normalised
    gradient of cos(f(x), t_blank) (same step rule and gradient modes as the latent loop)."""

    num_steps: int = 10
    # L2 length of one step in [0, 1] pixel units (per sample with norm_scope=sample; shared by the batch's
    # Frobenius norm with norm_scope=batch).
    step_size: float = 0.25
    momentum: float = 0.0
    grad_mode: GradMode = GradMode.full
    norm_scope: NormScope = NormScope.sample
    # Batch size a norm_scope=batch run is meant for (a warning is logged once when it differs). null: no check.
    batch_size: Optional[int] = None
    # L-infinity budget around the input, in units of 1/255 (null: only the [0, 1] box).
    eps: Optional[float] = 8.0
    # Record per-step cos(f(x), anchor) and the L-infinity distance moved in ``last_diagnostics``.
    diagnostics: bool = False
    # grad_mode=full: recompute each step (a CLIP forward + backward) in the attack's backward pass instead of
    # keeping its second-order graph. Same gradient; memory flat in num_steps.
    gradient_checkpointing: bool = True


@dataclass
class JpegCfg:
    # PIL JPEG quality, 1 (worst) .. 95 (PIL's useful maximum); 75 is the usual input-transform baseline.
    quality: int = 75


@dataclass
class BitDepthCfg:
    # Bits per colour channel kept (1..8): x -> round(x * (2^bits - 1)) / (2^bits - 1).
    bits: int = 5


@dataclass
class GaussianNoiseCfg:
    # Standard deviation of the additive noise in [0, 1] pixel units.
    sigma: float = 0.05
    # Clamp the noisy image back to [0, 1] (the purifier contract); false only for analysis.
    clamp: bool = True


@dataclass
class PurifierCfg:
    # Latent purifier (acts on unit image embeddings [B, D]): identity, clipure_cos, clipure_diff.
    latent: str = "identity"
    # Pixel purifier (acts on images [B, 3, H, W] in [0, 1]): identity, diffpure, clipure_pixel, jpeg, bit_depth,
    # gaussian_noise (docs/pixel_purifiers.md).
    pixel: str = "identity"
    # The ascent loop shared by CLIPure-Cos and CLIPure-Diff (released: 10 steps of size 30, no momentum).
    num_steps: int = 10
    step_size: float = 30.0
    momentum: float = 0.0
    grad_mode: GradMode = GradMode.as_released
    norm_scope: NormScope = NormScope.batch
    # Batch size a batch-coupled purifier is meant to run at (released: 2); a warning is logged once when a
    # norm_scope=batch purifier is evaluated at another batch size. null: no check.
    batch_size: Optional[int] = None
    # Record per-step cos(z, anchor), cos(z, z0) (and the Diff loss) in the purifier's ``last_diagnostics``.
    diagnostics: bool = False
    # grad_mode=full (or an attack's @full / @eot): recompute each ascent step in the backward pass instead of
    # keeping its graph. Same gradient; memory flat in num_steps (CLIPure-Diff's prior activations). CLIPure-Cos
    # ignores it: its steps keep only a few [B, D] tensors.
    gradient_checkpointing: bool = True
    # Seed of the purifier's own torch.Generator (stochastic purifiers never use the global RNG).
    seed: int = 0
    diff: DiffCfg = field(default_factory=DiffCfg)
    # Pixel purifiers (purifier.pixel=diffpure | clipure_pixel | jpeg | bit_depth | gaussian_noise).
    diffpure: DiffPureCfg = field(default_factory=DiffPureCfg)
    clipure_pixel: ClipurePixelCfg = field(default_factory=ClipurePixelCfg)
    jpeg: JpegCfg = field(default_factory=JpegCfg)
    bit_depth: BitDepthCfg = field(default_factory=BitDepthCfg)
    gaussian_noise: GaussianNoiseCfg = field(default_factory=GaussianNoiseCfg)


class AttackNorm(str, Enum):
    """Threat model of the attacks: L-infinity or L2 ball around the [0, 1] image at attack resolution."""

    Linf = "Linf"
    L2 = "L2"


class AttackGradMode(str, Enum):
    """How gradient attacks differentiate through the purifiers (docs/evaluation.md, "Gradient modes").

    ``purifier``: the purifier's own configured ``purifier.grad_mode`` (attack the classifier as built).
    ``as_released`` / ``full``: override the purifier's gradient semantics for the attack only.
    ``bpda_identity``: straight-through; forward = purified, backward = gradient of the unpurified path.
    ``eot``: ``full`` gradients averaged over ``attack.eot_samples`` draws of the purifier's randomness.
    """

    purifier = "purifier"
    as_released = "as_released"
    full = "full"
    bpda_identity = "bpda_identity"
    eot = "eot"


class AutoAttackVersion(str, Enum):
    standard = "standard"
    plus = "plus"
    rand = "rand"
    custom = "custom"


class AttackPrecision(str, Enum):
    """Precision of the attacked path: ``fp32`` (a float32 copy of the backbone when it is not fp32 already)
    or ``model`` (attack the model in its configured precision; fp16 can underflow gradients to zero)."""

    fp32 = "fp32"
    model = "model"


@dataclass
class AttackEntryCfg:
    """One named attack (``attack.entries.<name>``). Unset (null) fields come from ``base`` (a preset name,
    see ``clipure_lit.attacks.presets``), then from the ``attack.*`` defaults."""

    base: Optional[str] = None
    # AutoAttack version; ``custom`` runs the sub-attacks listed in ``attacks``.
    version: Optional[AutoAttackVersion] = None
    # Sub-attacks for version=custom: apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square.
    attacks: Optional[List[str]] = None
    grad_mode: Optional[AttackGradMode] = None
    # Gradient samples averaged per APGD step (EOT); null: attack.eot_samples in grad_mode=eot, else 1.
    eot_samples: Optional[int] = None
    # APGD/FAB iterations, APGD-CE restarts, APGD-T/FAB-T target classes, Square queries.
    n_iter: Optional[int] = None
    n_restarts: Optional[int] = None
    n_target_classes: Optional[int] = None
    n_queries: Optional[int] = None
    # Craft the examples on another classifier and score them on the defended one: ``undefended`` (the same
    # CLIP and head, identity purifiers). null: attack the defended classifier itself.
    transfer_from: Optional[str] = None


@dataclass
class AttackCfg:
    # Attack entries to run in the test loop (empty: clean accuracy only): preset names (aa_clipure, aa_standard,
    # aa_plus, aa_rand, apgd_ce, square, transfer_clip) or keys of ``entries``, each optionally suffixed with
    # ``@<grad_mode>`` (e.g. aa_clipure@bpda_identity). Each is reported separately and in the worst case.
    run: List[str] = field(default_factory=list)
    norm: AttackNorm = AttackNorm.Linf
    # Radius. Linf: in units of 1/255 (4 means 4/255, as released); L2: the float radius. null: 4 (Linf), 0.5 (L2).
    eps: Optional[float] = None
    # Default gradient mode of every entry that does not set its own (or a ``@mode`` suffix).
    grad_mode: AttackGradMode = AttackGradMode.purifier
    # Gradient samples per APGD step in grad_mode=eot (AutoAttack's rand version uses 20).
    eot_samples: int = 20
    # Override the iterations (APGD, FAB) and Square queries of every entry (null: the presets' values).
    n_iter: Optional[int] = None
    n_queries: Optional[int] = None
    # AutoAttack seed (the caller's global RNG state is restored afterwards).
    seed: int = 0
    # Attack batch size inside a data batch (null: the whole data batch). 1 makes every result a per-sample
    # function, independent of data.batch_size, the number of processes and resumption.
    batch_size: Optional[int] = None
    precision: AttackPrecision = AttackPrecision.fp32
    # Save x_adv per batch under <run_dir>/adversarial/<attack>/.
    save_adversarial: bool = False
    # Gradient-masking checks on the first batch and at the end (docs/evaluation.md, "Flags").
    checks: bool = True
    # Named entries (presets can be extended or overridden here).
    entries: Dict[str, AttackEntryCfg] = field(default_factory=dict)


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


@dataclass
class LoggerCfg:
    name: LoggerName = LoggerName.csv
    project: str = "clipure_lit"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    mode: WandbMode = WandbMode.auto


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


@dataclass
class RunCfg:
    # Name of the run; the run folder is ``<output_root>/<name>/<timestamp>`` unless ``run_dir`` is set.
    name: str = "eval"
    output_root: str = "runs"
    run_dir: Optional[str] = None
    # Continue an interrupted run in ``run_dir`` (same config): finished samples are not evaluated again.
    resume: bool = False
    seed: int = 0
    clip: ClipCfg = field(default_factory=ClipCfg)
    data: DataCfg = field(default_factory=DataCfg)
    prompts: PromptsCfg = field(default_factory=PromptsCfg)
    purifier: PurifierCfg = field(default_factory=PurifierCfg)
    attack: AttackCfg = field(default_factory=AttackCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    logger: LoggerCfg = field(default_factory=LoggerCfg)
    suite: SuiteCfg = field(default_factory=SuiteCfg)
