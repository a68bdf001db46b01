"""CamI2V's epipolar attention (original `CameraControl/CamI2V/epipolar.py`): every token of a UNet level attends to
the tokens of all frames that lie near its epipolar lines, plus a few learned register tokens that are always visible
(so that no query is left without keys). Levels the model leaves unmasked attend to every token of every frame.

`CameraFeatures` is what a camera-aware UNet call takes: the pose encoder's feature maps and the masks, which
`EpipolarMasks` builds level by level when a level first needs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .attention import ProjectedAttention, attention
from .camera import epipolar_mask

LATENT_STRIDE = 8  # pixels per latent pixel: a level of downsampling ds is 8·ds pixels per token


@dataclass
class EpipolarMasks:
    """The attention masks of one camera path at every masked level, from its fundamental matrices F (B, T, T, 3, 3).

    A level's mask, (B, T h w, registers + T h w) bool, is built when a block of that level first asks for it (float
    distances a query frame at a time) and kept for the rest of the sampling run, since the camera does not change
    between steps: at 256x256 and 16 frames that is 268 MB for the finest level and 18 MB for the three others
    together, against rebuilding the finest one five times per UNet call.

    A level's mask is the one of its own downsampling. The original looks it up by origin_h // the feature map's
    height (origin_h: the training height in the yaml), which is the same level at the trained size; at another
    height its lookup would miss (an unmasked level) or take another level's key."""
    F: torch.Tensor
    masked_ds: tuple
    registers: int
    _built: dict = field(default_factory=dict, repr=False)

    def __call__(self, ds: int, h: int, w: int) -> Optional[torch.Tensor]:
        """The mask of the level with downsampling `ds` and an h x w feature map, or None where it is unmasked."""
        if ds not in self.masked_ds:
            return None
        key = (ds, h, w)
        if key not in self._built:
            self._built[key] = epipolar_mask(self.F, h, w, LATENT_STRIDE * ds, self.registers)
        return self._built[key]

    def to(self, device) -> "EpipolarMasks":
        if self.F.device == torch.device(device):
            return self  # keeps the masks built so far
        return EpipolarMasks(self.F.to(device), self.masked_ds, self.registers)


@dataclass
class CameraFeatures:
    """The camera as the UNet reads it: the pose encoder's features (one (B, C_l, T, h_l, w_l) map per level) and
    the epipolar masks (None: every level unmasked)."""
    features: Sequence[torch.Tensor]
    masks: Optional[EpipolarMasks] = None

    def level(self, index: int, ds: int, h: int, w: int):
        """(feature, mask) for a block at feature level `index` (downsampling ds, an h x w map)."""
        return self.features[index], (self.masks(ds, h, w) if self.masks is not None else None)


class EpipolarCrossAttention(ProjectedAttention):
    """Attention of the level's T h w tokens to the register tokens and all T h w tokens, masked."""

    def __init__(self, dim: int, heads: int, registers: int, ops=nn):
        super().__init__(dim, dim, dim, heads, ops=ops)
        self.registers = registers
        if registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x (B, L, C); mask (B or 1, L, registers + L) bool or None (attend to everything)."""
        context = x
        if self.registers:
            context = torch.cat([self.register_tokens.to(x).expand(x.shape[0], -1, -1), x], dim=1)
        return self.to_out(attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, mask=mask))


class Epipolar(nn.Module):
    """The `epipolar` branch of a camera-aware temporal block, on its (B h w, T, C) tokens."""

    def __init__(self, dim: int, heads: int, registers: int, ops=nn):
        super().__init__()
        self.epipolar_attn = EpipolarCrossAttention(dim, heads, registers, ops=ops)

    def forward(self, tokens: torch.Tensor, batch: int, h: int, w: int, mask: Optional[torch.Tensor]):
        bhw, t, c = tokens.shape
        x = tokens.view(batch, h, w, t, c).permute(0, 3, 1, 2, 4).reshape(batch, t * h * w, c)  # rows (frame, y, x)
        if mask is not None and mask.shape[0] not in (1, batch):
            mask = mask.repeat(batch // mask.shape[0], 1, 1)  # the guidance branches share one camera
        out = self.epipolar_attn(x, mask)
        return out.view(batch, t, h, w, c).permute(0, 2, 3, 1, 4).reshape(bhw, t, c)
