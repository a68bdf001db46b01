"""ToonCrafter's sketch guidance: Load Sketch Encoder (sketch_encoder.ckpt, a ControlNet) and Sketch Guidance (one
drawing per frame, for I2V Sampler's optional `sketch` input)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from ..dynamicrafter_core.controlnet import ControlNet, load_controlnet, sketch_hint
from ..dynamicrafter_core.errors import InputError, ModelFileNotFoundError
from . import host
from .sockets import expect

log = logging.getLogger(__name__)

SKETCH_ENCODER = "DYNAMICRAFTER_SKETCH_ENCODER"
SKETCH = "DYNAMICRAFTER_SKETCH"
# ComfyUI's fp16/bf16 choice weighs the network's size against free memory; the released sketch encoder has 3.6e8
SKETCH_ENCODER_PARAMETERS = 364_227_952


@dataclass
class SketchEncoder:
    """The loaded ControlNet and ComfyUI's patcher for it (the same module)."""
    control: ControlNet
    patcher: object
    name: str


@dataclass
class Sketch:
    """What I2V Sampler needs: the encoder, the drawings (N, H, W) in [0, 1], the frames they belong to (None: one
    per frame, in order), whether they are dark lines on light, and the strength."""
    encoder: SketchEncoder
    drawings: torch.Tensor
    at: Optional[list]
    invert: bool
    strength: float

    def hint(self, frames: int, height: int, width: int) -> torch.Tensor:
        try:
            return sketch_hint(self.drawings, frames, height, width, self.at, self.invert)
        except InputError as e:  # in the words of the node's inputs
            raise InputError(f"Sketch Guidance: {e} (`at`: the frames, counted from 0)") from None


class SketchEncoderLoader:
    DESCRIPTION = ("Loads ToonCrafter's sketch encoder (sketch_encoder.ckpt from Doubiiu/ToonCrafter, or a "
                   ".safetensors of it) from models/controlnet, for Sketch Guidance.")
    CATEGORY = "loaders/video_models"
    FUNCTION = "load"
    RETURN_TYPES = (SKETCH_ENCODER,)
    RETURN_NAMES = ("sketch_encoder",)
    OUTPUT_TOOLTIPS = ("The sketch ControlNet, for Sketch Guidance.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sketch_encoder_name": (host.controlnet_names(), {
                "tooltip": "sketch_encoder.ckpt (1.5 GB, research / non-commercial licence) saved in "
                           "models/controlnet."}),
        }}

    def load(self, sketch_encoder_name: str):
        path = host.controlnet_path(sketch_encoder_name)
        if path is None:
            raise ModelFileNotFoundError(
                f"{sketch_encoder_name} is not in models/controlnet. Download sketch_encoder.ckpt from "
                "https://huggingface.co/Doubiiu/ToonCrafter and save it there, then press R to refresh the list.")
        load_device, offload_device = host.devices()["unet"]
        weight_dtype = host.unet_dtype(load_device, SKETCH_ENCODER_PARAMETERS)
        compute = host.compute_dtype(weight_dtype, load_device)  # stored in the dtype it computes in
        control = load_controlnet(path, device="cpu", dtype=compute, ops=host.ops(compute, compute))
        # beside the UNet, and like it made of comfy.ops layers: ComfyUI's core patcher, streamed under Dynamic VRAM
        patcher = host.model_patcher(control, load_device, offload_device, streaming=True)
        log.info("Load Sketch Encoder: %s", sketch_encoder_name)
        return (SketchEncoder(control=control, patcher=patcher, name=sketch_encoder_name),)


class SketchGuidance:
    DESCRIPTION = ("ToonCrafter's sketch guidance: one drawing per video frame steers the interpolation (a blank "
                   "frame where there is no drawing). Connect to I2V Sampler's `sketch` input, or to Apply Sketch "
                   "Guidance on the native MODEL.")
    CATEGORY = "conditioning/video_models"
    FUNCTION = "encode"
    RETURN_TYPES = (SKETCH,)
    RETURN_NAMES = ("sketch",)
    OUTPUT_TOOLTIPS = ("The sketches and their strength, for I2V Sampler or Apply Sketch Guidance.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sketch_encoder": (SKETCH_ENCODER, {"tooltip": "From Load Sketch Encoder."}),
            "sketches": ("IMAGE", {"tooltip": "One image per video frame, at the video's size: dark lines on a light "
                                              "background (as drawn); an all-white frame where there is no "
                                              "drawing."}),
            "strength": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                                   "tooltip": "How strongly the drawings steer the video; 0.6 as the sketch "
                                              "fork's default, 0 ignores them."}),
            "invert": ("BOOLEAN", {"default": True,
                                   "tooltip": "On: dark lines on light, turned into the white lines on black the "
                                              "encoder was trained with. Off: the images already are white lines "
                                              "on black."}),
            "at": ("STRING", {"default": "",
                              "tooltip": "The frames the drawings are for, counted from 0, one per drawing (e.g. "
                                         "'8' for one drawing in the middle of 16 frames, '4, 12' for two). Empty: "
                                         "one drawing per frame, in order. Frames without a drawing get none."}),
        }}

    def encode(self, sketch_encoder, sketches, strength: float, invert: bool, at: str = ""):
        sketch_encoder = expect(sketch_encoder, SketchEncoder, "sketch_encoder", "Load Sketch Encoder")
        if not isinstance(sketches, torch.Tensor) or sketches.ndim != 4 or sketches.shape[0] == 0:
            shape = tuple(sketches.shape) if isinstance(sketches, torch.Tensor) else type(sketches).__name__
            raise InputError(f"`sketches` needs an IMAGE batch of drawings; it received {shape}")
        try:
            frames = [int(part) for part in at.replace(",", " ").split()] if at.strip() else None
        except ValueError:
            raise InputError(f"`at` {at!r} is not a list of frame numbers; write e.g. '8' or '4, 12'") from None
        grey = sketches[..., :3].float().mean(dim=-1)  # (N, H, W) in 0..1
        return (Sketch(encoder=sketch_encoder, drawings=grey, at=frames, invert=invert, strength=strength),)
