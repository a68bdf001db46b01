"""Colour match: bring a video's colours and exposure back to a reference frame, in CIE Lab (perceptual: a unit of
distance is about one just-noticeable difference, and lightness is separate from the two colour axes, so an
exposure drift and a colour cast are corrected independently).

Two methods, both per Lab channel:
- mean_std: shift and scale the channel so its mean and spread equal the reference's (Reinhard et al. 2001's
  transfer, in Lab). Keeps the video's own contrast structure; cannot create or lose detail.
- histogram: map each value through the video's distribution onto the reference's (quantile matching). Follows
  non-linear drifts (a crushed shadow, a clipped highlight) that a shift and scale cannot, at the cost of copying the
  reference's histogram even where the scene has really changed.

The statistics come from each frame (`per="frame"`) or from the whole batch at once (`per="video"`: one correction
for a whole segment, so the segment's own lighting changes, a cloud passing, survive).

Frames are ComfyUI's IMAGE layout, (T, H, W, 3) floats in 0..1, which is also what `animate` returns.
"""
from __future__ import annotations

import torch

from .errors import InputError
from .settings import check_number

METHODS = ("mean_std", "histogram")
PER = ("frame", "video")
# below this spread (Lab units, L is 0..100) a channel is flat: scaling it would amplify noise, or divide by zero
FLAT = 1e-3


def _check_frames(name: str, frames) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
        raise InputError(f"`{name}` must be a float tensor of frames (frames, height, width, 3) in 0..1; got "
                         f"{type(frames).__name__ if not isinstance(frames, torch.Tensor) else frames.dtype}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise InputError(f"`{name}` must be (frames, height, width, 3), RGB in 0..1 as a ComfyUI IMAGE; got shape "
                         f"{tuple(frames.shape)}")
    if not torch.isfinite(frames).all():
        raise InputError(f"`{name}` holds NaN or Inf pixels; colour matching needs finite values in 0..1 (the node "
                         "that made them failed: look at its output)")
    # ComfyUI's IMAGEs are 0..1; an upscaler's overshoot is clamped, as Save Image does, not refused
    return frames.float().clamp(0.0, 1.0)


def to_lab(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) RGB in 0..1 -> (T, 3, H, W) CIE Lab (D65; L 0..100). sRGB gamma is undone by kornia."""
    import kornia

    return kornia.color.rgb_to_lab(frames.permute(0, 3, 1, 2))


def from_lab(lab: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) Lab -> (T, H, W, 3) RGB, clamped to 0..1 (a shifted Lab colour can leave the sRGB gamut)."""
    import kornia

    return kornia.color.lab_to_rgb(lab, clip=True).permute(0, 2, 3, 1).clamp(0.0, 1.0)


def _mean_std(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """x (G, 3, N), ref (3, M) -> x with each group's channels given the reference's mean and spread."""
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True, correction=0)
    ref_mean, ref_std = ref.mean(-1)[None, :, None], ref.std(-1, correction=0)[None, :, None]
    # a flat channel (a constant frame) is only shifted: its spread carries no information to rescale
    scale = torch.where(std > FLAT, ref_std / std.clamp_min(FLAT), torch.ones_like(std))
    return (x - mean) * scale + ref_mean


def _histogram(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """x (G, 3, N), ref (3, M) -> each value replaced by the reference's value at the same quantile."""
    ref_sorted = ref.sort(-1).values
    m = ref_sorted.shape[-1]
    sorted_x = x.sort(-1).values
    # mid-rank quantiles: equal values get equal quantiles, so a flat area stays flat
    below = torch.searchsorted(sorted_x, x, side="left")
    upto = torch.searchsorted(sorted_x, x, side="right")
    quantile = (below + upto).float() / (2 * x.shape[-1])  # in (0, 1)
    position = (quantile * m - 0.5).clamp(0, m - 1)
    low = position.floor().long()
    high = (low + 1).clamp_max(m - 1)
    frac = position - low
    table = ref_sorted[None].expand(x.shape[0], -1, -1)
    return torch.lerp(table.gather(-1, low), table.gather(-1, high), frac)


def colour_match(frames: torch.Tensor, reference: torch.Tensor, method: str = "mean_std", strength: float = 1.0,
                 per: str = "frame") -> torch.Tensor:
    """Frames (T, H, W, 3) in 0..1 matched to `reference` (H', W', 3) or (1, H', W', 3), any size, in CIE Lab.

    strength: 0 returns the frames unchanged (bit for bit), 1 the full correction, between a blend in Lab.
    per: "frame" (each frame its own correction) or "video" (one correction from all frames' statistics)."""
    if method not in METHODS:
        raise InputError(f"unknown colour match method {method!r}; use one of {', '.join(METHODS)}")
    if per not in PER:
        raise InputError(f"colour match `per` must be one of {', '.join(PER)}; got {per!r}")
    check_number("strength", strength, 0.0, 1.0, "how much of the colour correction to apply; 0 leaves the frames "
                 "as they are")
    original = frames
    frames = _check_frames("frames", frames)
    reference = _check_frames("reference", reference)
    if reference.shape[0] != 1:
        raise InputError(f"`reference` must be one frame; got {reference.shape[0]}. Pick one (e.g. the first image "
                         "of the batch)")
    if strength == 0:
        return original
    lab = to_lab(frames)
    ref = to_lab(reference)[0].flatten(1)
    t, _, h, w = lab.shape
    groups = lab.flatten(2) if per == "frame" else lab.permute(1, 0, 2, 3).reshape(1, 3, -1)
    matched = (_mean_std if method == "mean_std" else _histogram)(groups, ref)
    if per == "video":
        matched = matched.reshape(3, t, h, w).permute(1, 0, 2, 3)
    matched = matched.reshape(t, 3, h, w)
    if strength < 1:
        matched = torch.lerp(lab, matched, strength)
    return from_lab(matched).to(original.dtype)
