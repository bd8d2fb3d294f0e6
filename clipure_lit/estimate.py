"""What a run will cost, before it is launched (``eval.py <overrides> --estimate``): seconds per image, hours,
memory; no run folder, no logger, nothing written beside the text-embedding cache.

The config is composed with every check of a run except the local-file ones (:func:`validate_for_estimate`): the
data need not exist (synthetic images of the dataset's size, with its known image count or ``data.num_samples``),
and weights that are absent (a hub tag offline, a missing local checkpoint or prior) are replaced by random weights
at the same architecture, which the report says: it estimates cost, not accuracy.

The model of cost: an attack makes a known number of passes through the attacked classifier
(:func:`clipure_lit.attacks.budget.attack_budget`, purification included, EOT draws included), and one pass costs
what a few timed passes at the attack's batch size cost after a warm-up pass. Per image and attack::

    s_upper    = (fixed_fwd * t_fwd + grad * t_grad + fwd * t_fwd) / attack_batch   (+ one clean pass if re-scored)
    s_expected = (fixed_fwd * t_fwd + grad * t_grad' + fwd * t_fwd') / attack_batch

``s_upper`` assumes every image is attacked with the whole budget; AutoAttack attacks only the images still
classified correctly, as one smaller batch: ``t_grad'`` / ``t_fwd'`` are the pass times timed at
``round(p * attack_batch)`` images, ``p`` the clean accuracy measured on the first images (when weights and images
are real; else ``p = 1``). ``s_expected`` is still an upper bound for the images it attacks (every attacked image
assumed to survive every restart and sub-attack). The test loop's total is
``N * (s_clean + sum over attacks of s_expected)`` plus the masking checks, timed once (they run on the first batch).
"""

from __future__ import annotations

import copy
import logging
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from clipure_lit.attacks.budget import attack_budget
from clipure_lit.attacks.checks import first_batch_checks
from clipure_lit.attacks.execute import ViewCache, needs_rescoring
from clipure_lit.attacks.presets import adapt_to_classes, resolve_attacks
from clipure_lit.clip.prompts import get_classnames
from clipure_lit.clip.weights import check_local_checkpoint, ensure_weights_available
from clipure_lit.config.suites import dataset_argv, entry_name, selected_entries
from clipure_lit.config.validate import check_accelerator_present, process_count, validate_config
from clipure_lit.errors import ConfigError, DataNotFoundError, WeightsUnavailableError
from clipure_lit.purifiers.registry import chosen_sections
from clipure_lit.utils.paths import find_path
from clipure_lit.utils.seed import seeded

log = logging.getLogger(__name__)

TIMED_PASSES = 3  # timed after one warm-up pass ...
MIN_TIMED_S = 1.0  # ... and repeated until this long: a small model's passes are too short to time alone
CLEAN_ACCURACY_IMAGES = 200  # images whose clean accuracy gives p (the fraction AutoAttack attacks)

# Datasets whose size and classes are known without their files: (images in the evaluated split, class-name set,
# image size at attack resolution).
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
KNOWN_DATASETS = {
    "cifar10": (10_000, CIFAR10_CLASSES, 32),  # torchvision's class order
    "imagenet": (5_000, "imagenet1k", 224),  # RobustBench's fixed list of the validation set (data/subsets)
}


def validate_for_estimate(cfg: DictConfig) -> None:
    """A run's composition checks (:func:`~clipure_lit.config.validate.validate_config`) without the local-file
    ones: the estimate stands in for missing data and weights, and says so."""
    validate_config(cfg, files=False)


@dataclass
class AttackCost:
    """One attack's measured pass costs and extrapolated cost (module docstring for the formulas)."""

    name: str
    attack_batch: int
    grad_pass_s: float
    forward_pass_s: float
    fixed_forward: int
    grad_passes: int
    forward_passes: int
    parts: dict
    rescored: bool
    upper_s_per_image: float
    expected_s_per_image: float
    peak_memory_bytes: int


@dataclass
class RunEstimate:
    name: str
    device: str
    threads: int
    batch_size: int
    num_images: int
    num_images_source: str
    images: str
    weights: list[str]
    clean_accuracy: float | None
    clean_accuracy_images: int
    clean_s_per_image: float
    checks_s: float
    attacks: list[AttackCost]
    setup_s: float
    processes: int | None
    num_shards: int | None
    peak_memory_bytes: int
    memory_kind: str
    notes: list[str] = field(default_factory=list)

    @property
    def expected_s_per_image(self) -> float:
        return self.clean_s_per_image + sum(a.expected_s_per_image for a in self.attacks)

    @property
    def upper_s_per_image(self) -> float:
        return self.clean_s_per_image + sum(a.upper_s_per_image for a in self.attacks)

    @property
    def test_loop_s(self) -> float:
        """Expected wall clock of the test loop in one process (what ``timings.json`` calls ``test_loop``)."""
        return self.num_images * self.expected_s_per_image + self.checks_s

    @property
    def upper_test_loop_s(self) -> float:
        return self.num_images * self.upper_s_per_image + self.checks_s

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(expected_s_per_image=self.expected_s_per_image, upper_s_per_image=self.upper_s_per_image,
                 test_loop_s=self.test_loop_s, upper_test_loop_s=self.upper_test_loop_s)
        return d


def estimate(cfg: DictConfig, argv: Sequence[str], compose: Callable[[list[str]], DictConfig]) -> dict:
    """The estimate of the run ``cfg`` (composed from ``argv``), or of every entry of its suite, each entry composed
    by ``compose`` as the suite composes it. Returns ``{"runs": [RunEstimate.as_dict(), ...], "test_loop_s": ...,
    "upper_test_loop_s": ...}``; nothing is written."""
    if cfg.suite.name:
        runs = []
        for entry in selected_entries(cfg):
            argv_entry = dataset_argv(cfg, argv, entry, Path(cfg.output_root) / "suite-entry")  # never created
            log.info("estimating %s", entry_name(entry))
            runs.append(estimate_run(compose(argv_entry)))
    else:
        runs = [estimate_run(cfg)]
    return {"runs": [r.as_dict() for r in runs], "test_loop_s": sum(r.test_loop_s for r in runs),
            "upper_test_loop_s": sum(r.upper_test_loop_s for r in runs)}


def run_device(cfg: DictConfig) -> torch.device:
    """The device the run's Trainer would put the model on (``trainer.accelerator``; ``auto`` takes a GPU if any)."""
    accelerator = str(cfg.trainer.accelerator).lower()
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda") if cuda else torch.device("cpu")


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = TIMED_PASSES,
              min_s: float = MIN_TIMED_S) -> float:
    """Seconds per call of ``fn``: the mean over at least ``repeats`` calls and at least ``min_s`` seconds, after
    one untimed warm-up call."""
    fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls < repeats or time.perf_counter() - start < min_s:
        fn()
        _sync(device)
        calls += 1
    return (time.perf_counter() - start) / calls


def _stand_in_weights(cfg: DictConfig) -> tuple[DictConfig, list[str]]:
    """``cfg`` with every absent weight file replaced by random initialisation, and one line per replacement."""
    cfg = copy.deepcopy(cfg)
    notes = []
    try:
        check_local_checkpoint(cfg.clip.arch, cfg.clip.pretrained)
    except DataNotFoundError:
        notes.append(f"CLIP: random weights at clip.arch={cfg.clip.arch} (the local checkpoint "
                     f"clip.pretrained='{cfg.clip.pretrained}' does not exist here)")
        cfg.clip.pretrained = None
    for where, section in chosen_sections(cfg).items():
        for key, path in section.local_files(where).items():
            if find_path(path) is None:
                notes.append(f"{where}: random weights ({key}='{path}' does not exist here)")
                OmegaConf.update(cfg, key, None, merge=False)
    try:
        ensure_weights_available(cfg.clip.arch, cfg.clip.pretrained, cfg.clip.cache_dir)
    except WeightsUnavailableError as exc:
        if str(cfg.clip.arch).startswith("hf-hub:"):
            raise ConfigError(
                f"clip.arch={cfg.clip.arch}: the architecture of a hub model is defined by its open_clip_config.json, "
                f"which is not cached here and cannot be downloaded, so not even random weights can be built ({exc}) "
                f"Fix: run the estimate where the hub is reachable (or the model is cached), or estimate the same "
                f"architecture by name: clip.arch=<its open_clip name, e.g. ViT-L-14> clip.pretrained=null.") from None
        notes.append(f"CLIP: random weights at clip.arch={cfg.clip.arch} (clip.pretrained='{cfg.clip.pretrained}' is "
                     "neither cached nor downloadable here)")
        cfg.clip.pretrained = None
    return cfg, notes


@dataclass
class _Images:
    first: torch.Tensor  # [B, 3, H, W] in [0, 1]
    labels: torch.Tensor  # [B]
    batches: list  # up to CLEAN_ACCURACY_IMAGES images as (x, y) batches (real data only)
    classnames: list[str]
    count: int
    count_source: str
    description: str
    real: bool


def _images(cfg: DictConfig, seed: int) -> _Images:
    """The first batch (and a few more for clean accuracy) of the configured data, or synthetic images of the
    dataset's size and class count when the data is not on this machine."""
    from clipure_lit.data.datamodule import ZeroShotDataModule  # heavy: Lightning (~4.5 s)

    batch = int(cfg.data.batch_size)
    try:
        datamodule = ZeroShotDataModule(cfg.data)
        datamodule.setup("test")
    except DataNotFoundError as exc:
        return _synthetic(cfg, seed, str(exc).split(". ")[0])
    batches, seen = [], 0
    for x, y, _ids in datamodule.test_dataloader():
        batches.append((x, y))
        seen += int(y.numel())
        if seen >= CLEAN_ACCURACY_IMAGES:
            break
    x, y = batches[0]
    # every shard's images (the whole evaluation): the per-shard time divides it by data.num_shards
    return _Images(x, y, batches, datamodule.classnames, len(datamodule.selected_ids),
                   "data.num_samples" if cfg.data.num_samples else f"the size of {cfg.data.name}",
                   f"real images of {cfg.data.name} (batch of {batch})", True)


def _synthetic(cfg: DictConfig, seed: int, why: str) -> _Images:
    known = KNOWN_DATASETS.get(str(cfg.data.name))
    names = cfg.data.classnames or (known[1] if known else None)
    size = cfg.data.image_size or (known[2] if known else None)
    if names is None or size is None or (cfg.data.num_samples is None and known is None):
        raise ConfigError(
            f"The data of this run is not on this machine ({why}) and data.name={cfg.data.name} has no known size, "
            f"class names or image size to stand in for it. Fix: set data.num_samples, data.classnames and "
            f"data.image_size for the estimate, or run it where the data is.")
    classnames = list(names) if isinstance(names, list) else get_classnames(str(names))
    count = int(cfg.data.num_samples) if cfg.data.num_samples else known[0]
    source = "data.num_samples" if cfg.data.num_samples else f"the known size of {cfg.data.name}"
    generator = torch.Generator().manual_seed(seed)
    batch = int(cfg.data.batch_size)
    x = torch.rand(batch, 3, int(size), int(size), generator=generator)  # [B, 3, S, S] in [0, 1]
    y = torch.arange(batch) % len(classnames)  # [B]
    return _Images(x, y, [], classnames, count, source,
                   f"synthetic images {int(size)}x{int(size)} ({why})", False)


def estimate_run(cfg: DictConfig) -> RunEstimate:
    """Build the run's models (random weights where absent), time the clean pass, each attack's passes and the
    masking checks on one batch, and extrapolate (module docstring)."""
    from clipure_lit import evaluation  # heavy: Lightning (~4.5 s), which --help and --cfg must not pay for

    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    check_accelerator_present(cfg)
    device = run_device(cfg)
    torch.manual_seed(int(cfg.seed))
    rss_before = _peak_rss_bytes()
    start = time.perf_counter()
    images = _images(cfg, int(cfg.seed))
    built_cfg, weight_notes = _stand_in_weights(cfg)
    classifier = evaluation.build_classifier(built_cfg, images.classnames).to(device).eval()
    setup_s = time.perf_counter() - start
    n_classes = len(images.classnames)
    x, y = images.first.to(device), images.labels.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def clean_pass(xb=x):
        with torch.no_grad(), seeded(classifier, int(cfg.purifier.seed)):
            return classifier(xb)

    clean_s = time_call(clean_pass, device) / x.shape[0]
    clean_accuracy, counted = None, 0
    if images.real and not weight_notes:  # p: the fraction of images AutoAttack attacks
        correct = 0
        for xb, yb in images.batches:
            correct += int((clean_pass(xb.to(device)).argmax(-1).cpu() == yb).sum())
            counted += int(yb.numel())
        clean_accuracy = correct / counted
    attacked_fraction = 1.0 if clean_accuracy is None else clean_accuracy

    specs = [adapt_to_classes(s, n_classes) for s in resolve_attacks(cfg.attack)]
    views = ViewCache(classifier)
    costs = [_attack_cost(spec, classifier, views, x, y, n_classes, clean_s, attacked_fraction, device, rss_before)
             for spec in specs]
    checks_s = 0.0
    if specs and cfg.attack.checks:
        begin = time.perf_counter()
        first_batch_checks(classifier, views, specs, x.detach().float(), y)
        _sync(device)
        checks_s = time.perf_counter() - begin
    peak = _memory(device, rss_before)
    shards = OmegaConf.select(cfg, "data.num_shards", default=None)  # eval.py --shards N runs N of these
    return RunEstimate(
        name=str(cfg.name), device=str(device), threads=torch.get_num_threads(), batch_size=int(x.shape[0]),
        num_images=images.count, num_images_source=images.count_source, images=images.description,
        weights=weight_notes, clean_accuracy=clean_accuracy, clean_accuracy_images=counted,
        clean_s_per_image=clean_s, checks_s=checks_s, attacks=costs, setup_s=setup_s,
        processes=process_count(cfg.trainer), num_shards=int(shards) if shards and int(shards) > 1 else None, peak_memory_bytes=peak,
        memory_kind="torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS growth of the process")


def _memory(device: torch.device, rss_before: int) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return max(0, _peak_rss_bytes() - rss_before)


def _attack_cost(spec, classifier, views: ViewCache, x: torch.Tensor, y: torch.Tensor, n_classes: int, clean_s: float,
                 attacked_fraction: float, device: torch.device, rss_before: int) -> AttackCost:
    """Time one forward+backward and one forward pass of ``spec``'s attacked view at its batch size, and
    extrapolate with its pass budget."""
    attacked = views.attacked(spec)
    batch = min(int(spec.batch_size or x.shape[0]), int(x.shape[0]))
    budget = attack_budget(spec, n_classes)

    def pass_times(b: int) -> tuple[float, float]:
        """Seconds of one forward+backward and one forward pass of ``b`` images."""
        xa, ya = x[:b].detach().float(), y[:b]  # [b, 3, H, W], [b]

        def grad_pass():
            xx = xa.clone().requires_grad_(True)
            with torch.enable_grad(), seeded(attacked, int(spec.seed)):
                loss = torch.nn.functional.cross_entropy(attacked(xx).float(), ya)  # [b, K] logits -> scalar
                return torch.autograd.grad(loss, xx)[0]

        def forward_pass():
            with torch.no_grad(), seeded(attacked, int(spec.seed)):
                return attacked(xa)

        return (time_call(grad_pass, device) if budget.grad else 0.0), time_call(forward_pass, device)

    grad_s, forward_s = pass_times(batch)
    fixed = budget.fixed_forward * forward_s
    work = budget.grad * grad_s + budget.forward * forward_s
    # AutoAttack attacks the clean-correct images of a batch as one smaller batch, whose passes cost more per image
    # (a pass has a fixed part): timed at that size rather than scaled.
    attacked_batch = max(1, round(attacked_fraction * batch))
    grad_k, forward_k = pass_times(attacked_batch) if attacked_batch < batch else (grad_s, forward_s)
    expected_work = 0.0 if attacked_fraction == 0 else budget.grad * grad_k + budget.forward * forward_k
    rescored = needs_rescoring(spec, attacked, classifier)
    extra = clean_s if rescored else 0.0
    return AttackCost(
        name=spec.name, attack_batch=batch, grad_pass_s=grad_s, forward_pass_s=forward_s,
        fixed_forward=budget.fixed_forward, grad_passes=budget.grad, forward_passes=budget.forward,
        parts={k: list(v) for k, v in budget.parts.items()}, rescored=rescored,
        upper_s_per_image=(fixed + work) / batch + extra,
        expected_s_per_image=(fixed + expected_work) / batch + extra,
        peak_memory_bytes=_memory(device, rss_before))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def format_run(r: dict) -> str:
    """The report of one run's estimate (:meth:`RunEstimate.as_dict`)."""
    lines = [f"Cost estimate of run '{r['name']}' on {r['device']} ({r['threads']} threads), data batch {r['batch_size']}; "
             f"each pass timed after a warm-up ({TIMED_PASSES} times, at least {MIN_TIMED_S:g} s)."]
    lines.append(f"  images: {r['num_images']} ({r['num_images_source']}); timed on {r['images']}")
    for note in r["weights"]:
        lines.append(f"  weights: {note}: the estimate is of cost, not accuracy")
    if r["clean_accuracy"] is None:
        lines.append("  attacked fraction: 1 (clean accuracy not measured: random weights or synthetic images), so "
                     "'expected' equals the upper bound")
    else:
        lines.append(f"  attacked fraction: clean accuracy {r['clean_accuracy']:.1%} on the first "
                     f"{r['clean_accuracy_images']} images (AutoAttack attacks only clean-correct images)")
    lines.append(f"  {'part':<34} {'s/pass grad|fwd':>17} {'passes grad|fwd':>17} {'s/image exp|upper':>19} "
                 f"{'time exp':>10} {'peak mem':>9}")
    n = r["num_images"]
    lines.append(f"  {'clean pass':<34} {'':>17} {'':>17} {r['clean_s_per_image']:>19.4f} "
                 f"{_duration(n * r['clean_s_per_image']):>10} {'':>9}")
    for a in r["attacks"]:
        passes = f"{a['grad_passes']}|{a['forward_passes'] + a['fixed_forward']}"
        per_pass = f"{a['grad_pass_s']:.3f}|{a['forward_pass_s']:.3f}"
        per_image = f"{a['expected_s_per_image']:.3f}|{a['upper_s_per_image']:.3f}"
        lines.append(f"  {a['name'] + ' (batch ' + str(a['attack_batch']) + ')':<34} {per_pass:>17} {passes:>17} "
                     f"{per_image:>19} {_duration(n * a['expected_s_per_image']):>10} {_mib(a['peak_memory_bytes']):>9}")
    if r["checks_s"]:
        lines.append(f"  {'masking checks (first batch, once)':<34} {'':>17} {'':>17} {'':>19} "
                     f"{_duration(r['checks_s']):>10}")
    lines.append(f"  test loop: {_duration(r['test_loop_s'])} expected, {_duration(r['upper_test_loop_s'])} at most "
                 f"({r['expected_s_per_image']:.3f} | {r['upper_s_per_image']:.3f} s per image); setup measured here "
                 f"{_duration(r['setup_s'])}; peak memory {_mib(r['peak_memory_bytes'])} ({r['memory_kind']})")
    if r["processes"] and r["processes"] > 1:
        lines.append(f"  with {r['processes']} processes (trainer.devices x num_nodes): about "
                     f"{_duration(r['test_loop_s'] / r['processes'])} wall clock")
    if r["num_shards"]:
        lines.append(f"  per shard (data.num_shards={r['num_shards']}): {_duration(r['test_loop_s'] / r['num_shards'])} "
                     f"expected, {_duration(r['upper_test_loop_s'] / r['num_shards'])} at most")
    return "\n".join(lines)


def format_estimate(result: dict) -> str:
    """What ``eval.py --estimate`` prints: each run's report, the total, and what the bound means."""
    parts = [format_run(r) for r in result["runs"]]
    if len(result["runs"]) > 1:
        parts.append(f"All {len(result['runs'])} runs: {_duration(result['test_loop_s'])} expected, "
                     f"{_duration(result['upper_test_loop_s'])} at most.")
    parts.append("Expected: every attacked image (the clean-correct ones) takes an attack's whole budget (every restart, "
                 "target class and query), an upper bound for those; 'at most': every image attacked. Images broken "
                 "early end sooner, so a strong attack on a weak defence costs less. Nothing was written.")
    return "\n".join(parts)

