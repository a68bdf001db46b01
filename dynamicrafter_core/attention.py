"""Attention: one function on `scaled_dot_product_attention` for every attention in the model.

The original materialises the full score matrix with einsum (or uses xformers for spatial attention); SDPA computes
the same softmax(QK^T / sqrt(d)) V with flash / memory-efficient kernels where the device has them.

`reference_attention()` switches every call to the original's explicit einsum/softmax form. It exists so the
benchmark can time the straightforward implementation against this one and check that both give the same output.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

_use_reference = False


@contextlib.contextmanager
def reference_attention(enabled: bool = True):
    """Within the block, attention materialises the full (B*heads, N, M) score matrix, as the original does."""
    global _use_reference
    previous, _use_reference = _use_reference, enabled
    try:
        yield
    finally:
        _use_reference = previous


def einsum_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                     scale: Optional[float] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The original's `CrossAttention.forward`: (B, h, N, d) in, (B, h, N, d) out, heads folded into the batch
    as contiguous copies, the whole score matrix in memory, softmax in float32."""
    b, heads, n, d = q.shape
    q, k, v = (t.reshape(b * heads, -1, d) for t in (q, k, v))
    sim = torch.einsum("b i d, b j d -> b i j", q, k) * (d ** -0.5 if scale is None else scale)
    if is_causal:
        sim = sim.masked_fill(torch.ones_like(sim, dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:  # (B or 1, N, M) bool, True = attend
        sim = sim.view(b, heads, n, -1).masked_fill(~mask[:, None], float("-inf")).view(b * heads, n, -1)
    out = torch.einsum("b i j, b j d -> b i d", sim.float().softmax(dim=-1).to(v.dtype), v)
    return out.view(b, heads, n, d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              is_causal: bool = False, scale: Optional[float] = None,
              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Multi-head attention over (B, N, heads*d) tensors; returns (B, N, heads*d). mask: (B or 1, N, M) bool, True
    where a query may attend to a key (every row needs one True)."""
    b, n, inner = q.shape
    d = inner // heads
    # (B, N, h*d) -> (B, h, N, d): a view plus transpose; SDPA accepts the strided layout as it is
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if _use_reference:
        out = einsum_attention(q, k, v, is_causal, scale, mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None],
                                             is_causal=is_causal, scale=scale)
    return out.transpose(1, 2).reshape(b, n, inner)


class ProjectedAttention(nn.Module):
    """The query, key, value and output projections every attention layer of these models has, under the names the
    released weights use (to_q, to_k, to_v, to_out.0): the base of the UNet's, the pose encoder's and the epipolar
    attention."""

    def __init__(self, query_dim: int, context_dim: int, inner: int, heads: int, ops=nn):
        super().__init__()
        self.heads = heads
        self.to_q = ops.Linear(query_dim, inner, bias=False)
        self.to_k = ops.Linear(context_dim, inner, bias=False)
        self.to_v = ops.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim), nn.Identity())
