"""Unconditional ``DiffusionPriorNetwork`` forward with the constant prefix computed once.

With the text condition dropped, the network's token sequence is

    [null_text_encodings (max_text_len) | null_text_embed | time(t) | x_t | learned query]

and the transformer is causal, so the first ``max_text_len + 1`` tokens (256 + 1 for the released prior) never see
the input: their keys and values at every layer are the same for every sample, step and timestep. Computing them
once per purification and running only the last three tokens through the layers gives the same prediction (up to
float round-off) for ~``(max_text_len + 4) / 3`` times less work on the released prior. This mirrors
dalle2_pytorch 1.15.6 (``DiffusionPriorNetwork.forward``, ``CausalTransformer.forward``, ``Attention.forward``);
``tests/purifiers/test_clipure_diff.py`` checks it against ``net.forward``, and unsupported variants fall back to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUFFIX = 3  # time embedding, noisy embedding x_t, learned query


@dataclass
class PrefixCache:
    """Per-layer keys/values of the prefix (``[1, P, dim_head]`` each, keys already rotated) and the attention
    bias and causal mask of the suffix rows (``[heads, 3, P + 4]``, ``[3, P + 4]``; column 0 is the null key)."""

    kv: list[tuple[Tensor, Tensor]]
    bias: Tensor
    masked: Tensor

    @property
    def length(self) -> int:
        return int(self.kv[0][0].shape[1])


def supports_prefix_cache(net: nn.Module) -> bool:
    """True for the architecture ``prior.build_prior`` makes (no self-conditioning, one token per condition,
    learned time embeddings, causal cosine-sim attention); anything else uses ``net.forward``."""
    tr = getattr(net, "causal_transformer", None)
    return (tr is not None and not net.self_cond and net.num_time_embeds == net.num_image_embeds == net.num_text_embeds == 1
            and not net.continuous_embedded_time and all(a.causal and a.cosine_sim for a, _ in tr.layers))


@torch.no_grad()
def build_prefix_cache(net: nn.Module) -> PrefixCache:
    """Run the constant prefix through the layers once (batch 1) and keep what the suffix attends to."""
    tr = net.causal_transformer
    x = tr.init_norm(torch.cat((net.null_text_encodings, net.null_text_embeds), dim=1))  # [1, P, D]
    prefix = x.shape[1]
    bias_prefix = tr.rel_pos_bias(prefix, prefix + 1, device=x.device)
    kv = []
    for attn, ff in tr.layers:
        k, v = attn.to_kv(attn.norm(x)).chunk(2, dim=-1)  # [1, P, dh] each: one key/value head shared by all heads
        if attn.rotary_emb is not None:
            k = attn.rotary_emb.rotate_queries_or_keys(k)
        kv.append((k, v))
        x = attn(x, attn_bias=bias_prefix) + x
        x = ff(x) + x
    n = prefix + SUFFIX
    bias = tr.rel_pos_bias(n, n + 1, device=x.device)[:, prefix:]  # [heads, 3, n + 1]
    masked = torch.ones((n, n + 1), dtype=torch.bool, device=x.device).triu(2)[prefix:]  # causal, as in Attention
    return PrefixCache(kv, bias, masked)


def _attend(attn: nn.Module, x: Tensor, k_prefix: Tensor, v_prefix: Tensor, cache: PrefixCache) -> Tensor:
    """``Attention.forward`` for the suffix tokens ``x [B, 3, D]`` against [null | prefix | suffix] keys."""
    b = x.shape[0]
    h = attn.norm(x)
    q = attn.to_q(h).view(b, SUFFIX, attn.heads, -1).transpose(1, 2) * attn.scale  # [B, heads, 3, dh]
    k, v = attn.to_kv(h).chunk(2, dim=-1)  # [B, 3, dh]
    if attn.rotary_emb is not None:
        q = attn.rotary_emb.rotate_queries_or_keys(q, offset=cache.length)
        k = attn.rotary_emb.rotate_queries_or_keys(k, offset=cache.length)
    null_k, null_v = (t.expand(b, 1, -1) for t in attn.null_kv.unsqueeze(1).unbind(0))  # [B, 1, dh]
    k = torch.cat((null_k, k_prefix.expand(b, -1, -1), k), dim=1)  # [B, P + 4, dh]
    v = torch.cat((null_v, v_prefix.expand(b, -1, -1), v), dim=1)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # cosine-sim attention
    q, k = q * math.sqrt(attn.scale), k * math.sqrt(attn.scale)
    sim = torch.einsum("bhid,bjd->bhij", q, k) + cache.bias  # [B, heads, 3, P + 4]
    sim = sim.masked_fill(cache.masked, -torch.finfo(sim.dtype).max)
    weights = attn.dropout(sim.softmax(dim=-1, dtype=torch.float32).type(sim.dtype))
    out = torch.einsum("bhij,bjd->bhid", weights, v)  # [B, heads, 3, dh]
    return attn.to_out(out.transpose(1, 2).reshape(b, SUFFIX, -1))


def cached_forward(net: nn.Module, x_t: Tensor, t: Tensor, cache: PrefixCache) -> Tensor:
    """``net(x_t, t, text_cond_drop_prob=1, image_cond_drop_prob=0)`` -> predicted ``[B, D]``, using ``cache``."""
    tr = net.causal_transformer
    b = x_t.shape[0]
    tokens = torch.cat((net.to_time_embeds(t), net.to_image_embeds(x_t), net.learned_query.expand(b, 1, -1)), dim=1)
    x = tr.init_norm(tokens)  # [B, 3, D]
    for (attn, ff), (k_prefix, v_prefix) in zip(tr.layers, cache.kv):
        x = _attend(attn, x, k_prefix, v_prefix, cache) + x
        x = ff(x) + x
    return tr.project_out(tr.norm(x))[:, -1]
