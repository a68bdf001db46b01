"""The KL autoencoder (f8, 4 latent channels) that gives the visual detail guidance its latents (paper §3.2).

Original: `lvdm/models/autoencoder.py` (`AutoencoderKL`) over `lvdm/modules/networks/ae_modules.py`, the usual
LDM / Stable Diffusion VAE. Keys are the released ones (`encoder.down.N.block.M...`, `quant_conv`, ...).
ToonCrafter's dual-reference decoder (TOONCRAFTER.md §2) adds temporal layers to every decoder ResnetBlock and
fuses the two keyframes' encoder features into the decoded video (`encode_references` gives them).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .config import VAEConfig
from .noise import normal
from .unet import group_norm_fp32


def _norm(ops, channels: int):
    return ops.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, ops=nn):
        super().__init__()
        self.norm1 = _norm(ops, in_channels)
        self.conv1 = ops.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(ops, out_channels)
        self.conv2 = ops.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = ops.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, 1x1-conv projections."""

    def __init__(self, channels: int, ops=nn):
        super().__init__()
        self.norm = _norm(ops, channels)
        self.q = ops.Conv2d(channels, channels, 1)
        self.k = ops.Conv2d(channels, channels, 1)
        self.v = ops.Conv2d(channels, channels, 1)
        self.proj_out = ops.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (layer(hn).flatten(2).transpose(1, 2) for layer in (self.q, self.k, self.v))  # (B, HW, C)
        out = attention(q, k, v, heads=1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int, ops=nn):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as the original


class Upsample(nn.Module):
    def __init__(self, channels: int, ops=nn):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _middle(channels: int, ops) -> nn.Module:
    """The bottleneck: ResnetBlock, self-attention, ResnetBlock (keys mid.block_1, mid.attn_1, mid.block_2)."""
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, ops=ops)
    mid.attn_1 = AttnBlock(channels, ops=ops)
    mid.block_2 = ResnetBlock(channels, channels, ops=ops)
    return mid


def _level(blocks, attn=None):
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attn or [])
    return level


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, ops=nn):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        self.conv_in = ops.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in, res = ch, cfg.resolution
        for i, m in enumerate(mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * m, ops=ops))
                block_in = ch * m
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, ops=ops))
            level = _level(blocks, attns)
            if i != len(mult) - 1:
                level.downsample = Downsample(block_in, ops=ops)
                res //= 2
            self.down.append(level)
        self.mid = _middle(block_in, ops)
        self.norm_out = _norm(ops, block_in)
        self.conv_out = ops.Conv2d(block_in, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x, hidden: Optional[list] = None):
        """(B, 3, H, W) -> the posterior's moments (B, 2 z, H/8, W/8). `hidden`, when given, receives the features
        ToonCrafter's decoder takes from the keyframes, in the original's order: each level's output before its
        downsample, then the conv_in output."""
        h = first = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hidden is not None:
                hidden.append(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        if hidden is not None:
            hidden.append(first)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig, ops=nn):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        block_in = ch * mult[-1]
        res = cfg.resolution // 2 ** (len(mult) - 1)
        self.conv_in = ops.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _middle(block_in, ops)
        levels = []
        for i in reversed(range(len(mult))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * mult[i], ops=ops))
                block_in = ch * mult[i]
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, ops=ops))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in, ops=ops)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(ops, block_in)
        self.conv_out = ops.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------------------------
# ToonCrafter's dual-reference decoder (TOONCRAFTER.md §2). It decodes a whole video at once: N = B * T frames of B
# videos, `frames` = T per video; its temporal layers and reference injection see each video's frames together.


def _as_video(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*T, C, h, w) -> (B, C, T, h, w), a view."""
    return x.unflatten(0, (-1, frames)).transpose(1, 2)


def _as_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, h, w) -> (B*T, C, h, w)."""
    return x.transpose(1, 2).flatten(0, 1)


class _TimeStack(nn.Module):
    """A 3D ResBlock without time embedding: x + out_layers(in_layers(x)), each (GroupNorm in float32 with eps 1e-5,
    SiLU, Conv3d (3, 1, 1) zero-padded in time); out_layers has the original's (identity) dropout in slot 2."""

    def __init__(self, channels: int, ops=nn):
        super().__init__()
        conv = lambda: ops.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))  # noqa: E731
        self.in_layers = nn.Sequential(ops.GroupNorm(32, channels), nn.SiLU(), conv())
        self.out_layers = nn.Sequential(ops.GroupNorm(32, channels), nn.SiLU(), nn.Identity(), conv())

    def forward(self, x):
        h = self.in_layers[2](F.silu(group_norm_fp32(self.in_layers[0], x)))
        return x + self.out_layers[3](F.silu(group_norm_fp32(self.out_layers[0], h)))


class _VideoResnetBlock(ResnetBlock):
    """The spatial ResnetBlock, then its temporal stack over each video's frames, blended by sigmoid(mix_factor)."""

    def __init__(self, in_channels: int, out_channels: int, ops=nn):
        super().__init__(in_channels, out_channels, ops=ops)
        self.time_stack = _TimeStack(out_channels, ops=ops)
        self.mix_factor = nn.Parameter(torch.zeros(1))

    def forward(self, x, frames: int):
        spatial = _as_video(super().forward(x), frames)
        alpha = torch.sigmoid(self.mix_factor.to(spatial))  # cast here: a host may leave it on another device
        return _as_frames(alpha * self.time_stack(spatial) + (1.0 - alpha) * spatial)


class _Combiner(nn.Module):
    """Adds a 1x1 conv of the start keyframe's features to each video's first frame, the end keyframe's to its
    last; no other frame is touched."""

    def __init__(self, channels: int, ops=nn):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 1)

    def forward(self, x, reference):
        videos = reference.shape[0]
        ref = self.conv(_as_frames(reference)).unflatten(0, (videos, 2))  # (B, 2, C, h, w)
        x = x.unflatten(0, (videos, -1))  # (B, T, C, h, w), a view of the decoder's own fresh tensor
        x[:, 0] += ref[:, 0]
        x[:, -1] += ref[:, 1]
        return x.flatten(0, 1)


class _ReferenceCrossAttention(nn.Module):
    """Each frame's features attend to both reference frames' (fusion, TOONCRAFTER.md §2.4): 8 heads of 64 whatever
    the channel count, the query normalised, keys and values from the raw reference features."""
    heads, dim_head = 8, 64

    def __init__(self, channels: int, ops=nn):
        super().__init__()
        inner = self.heads * self.dim_head
        self.norm = ops.GroupNorm(32, channels, eps=1e-6)
        self.to_q = ops.Linear(channels, inner, bias=False)
        self.to_k = ops.Linear(channels, inner, bias=False)
        self.to_v = ops.Linear(channels, inner, bias=False)
        self.to_out = nn.Sequential(ops.Linear(inner, channels), nn.Identity())

    def forward(self, x, reference):
        n, c, h, w = x.shape
        videos = reference.shape[0]
        frames = n // videos
        q = self.to_q(self.norm(x).flatten(2).transpose(1, 2))  # (N, hw, inner)
        # keys and values: the start keyframe's tokens then the end's, from the features as they are (no norm)
        keys = reference.permute(0, 2, 3, 4, 1).reshape(videos, 2 * h * w, c)
        k, v = self.to_k(keys), self.to_v(keys)
        # one frame at a time: the (frames x 2hw) keys are never copied per frame, and on every device the
        # attention's working memory stays one frame's (SDPA keeps no score matrix where it has fused kernels)
        out = torch.cat([attention(q[i:i + 1], k[i // frames:i // frames + 1], v[i // frames:i // frames + 1],
                                   self.heads) for i in range(n)])
        return x + self.to_out(out).transpose(1, 2).reshape(n, c, h, w)


class _TimeMixConv(nn.Module):
    """conv_out (a 3x3 Conv2d whose weights sit on this module, as in the released keys), then a Conv3d (3, 1, 1)
    over each video's frames; no residual."""

    def __init__(self, in_channels: int, out_channels: int, ops=nn):
        super().__init__()
        conv = ops.Conv2d(in_channels, out_channels, 3, padding=1)
        self.weight, self.bias = conv.weight, conv.bias
        self.time_mix_conv = ops.Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x, frames: int):
        # cast here: the weights are on a module with children, which a host's partial loading does not move
        x = F.conv2d(x, self.weight.to(x), self.bias.to(x), padding=1)
        return _as_frames(self.time_mix_conv(_as_video(x, frames)))


class DualReferenceDecoder(Decoder):
    """ToonCrafter's decoder layout: every ResnetBlock gains a temporal stack and a learned mix factor,
    `attn_refinement` fuses the first/last frames' encoder features, `conv_out` gains a temporal conv."""

    def __init__(self, cfg: VAEConfig, ops=nn):
        super().__init__(cfg, ops=ops)

        def video(block: ResnetBlock) -> _VideoResnetBlock:
            return _VideoResnetBlock(block.conv1.in_channels, block.conv1.out_channels, ops=ops)

        self.mid.block_1, self.mid.block_2 = video(self.mid.block_1), video(self.mid.block_2)
        for level in self.up:
            level.block = nn.ModuleList(video(b) for b in level.block)
        ch, mult = cfg.ch, cfg.ch_mult
        self.attn_refinement = nn.ModuleList([
            _Combiner(ch * mult[0], ops=ops), _Combiner(ch * mult[1], ops=ops),
            _ReferenceCrossAttention(ch * mult[2], ops=ops), _ReferenceCrossAttention(ch * mult[3], ops=ops),
            _Combiner(ch * mult[0], ops=ops)])
        self.conv_out = _TimeMixConv(ch * mult[0], cfg.out_ch, ops=ops)

    def forward(self, z, references: Optional[list] = None, frames: Optional[int] = None):
        """z (B*T, z, h, w), the frames of B videos -> (B*T, 3, H, W). references: the five keyframe features
        (AutoencoderKL.encode_references); without them nothing is fused, as in the original."""
        frames = frames or z.shape[0]
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, frames)), frames)
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(h, frames)
                if len(level.attn):
                    h = level.attn[j](h)
            if references:
                h = self.attn_refinement[i](h, references[i])
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        h = F.silu(self.norm_out(h))
        if references:
            h = self.attn_refinement[-1](h, references[-1])
        return self.conv_out(h, frames)


class AutoencoderKL(nn.Module):
    """Encoder -> quant_conv -> (mean, logvar) ... z -> post_quant_conv -> Decoder."""

    def __init__(self, cfg: VAEConfig, ops=nn):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, ops=ops)
        self.decoder = (DualReferenceDecoder if cfg.dual_reference else Decoder)(cfg, ops=ops)
        self.quant_conv = ops.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = ops.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> posterior (mean, std), each (B, embed_dim, H/8, W/8)."""
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return mean, std

    def encode_references(self, start: torch.Tensor, end: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) keyframes -> the five encoder features ToonCrafter's decoder fuses, each (B, C, 2, h, w) with
        the start keyframe at index 0 of dim 2. The original encodes a video of copies of the two keyframes and keeps
        its first and last frame; the encoder treats frames independently, so the two keyframes alone are the same."""
        hidden = []
        self.encoder(torch.cat([start, end]), hidden)
        return [torch.stack(h.chunk(2), dim=2) for h in hidden]

    def decode(self, z: torch.Tensor, references: Optional[list] = None, frames: Optional[int] = None) -> torch.Tensor:
        """(N, z, h, w) -> (N, 3, H, W). ToonCrafter's decoder takes the video's frames together and no
        post_quant_conv (the original skips it whenever the decoder gets the reference features)."""
        if self.cfg.dual_reference:
            return self.decoder(z, references, frames)
        return self.decoder(self.post_quant_conv(z))


def sample_posterior(mean: torch.Tensor, std: torch.Tensor, noise: Optional[torch.Tensor] = None,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """mean + std * noise; noise drawn on the CPU (as the original) when not given, so seeds agree across devices."""
    if noise is None:
        noise = normal(generator, mean.shape)
    return mean + std * noise.to(mean)
