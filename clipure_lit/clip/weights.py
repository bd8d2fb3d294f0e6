"""Find out, within seconds, whether pretrained open_clip weights can be loaded, and say how to fix it if not.

open_clip itself retries the model hub for about 50 s before failing with a long traceback when there is no
network. Here the local cache is checked first; if the weights are not cached, one metadata request with a short
timeout tells whether the hub is reachable at all.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
    hub = _tag_hub_files(cfg)
    if hub:
        repo, names = hub
        if _hf_cached(repo, names, cache_dir):
            return
        reachable, reason = False, "HF_HUB_OFFLINE=1 is set"
        for name in ([] if _hub_offline() else names):  # open_clip takes whichever of the names the repo has
            reachable, reason = _hf_reachable(repo, name)
            if reachable:
                break
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


def _tag_hub_files(pretrained_cfg: dict) -> tuple[str, list[str]] | None:
    """``(repo_id, candidate file names)`` of a pretrained tag that open_clip downloads from the Hugging Face hub
    (its registry entry's ``hf_hub``: ``org/repo/`` or ``org/repo/filename``), or None for a URL download."""
    from open_clip import pretrained as oc_pretrained  # heavy: ~4 s (timm, torchvision); only weight look-ups need it

    repo = (pretrained_cfg.get("hf_hub") or "").rstrip("/")
    if not repo:
        return None
    if repo.count("/") > 1:  # 'org/repo/filename' form
        repo, fname = repo.rsplit("/", 1)
        return repo, [fname]
    return repo, [oc_pretrained.HF_SAFE_WEIGHTS_NAME, oc_pretrained.HF_WEIGHTS_NAME]


def hub_files(arch: str, pretrained: str | None) -> tuple[str, list[str]] | None:
    """``(repo_id, file names open_clip may read)`` when ``create_model(arch, pretrained)`` loads from the Hugging
    Face hub (an ``hf-hub:`` model id: its config and weights; a pretrained tag with an ``hf_hub`` entry), else None
    (random weights, a local file, a URL download)."""
    from open_clip import pretrained as oc_pretrained  # heavy: ~4 s (timm, torchvision); only weight look-ups need it

    if arch.startswith("hf-hub:"):
        return arch[len("hf-hub:"):], ["open_clip_config.json", oc_pretrained.HF_SAFE_WEIGHTS_NAME,
                                       oc_pretrained.HF_WEIGHTS_NAME]
    if not pretrained or looks_like_path(pretrained):
        return None
    return _tag_hub_files(oc_pretrained.get_pretrained_cfg(arch, pretrained) or {})


def hub_cache_folder(repo_id: str, cache_dir: str | None) -> Path:
    """The folder huggingface_hub caches ``repo_id`` in (``<HF_HUB_CACHE or cache_dir>/models--org--repo``)."""
    from huggingface_hub import constants  # heavy: ~0.1 s (httpx); only weight look-ups need it

    return Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def _blob_digest_matches(blob: Path) -> bool | None:
    """Whether a cached blob still has the content its name records: huggingface_hub names a blob by the file's
    ETag, the SHA-256 of the content for large (LFS) files and the git blob SHA-1 for small ones. None: the name is
    neither (nothing to compare)."""
    name = blob.name
    if re.fullmatch(r"[0-9a-f]{64}", name):
        digest = hashlib.sha256()
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        digest = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode())
    else:
        return None
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == name


def _cached(repo_id: str, names: list[str], cache_dir: str | None) -> list[Path]:
    from huggingface_hub import try_to_load_from_cache  # heavy: ~0.1 s (httpx); only weight look-ups need it

    found = (try_to_load_from_cache(repo_id, name, cache_dir=cache_dir) for name in names)
    return [Path(p) for p in found if isinstance(p, str)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0].rstrip('.') if text else ''}"


@contextmanager
def hub_load_errors(arch: str, pretrained: str | None, cache_dir: str | None) -> Iterator[None]:
    """Around ``open_clip.create_model``: a download from the hub that fails or stops short (fewer bytes than
    announced), and a cached file that cannot be read (truncated or corrupted), become a
    :class:`WeightsUnavailableError` naming the model, the files and the fix, instead of a traceback from inside
    huggingface_hub or torch. Errors of weights that are not on the hub pass unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unchanged unless the hub's files explain it
        hub = hub_files(arch, pretrained)
        if hub is None:
            raise
        repo, names = hub
        what = f"'{arch}'" + (f" / '{pretrained}'" if pretrained and not arch.startswith("hf-hub:") else "")
        folder = hub_cache_folder(repo, cache_dir)
        if isinstance(exc, FileNotFoundError) and "Failed to download" in str(exc):  # open_clip's wrapping
            reason = str(exc).split("Last error: ", 1)[-1].splitlines()[0]
            raise WeightsUnavailableError(
                f"Downloading the weights of {what} (Hugging Face repo '{repo}') failed: {reason}. Nothing usable was "
                f"cached. Fix: run again with a working connection (a partial download, '{folder}/blobs/*.incomplete', "
                f"is resumed or restarted); delete '{folder}' to start from scratch; or, offline, copy a complete "
                "cache of this repo here (HF_HOME).") from None
        cached = _cached(repo, names, cache_dir)
        broken = [p for p in cached if _blob_digest_matches(p.resolve()) is False]
        files = ", ".join(f"'{p}' ({p.resolve().stat().st_size} bytes)" for p in (broken or cached)) or f"under '{folder}'"
        which = "does not match the checksum its cache entry records (truncated or corrupted)" if broken else \
            "cannot be read (truncated, corrupted, or not an open_clip file)"
        raise WeightsUnavailableError(
            f"The cached weights of {what} cannot be loaded: {files} {which}; {_first_line(exc)}. Fix: delete the "
            f"cache entry '{folder}' and run again with internet access to download the files again (or copy a "
            "complete cache of this repo here).") from None
