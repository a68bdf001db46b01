"""I2V Sampler and Frame Interpolate: DDIM over the 3D UNet, then the VAE decode, frame by frame.

A seed reproduces dynamicrafter_core.pipeline.animate: the run draws its noise in the order of
dynamicrafter_core/noise.py.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from ..dynamicrafter_core.compiled import compiled_during
from ..dynamicrafter_core.errors import InputError
from ..dynamicrafter_core.noise import generator as seed_generator
from ..dynamicrafter_core.pipeline import draw_visual_detail_guidance, fit_image, frames_to_images, sample
from ..dynamicrafter_core.sampler import SPACINGS, ddim_timesteps
from ..dynamicrafter_core.schedule import parse_prompt_schedule, prompt_at
from ..dynamicrafter_core.settings import SEED_RANGE
from . import host, memory
from .context import ENCODER_INPUTS, PROMPT_INPUTS, image_context
from .guidance import SIZE_INPUTS, check_interpolation, keyframe_references, posterior, video_size
from .camera import CAMERA_INPUT, Camera, camera_of
from .sketch import SKETCH, Sketch
from .sockets import (CONTEXT, GUIDANCE, MODEL, MODEL_INPUT, DynamiCrafterModel, Guidance, ImageContext, expect,
                      image_to_core)

log = logging.getLogger(__name__)

COMPILE_INPUT = ("BOOLEAN", {
    "default": False,
    "tooltip": "torch.compile the UNet layer by layer for this node's runs: faster steps after a first step that "
               "compiles (H200, 512, bf16: 0.087 s per step instead of 0.134 s; the first step takes about 100 s, "
               "about 11 s once torch's cache holds the graphs; minutes on a CPU). Later runs reuse the graphs. "
               "Outputs differ from eager within float rounding."})

SAMPLING_INPUTS = {
    "seed": ("INT", {"default": 0, "min": 0, "max": SEED_RANGE - 1, "control_after_generate": True,
                     "tooltip": "The noise. The same seed and settings give the same video, on any device."}),
    "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                      "tooltip": "DDIM steps; the original uses 50. Fewer are faster and blurrier."}),
    "cfg": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01,
                      "tooltip": "How strongly the prompt and image steer the video (classifier-free guidance); "
                                 "the original uses 7.5. 1 skips the unconditional pass (twice as fast, weaker)."}),
    "image_cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                            "tooltip": "0: off. Otherwise the original's multi-condition guidance: this scale "
                                       "steers toward the image, cfg toward the prompt (a third pass per step). "
                                       "Try 1.0-3.0 when the video ignores the prompt or drifts from the image."}),
    "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                      "tooltip": "DDIM noise: 1 as the original (stochastic), 0 deterministic."}),
    "fs": ("INT", {"default": 0, "min": 0, "max": 1000,
                   "tooltip": "Motion: the frame rate the model is told (512: ~15-30, 1024: ~5-15, 512_interp: "
                              "~5-30; smaller = more motion) or, for the 256 model, the frame stride (larger = more "
                              "motion). 0: the checkpoint's default (512: 24, 1024: 10, 256: 3, 512_interp: 5)."}),
    "guidance_rescale": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.05,
                                   "tooltip": "Rescales the guided prediction's spread toward the conditional one, "
                                              "against over-saturation. -1: the checkpoint's default (0.7; 0 for "
                                              "the 256 model)."}),
    "spacing": (["auto", *SPACINGS], {"default": "auto",
                                      "tooltip": "Which timesteps DDIM visits. auto: the checkpoint's "
                                                 "(uniform_trailing, which starts from pure noise; uniform for 256)."}),
}
HIDDEN = {"unique_id": "UNIQUE_ID"}
def settings(model: DynamiCrafterModel, steps: int, cfg: float, image_cfg: float, eta: float, fs: int,
             guidance_rescale: float, spacing: str) -> dict:
    """Widget values -> pipeline.sample keywords, the 0 / -1 / auto values resolved to the variant's defaults."""
    d = model.core.defaults
    options = {"steps": steps, "cfg": cfg, "eta": eta, "fs": fs or d.fs,
               "guidance_rescale": d.guidance_rescale if guidance_rescale < 0 else guidance_rescale,
               "spacing": d.spacing if spacing == "auto" else spacing, "image_cfg": image_cfg or None}
    timesteps(model, options)  # refuses, before any work, a uniform step count that would overrun the schedule
    return options


def timesteps(model: DynamiCrafterModel, options: dict) -> torch.Tensor:
    """The timesteps DDIM visits: with uniform spacing not always `steps` of them (1000 // steps is the stride)."""
    return ddim_timesteps(options["steps"], options["spacing"], model.core.schedule.num_timesteps)


def load_unet(model: DynamiCrafterModel, videos: int, frames: int, latent_hw: tuple, options: dict,
              sketch: Optional[Sketch] = None) -> None:
    branches = 1 if options["cfg"] == 1 else 3 if options["image_cfg"] else 2
    branches += options.get("camera_cfg", 1.0) != 1.0  # camera guidance's pass without the camera
    unet = model.core.unet
    # the sketch encoder runs beside the UNet at every step; its activations are the encoder half of a UNet's. The
    # camera's pose encoder (CamI2V) runs before the first step, where the UNet runs
    patchers = model.patchers_for("unet", "pose_encoder") + ([sketch.encoder.patcher] if sketch is not None else [])
    host.load(patchers, memory.unet(videos, branches, frames, latent_hw, unet.cfg.model_channels,
                                    unet.dtype.itemsize, controlled=sketch is not None))


def sample_video(model: DynamiCrafterModel, context: ImageContext, start: tuple, end: Optional[tuple], frames: int,
                 seed: int, options: dict, on_step: Callable[[int, torch.Tensor], None],
                 sketching: Optional[dict] = None, camera: Optional[Camera] = None) -> torch.Tensor:
    """Latents (B, 4, T, h, w) of one video per context image; the UNet (and the sketch encoder) must be loaded.
    sketching: sketch_options' keywords, or nothing. camera: CamI2V's camera path, or None."""
    cond = context.conditioning
    generator = seed_generator(seed)
    concat = draw_visual_detail_guidance(model.core, start, end, frames, generator)
    if camera is not None:
        h, w = start[0].shape[-2:]
        sketching = {**(sketching or {}), "camera_cfg": camera.camera_cfg,
                     "camera": camera.features(model.core, list(range(frames)), h * 8, w * 8, model.device("unet"),
                                               seed)}

    def callback(step: dict) -> None:
        host.check_interrupt()  # Cancel: stop after this step; nothing was moved by hand, so nothing to undo
        on_step(step["i"], step["denoised"])

    return sample(model.core, cond.context, cond.uncond_context, concat, text_uncond_context=cond.text_uncond_context,
                  generator=generator, callback=callback, device=model.device("unet"), **options,
                  **(sketching or {})).cpu()


def decode(model: DynamiCrafterModel, latents: torch.Tensor, references: Optional[list] = None) -> torch.Tensor:
    """(B, 4, T, h, w) -> the video (B, 3, T, H, W) on the CPU, unclamped. DynamiCrafter's VAE one frame at a time,
    checking for Cancel between frames; ToonCrafter's decoder sees the whole video and the keyframes' features at
    once (its temporal layers and the original's re-decode of the middle frames need them together). The frames
    come to the CPU together at the end: a copy per frame would make the CPU wait for the GPU at every frame."""
    vae = model.core.vae
    h, w = latents.shape[-2:]
    device = model.device("vae")
    if model.core.config.vae.dual_reference:
        if references is None:
            raise InputError(f"{model.name} is ToonCrafter, whose decoder needs the keyframes' features: connect a "
                             "Visual Detail Guidance in interpolation or loop mode")
        frames = latents.shape[2]
        need = memory.video_decoder(latents.shape[0], frames, h * 8, w * 8, vae.cfg.ch, vae.dtype.itemsize)
        host.load(model.patchers_for("vae"), need, full=True)
        per_pass = None
        if not host.is_cpu(device) and need > (free := host.free_memory(device)):
            # a small GPU: fewer frames per decoder pass, each with the keyframes on its own first and last frame
            # (what the original does past 16 frames), rather than running out of memory
            per_pass = max(2, int(free / (need / frames)))
            log.warning("ToonCrafter's decoder needs about %.1f GiB for all %d frames at once, %.1f GiB are free: "
                        "decoding %d frames per pass, which is less faithful to the original's single pass",
                        need / 2 ** 30, frames, free / 2 ** 30, per_pass)
        return model.core.decode_latents(latents, per_pass, device=device, references=references,
                                         on_pass=host.check_interrupt).cpu()
    host.load(model.patchers_for("vae"), memory.vae(h * 8, w * 8, vae.cfg.ch, vae.dtype.itemsize)
              + memory.decoded_frames(latents.shape[0], latents.shape[2], h * 8, w * 8), full=True)
    return model.core.decode_latents(latents, device=device, on_pass=host.check_interrupt).cpu()


def latent_output(model: DynamiCrafterModel, latents: torch.Tensor) -> dict:
    """ComfyUI LATENT: unscaled SD-VAE latents, frames in the batch dimension (B*T, 4, h, w)."""
    samples = (latents / model.core.config.scale_factor).transpose(1, 2).flatten(0, 1)
    return {"samples": samples.contiguous()}


def sketch_options(model: DynamiCrafterModel, sketch: Optional[Sketch], guidance: Guidance) -> dict:
    """The sampler's sketch keywords: ToonCrafter only, the drawings placed on the video's frames and size."""
    if sketch is None:
        return {}
    sketch = expect(sketch, Sketch, "sketch", "Sketch Guidance")
    if model.core.variant != "tooncrafter":
        raise InputError(f"`sketch` is ToonCrafter's sketch guidance; {model.name} is DynamiCrafter "
                         f"{model.core.variant}. Load tooncrafter_512_interp_v1.ckpt, or disconnect `sketch`")
    return {"control": sketch.encoder.control, "control_scale": sketch.strength,
            "hint": sketch.hint(guidance.frames, guidance.height, guidance.width)}


class _VideoSampler:
    """What both samplers output."""
    CATEGORY = "sampling/video_models"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")
    OUTPUT_TOOLTIPS = ("The video frames (one image per frame, 0..1), for Save Animated WEBP, Create Video, "
                       "upscalers, Video Combine.",
                       "The frames' latents (SD VAE space, one latent per frame, as SVD's), for VAE Decode or latent "
                       "upscaling.")


class I2VSampler(_VideoSampler):
    DESCRIPTION = ("Generates the video: DDIM sampling of DynamiCrafter with classifier-free guidance, then the VAE "
                   "decode. Shows a preview of the first frame at each step when ComfyUI runs with a preview method.")
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": MODEL_INPUT,
                "context": (CONTEXT, {"tooltip": "From Encode Image Context."}),
                "guidance": (GUIDANCE, {"tooltip": "From Visual Detail Guidance."}),
                **SAMPLING_INPUTS,
            },
            "optional": {
                "sketch": (SKETCH, {"tooltip": "ToonCrafter only: drawings that steer the interpolation, from "
                                               "Sketch Guidance."}),
                "camera": CAMERA_INPUT,
                "compile": COMPILE_INPUT,
            },
            "hidden": HIDDEN,
        }

    def generate(self, model, context, guidance, seed: int, steps: int, cfg: float, image_cfg: float, eta: float,
                 fs: int, guidance_rescale: float, spacing: str, sketch=None, camera=None,
                 compile: Optional[bool] = None, unique_id: Optional[str] = None):  # noqa: A002 (the input's name)
        model = expect(model, DynamiCrafterModel, "model", "Load DynamiCrafter")
        context = expect(context, ImageContext, "context", "Encode Image Context")
        context.check_one_prompt("I2V Sampler")
        guidance = expect(guidance, Guidance, "guidance", "Visual Detail Guidance")
        sketching = sketch_options(model, sketch, guidance)
        camera = camera_of(model, camera, guidance.frames)
        if camera is not None and guidance.mode != "i2v":
            raise InputError(f"a camera path animates one image: set Visual Detail Guidance's mode to i2v (CamI2V "
                             f"has no {guidance.mode} mode), or disconnect `camera`")
        if guidance.mode != "i2v":
            check_interpolation(model, f"guidance mode {guidance.mode}")
        mean = guidance.start[0]
        if context.conditioning.context.shape[0] != mean.shape[0]:
            raise InputError(f"the context holds {context.conditioning.context.shape[0]} image(s) but the guidance "
                             f"{mean.shape[0]}; give Encode Image Context and Visual Detail Guidance the same images")
        options = settings(model, steps, cfg, image_cfg, eta, fs, guidance_rescale, spacing)
        load_unet(model, mean.shape[0], guidance.frames, mean.shape[-2:],
                  {**options, "camera_cfg": camera.camera_cfg if camera is not None else 1.0}, sketch)
        report = host.progress(len(timesteps(model, options)), unique_id, model.device("unet"))
        with compiled_during(model.core.unet, bool(compile), "I2V Sampler"):
            latents = sample_video(model, context, guidance.start, guidance.end, guidance.frames, seed, options,
                                   lambda i, denoised: report(i + 1, denoised), sketching, camera)
        video = decode(model, latents, guidance.references)
        if guidance.mode == "loop":  # the last frame repeats the first
            latents, video = latents[:, :, :-1], video[:, :, :-1]
        return (frames_to_images(video), latent_output(model, latents))


class FrameInterpolate(_VideoSampler):
    DESCRIPTION = ("One video through a batch of keyframes: a segment of `frames` frames from each keyframe to the "
                   "next (boundary keyframes appear once), optionally back to the first. Segment k uses seed + k. "
                   "Needs dynamicrafter_512_interp_v1.ckpt.")
    FUNCTION = "interpolate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From Load DynamiCrafter, an interpolation checkpoint."}),
                "keyframes": ("IMAGE", {"tooltip": "Two or more keyframes as one batch, in order (e.g. from Batch "
                                                   "Images); one is enough with loop."}),
                **PROMPT_INPUTS,
                "loop": ("BOOLEAN", {"default": False,
                                     "tooltip": "Add a segment from the last keyframe back to the first, so the "
                                                "video repeats seamlessly."}),
                **SIZE_INPUTS,
                "frames": ("INT", {"default": 16, "min": 2, "max": 64,
                                   "tooltip": "Frames per segment, keyframes included; the model was trained on "
                                              "16."}),
                **SAMPLING_INPUTS,
            },
            "optional": ENCODER_INPUTS,
            "hidden": HIDDEN,
        }

    def interpolate(self, model, keyframes, prompt: str, negative_prompt: str, loop: bool, width: int, height: int,
                    fit: str, frames: int, seed: int, steps: int, cfg: float, image_cfg: float, eta: float, fs: int,
                    guidance_rescale: float, spacing: str, clip=None, clip_vision=None,
                    unique_id: Optional[str] = None):
        model = expect(model, DynamiCrafterModel, "model", "Load DynamiCrafter")
        check_interpolation(model, "Frame Interpolate")
        keys = image_to_core(keyframes, "keyframes")
        if keys.shape[0] < 2 and not loop:
            raise InputError(f"`keyframes` holds {keys.shape[0]} image; interpolation needs at least 2 (batch them "
                             "with Batch Images), or turn on loop to animate one image back to itself")
        height, width = video_size(model, width, height)
        keys = [fit_image(keys[i:i + 1], height, width, fit) for i in range(keys.shape[0])]
        pairs = [(i, i + 1) for i in range(len(keys) - 1)] + ([(len(keys) - 1, 0)] if loop else [])
        # a schedule's prompt on each segment's first new frame (segment k adds frames - 1 after the first)
        schedule = parse_prompt_schedule(prompt)
        contexts = [ImageContext(image_context(model, keys[i], prompt_at(schedule, k * (frames - 1) + (k > 0)),
                                               negative_prompt, clip, clip_vision))
                    for k, (i, _) in enumerate(pairs)]
        posteriors = [posterior(model, key) for key in keys]
        options = settings(model, steps, cfg, image_cfg, eta, fs, guidance_rescale, spacing)
        load_unet(model, 1, frames, posteriors[0][0].shape[-2:], options)
        visits = len(timesteps(model, options))
        report = host.progress(visits * len(pairs), unique_id, model.device("unet"))
        segments = []
        for k, (i, j) in enumerate(pairs):
            latents = sample_video(model, contexts[k], posteriors[i], posteriors[j], frames, seed + k, options,
                                   lambda step, denoised: report(k * visits + step + 1, denoised))
            segments.append((latents, keyframe_references(model, keys[i], keys[j])))
        # each segment decoded whole (ToonCrafter's decoder needs its keyframes), then the frames two segments share
        # kept once: a segment's first frame is the previous one's last keyframe; a loop's last, the first keyframe
        videos, kept = [], []
        for k, (latents, references) in enumerate(segments):
            video = decode(model, latents, references)
            first, last = (1 if k > 0 else 0), (-1 if loop and k == len(pairs) - 1 else None)
            videos.append(video[:, :, first:last])
            kept.append(latents[:, :, first:last])
        return (frames_to_images(torch.cat(videos, dim=2)), latent_output(model, torch.cat(kept, dim=2)))
