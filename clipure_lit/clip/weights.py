"""Find out, within seconds, whether pretrained open_clip weights can be loaded, and say how to fix it if not.

open_clip itself retries the model hub for about 50 s before failing with a long traceback when there is no
network. Here the local cache is checked first; if the weights are not cached, one metadata request with a short
timeout tells whether the hub is reachable at all.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from pathlib import Path

from clipure_lit.errors import ConfigError, DataNotFoundError, WeightsUnavailableError

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 5.0
_LOCAL_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith(_LOCAL_SUFFIXES) or pretrained.startswith(".")


def check_local_checkpoint(arch: str, pretrained: str | None) -> None:
    """Raise :class:`DataNotFoundError` when ``clip.pretrained`` names a local checkpoint (:func:`looks_like_path`)
    that does not exist; a pretrained tag, a hub model or None passes (those are checked when the weights load)."""
    if not pretrained or str(arch).startswith("hf-hub:") or not looks_like_path(str(pretrained)) \
            or Path(pretrained).is_file():
        return
    import open_clip  # heavy: ~4 s; composing a config with a CLIP already imported it (validate_clip)

    raise DataNotFoundError(
        f"clip.pretrained='{pretrained}' looks like a checkpoint path, but no such file exists (looked in "
        f"'{Path(pretrained).resolve()}'). Fix: give the path of an existing open_clip checkpoint (relative paths are "
        f"taken from the current directory), or a pretrained tag of clip.arch={arch}: "
        f"{open_clip.list_pretrained_tags_by_model(arch)}, or null for random weights.")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hf_cached(repo_id: str, filenames: list[str], cache_dir: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache  # heavy: ~0.1 s (httpx); only weight look-ups need it

    return any(isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str) for name in filenames)


def _hf_reachable(repo_id: str, filename: str) -> tuple[bool, str]:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url  # heavy: ~0.1 s (httpx); only probes need it

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=_PROBE_TIMEOUT_S)
        return True, ""
    except Exception as exc:  # any network or HTTP failure means "cannot download now"
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _fail(what: str, reason: str, cache_hint: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"Pretrained weights for {what} are not in the local cache ({cache_hint}) and cannot be downloaded: {reason}. "
        "Fix: run once on a machine with internet access to fill the cache (or copy the cache folder here), "
        "or set clip.pretrained to a local checkpoint file, or use a model that needs no download "
        "(clip=tiny_random for a smoke test)."
    )


def ensure_weights_available(arch: str, pretrained: str | None, cache_dir: str | None) -> None:
    """Raise a clear error now if ``create_model(arch, pretrained)`` would need an impossible download.

    Returns silently when the weights are cached, local, not needed (``pretrained`` is None), or downloadable.
    """
    # heavy: open_clip takes ~4 s to import (timm, torchvision); this module is imported by the DiffPure purifier,
    # which every config load registers
    import open_clip
    from open_clip import pretrained as oc_pretrained

    if arch.startswith("hf-hub:"):
        repo_id = arch[len("hf-hub:"):]
        if _hf_cached(repo_id, ["open_clip_config.json"], cache_dir):
            return
        reachable, reason = (False, "HF_HUB_OFFLINE=1 is set") if _hub_offline() else _hf_reachable(repo_id, "open_clip_config.json")
        if not reachable:
            raise _fail(f"'{arch}'", reason, f"Hugging Face cache{' ' + cache_dir if cache_dir else ''}")
        return
    if pretrained is None:
        return
    if looks_like_path(pretrained):
        check_local_checkpoint(arch, pretrained)
        return
    cfg = oc_pretrained.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        raise ConfigError(
            f"Unknown pretrained tag clip.pretrained='{pretrained}' for clip.arch='{arch}'. "
            f"Valid tags: {open_clip.list_pretrained_tags_by_model(arch)}; or a local checkpoint path, or null for random weights."
        )
    repo = (cfg.get("hf_hub") or "").rstrip("/")
    if repo:
        names = [oc_pretrained.HF_SAFE_WEIGHTS_NAME, oc_pretrained.HF_WEIGHTS_NAME]
        if "/" in repo and repo.count("/") > 1:  # 'org/repo/filename' form
            repo, fname = repo.rsplit("/", 1)
            names = [fname]
        if _hf_cached(repo, names, cache_dir):
            return
        reachable, reason = (False, "HF_HUB_OFFLINE=1 is set") if _hub_offline() else _hf_reachable(repo, names[-1])
        if not reachable:
            raise _fail(f"'{arch}' / '{pretrained}'", reason, f"Hugging Face cache{' ' + cache_dir if cache_dir else ''}")
        return
    url = cfg.get("url", "")
    target = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
    if target.is_file():
        return
    if _hub_offline():
        raise _fail(f"'{arch}' / '{pretrained}'", "HF_HUB_OFFLINE=1 is set", str(target))

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=_PROBE_TIMEOUT_S)
    except Exception as exc:
        raise _fail(f"'{arch}' / '{pretrained}'", f"{type(exc).__name__}: {exc}", str(target)) from None
