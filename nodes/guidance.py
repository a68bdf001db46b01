"""Visual Detail Guidance: the start (and end) frame's VAE latents that the UNet sees beside the noise (paper §3.2)."""
from __future__ import annotations

from typing import Optional

import torch

from ..dynamicrafter_core.errors import InputError
from ..dynamicrafter_core.pipeline import FITS, fit_image
from . import host, memory
from .sockets import (
    GUIDANCE,
    INTERP_CHECKPOINT,
    MODEL_INPUT,
    DynamiCrafterModel,
    Guidance,
    core_to_image,
    expect,
    image_to_core,
)

MODES = ["i2v", "interpolation", "loop"]

SIZE_INPUTS = {
    "width": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                      "tooltip": "Video width in pixels, a multiple of 64. 0: the checkpoint's own (512: 512x320, "
                                 "1024: 1024x576, 256: 256x256)."}),
    "height": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                       "tooltip": "Video height in pixels, a multiple of 64. 0: the checkpoint's own."}),
    "fit": (list(FITS), {"default": "crop",
                         "tooltip": "Other aspect ratios: crop (fill the frame, cut the overflow), pad (show all, "
                                    "black borders) or stretch (distort)."}),
}


def keyframe_references(model: DynamiCrafterModel, start: torch.Tensor, end: torch.Tensor) -> Optional[list]:
    """ToonCrafter's decoder fuses the two keyframes' encoder features into every video; other models need none."""
    if not model.core.config.vae.dual_reference:
        return None
    out = host.intermediate_device()
    return [r.to(out) for r in model.core.encode_references(start, end, device=model.device("vae"))]


def check_interpolation(model: DynamiCrafterModel, what: str) -> None:
    if not model.core.supports_interpolation:
        raise InputError(f"{what} needs a checkpoint trained for interpolation; {model.name} is DynamiCrafter "
                         f"{model.core.variant}. Load {INTERP_CHECKPOINT} (or, if this file is the interpolation "
                         "model under another name, set Load DynamiCrafter's variant to 512_interp).")


def video_size(model: DynamiCrafterModel, width: int, height: int) -> tuple:
    default_h, default_w = model.core.config.resolution
    return height or default_h, width or default_w


def posterior(model: DynamiCrafterModel, images: torch.Tensor) -> tuple:
    """(B, 3, H, W) in [-1, 1] -> the VAE posterior (mean, std); the sampler draws its noise from its seed."""
    vae = model.core.vae
    h, w = images.shape[-2:]
    host.load(model.patchers_for("vae"), memory.vae(h, w, vae.cfg.ch, vae.dtype.itemsize), full=True)
    out = host.intermediate_device()
    return tuple(t.to(out) for t in model.core.encode_posterior(images, device=model.device("vae")))


def pair_batches(start: torch.Tensor, end: torch.Tensor) -> tuple:
    """One end image for every start image, or one each."""
    if start.shape[0] == end.shape[0]:
        return start, end
    if 1 not in (start.shape[0], end.shape[0]):
        raise InputError(f"{start.shape[0]} start images but {end.shape[0]} end images; give one end image, or "
                         "one per start image")
    n = max(start.shape[0], end.shape[0])
    return start.expand(n, -1, -1, -1), end.expand(n, -1, -1, -1)


class VisualDetailGuidance:
    DESCRIPTION = ("The visual detail guidance: the start frame's VAE latent on every frame (i2v), or the start and "
                   "end frames' latents on the first and last frames (interpolation; loop ends on the start "
                   "image). The image is fitted to the video size first.")
    CATEGORY = "conditioning/video_models"
    FUNCTION = "encode"
    RETURN_TYPES = (GUIDANCE, "IMAGE")
    RETURN_NAMES = ("guidance", "frame")
    OUTPUT_TOOLTIPS = ("The guidance latents for I2V Sampler (the sampler draws their noise from its seed).",
                       "The start image fitted to the video size: connect it to Encode Image Context.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": MODEL_INPUT,
                "image": ("IMAGE", {"tooltip": "The start image (a batch gives one video per image)."}),
                "mode": (MODES, {"default": "i2v",
                                 "tooltip": "i2v: animate the image. interpolation: from image to end_image. loop: "
                                            "from the image back to itself, seamless when repeated. interpolation "
                                            f"and loop need {INTERP_CHECKPOINT}."}),
                **SIZE_INPUTS,
                "frames": ("INT", {"default": 16, "min": 2, "max": 64,
                                   "tooltip": "Frames to generate; the released models were trained on 16 (fewer "
                                              "or more lose quality; memory grows with the count). A loop gives "
                                              "one fewer: its last frame would repeat the first."}),
            },
            "optional": {
                "end_image": ("IMAGE", {"tooltip": "The last frame, for mode interpolation."}),
            },
        }

    def encode(self, model, image, mode: str, width: int, height: int, fit: str, frames: int,
               end_image: Optional[torch.Tensor] = None):
        model = expect(model, DynamiCrafterModel, "model", "Load DynamiCrafter")
        if mode != "i2v":
            check_interpolation(model, f"mode {mode}")
        elif model.core.variant == "tooncrafter":
            raise InputError(f"{model.name} is ToonCrafter, which interpolates between two keyframes: set mode to "
                             "interpolation and connect `end_image` (or mode loop), or load a DynamiCrafter "
                             "checkpoint (dynamicrafter_512_v1.ckpt) for image to video from one image")
        if mode == "interpolation" and end_image is None:
            raise InputError("mode interpolation needs `end_image` connected (the last frame of the video)")
        if mode != "interpolation" and end_image is not None:
            raise InputError(f"`end_image` is connected but mode is {mode}; choose interpolation, or disconnect it")
        height, width = video_size(model, width, height)
        start = fit_image(image_to_core(image, "image"), height, width, fit)
        end = None
        if mode == "interpolation":
            start, end = pair_batches(start, fit_image(image_to_core(end_image, "end_image"), height, width, fit))
        frame = core_to_image(start)
        # encode the `frame` output itself, so the guidance and the context fed from it see the same pixels, bit for bit
        start = image_to_core(frame, "frame")
        start_posterior = posterior(model, start)
        end_posterior = posterior(model, end) if end is not None else start_posterior if mode == "loop" else None
        references = keyframe_references(model, start, end if end is not None else start) if mode != "i2v" else None
        guidance = Guidance(mode=mode, frames=frames, height=height, width=width, start=start_posterior,
                            end=end_posterior, references=references)
        return (guidance, frame)
