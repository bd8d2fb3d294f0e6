"""First use of hub weights, against a local HTTP server standing in for the Hugging Face hub (HF_ENDPOINT):
downloaded once into the cache, loaded offline afterwards, and a short download or a corrupted cache file reported
in one paragraph by this project instead of a traceback from huggingface_hub or torch.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE into its constants when it is imported, so every load runs in
a subprocess with its own environment (HF_HOME in the test's folder)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT

SMALL_CONFIG = PROJECT_ROOT / "conf" / "model_configs" / "ViT-C10-S4-32px.json"
COMMIT = "0" * 40


class HubStandIn(http.server.ThreadingHTTPServer):
    """Serves ``files[(repo_id, filename)]`` at ``/{repo}/resolve/{revision}/{filename}`` with the headers
    huggingface_hub reads (X-Repo-Commit, ETag = SHA-256 of the content, Content-Length), answers 404 otherwise,
    sends only half of each file of a repo in ``truncated``, and records every request path."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.truncated: set[str] = set()
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, body: bool) -> None:
        hub: HubStandIn = self.server  # type: ignore[assignment]
        hub.requests.append(f"{self.command} {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        key = ("/".join(parts[:2]), "/".join(parts[4:])) if len(parts) >= 5 and parts[2] == "resolve" else None
        data = hub.files.get(key) if key else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data[: len(data) // 2] if key[0] in hub.truncated else data)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def hub():
    server = HubStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _state_dict_bytes(model: torch.nn.Module, dtype=torch.float32) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def _serve_small_hf_hub_model(hub: HubStandIn, repo: str) -> None:
    """A random small CLIP (the shipped ViT-C10-S4-32px architecture) under an hf-hub id's real file names."""
    import open_clip

    model_cfg = json.loads(SMALL_CONFIG.read_text())
    open_clip.add_model_config(str(SMALL_CONFIG))
    model = open_clip.create_model("ViT-C10-S4-32px")
    hub.files[(repo, "open_clip_config.json")] = json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}).encode()
    hub.files[(repo, "open_clip_pytorch_model.bin")] = _state_dict_bytes(model)


LOAD = """
import sys
from omegaconf import OmegaConf
from clipure_lit.clip.config import ClipCfg
from clipure_lit.clip.backbone import load_backbone
from clipure_lit.errors import ClipureError
for arch, pretrained in zip(sys.argv[1::2], sys.argv[2::2]):
    cfg = OmegaConf.merge(OmegaConf.structured(ClipCfg), {"arch": arch, "pretrained": None if pretrained == "-" else pretrained})
    try:
        backbone, _ = load_backbone(cfg, with_tokenizer=False)
        print(f"LOADED {arch} {backbone.mean.flatten().tolist()}")
    except ClipureError as exc:
        print(f"ERROR {type(exc).__name__}: {exc}")
"""


def _load(hub: HubStandIn, hf_home: Path, *models: tuple[str, str | None], offline: bool = False) -> list[str]:
    """Load each ``(arch, pretrained)`` as eval.py does, in one fresh process; its result lines."""
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1" if offline else "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    args = [a if a is not None else "-" for model in models for a in model]
    done = subprocess.run([sys.executable, "-c", LOAD, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if line.startswith(("LOADED", "ERROR"))]


@pytest.mark.slow  # three fresh processes that import open_clip: ~15 s
def test_hf_hub_model_downloads_once_then_loads_offline_and_damage_is_reported(hub, tmp_path):
    _serve_small_hf_hub_model(hub, "org/small-clip")
    _serve_small_hf_hub_model(hub, "org/cut-short")
    hub.truncated.add("org/cut-short")

    first = _load(hub, tmp_path / "hf", ("hf-hub:org/small-clip", None), ("hf-hub:org/cut-short", None))
    assert first[0] == "LOADED hf-hub:org/small-clip [0.5, 0.5, 0.5]", first  # the served preprocess_cfg is used
    downloads = [r for r in hub.requests if r.startswith("GET /org/small-clip/resolve/")]
    assert sorted(r.rsplit("/", 1)[1] for r in downloads) == ["open_clip_config.json", "open_clip_pytorch_model.bin"]
    cut = first[1]
    assert cut.startswith("ERROR WeightsUnavailableError: Downloading the weights of 'hf-hub:org/cut-short'"), cut
    assert "models--org--cut-short" in cut and "Fix:" in cut

    hub.requests.clear()
    second = _load(hub, tmp_path / "hf", ("hf-hub:org/small-clip", None), offline=True)
    assert second == ["LOADED hf-hub:org/small-clip [0.5, 0.5, 0.5]"]
    assert hub.requests == []  # offline: the cache alone

    blobs = tmp_path / "hf" / "hub" / "models--org--small-clip" / "blobs"
    weights = max(blobs.iterdir(), key=lambda p: p.stat().st_size)
    with open(weights, "r+b") as f:  # an interrupted copy of the cache
        f.truncate(weights.stat().st_size // 3)
    damaged = _load(hub, tmp_path / "hf", ("hf-hub:org/small-clip", None), offline=True)[0]
    assert damaged.startswith("ERROR WeightsUnavailableError: The cached weights of 'hf-hub:org/small-clip' cannot be loaded"), damaged
    assert "open_clip_pytorch_model.bin" in damaged and "does not match the checksum" in damaged
    assert f"delete the cache entry '{tmp_path / 'hf' / 'hub' / 'models--org--small-clip'}'" in damaged


@pytest.mark.slow
def test_pretrained_tag_downloads_from_the_repo_open_clips_registry_names(hub, tmp_path):
    """A pretrained tag resolves through open_clip's registry to a hub repo and file (RN50 / yfcc15m:
    timm/resnet50_clip.yfcc15m, the safetensors file first); random weights of that architecture stand in."""
    import open_clip
    from open_clip import pretrained as oc_pretrained
    from safetensors.torch import save

    repo = oc_pretrained.get_pretrained_cfg("RN50", "yfcc15m")["hf_hub"].rstrip("/")
    model = open_clip.create_model("RN50")
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    hub.files[(repo, oc_pretrained.HF_SAFE_WEIGHTS_NAME)] = save(half)
    first = _load(hub, tmp_path / "hf", ("RN50", "yfcc15m"))
    assert first[0].startswith("LOADED RN50"), first
    assert f"GET /{repo}/resolve/main/{oc_pretrained.HF_SAFE_WEIGHTS_NAME}" in hub.requests
    hub.requests.clear()
    assert _load(hub, tmp_path / "hf", ("RN50", "yfcc15m"), offline=True)[0].startswith("LOADED RN50")
    assert hub.requests == []
