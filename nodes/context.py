"""Encode Image Context: the text-aligned image context (paper §3.1), from the checkpoint's own OpenCLIP towers or
from ComfyUI's CLIP (SD2.x OpenCLIP-H text) and CLIP_VISION (ViT-H/14)."""
from __future__ import annotations

import torch

from ..dynamicrafter_core.errors import InputError, MissingEncoderError
from ..dynamicrafter_core.pipeline import Conditioning, text_image_context
from ..dynamicrafter_core.schedule import parse_prompt_schedule
from ..dynamicrafter_core.unet import TEXT_TOKENS
from . import host, memory
from .sockets import CONTEXT, MODEL_INPUT, DynamiCrafterModel, ImageContext, core_to_image, expect, image_to_core

TEXT_WIDTHS = {768: "SD1.x's CLIP-L", 1280: "SDXL's CLIP-G", 2048: "SDXL's dual CLIP", 4096: "a T5 encoder"}
VISION_WIDTHS = {1024: "CLIP ViT-L/14 (SD1.5 IP-Adapter's)", 1664: "CLIP ViT-bigG/14", 1152: "SigLIP"}

PROMPT_INPUTS = {
    "prompt": ("STRING", {"multiline": True, "default": "",
                          "tooltip": "What should happen in the video (motion, camera, mood). Only the first 77 "
                                     "tokens are used, as in the original. A schedule, `0: a boat on a calm lake | "
                                     "16: the boat sails toward the sunset` (frames of the output), gives Frame "
                                     "Interpolate a prompt per segment and DynamiCrafter Conditioning one per "
                                     "context window."}),
    "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                   "tooltip": "What to steer away from; the original leaves it empty."}),
}
ENCODER_INPUTS = {
    "clip": ("CLIP", {"tooltip": "Optional SD2.x text encoder (OpenCLIP ViT-H/14, 1024 wide), e.g. the CLIP of "
                                 "an SD2.1 checkpoint. Needed when the DynamiCrafter file was pruned of its text "
                                 "tower; when connected it is used instead of the file's own."}),
    "clip_vision": ("CLIP_VISION", {"tooltip": "Optional CLIP ViT-H/14 vision model (1280 wide), e.g. "
                                               "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors. Needed when the file "
                                               "was pruned of its image tower; used instead of it when connected."}),
}


def _check_width(tokens: torch.Tensor, expected: int, socket: str, known: dict, needed: str) -> None:
    width = tokens.shape[-1]
    if width != expected:
        what = f" ({known[width]})" if width in known else ""
        raise InputError(f"`{socket}` gives {width}-wide tokens{what}, but DynamiCrafter needs {needed} ({expected} "
                         f"wide). Connect that model instead, or leave `{socket}` unconnected if the DynamiCrafter "
                         "checkpoint has its own CLIP towers.")


def _text(model: DynamiCrafterModel, clip, prompt: str, negative_prompt: str) -> tuple:
    if clip is None:
        text = model.core.encode_text([prompt, negative_prompt], device=model.device("text_encoder"))
        return text[:1], text[1:]
    if not hasattr(clip, "tokenize"):
        raise InputError(f"`clip` needs a CLIP (text encoder); it received a {type(clip).__name__}")
    encoded = []
    for tokens in host.encode_text_with_clip(clip, [prompt, negative_prompt]):
        _check_width(tokens, model.core.config.unet.context_dim, "clip", TEXT_WIDTHS,
                     "the SD2.x OpenCLIP ViT-H/14 text encoder")
        encoded.append(tokens[:, :TEXT_TOKENS])  # ComfyUI appends 77-token chunks for long prompts; the original cuts
    return tuple(encoded)


def _image_tokens(model: DynamiCrafterModel, clip_vision, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> CLIP tokens of the B images and of a mid-grey image (the unconditional branch)."""
    batch = torch.cat([images, torch.zeros_like(images[:1])])
    if clip_vision is None:
        return model.core.encode_image(batch, device=model.device("image_encoder"))
    if not hasattr(clip_vision, "encode_image"):
        raise InputError(f"`clip_vision` needs a CLIP_VISION model; it received a {type(clip_vision).__name__}")
    tokens = host.encode_image_with_clip_vision(clip_vision, core_to_image(batch))
    _check_width(tokens, model.core.config.query_transformer.embedding_dim, "clip_vision", VISION_WIDTHS,
                 "CLIP ViT-H/14")
    return tokens


def image_context(model: DynamiCrafterModel, images: torch.Tensor, prompt: str, negative_prompt: str,
                  clip=None, clip_vision=None) -> Conditioning:
    """Both guidance branches' contexts for (B, 3, H, W) images in [-1, 1] (the frames as the video shows them), on
    ComfyUI's intermediate device. Same maths as dynamicrafter_core.pipeline.encode_image_context."""
    core = model.core
    missing = [socket for socket, wired, tower in (("clip", clip, core.text_encoder),
                                                   ("clip_vision", clip_vision, core.image_encoder))
               if wired is None and tower is None]
    if missing:
        towers = " and ".join({"clip": "text", "clip_vision": "vision"}[m] for m in missing)
        raise MissingEncoderError(
            f"{model.name} was pruned of its CLIP {towers} tower{'s' if len(missing) > 1 else ''}: connect "
            f"{' and '.join(f'`{m}`' for m in missing)} on this node (an SD2.x text encoder for `clip`, CLIP "
            "ViT-H/14 for `clip_vision`), or load the full checkpoint.")
    own = [stage for stage, wired in (("text_encoder", clip), ("image_encoder", clip_vision)) if wired is None]
    bytes_per_value = model.dtypes["encoders"].itemsize
    host.load(model.patchers_for(*own, "query_transformer"), memory.encoders(images.shape[0] + 1, bytes_per_value),
              full=True)  # OpenCLIP towers are plain torch.nn: a partial load would leave layers on the CPU
    text, negative_text = _text(model, clip, prompt, negative_prompt)
    projected = core.project_image(_image_tokens(model, clip_vision, images), device=model.device("query_transformer"))
    cond = text_image_context(text.to(projected), negative_text.to(projected), projected[:-1], projected[-1:])
    out = host.intermediate_device()
    return Conditioning(**{k: v.to(out) for k, v in vars(cond).items() if v is not None})


class EncodeImageContext:
    DESCRIPTION = ("The text-aligned image context: the image's CLIP tokens, projected by the Query Transformer to "
                   "16 tokens per frame, next to the prompt's tokens; with the negative prompt and a mid-grey image "
                   "for the unconditional branch.")
    CATEGORY = "conditioning/video_models"
    FUNCTION = "encode"
    RETURN_TYPES = (CONTEXT,)
    RETURN_NAMES = ("context",)
    OUTPUT_TOOLTIPS = ("The conditioning of both guidance branches, for I2V Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": MODEL_INPUT,
                "image": ("IMAGE", {"tooltip": "The start image. Connect Visual Detail Guidance's `frame` output "
                                               "so the context sees the frame as the video shows it (cropped or "
                                               "padded); a batch gives one video per image."}),
                **PROMPT_INPUTS,
            },
            "optional": ENCODER_INPUTS,
        }

    def encode(self, model, image, prompt: str, negative_prompt: str, clip=None, clip_vision=None):
        model = expect(model, DynamiCrafterModel, "model", "Load DynamiCrafter")
        images = image_to_core(image, "image")
        schedule = parse_prompt_schedule(prompt)
        if len(schedule) == 1:
            return (ImageContext(image_context(model, images, schedule[0][1], negative_prompt, clip, clip_vision)),)
        conds = [(frame, image_context(model, images, text, negative_prompt, clip, clip_vision))
                 for frame, text in schedule]
        return (ImageContext(conds[0][1], tuple(conds)),)
