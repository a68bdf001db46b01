"""CamI2V's camera pose encoder (CameraCtrl's, He et al. 2024; original `CameraControl/CamI2V/camera_pose_encoder.py`):
Plücker rays (B, 6, T, H, W) -> one feature map per UNet level, (B, C_l, T, H/8/2^l, W/8/2^l), which the camera-aware
temporal blocks of that level add to their tokens.

PixelUnshuffle(8) folds each 8x8 patch of rays into 384 channels at the latent size; each level then runs residual
blocks, every one followed by a temporal transformer over the frames with sinusoidal positions. Module names are the
released keys (`pose_encoder.encoder_down_conv_blocks.*`, diffusers' `attention_blocks.0.to_q`, ...).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import ProjectedAttention, attention
from .config import PoseEncoderConfig
from .errors import InputError
from .unet import FeedForward


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim): sin on even channels, cos on odd ones, wavelengths 2π to 10000·2π (Vaswani et al.)."""
    position = torch.arange(length).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_positions(max_len, dim))  # saved in the released files

    def forward(self, x):
        return x + self.pe[:, :x.shape[1]].to(x)


class TemporalSelfAttention(ProjectedAttention):
    """Self-attention over the frames of each position; the positions are added to the queries', keys' and values'
    input, not to the residual (diffusers' Attention with CameraCtrl's encoding in front)."""

    def __init__(self, dim: int, heads: int, max_len: int, ops=nn):
        super().__init__(dim, dim, dim, heads, ops=ops)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x):
        x = self.pos_encoder(x)
        return self.to_out(attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))


class TemporalTransformerBlock(nn.Module):
    """x + attn(LN x); x + FF(LN x), over (B h w, T, C) tokens."""

    def __init__(self, dim: int, heads: int, max_len: int, ops=nn):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalSelfAttention(dim, heads, max_len, ops=ops)])
        self.norms = nn.ModuleList([ops.LayerNorm(dim)])
        self.ff = FeedForward(dim, ops=ops)
        self.ff_norm = ops.LayerNorm(dim)

    def forward(self, x):
        x = self.attention_blocks[0](self.norms[0](x)) + x
        return self.ff(self.ff_norm(x)) + x


class ResnetBlock(nn.Module):
    """(2x2 average pooling,) a 1x1 conv where the width changes, then x + conv1x1(relu(conv3x3 x))."""

    def __init__(self, c_in: int, c_out: int, down: bool, ksize: int, ops=nn):
        super().__init__()
        self.down = down
        if c_in != c_out:
            self.in_conv = ops.Conv2d(c_in, c_out, ksize, 1, ksize // 2)
        self.block1 = ops.Conv2d(c_out, c_out, 3, 1, 1)
        self.block2 = ops.Conv2d(c_out, c_out, ksize, 1, ksize // 2)

    def forward(self, x):
        if self.down:
            x = F.avg_pool2d(x, 2)
        if hasattr(self, "in_conv"):
            x = self.in_conv(x)
        return self.block2(F.relu(self.block1(x))) + x


class PoseEncoder(nn.Module):
    def __init__(self, cfg: PoseEncoderConfig, ops=nn):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.encoder_conv_in = ops.Conv2d(cfg.cin, ch[0], 3, 1, 1)
        self.encoder_down_conv_blocks = nn.ModuleList()
        self.encoder_down_attention_blocks = nn.ModuleList()
        for i, width in enumerate(ch):
            convs, attns = nn.ModuleList(), nn.ModuleList()
            for j in range(cfg.blocks):
                c_in = ch[max(i - 1, 0)] if j == 0 else width
                convs.append(ResnetBlock(c_in, width, down=(j == 0 and i > 0), ksize=cfg.ksize, ops=ops))
                attns.append(TemporalTransformerBlock(width, cfg.heads, cfg.max_frames, ops=ops))
            self.encoder_down_conv_blocks.append(convs)
            self.encoder_down_attention_blocks.append(attns)

    def forward(self, rays: torch.Tensor) -> list[torch.Tensor]:
        """(B, 6, T, H, W) Plücker rays -> [(B, C_l, T, h_l, w_l)] per level; H and W divisible by 8 · 2^(levels-1)."""
        b, c, t, h, w = rays.shape
        if t > self.cfg.max_frames:
            raise InputError(f"the camera pose encoder takes at most {self.cfg.max_frames} frames (its positional "
                             f"encoding's length), got {t}; make shorter videos or use context windows")
        x = rays.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.encoder_conv_in(F.pixel_unshuffle(x, self.cfg.downscale))
        features = []
        for convs, attns in zip(self.encoder_down_conv_blocks, self.encoder_down_attention_blocks):
            for conv, attn in zip(convs, attns):
                x = conv(x)
                _, ch, hh, ww = x.shape
                tokens = x.view(b, t, ch, hh, ww).permute(0, 3, 4, 1, 2).reshape(b * hh * ww, t, ch)
                x = attn(tokens).view(b, hh, ww, t, ch).permute(0, 3, 4, 1, 2).reshape(b * t, ch, hh, ww)
            features.append(x.view(b, t, *x.shape[1:]).transpose(1, 2))
        return features
