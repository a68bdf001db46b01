"""The values that travel between our nodes, their socket types, and the conversions at the ComfyUI edge.

ComfyUI's IMAGE is (B, H, W, C) float 0..1 on the CPU; the core takes (B, 3, H, W) in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..dynamicrafter_core.errors import InputError
from ..dynamicrafter_core.model import DynamiCrafter
from ..dynamicrafter_core.pipeline import Conditioning, as_rgb

MODEL = "DYNAMICRAFTER_MODEL"
CONTEXT = "DYNAMICRAFTER_CONTEXT"
GUIDANCE = "DYNAMICRAFTER_GUIDANCE"
# the `model` input of every node downstream of the loader
MODEL_INPUT = (MODEL, {"tooltip": "From Load DynamiCrafter."})

INTERP_CHECKPOINT = "dynamicrafter_512_interp_v1.ckpt"


@dataclass
class DynamiCrafterModel:
    """One loaded checkpoint: the core model and a ComfyUI ModelPatcher for each of its networks (the same modules,
    so ComfyUI moving a patcher moves what the core runs). The UNet's patches ComfyUI's BaseModel around the core UNet
    (native.py): it is also the MODEL that DynamiCrafter Model hands to ComfyUI's samplers."""
    core: DynamiCrafter
    patchers: dict  # "unet", "vae", "query_transformer", and "text_encoder" / "image_encoder" unless pruned
    name: str
    dtypes: dict = field(default_factory=dict)  # stage -> weight dtype, for the description

    def patchers_for(self, *stages: str) -> list:
        return [self.patchers[s] for s in stages if s in self.patchers]

    # What ComfyUI asks of a node output that holds models, as of its MODEL / CLIP / VAE (ComfyUI 0.33+): the RAM
    # cache drops old outputs with a `patcher` first instead of taking them for empty, and the models of `patcher`
    # and get_models() are marked as in use by the running prompt, so their pinned host memory is evicted last.

    @property
    def patcher(self):
        return self.patchers["unet"]

    def get_models(self) -> list:
        return list(self.patchers.values())

    def device(self, stage: str) -> torch.device:
        """Where ComfyUI runs a network: its patcher's load device. Under Dynamic VRAM the weights of large layers
        stay in host memory and are copied in per call, so where a weight sits says nothing about it."""
        return self.patchers[stage].load_device


@dataclass
class ImageContext:
    """The text-aligned image context for B images, on the intermediate device. A prompt schedule also keeps each
    entry's context, ((frame, Conditioning), ...); `conditioning` is then the first entry's."""
    conditioning: Conditioning
    schedule: tuple = ()

    def check_one_prompt(self, node: str) -> None:
        if len(self.schedule) > 1:
            raise InputError(f"the context holds a prompt schedule of {len(self.schedule)} prompts, but {node} makes "
                             "one video window with one prompt: use Continue Video (one prompt per segment), or "
                             "DynamiCrafter Conditioning with Context Windows (one per window); or give Encode Image "
                             "Context one prompt")


@dataclass
class Guidance:
    """The visual detail guidance before its noise is drawn: the VAE posterior of the start (and end) frames.

    The sampler (or DynamiCrafter Conditioning) draws the posterior noise from its seed in the order of
    dynamicrafter_core/noise.py, so a seed reproduces the core's video."""
    mode: str  # "i2v", "interpolation" or "loop"
    frames: int
    height: int
    width: int
    start: tuple  # (mean, std), each (B, 4, h, w) float32
    end: Optional[tuple] = None
    references: Optional[list] = None  # ToonCrafter: the keyframes' five encoder features for its decoder


def expect(value, cls, socket: str, node_hint: str):
    """Refuse a value of the wrong kind (a ComfyUI MODEL reaching our model socket through a reroute or an API
    prompt) with a sentence instead of an attribute error deep inside."""
    if not isinstance(value, cls):
        got = type(value).__name__
        extra = " (a ComfyUI MODEL, e.g. from Load Checkpoint)" if got == "ModelPatcher" else ""
        raise InputError(f"`{socket}` needs {node_hint}; it received a {got}{extra}. Connect the output of "
                         f"{node_hint} to it.")
    return value


def image_to_core(image: torch.Tensor, socket: str) -> torch.Tensor:
    """IMAGE (B, H, W, C) 0..1 -> (B, 3, H, W) in [-1, 1]."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"`{socket}` needs an IMAGE batch (batch, height, width, channels); it received {shape}")
    if image.shape[0] == 0:
        raise InputError(f"`{socket}` received an empty image batch (0 images); connect at least one image")
    return as_rgb(image.movedim(-1, 1).float() * 2.0 - 1.0)


def core_to_image(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> IMAGE (B, H, W, 3) 0..1 on the CPU."""
    return ((images.float().clamp(-1, 1) + 1.0) / 2.0).movedim(1, -1).cpu().contiguous()
