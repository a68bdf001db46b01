"""The text-aligned image context (paper §3.1): OpenCLIP text and image towers and the Query Transformer.

- Text: OpenCLIP ViT-H-14's text transformer, stopped one block early (penultimate layer) and passed through ln_final:
  (B, 77, 1024) for all token positions. Original: `FrozenOpenCLIPEmbedder(layer="penultimate")`.
- Image: the ViT-H-14 vision transformer's last-layer tokens, all 257, without ln_post or proj, after a squash-resize
  to 224x224 (kornia bicubic, align_corners, antialias) and CLIP normalisation. Original:
  `FrozenOpenCLIPImageEmbedderV2`.
- Query Transformer P (`Resampler` in `lvdm/modules/encoders/resampler.py`): 16 learned queries per frame attend to
  the CLIP tokens (and to themselves) and become 16 context tokens per frame in the UNet's context space.

The towers are open_clip's own classes, constructed on the meta device (no random init, no download) and filled
from the checkpoint. Their forward passes are written here over open_clip's modules so that they run through this
package's single attention function and do not depend on open_clip's sequence-first / batch-first layout.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .config import ClipConfig, QueryTransformerConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _open_clip():
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the CLIP towers need open_clip_torch: pip install open_clip_torch") from e
    return open_clip


def _build_clip(cfg: ClipConfig):
    """An open_clip CLIP on the meta device: shapes only, filled later by load_state_dict(assign=True)."""
    open_clip = _open_clip()
    with torch.device("meta"):
        return open_clip.CLIP(embed_dim=cfg.arch["embed_dim"], vision_cfg=dict(cfg.arch["vision_cfg"]),
                              text_cfg=dict(cfg.arch["text_cfg"]))


def clip_block(block: nn.Module, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock on batch-first (B, N, C) tokens."""
    attn = block.attn  # nn.MultiheadAttention: fused in_proj, out_proj
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight.to(x), attn.in_proj_bias.to(x))
    q, k, v = qkv.chunk(3, dim=-1)
    x = x + block.ls_1(attn.out_proj(attention(q, k, v, attn.num_heads, is_causal=causal)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class TextEncoder(nn.Module):
    """OpenCLIP text tower; keys as under `cond_stage_model.model.` minus the unused text_projection / logit_scale."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        clip = _build_clip(cfg)
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.context_length = int(cfg.arch["text_cfg"].get("context_length", 77))

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return _open_clip().tokenize(list(prompts), context_length=self.context_length)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77) token ids -> (B, 77, width): penultimate block, then ln_final."""
        x = self.token_embedding(tokens)
        x = x + self.positional_embedding.to(x)
        for block in self.transformer.resblocks[:-1]:
            x = clip_block(block, x, causal=True)
        return self.ln_final(x)


class ImageEncoder(nn.Module):
    """OpenCLIP vision tower; keys as under `embedder.model.visual.` minus the unused ln_post / proj."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        visual = _build_clip(cfg).visual
        visual.ln_post = nn.Identity()
        visual.proj = None
        self.visual = visual
        self.image_size = int(cfg.arch["vision_cfg"].get("image_size", 224))

    @property
    def width(self) -> int:
        return self.visual.conv1.weight.shape[0]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images of any size -> CLIP input: squash-resize (no crop), [0, 1], CLIP mean/std."""
        import kornia

        x = kornia.geometry.resize(images, (self.image_size, self.image_size), interpolation="bicubic",
                                   align_corners=True, antialias=True)
        x = (x + 1.0) / 2.0
        mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype)[:, None, None]
        std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype)[:, None, None]
        return (x - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 1 + patches, width): every token of the last block."""
        v = self.visual
        x = self.preprocess(images.float()).to(v.conv1.weight.dtype)
        x = v.conv1(x).flatten(2).transpose(1, 2)  # (B, patches, width)
        cls = v.class_embedding.to(x).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x)
        x = v.ln_pre(x)
        for block in v.transformer.resblocks:
            x = clip_block(block, x)
        return x


class PerceiverAttention(nn.Module):
    """Queries (latents) attend to cat[image tokens, latents]; one LayerNorm for each input."""

    def __init__(self, dim: int, dim_head: int, heads: int, ops=nn):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = ops.LayerNorm(dim)
        self.norm2 = ops.LayerNorm(dim)
        self.to_q = ops.Linear(dim, inner, bias=False)
        self.to_kv = ops.Linear(dim, inner * 2, bias=False)
        self.to_out = ops.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm1(x), self.norm2(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        # the original scales q and k by d^-1/4 each; SDPA's default 1/sqrt(d) on q.k is the same product
        return self.to_out(attention(self.to_q(latents), k, v, self.heads))


class QueryTransformer(nn.Module):
    """P: (B, 257, C_clip) CLIP tokens -> (B, num_queries * video_length, output_dim), frame-major."""

    def __init__(self, cfg: QueryTransformerConfig, ops=nn):
        super().__init__()
        self.cfg = cfg
        queries = cfg.num_queries * (cfg.video_length or 1)
        self.latents = nn.Parameter(torch.empty(1, queries, cfg.dim))
        self.proj_in = ops.Linear(cfg.embedding_dim, cfg.dim)
        self.proj_out = ops.Linear(cfg.dim, cfg.output_dim)
        self.norm_out = ops.LayerNorm(cfg.output_dim)
        self.layers = nn.ModuleList()
        for _ in range(cfg.depth):
            ff = nn.Sequential(ops.LayerNorm(cfg.dim), ops.Linear(cfg.dim, cfg.dim * cfg.ff_mult, bias=False),
                               nn.GELU(), ops.Linear(cfg.dim * cfg.ff_mult, cfg.dim, bias=False))
            self.layers.append(nn.ModuleList([PerceiverAttention(cfg.dim, cfg.dim_head, cfg.heads, ops=ops), ff]))

    def forward(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        dtype = self.proj_in.weight.dtype if self.proj_in.weight.dtype.itemsize >= 2 else clip_tokens.dtype
        x = self.proj_in(clip_tokens.to(dtype))
        latents = self.latents.to(x).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
