"""The 3D denoising UNet of DynamiCrafter (paper §3; original `lvdm/modules/networks/openaimodel3d.py` and
`lvdm/modules/attention.py`).

Module attribute names are the released checkpoint's key names, misspelling included (`temopral_conv`), so a state
dict loads without a renaming table and ComfyUI-style LoRA key matching stays possible. Every layer class comes from
`ops` (default `torch.nn`), so a host can inject casting / non-initialising layers (e.g. `comfy.ops.manual_cast`).

Shapes: B videos of T frames; spatial layers see (B*T, C, H, W), temporal layers (B, C, T, H, W).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .config import UNetConfig

TEXT_TOKENS = 77
IMAGE_TOKENS_PER_FRAME = 16  # the original hard-codes this when it decides whether to split the context per frame


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cos first: [cos(t f_k), sin(t f_k)], f_k = max_period^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def group_norm_fp32(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """The ResBlock / output GroupNorms of the original run in float32 whatever the compute dtype."""
    return norm(x.float()).to(x.dtype)


class FeedForward(nn.Module):
    """GEGLU feed-forward: Linear(C, 8C) -> a * gelu(g) -> Linear(4C, C). Keys `net.0.proj`, `net.2`."""

    def __init__(self, dim: int, mult: int = 4, ops=nn):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(nn.Module(), nn.Identity(), ops.Linear(inner, dim))
        self.net[0].proj = ops.Linear(dim, inner * 2)

    def forward(self, x):
        a, gate = self.net[0].proj(x).chunk(2, dim=-1)
        return self.net[2](a * F.gelu(gate))


class CrossAttention(nn.Module):
    """Self- or cross-attention; with `image_context` the dual cross-attention of §3.1:

    out = softmax(Q K_txt^T) V_txt + lambda * softmax(Q K_img^T) V_img, sharing Q and to_out,
    lambda = tanh(alpha) + 1 when the gate is learnable (256 model), else 1.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None,
                 image_context: bool = False, learnable_gate: bool = False, ops=nn):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = ops.Linear(query_dim, inner, bias=False)
        self.to_k = ops.Linear(context_dim, inner, bias=False)
        self.to_v = ops.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim), nn.Identity())
        self.image_context = image_context
        if image_context:
            self.to_k_ip = ops.Linear(context_dim, inner, bias=False)
            self.to_v_ip = ops.Linear(context_dim, inner, bias=False)
            if learnable_gate:
                self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x, context=None):
        q = self.to_q(x)
        if context is None:
            return self.to_out(attention(q, self.to_k(x), self.to_v(x), self.heads))
        text = context[:, :TEXT_TOKENS]
        out = attention(q, self.to_k(text), self.to_v(text), self.heads)
        if self.image_context:
            image = context[:, TEXT_TOKENS:]
            out_ip = attention(q, self.to_k_ip(image), self.to_v_ip(image), self.heads)
            if hasattr(self, "alpha"):
                # a parameter of a non-leaf module: a partially loaded host may leave it elsewhere
                out_ip = out_ip * (torch.tanh(self.alpha.to(out_ip)) + 1)
            out = out + out_ip
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    """x + attn1(LN x); x + attn2(LN x, context); x + FF(LN x)."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None,
                 image_context: bool = False, learnable_gate: bool = False, ops=nn):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head, ops=ops)
        self.ff = FeedForward(dim, ops=ops)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim, image_context, learnable_gate, ops=ops)
        self.norm1 = ops.LayerNorm(dim)
        self.norm2 = ops.LayerNorm(dim)
        self.norm3 = ops.LayerNorm(dim)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the H*W tokens, cross-attending to text and per-frame image context."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, learnable_gate: bool, ops=nn):
        super().__init__()
        inner = heads * dim_head
        self.norm = ops.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = ops.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, heads, dim_head, context_dim, True, learnable_gate, ops=ops)])
        self.proj_out = ops.Linear(inner, channels)

    def forward(self, x, context):
        bt, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (BT, HW, C)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        tokens = self.proj_out(tokens)
        return tokens.transpose(1, 2).reshape(bt, c, h, w) + x


class TemporalTransformer(nn.Module):
    """Transformer over the T frames of each spatial position; both attentions are self-attention, with no
    positional encoding and no mask. Its GroupNorm takes statistics over all frames together.

    `conv_proj` selects the 1x1 Conv1d projections of `init_attn` (the per-level blocks use Linear)."""

    def __init__(self, channels: int, heads: int, dim_head: int, conv_proj: bool = False, ops=nn):
        super().__init__()
        inner = heads * dim_head
        self.conv_proj = conv_proj
        self.norm = ops.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = ops.Conv1d(channels, inner, 1) if conv_proj else ops.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head, ops=ops)])
        self.proj_out = ops.Conv1d(inner, channels, 1) if conv_proj else ops.Linear(inner, channels)

    def _project(self, layer, tokens):
        if self.conv_proj:  # Conv1d wants channels before time
            return layer(tokens.transpose(1, 2)).transpose(1, 2)
        return layer(tokens)

    def forward(self, x):
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)  # (BHW, T, C)
        tokens = self._project(self.proj_in, tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = self._project(self.proj_out, tokens)
        return tokens.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2) + x


class TemporalConvBlock(nn.Module):
    """Four (GroupNorm, SiLU, Conv3d (3,1,1)) stages along time, added to the input (ModelScope-style)."""

    def __init__(self, channels: int, ops=nn):
        super().__init__()
        for i in range(1, 5):
            conv = ops.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
            layers = [ops.GroupNorm(32, channels), nn.SiLU()] + ([] if i == 1 else [nn.Identity()]) + [conv]
            setattr(self, f"conv{i}", nn.Sequential(*layers))

    def forward(self, x):
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """GN-SiLU-Conv, + Linear(SiLU(emb)), GN-SiLU-Conv, + skip; then the temporal conv block over (B, C, T, H, W)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, temporal_conv: bool, ops=nn):
        super().__init__()
        self.in_layers = nn.Sequential(ops.GroupNorm(32, channels), nn.SiLU(),
                                       ops.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(ops.GroupNorm(32, out_channels), nn.SiLU(), nn.Identity(),
                                        ops.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if channels == out_channels
                                else ops.Conv2d(channels, out_channels, 1))
        if temporal_conv:
            self.temopral_conv = TemporalConvBlock(out_channels, ops=ops)  # sic: the released key name

    def forward(self, x, emb, batch_size: int):
        h = self.in_layers[2](F.silu(group_norm_fp32(self.in_layers[0], x)))
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        h = self.out_layers[3](F.silu(group_norm_fp32(self.out_layers[0], h)))
        h = self.skip_connection(x) + h
        if hasattr(self, "temopral_conv"):
            bt, c, hh, ww = h.shape
            h5 = h.view(batch_size, bt // batch_size, c, hh, ww).transpose(1, 2)  # (B, C, T, H, W)
            h = self.temopral_conv(h5).transpose(1, 2).reshape(bt, c, hh, ww)
        return h


class Downsample(nn.Module):
    def __init__(self, channels: int, ops=nn):
        super().__init__()
        self.op = ops.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, ops=nn):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNetBlock(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks: layers applied in order, each with what it needs."""

    def forward(self, x, emb, context, batch_size: int):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch_size)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                bt, c, h, w = x.shape
                x5 = x.view(batch_size, bt // batch_size, c, h, w).transpose(1, 2)
                x = layer(x5).transpose(1, 2).reshape(bt, c, h, w)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """The 3D UNet. forward(x (B, 8, T, h, w), t (B,), context (B, L, D), fs (B,)) -> (B, 4, T, h, w)."""

    def __init__(self, cfg: UNetConfig, ops=nn):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_dim = mc * 4
        hc = cfg.num_head_channels
        gate = cfg.image_cross_attention_scale_learnable
        self.time_embed = nn.Sequential(ops.Linear(mc, emb_dim), nn.SiLU(), ops.Linear(emb_dim, emb_dim))
        if cfg.fs_condition:
            self.fps_embedding = nn.Sequential(ops.Linear(mc, emb_dim), nn.SiLU(), ops.Linear(emb_dim, emb_dim))

        def level_layers(ch_in, ch_out, ds):
            layers = [ResBlock(ch_in, emb_dim, ch_out, cfg.temporal_conv, ops=ops)]
            if ds in cfg.attention_resolutions:
                layers.append(SpatialTransformer(ch_out, ch_out // hc, hc, cfg.context_dim, gate, ops=ops))
                if cfg.temporal_attention:
                    layers.append(TemporalTransformer(ch_out, ch_out // hc, hc, ops=ops))
            return layers

        self.input_blocks = nn.ModuleList([UNetBlock([ops.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        if cfg.addition_attention:
            self.init_attn = UNetBlock([TemporalTransformer(mc, 8, hc, conv_proj=True, ops=ops)])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.input_blocks.append(UNetBlock(level_layers(ch, mult * mc, ds)))
                ch = mult * mc
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(UNetBlock([Downsample(ch, ops=ops)]))
                skip_channels.append(ch)
                ds *= 2

        middle = [ResBlock(ch, emb_dim, ch, cfg.temporal_conv, ops=ops),
                  SpatialTransformer(ch, ch // hc, hc, cfg.context_dim, gate, ops=ops)]
        if cfg.temporal_attention:
            middle.append(TemporalTransformer(ch, ch // hc, hc, ops=ops))
        middle.append(ResBlock(ch, emb_dim, ch, cfg.temporal_conv, ops=ops))
        self.middle_block = UNetBlock(middle)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = level_layers(ch + skip_channels.pop(), mult * mc, ds)
                ch = mult * mc
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, ops=ops))
                    ds //= 2
                self.output_blocks.append(UNetBlock(layers))

        self.out = nn.Sequential(ops.GroupNorm(32, ch), nn.SiLU(), ops.Conv2d(mc, cfg.out_channels, 3, padding=1))

    # None: compute in the weights' dtype. Set it when weights are stored in a narrower type (fp8) than the maths.
    compute_dtype: Optional[torch.dtype] = None

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype or self.input_blocks[0][0].weight.dtype

    def frame_context(self, context: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, L, D) -> (B*T, L', D). With exactly 16 image tokens per frame (L = 77 + 16 T) frame i sees tokens
        [16i, 16i+16); otherwise every frame sees the whole context (the original's rule)."""
        b, length, d = context.shape
        if length == TEXT_TOKENS + frames * IMAGE_TOKENS_PER_FRAME:
            text = context[:, :TEXT_TOKENS].repeat_interleave(frames, dim=0)
            image = context[:, TEXT_TOKENS:].reshape(b * frames, IMAGE_TOKENS_PER_FRAME, d)
            return torch.cat([text, image], dim=1)
        return context.repeat_interleave(frames, dim=0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                fs: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, _, frames, h, w = x.shape
        dtype = self.dtype
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(dtype))
        if self.cfg.fs_condition:
            if fs is None:
                fs = torch.full((b,), self.cfg.default_fs, dtype=torch.long, device=x.device)
            fs = torch.as_tensor(fs, device=x.device).reshape(-1).expand(b)
            emb = emb + self.fps_embedding(timestep_embedding(fs, self.cfg.model_channels).to(dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        context = self.frame_context(context.to(dtype), frames)

        hidden = x.transpose(1, 2).reshape(b * frames, -1, h, w).to(dtype)  # (BT, C, h, w)
        skips = []
        for i, block in enumerate(self.input_blocks):
            hidden = block(hidden, emb, context, b)
            if i == 0 and hasattr(self, "init_attn"):
                hidden = self.init_attn(hidden, emb, context, b)
            skips.append(hidden)
        hidden = self.middle_block(hidden, emb, context, b)
        for block in self.output_blocks:
            hidden = block(torch.cat([hidden, skips.pop()], dim=1), emb, context, b)
        out = self.out[2](F.silu(group_norm_fp32(self.out[0], hidden)))
        return out.reshape(b, frames, -1, h, w).transpose(1, 2).to(x.dtype)
