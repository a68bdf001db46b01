"""Camera geometry for CamI2V (Zheng et al., arXiv 2410.15957): the poses made relative to the conditioning frame,
the intrinsics, the Plücker rays that the pose encoder reads, and the fundamental matrices and epipolar masks that
restrict the epipolar attention (original: `CameraControl/base/base.py`, `CameraControl/CamI2V/cami2v.py`).

Conventions (OpenCV, as the original): a camera-to-world pose c2w maps camera coordinates (x right, y down, z
forward) to the world; K holds the intrinsics in pixels of the video being made. All functions are pure and batch
over leading dimensions: poses (B, T, 4, 4), intrinsics (B, T, 3, 3).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

# A translation whose three components are all below this is "zero": its fundamental matrix would be 0 and every
# epipolar line undefined, so the original replaces it with noise of this size (`add_small_perturbation`).
ZERO_TRANSLATION = 1e-6
# The most point-to-line distances epipolar_mask holds at once: 16 MiB of float32, which a CPU's cache keeps while
# they are compared (at 256x256 one frame pair of the finest level is a quarter of it).
DISTANCE_ENTRIES = 1 << 22


def default_intrinsics(height: int, width: int, frames: int, batch: int = 1) -> torch.Tensor:
    """The intrinsics CamI2V was trained with, whatever a pose file says: fx = fy = max(H, W) / 2 (a 90° field of view
    across the longer side), principal point at the centre; (batch, frames, 3, 3) float32."""
    f = 0.5 * max(height, width)
    k = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return k.expand(batch, frames, 3, 3).clone()


def relative_poses(c2w: torch.Tensor, cond_frame: int = 0, translation_scale: float = 1.0) -> torch.Tensor:
    """inv(c2w[cond_frame]) @ c2w[i]: every pose in the conditioning frame's camera coordinates (that frame becomes
    the identity), translations times `translation_scale` (the original's trace_scale_factor)."""
    rel = c2w[:, cond_frame:cond_frame + 1].inverse() @ c2w
    if translation_scale != 1.0:
        rel = rel.clone()
        rel[..., :3, 3] = rel[..., :3, 3] * translation_scale
    return rel


def pose_pairs(rel_c2w: torch.Tensor) -> torch.Tensor:
    """(B, T, 4, 4) -> (B, T, T, 4, 4) with entry [i, j] = inv(c2w_j) @ c2w_i: camera i's coordinates in camera j's."""
    return rel_c2w.inverse().unsqueeze(1) @ rel_c2w.unsqueeze(2)


def perturb_zero_translations(t: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Translations (..., 3, 1) that are zero in all three components replaced by N(0, 1e-6²) noise, so that the pair's
    fundamental matrix exists (the frame with itself, or a camera that only rotates). The noise's direction decides
    which pixels such a pair's mask keeps; it is drawn from `generator`, on the CPU."""
    zero = (t.abs() < ZERO_TRANSLATION).all(dim=-2, keepdim=True)
    noise = torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) * ZERO_TRANSLATION
    return torch.where(zero, noise, t)


def fundamental_matrices(K: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """F = inv(K)ᵀ [t]ₓ R inv(K) for the pairs' rotations R (B, T, T, 3, 3) and translations t (B, T, T, 3, 1), K
    (B, T, 3, 3) the target frames' intrinsics: a pixel p of frame i lies on the line F p of frame j."""
    essential = torch.cross(t.expand_as(R), R, dim=-2)  # [t]x R, column by column
    k_inv = torch.inverse(K).unsqueeze(1)
    return k_inv.transpose(-1, -2) @ essential @ k_inv


def plucker_rays(K: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The ray through each pixel centre as Plücker coordinates (o x d, d), d the unit direction in world (i.e. the
    conditioning camera's) coordinates and o the camera centre: (B, 6, T, H, W)."""
    b, t = K.shape[:2]
    dtype, device = c2w.dtype, c2w.device
    j, i = torch.meshgrid(torch.linspace(0, height - 1, height, dtype=dtype, device=device),
                          torch.linspace(0, width - 1, width, dtype=dtype, device=device), indexing="ij")
    i = i.reshape(1, 1, -1) + 0.5
    j = j.reshape(1, 1, -1) + 0.5
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    x = (i - cx) / fx
    y = (j - cy) / fy
    directions = torch.stack((x, y, torch.ones_like(x)), dim=-1)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    d = directions @ c2w[..., :3, :3].transpose(-1, -2)  # (B, T, HW, 3)
    o = c2w[..., None, :3, 3].expand_as(d)
    rays = torch.cat([torch.cross(o, d, dim=-1), d], dim=-1)
    return rays.reshape(b, t, height, width, 6).permute(0, 4, 1, 2, 3)


def pixel_centres(h: int, w: int, stride: int, device=None) -> torch.Tensor:
    """The (h*w, 3) homogeneous pixel coordinates of a feature map `stride` times smaller than the video: cell i
    covers pixels [i*stride, (i+1)*stride), its centre is i*stride + stride/2 - 0.5."""
    y = torch.arange(h, dtype=torch.float32, device=device) * stride + stride / 2.0 - 0.5
    x = torch.arange(w, dtype=torch.float32, device=device) * stride + stride / 2.0 - 0.5
    gy, gx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([gx, gy, torch.ones_like(gx)], dim=2).view(-1, 3)


def epipolar_mask(F: torch.Tensor, h: int, w: int, stride: int, registers: int = 0) -> torch.Tensor:
    """Which tokens each token of an h x w feature map may attend to: (B, c h w, registers + T h w) bool for the c
    query frames of F (B, c, T, 3, 3) (all of them for the whole mask), rows the query (frame i, pixel p), columns
    `registers` always-visible register tokens, then (frame j, pixel q). True where q lies within stride·√2/2 pixels
    (half the cell's diagonal) of p's epipolar line F[i, j] p in frame j.

    The distances are the original's products, line by pixel, one (hw x 3) @ (3 x hw) product per frame pair (so the
    same numbers), taken a few target frames at a time and written straight into the mask: the float distances, four
    times the mask's size, never exist for more than `DISTANCE_ENTRIES`. Pass F a few query frames at a time for a
    large map (`epipolar.EpipolarLevel` does)."""
    b, c, t = F.shape[:3]
    grid = pixel_centres(h, w, stride, F.device).transpose(0, 1)  # (3, hw)
    hw = h * w
    lines = F @ grid  # (B, c, T, 3, hw): p's lines in frame j
    lines = (lines / torch.norm(lines[..., :2, :], dim=-2, keepdim=True)).transpose(-1, -2)  # (B, c, T, p, 3)
    mask = torch.empty(b, c, hw, registers + t * hw, dtype=torch.bool, device=F.device)
    mask[..., :registers] = True
    near = mask[..., registers:].view(b, c, hw, t, hw).transpose(2, 3)  # (B, c, T, p, q), row (i, p), column (j, q)
    limit = stride * math.sqrt(2) / 2
    step = max(1, DISTANCE_ENTRIES // (b * c * hw * hw))
    for j in range(0, t, step):
        torch.lt((lines[:, :, j:j + step] @ grid).abs_(), limit, out=near[:, :, j:j + step])
    return mask.view(b, c * hw, registers + t * hw)
