"""The documented range of every sampling setting, checked where a call enters the package (the Python API and the
command line) before any work is done. ComfyUI's widgets bound the nodes to the same ranges.

A value outside its range is refused with a message naming the setting, the value and the range, never clamped or
truncated: a fractional seed or a NaN scale would otherwise give a video nobody asked for.
"""
from __future__ import annotations

import math
import numbers

import torch

from .errors import InputError

SEED_RANGE = 2 ** 64  # what torch.Generator.manual_seed takes


def is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_number(name: str, value, low: float, high: float, meaning: str, whole: bool = False) -> None:
    """Refuse `value` unless it is a finite number (a whole one if `whole`) in [low, high]."""
    if not (is_whole(value) if whole else _real(value)) or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise InputError(f"{name} must be {kind} from {low} to {high} ({meaning}); got {value!r}")


def check_steps(steps, num_timesteps: int = 1000) -> None:
    if not is_whole(steps) or not 1 <= steps <= num_timesteps:
        raise InputError(f"steps must be a whole number from 1 to {num_timesteps}; got {steps!r}")


def check_eta(eta) -> None:
    if not _real(eta) or eta < 0:
        raise InputError(f"eta must be a number >= 0 (0: deterministic DDIM, 1: the original's default); got {eta!r}")


def check_seed(seed) -> None:
    check_number("seed", seed, 0, SEED_RANGE - 1, "the noise; the same seed gives the same video", whole=True)


def check_fs(fs) -> None:
    """fs: a whole number, or a tensor of them, from 1 to 1000."""
    meaning = "the frame rate the model is told, or the 256 model's frame stride"
    if isinstance(fs, torch.Tensor):
        if fs.is_floating_point() or fs.is_complex() or fs.numel() == 0 or not (1 <= fs.min() and fs.max() <= 1000):
            raise InputError(f"fs must hold whole numbers from 1 to 1000 ({meaning}); got {fs.tolist()}")
        return
    check_number("fs", fs, 1, 1000, meaning, whole=True)


def check_cfg(cfg) -> None:
    check_number("cfg", cfg, 1.0, 30.0, "classifier-free guidance; 1 turns it off, the original uses 7.5")


def check_guidance_rescale(guidance_rescale) -> None:
    check_number("guidance_rescale", guidance_rescale, 0.0, 1.0,
                 "how far the guided prediction's spread is pulled back to the conditional one")


def check_image_cfg(image_cfg) -> None:
    check_number("image_cfg", image_cfg, 0.0, 30.0, "the image's own guidance scale; None turns it off")


def check_cfg_settings(cfg, guidance_rescale, image_cfg=None) -> None:
    check_cfg(cfg)
    check_guidance_rescale(guidance_rescale)
    if image_cfg is not None:
        check_image_cfg(image_cfg)


def check_frames(frames) -> None:
    check_number("frames", frames, 2, 256, "the video's length; the released models were trained on 16",
                 whole=True)


def check_pixels(name: str, values: torch.Tensor, low: float, high: float, noun: str, fix: str) -> None:
    """Refuse NaN / Inf, or values outside [low, high] (a little slack for resampling round-off), in the `name`
    pixels (an image, a sketch hint); `noun` is what to give instead, `fix` ends the range message."""
    bad = (~torch.isfinite(values)).sum().item()
    if bad:
        raise InputError(f"the {name} holds {bad} NaN or infinite values; give {noun} with real pixel values")
    if values.numel():
        least, most = values.aminmax()
        if least < low - 1e-3 or most > high + 1e-3:
            raise InputError(f"{name} values range from {least.item():g} to {most.item():g}, but [{low:g}, "
                             f"{high:g}] is expected{fix}")


def check_prompt(name: str, prompt) -> None:
    if not isinstance(prompt, str):
        raise InputError(f"{name} must be a string (\"\" for none); got {type(prompt).__name__} {prompt!r}")
