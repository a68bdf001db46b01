"""CamI2V's epipolar attention (original `CameraControl/CamI2V/epipolar.py`): every token of a UNet level attends to
the tokens of all frames that lie near its epipolar lines, plus a few learned register tokens that are always visible
(so that no query is left without keys). Levels the model leaves unmasked attend to every token of every frame.

`CameraFeatures` is what a camera-aware UNet call takes: the pose encoder's feature maps and the camera's fundamental
matrices, from which each masked level's mask is built a few query frames at a time inside the attention and dropped
after them. A level's whole mask is (B, T h w, registers + T h w) bool: at 256x256 and 16 frames the finest one is
268 MB, and SDPA turns a bool mask into a float one four times that size; built and used by chunks, the mask never
exists whole, nothing is kept between blocks or steps, and rebuilding it costs far less than the attention it masks
(about 3 multiply-adds per entry against 4·C for the attention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from .attention import ProjectedAttention, attention
from .camera import epipolar_mask

LATENT_STRIDE = 8  # pixels per latent pixel: a level of downsampling ds is 8·ds pixels per token

# The most mask entries (query x key, over the batch) one chunk of queries may cover: 32 Mi entries is 32 MiB of bool
# and 128 MiB as the float mask SDPA makes of it. A chunk holds at least one query frame.
MASK_CHUNK_ENTRIES = 1 << 25


def frames_per_chunk(batch: int, frame_tokens: int, keys: int) -> int:
    """How many query frames of `frame_tokens` tokens each one chunk takes, for `batch` mask rows over `keys` keys."""
    return max(1, MASK_CHUNK_ENTRIES // (batch * frame_tokens * keys))


@dataclass(frozen=True)
class EpipolarLevel:
    """The epipolar mask of one level (an h x w map, `stride` video pixels per token) of one camera path, built on
    request a range of query frames at a time from the fundamental matrices F (B, T, T, 3, 3)."""
    F: torch.Tensor
    h: int
    w: int
    stride: int
    registers: int

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """The mask's rows of query frames start..stop-1: (B, (stop - start) h w, registers + T h w) bool."""
        return epipolar_mask(self.F[:, start:stop], self.h, self.w, self.stride, self.registers)

    def whole(self) -> torch.Tensor:
        """The whole mask, (B, T h w, registers + T h w), built a query frame at a time: to inspect, not to sample."""
        return torch.cat([self.rows(i, i + 1) for i in range(self.F.shape[1])], dim=1)


@dataclass
class EpipolarMasks:
    """The epipolar masks of one camera path at every masked level: its fundamental matrices F (B, T, T, 3, 3), the
    levels' downsamplings and the register count. Holds no mask: each is built when a block uses it.

    A level's mask is the one of its own downsampling. The original looks it up by origin_h // the feature map's
    height (origin_h: the training height in the yaml), which is the same level at the trained size; at another
    height its lookup would miss (an unmasked level) or take another level's key."""
    F: torch.Tensor
    masked_ds: tuple
    registers: int

    def level(self, ds: int, h: int, w: int) -> Optional[EpipolarLevel]:
        """The level with downsampling `ds` and an h x w feature map, or None where it is unmasked."""
        if ds not in self.masked_ds:
            return None
        return EpipolarLevel(self.F, h, w, LATENT_STRIDE * ds, self.registers)

    def __call__(self, ds: int, h: int, w: int) -> Optional[torch.Tensor]:
        """That level's whole mask, (B, T h w, registers + T h w) bool, or None where it is unmasked."""
        level = self.level(ds, h, w)
        return None if level is None else level.whole()

    def to(self, device) -> "EpipolarMasks":
        return EpipolarMasks(self.F.to(device), self.masked_ds, self.registers)


@dataclass
class CameraFeatures:
    """The camera as the UNet reads it: the pose encoder's features (one (B, C_l, T, h_l, w_l) map per level) and
    the epipolar masks (None: every level unmasked)."""
    features: Sequence[torch.Tensor]
    masks: Optional[EpipolarMasks] = None

    def level(self, index: int, ds: int, h: int, w: int):
        """(feature, EpipolarLevel or None) for a block at feature level `index` (downsampling ds, an h x w map)."""
        return self.features[index], (self.masks.level(ds, h, w) if self.masks is not None else None)


class EpipolarCrossAttention(ProjectedAttention):
    """Attention of the level's T h w tokens to the register tokens and all T h w tokens, masked."""

    def __init__(self, dim: int, heads: int, registers: int, ops=nn):
        super().__init__(dim, dim, dim, heads, ops=ops)
        self.registers = registers
        if registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim))

    def forward(self, x: torch.Tensor, mask: Union[None, torch.Tensor, EpipolarLevel],
                frames: int = 1) -> torch.Tensor:
        """x (B, L, C), L = frames x tokens per frame, rows frame-major; mask None (attend to everything), the level
        (B or 1, L, registers + L) bool, or the EpipolarLevel that builds it. A mask is applied a few query frames
        at a time (`frames_per_chunk`); each query's attention is the same as with the whole mask."""
        b, length, _ = x.shape
        context = x
        if self.registers:
            context = torch.cat([self.register_tokens.to(x).expand(b, -1, -1), x], dim=1)
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if mask is None:
            return self.to_out(attention(q, k, v, self.heads))
        tokens = length // frames
        built = isinstance(mask, EpipolarLevel)
        rows = mask.rows if built else (lambda i, j: mask[:, i * tokens:j * tokens])
        camera_batch = (mask.F if built else mask).shape[0]
        step = frames_per_chunk(camera_batch if camera_batch in (1, b) else b, tokens, context.shape[1])
        out = torch.empty_like(q)
        for start in range(0, frames, step):
            stop = min(frames, start + step)
            part = rows(start, stop)
            if part.shape[0] not in (1, b):
                part = part.repeat(b // part.shape[0], 1, 1)  # the guidance branches share one camera
            out[:, start * tokens:stop * tokens] = attention(q[:, start * tokens:stop * tokens], k, v, self.heads,
                                                             mask=part)
        return self.to_out(out)


class Epipolar(nn.Module):
    """The `epipolar` branch of a camera-aware temporal block, on its (B h w, T, C) tokens."""

    def __init__(self, dim: int, heads: int, registers: int, ops=nn):
        super().__init__()
        self.epipolar_attn = EpipolarCrossAttention(dim, heads, registers, ops=ops)

    def forward(self, tokens: torch.Tensor, batch: int, h: int, w: int,
                mask: Union[None, torch.Tensor, EpipolarLevel]):
        """tokens (B h w, T, C); mask as EpipolarCrossAttention takes it."""
        bhw, t, c = tokens.shape
        x = tokens.view(batch, h, w, t, c).permute(0, 3, 1, 2, 4).reshape(batch, t * h * w, c)  # rows (frame, y, x)
        out = self.epipolar_attn(x, mask, frames=t)
        return out.view(batch, t, h, w, c).permute(0, 2, 3, 1, 4).reshape(bhw, t, c)
