"""Attention: one function on `scaled_dot_product_attention` for every attention in the model.

The original materialises the full score matrix with einsum (or uses xformers for spatial attention); SDPA computes
the same softmax(QK^T / sqrt(d)) V with flash / memory-efficient kernels where the device has them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              is_causal: bool = False, scale: Optional[float] = None) -> torch.Tensor:
    """Multi-head attention over (B, N, heads*d) tensors; returns (B, N, heads*d)."""
    b, n, inner = q.shape
    d = inner // heads
    # (B, N, h*d) -> (B, h, N, d): a view plus transpose; SDPA accepts the strided layout as it is
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    return out.transpose(1, 2).reshape(b, n, inner)
