"""The checks of a composed config: open vocabularies, value ranges, option combinations, batch coupling and the
local files a run reads. :func:`validate_config` runs them all when a config is composed (``eval.py``, ``--cfg``, a
sweep's up-front check and dry run, each run of a suite), before any model is built; the checks that need the
dataset's size run again when the data is set up (:func:`check_batch_coupling` with the number of images).
"""

from __future__ import annotations

import difflib
import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from clipure_lit.attacks.presets import resolve_attacks
from clipure_lit.clip.backbone import resolve_normalisation
from clipure_lit.clip.prompts import get_classnames, get_templates, require_class_placeholder
from clipure_lit.clip.tokenizers import is_callable_spec
from clipure_lit.clip.weights import check_local_checkpoint
from clipure_lit.data.config import check_data_values
from clipure_lit.data.datasets import check_data_paths, list_datasets
from clipure_lit.errors import ConfigError, DataNotFoundError
from clipure_lit.loggers import LoggerName, WandbMode, wandb_credentials_present
from clipure_lit.purifiers.registry import chosen_sections, get_entry, section_of
from clipure_lit.utils.paths import resolve_path

log = logging.getLogger(__name__)


def _close(value: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(value, choices, n=3)
    return f" Closest: {match}." if match else ""


def validate_clip(cfg: DictConfig, files: bool = True) -> None:
    """``clip.*`` values and names (architecture, tokenizer, normalisation) and, with ``files``, that the precomputed
    text embeddings ``prompts.class_embeddings`` / ``prompts.blank_embedding`` exist."""
    import open_clip  # heavy: ~4 s to import (timm, torchvision); `--help` imports this module and never validates

    arch = cfg.clip.arch
    if cfg.clip.logit_scale is not None and not float(cfg.clip.logit_scale) > 0:
        raise ConfigError(f"clip.logit_scale={cfg.clip.logit_scale} must be positive (OpenAI weights: 100), or null for the "
                          "model's own. Fix: clip.logit_scale=null or a positive value.")
    if cfg.clip.force_image_size is not None and int(cfg.clip.force_image_size) < 1:
        raise ConfigError(f"clip.force_image_size={cfg.clip.force_image_size} must be a positive size in pixels, or null "
                          "for the model config's. Fix: clip.force_image_size=null or e.g. 64.")
    if cfg.clip.model_config:
        stem = Path(cfg.clip.model_config).stem
        if stem != arch:
            raise ConfigError(f"clip.model_config='{cfg.clip.model_config}' registers a model named '{stem}' (its file stem), "
                              f"but clip.arch='{arch}'. Fix: set clip.arch={stem}, or clip.model_config=null for an open_clip model.")
    elif not arch.startswith("hf-hub:"):
        known = open_clip.list_models()
        if arch not in known:
            raise ConfigError(
                f"Unknown CLIP architecture clip.arch='{arch}'.{_close(arch, known)} Valid choices are open_clip's model names "
                f"({len(known)}; e.g. ViT-B-32, ViT-B-16, ViT-L-14), an 'hf-hub:<org>/<repo>' id, or a custom config via clip.model_config."
            )
    tokenizer = cfg.clip.get("tokenizer")
    if tokenizer and not is_callable_spec(str(tokenizer)) and not str(tokenizer).startswith("hf-hub:") \
            and open_clip.get_model_config(str(tokenizer)) is None and str(tokenizer) != arch:
        raise ConfigError(f"clip.tokenizer='{tokenizer}' is not an open_clip model name, an 'hf-hub:<org>/<repo>' tokenizer, "
                          f"or a 'module:callable' / 'file.py:callable' path.{_close(str(tokenizer), open_clip.list_models())} "
                          "Fix: one of those, or null for clip.arch's tokenizer.")
    for key in ("class_embeddings", "blank_embedding"):
        value = cfg.prompts.get(key) if "prompts" in cfg else None
        if value and files:
            resolve_path(value, f"precomputed text embeddings (prompts.{key})")
    fill_normalisation(cfg)


def fill_normalisation(cfg: DictConfig) -> None:
    """Check ``clip.mean`` / ``clip.std`` and fill them in when null (:func:`resolve_normalisation`), so that
    ``config.yaml`` records the statistics the run uses. hf-hub models keep null: their statistics come with the
    weights and are read when the model is built. A local checkpoint without known statistics is logged."""
    c = cfg.clip
    if (c.mean is None) != (c.std is None):
        raise ConfigError(f"clip.mean={c.mean} and clip.std={c.std}: set both (3 values each, in [0, 1] pixel units) or neither.")
    if c.mean is not None:
        if len(c.mean) != 3 or len(c.std) != 3 or not all(v > 0 for v in c.std):
            raise ConfigError(f"clip.mean={list(c.mean)} and clip.std={list(c.std)} must have 3 values each (RGB), std > 0.")
        return
    if str(c.arch).startswith("hf-hub:"):
        return
    mean, std, source = resolve_normalisation(c)
    if source.endswith("(local checkpoint)"):
        log.warning("clip.pretrained='%s' is a local checkpoint with no known normalisation statistics: using OpenAI's "
                    "mean=%s std=%s. If the model was trained with other statistics, set clip.mean and clip.std.",
                    c.pretrained, mean, std)
    c.mean, c.std = mean, std


def check_accelerator_present(cfg: DictConfig) -> None:
    """A GPU accelerator on a machine without one: checked when a run starts, before anything is built (not when
    composing, so that GPU configs still compose and validate on a CPU machine)."""
    accelerator = str(cfg.trainer.accelerator).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={cfg.trainer.accelerator} asks for a CUDA GPU, but none is visible to PyTorch "
                          "(torch.cuda.is_available() is False). Fix: trainer=cpu (or trainer.accelerator=auto), or run on "
                          "a machine with a GPU and a CUDA build of PyTorch.")


def validate_trainer_and_logger(cfg: DictConfig) -> None:
    """Checks Lightning and W&B would make only after the model is built: devices and W&B credentials."""
    t = cfg.trainer
    devices = t.devices
    if devices == 0 or devices == "0" or (OmegaConf.is_list(devices) and len(devices) == 0):
        raise ConfigError(f"trainer.devices={devices} selects no device. Fix: trainer.devices=1 (or N, or -1 for all), "
                          "or a list of device indices such as [0,1].")
    if cfg.logger.name == LoggerName.wandb and cfg.logger.mode == WandbMode.online and not wandb_credentials_present():
        raise ConfigError("logger=wandb with logger.mode=online needs W&B credentials, and none were found (no "
                          "WANDB_API_KEY, no entry in ~/.netrc). Fix: run `wandb login` (or set WANDB_API_KEY), or use "
                          "logger.mode=offline (sync later with `wandb sync`) or logger.mode=auto.")


def validate_purifiers(cfg: DictConfig) -> None:
    """Each chosen purifier's own value checks (``PurifierConfig.validate``), on its ``purifier.<name>`` section.
    (Files are checked by :func:`check_local_files`; weights a run may download are checked by ``check_files``
    when the run starts, before CLIP is loaded.)"""
    for name in (cfg.purifier.latent, cfg.purifier.pixel):
        section = section_of(cfg, name)
        if section is not None:
            section.validate(f"purifier.{name}")


def process_count(trainer) -> int | None:
    """How many evaluation processes ``trainer.*`` starts (``devices`` x ``num_nodes``), or None when the config
    cannot tell (``devices=-1`` or ``auto``: every device the machine has)."""
    devices = trainer.devices
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int):
        count = devices
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, str) and devices.strip().isdigit():
        count = int(devices)
    else:
        return None
    return count * int(trainer.num_nodes) if count > 0 else None


def check_batch_coupling(cfg: DictConfig, num_samples: int | None = None, counted: str = "") -> None:
    """A batch-coupled purifier (``purifier.<name>.norm_scope=batch``: the step is normalised over the whole batch,
    so sample i's output depends on its batch mates) that declares ``purifier.<name>.batch_size: N`` runs at batch
    N, or not at all. Refused, naming both keys and the three fixes:

    * ``data.batch_size != N``;
    * ``attack.batch_size`` other than null or N (AutoAttack would cut the data batch into sub-batches of another
      size; docs/evaluation.md, "Batch-coupled purifiers", says what the purifier sees inside an attack);
    * a partial last batch: the images each process evaluates (``num_samples``, else ``data.num_samples``; under
      several processes the distributed sampler gives each ceil(n / processes)) not a multiple of N.

    ``num_samples`` is the number of images once the dataset is set up (``counted`` says where it comes from, for
    the message); at composition it is ``data.num_samples`` (unknown when null or with ``data.ids_file``).
    ``purifier.<name>.batch_size=null`` accepts batch-dependent results on purpose: nothing is refused, and the
    results carry the ``batch_dependent`` flag.

    Raises:
        ConfigError: one of the cases above.
    """
    for where, section in chosen_sections(cfg).items():
        if not section.batch_coupled():
            continue
        n = section.declared_batch_size()
        if n is None:
            continue
        why = (f"{where} normalises its step over the whole batch ({where}.norm_scope=batch), so each image's result "
               f"depends on the other images of its batch, and {where}.batch_size={n} declares the batch size its "
               f"results are meant for")
        fixes = (f"set {where}.norm_scope=sample (one norm per image: results independent of the batch); or set "
                 f"{where}.batch_size=null to accept batch-dependent results on purpose (config.yaml records it and the "
                 "results carry the batch_dependent flag)")
        if int(cfg.data.batch_size) != n:
            raise ConfigError(f"{why}, but data.batch_size={cfg.data.batch_size}: the results would not be the ones "
                              f"of batch {n} and would change with data.batch_size. Fix: set data.batch_size={n}; or "
                              f"{fixes}.")
        attack_batch = cfg.attack.batch_size
        if attack_batch is not None and int(attack_batch) != n:
            raise ConfigError(f"{why}, but attack.batch_size={attack_batch}: AutoAttack would cut each data batch of {n} "
                              f"into sub-batches of {attack_batch}, so the purifier would be attacked at another batch "
                              f"size than it is evaluated at. Fix: set attack.batch_size=null (the data batch, {n}) or "
                              f"attack.batch_size={n}; or {fixes}.")
        count, source = (num_samples, counted) if num_samples is not None else (cfg.data.num_samples, "")
        if count is None or (num_samples is None and cfg.data.ids_file):
            continue  # the number of images is known once the data is set up, where this runs again
        processes = process_count(cfg.trainer) or 1
        per_process = math.ceil(int(count) / processes)
        if per_process % n:
            spread = (f", which {processes} processes share as {per_process} each," if processes > 1 else "")
            lower, upper = (per_process // n) * n * processes, math.ceil(per_process / n) * n * processes
            choices = f"{lower} or {upper}" if lower > 0 else f"{upper}"
            named = f"data.num_samples={count}" if not source else f"{count} images ({source})"
            raise ConfigError(f"{why}, but {named}{spread} is not a multiple of {n}: the last batch would hold "
                              f"{per_process % n} image(s), purified at another batch size than the others. Fix: set "
                              f"data.num_samples to a multiple of {n * processes} (e.g. {choices}); or {fixes}.")


def check_evaluated_batches(cfg: DictConfig, num_samples: int, skipped: int = 0) -> None:
    """:func:`check_batch_coupling` once the data is set up (before any model is built), with the number of images
    the run evaluates: what ``data.num_samples=null`` or ``data.ids_file`` select, and what remains after
    ``data.on_bad_image=skip`` left ``skipped`` unreadable files out."""
    if cfg.data.ids_file:
        counted = f"listed in data.ids_file={cfg.data.ids_file}"
    elif cfg.data.num_samples is None:
        counted = "data.num_samples=null: the whole dataset"
    else:
        counted = f"data.num_samples={cfg.data.num_samples}"
    if skipped:
        counted += f", less {skipped} unreadable file(s) that data.on_bad_image=skip left out"
    check_batch_coupling(cfg, int(num_samples), counted)


def check_local_files(cfg: DictConfig, data: bool = True) -> None:
    """The files a run reads from this machine and can never download: the data (``data.root`` of local datasets,
    ``data.ids_file``), a local ``clip.pretrained`` checkpoint, a tokenizer's Python file and each chosen purifier's
    local weight files (``PurifierConfig.local_files``). Weights named by a hub id or a pretrained tag are not
    checked here (a run may download them; they are checked when it starts, before CLIP is loaded). ``data=False``
    leaves the data's files out.

    Raises:
        DataNotFoundError: the key, the path, where it was looked for and the fix.
    """
    if data:
        check_data_paths(cfg.data)
    check_local_checkpoint(cfg.clip.arch, cfg.clip.pretrained)
    tokenizer = str(cfg.clip.get("tokenizer") or "")
    module = tokenizer.rpartition(":")[0]
    if is_callable_spec(tokenizer) and module.endswith(".py") and not Path(module).is_file():
        raise DataNotFoundError(f"clip.tokenizer='{tokenizer}': the file '{module}' does not exist (looked in "
                                f"'{Path(module).resolve()}'). Fix: give the path of a Python file defining the "
                                "tokenizer, or an importable module (module:callable).")
    for where, section in chosen_sections(cfg).items():
        for key, path in section.local_files(where).items():
            resolve_path(path, f"{key} (a local file)")


def validate_config(cfg: DictConfig, files: bool = True) -> None:
    """Every check that needs neither the model nor the images, on a composed config; raise a one-paragraph
    :class:`ConfigError` (or :class:`DataNotFoundError` for a missing file) naming the key and the fix.

    Vocabularies (dataset, purifiers, template sets, model, tokenizer), value ranges (``data.*``, ``attack.*``,
    each purifier's section, ``clip.*``), every attack of ``attack.run`` resolved as the run resolves it, option
    combinations, batch coupling (:func:`check_batch_coupling`) and, with ``files``, the local files
    (:func:`check_local_files`). The top level of a suite (``suite.name`` set) skips the data's files and the batch
    checks: its entries set their own data, and each entry is composed, and checked, on its own.
    """
    if cfg.data.name not in list_datasets():
        raise ConfigError(f"Unknown dataset data.name='{cfg.data.name}'.{_close(cfg.data.name, list_datasets())} Valid choices: {list_datasets()}.")
    require_class_placeholder(get_templates(cfg.prompts.class_templates), "prompts.class_templates", cfg.prompts.class_templates)
    if cfg.prompts.blank_prompt is None:
        get_templates(cfg.prompts.blank_templates)
    if cfg.data.classnames is not None:
        get_classnames(cfg.data.classnames)
    get_entry(cfg.purifier.latent, "latent")
    get_entry(cfg.purifier.pixel, "pixel")
    validate_clip(cfg, files)
    check_data_values(cfg.data)
    resolve_attacks(cfg.attack)  # what the run resolves when it starts: unknown attacks and modes, budgets, eps
    validate_purifiers(cfg)
    validate_trainer_and_logger(cfg)
    if cfg.resume and not cfg.run_dir:
        raise ConfigError("resume=true needs the folder of the run to continue. Fix: pass run_dir=<that folder> as well.")
    suite = bool(cfg.suite.name) if "suite" in cfg else False
    if not suite:
        check_batch_coupling(cfg)
    purifies = cfg.purifier.latent != "identity" or cfg.purifier.pixel != "identity"
    if cfg.trainer.inference_mode and (purifies or len(cfg.attack.run) > 0):
        raise ConfigError(
            "trainer.inference_mode=true is incompatible with gradient-based purifiers and attacks: they run autograd "
            f"inside the test loop (purifier.latent='{cfg.purifier.latent}', purifier.pixel='{cfg.purifier.pixel}', "
            f"attack.run={list(cfg.attack.run)}). "
            "Fix: set trainer.inference_mode=false (the default)."
        )
    if files:  # last: a config error is reported before a file that is missing on this machine
        check_local_files(cfg, data=not suite)  # a suite's entries bring their own data (missing ones are skipped)
