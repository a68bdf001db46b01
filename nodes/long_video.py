"""Continue Video and Colour Match: videos longer than the models' 16 frames, segment by segment, and a colour
correction for any video (dynamicrafter_core/long_video.py and colour.py say how and why).

A seed reproduces dynamicrafter_core.continue_video: each segment is I2V Sampler's (or Frame Interpolate's) video for
seed + k, from the previous segment's colour-matched last frame.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..dynamicrafter_core.colour import METHODS, PER, colour_match
from ..dynamicrafter_core.errors import InputError
from ..dynamicrafter_core.long_video import MAX_FRAMES, Segment, grow_video, keyframe_segments, plan_segments
from ..dynamicrafter_core.pipeline import TOONCRAFTER_I2V, fit_image, frames_to_images
from ..dynamicrafter_core.schedule import parse_prompt_schedule, prompt_at
from ..dynamicrafter_core.settings import SEED_RANGE
from . import host
from .context import ENCODER_INPUTS, image_context
from .guidance import SIZE_INPUTS, check_interpolation, keyframe_references, posterior, video_size
from .sampler import HIDDEN, SAMPLING_INPUTS, decode, load_unet, sample_video, settings, timesteps
from .sockets import MODEL_INPUT, DynamiCrafterModel, ImageContext, expect, image_to_core

OFF = "off"
COLOUR_INPUTS = {
    "colour_match": ([*METHODS, OFF], {
        "default": "mean_std",
        "tooltip": "Each segment's colours matched to the reference (the start image unless `reference` is "
                   "connected) in CIE Lab before the next segment starts from it, so colour and exposure do not "
                   "drift from segment to segment. mean_std: shift and scale (keeps the video's own contrast); "
                   "histogram: match the whole distribution (follows crushed shadows, clipped highlights); off."}),
    "colour_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "How much of the colour correction to apply; 0 leaves the colours as "
                                             "made."}),
}


class ContinueVideo:
    DESCRIPTION = ("A video longer than the model's 16 frames, grown segment by segment: each segment is an ordinary "
                   "16-frame video (seed + k) from the last frame of the one before, colour-matched to the start "
                   "image; the boundary frame appears once. With keyframes and the interpolation model, each segment "
                   "runs to the next keyframe. The prompt may be a schedule: `0: a boat on a calm lake | 16: the "
                   "boat sails toward the sunset` (frames of the output).")
    CATEGORY = "sampling/video_models"
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The whole video (one image per frame, 0..1), for Save Animated WEBP, Create Video, Video "
                       "Combine.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": MODEL_INPUT,
                "image": ("IMAGE", {"tooltip": "The start image (one)."}),
                "prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "One prompt for the whole video, or a schedule: `0: a boat on a calm lake | 16: the "
                               "boat sails toward the sunset` (entries split by | or new lines; the numbers are "
                               "frames of the output, the first 0). Each segment takes the prompt on its first new "
                               "frame."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "What to steer away from, in every segment."}),
                "frames": ("INT", {"default": 64, "min": 2, "max": MAX_FRAMES,
                                   "tooltip": "Frames of the whole video (16 frames are 2 s at 8 fps). Ignored when "
                                              "`keyframes` is connected: one segment per keyframe."}),
                "segment_frames": ("INT", {"default": 16, "min": 2, "max": 64,
                                           "tooltip": "Frames per segment, boundary included; the models were "
                                                      "trained on 16. Each further segment adds "
                                                      "segment_frames - 1 - overlap frames."}),
                "overlap": ("INT", {"default": 0, "min": 0, "max": 62,
                                    "tooltip": "Frames generated twice at each seam and cross-faded, for a smoother "
                                               "seam at the cost of more segments. 0: each segment starts from the "
                                               "previous one's last frame."}),
                **COLOUR_INPUTS,
                **SIZE_INPUTS,
                **SAMPLING_INPUTS,
            },
            "optional": {
                "keyframes": ("IMAGE", {"tooltip": "Interpolation model only: images the video runs through, in "
                                                   "order; one segment from the last frame so far to each."}),
                "reference": ("IMAGE", {"tooltip": "The colours to keep (its first image); default the start "
                                                   "image."}),
                **ENCODER_INPUTS,
            },
            "hidden": HIDDEN,
        }

    def generate(self, model, image, prompt: str, negative_prompt: str, frames: int, segment_frames: int,
                 overlap: int, colour_match: str, colour_strength: float, width: int, height: int, fit: str,
                 seed: int, steps: int, cfg: float, image_cfg: float, eta: float, fs: int, guidance_rescale: float,
                 spacing: str, keyframes=None, reference=None, clip=None, clip_vision=None,
                 unique_id: Optional[str] = None):
        model = expect(model, DynamiCrafterModel, "model", "Load DynamiCrafter")
        if keyframes is None and model.core.variant == "tooncrafter":
            raise InputError(f"{model.name}: {TOONCRAFTER_I2V}. For a longer cartoon, connect `keyframes` (Frame "
                             "Interpolate chains keyframes too)")
        if keyframes is not None:
            check_interpolation(model, "Continue Video with `keyframes`")
            if overlap:
                raise InputError(f"overlap {overlap} with `keyframes`: each segment must end on its keyframe, which "
                                 "a cross-fade would blur; set overlap to 0")
        schedule = parse_prompt_schedule(prompt)
        height, width = video_size(model, width, height)
        images = image_to_core(image, "image")
        if images.shape[0] != 1:
            raise InputError(f"`image` holds {images.shape[0]} images; Continue Video makes one video from one start "
                             "image (pick one with Image From Batch)")
        start = fit_image(images, height, width, fit)
        ends = None
        if keyframes is not None:
            keys = image_to_core(keyframes, "keyframes")
            ends = [fit_image(keys[i:i + 1], height, width, fit) for i in range(keys.shape[0])]
            plan = keyframe_segments(len(ends), segment_frames)
            frames = plan[-1].first + plan[-1].frames
        else:
            plan = plan_segments(frames, segment_frames, overlap)
        if seed + len(plan) - 1 >= SEED_RANGE:
            raise InputError(f"seed {seed} + {len(plan) - 1} (one seed per segment) passes the largest seed; use a "
                             "smaller seed")
        colour = None if colour_match == OFF else colour_match
        target = frames_to_images(start[:, :, None])[0] if reference is None else reference[:1].float()
        options = settings(model, steps, cfg, image_cfg, eta, fs, guidance_rescale, spacing)
        visits = len(timesteps(model, options))
        report = host.progress(visits * len(plan), unique_id, model.device("unet"))

        def make(segment: Segment, first: torch.Tensor) -> torch.Tensor:
            end = ends[segment.index] if ends is not None else None
            context = ImageContext(image_context(model, first, prompt_at(schedule, segment.first_new),
                                                 negative_prompt, clip, clip_vision))
            start_posterior = posterior(model, first)
            end_posterior = posterior(model, end) if end is not None else None
            load_unet(model, 1, segment.frames, start_posterior[0].shape[-2:], options)
            latents = sample_video(model, context, start_posterior, end_posterior, segment.frames,
                                   seed + segment.index, options,
                                   lambda i, denoised: report(segment.index * visits + i + 1, denoised))
            references = keyframe_references(model, first, end) if end is not None else None
            return frames_to_images(decode(model, latents, references))

        return (grow_video(plan, start, make, frames, target, colour, colour_strength),)


class ColourMatch:
    DESCRIPTION = ("Matches a video's colours and exposure to a reference frame in CIE Lab (perceptual): mean/std "
                   "transfer or histogram matching, per frame or one correction for the whole batch, with a "
                   "strength. Useful for any video: a chained or upscaled video that drifted, or frames from "
                   "different sources.")
    CATEGORY = "image/postprocessing"
    FUNCTION = "match"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The frames with the reference's colours (0..1).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The frames to correct (a video as a batch)."}),
                "method": (list(METHODS), {
                    "default": "mean_std",
                    "tooltip": "mean_std: give each Lab channel the reference's mean and spread (keeps contrast "
                               "structure). histogram: map each channel's distribution onto the reference's."}),
                "strength": COLOUR_INPUTS["colour_strength"],
                "per": (list(PER), {
                    "default": "frame",
                    "tooltip": "frame: each frame corrected on its own (removes drift within the video). video: "
                               "one correction from all frames (keeps lighting changes inside the video)."}),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": "The colours to match (its first image). Default: the first "
                                                   "frame of `images`."}),
            },
        }

    def match(self, images, method: str, strength: float, per: str, reference=None):
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise InputError("`images` needs an IMAGE batch (batch, height, width, 3)")
        target = images[:1] if reference is None else reference[:1]
        return (colour_match(images, target, method, strength, per).contiguous(),)
