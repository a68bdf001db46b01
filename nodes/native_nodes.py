"""The native path's nodes: DynamiCrafter as a ComfyUI MODEL for KSampler / SamplerCustomAdvanced, Apply ControlNet,
LoRA loaders, context windows and model patches, with the original's scheduler, DDIM sampler, guidance and noise
order as ComfyUI SIGMAS, SAMPLER, GUIDER and NOISE (the ComfyUI classes are in native.py).

SamplerCustomAdvanced with DynamiCrafter Noise, Guider, DDIM Sampler and Scheduler, with the seed of DynamiCrafter
Conditioning, gives I2V Sampler's latents for the same settings.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..dynamicrafter_core.errors import InputError
from ..dynamicrafter_core.noise import generator as seed_generator
from ..dynamicrafter_core.noise import posterior_shapes
from ..dynamicrafter_core.pipeline import draw_visual_detail_guidance, frames_to_images
from ..dynamicrafter_core.sampler import SPACINGS, ddim_timesteps
from ..dynamicrafter_core.schedule import prompt_at
from ..dynamicrafter_core.settings import SEED_RANGE, check_fs
from . import native
from .guidance import check_interpolation
from .sampler import COMPILE_INPUT, SAMPLING_INPUTS, decode, latent_output, sketch_options
from .camera import CAMERA, camera_of
from .sketch import SKETCH
from .sockets import CONTEXT, GUIDANCE, MODEL_INPUT, DynamiCrafterModel, Guidance, ImageContext, expect

NATIVE_MODEL_INPUT = ("MODEL", {"tooltip": "From DynamiCrafter Model (also through LoRA loaders, Context Windows or "
                                           "model patches)."})
ENDS = ("original", "clean")


class NativeModel:
    DESCRIPTION = ("DynamiCrafter as a ComfyUI MODEL, for KSampler, SamplerCustomAdvanced, Apply ControlNet (SD2.1 "
                   "ControlNets), LoRA loaders, Context Windows and model patches. The same weights as Load "
                   "DynamiCrafter's model, not a copy. Condition it with DynamiCrafter Conditioning.")
    CATEGORY = "loaders/video_models"
    FUNCTION = "convert"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The UNet with DynamiCrafter's noise schedule (its dynamic rescale folded into the sigmas). "
                       "Frames travel in the batch, one video per run.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": MODEL_INPUT}, "optional": {"compile": COMPILE_INPUT}}

    def convert(self, model, compile: Optional[bool] = None):  # noqa: A002 (the input's name)
        model = expect(model, DynamiCrafterModel, "model", "Load DynamiCrafter")
        return (native.native_patcher(model.patcher, compile_unet=bool(compile)),)


class Conditioning:
    DESCRIPTION = ("Positive and negative CONDITIONING for DynamiCrafter's MODEL, each with both of the image's "
                   "streams: the text-aligned image context (prompt and image tokens) and the visual detail "
                   "guidance latents (the negative keeps them, as the original); plus the empty video LATENT.")
    CATEGORY = "conditioning/video_models"
    FUNCTION = "condition"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("Prompt and image, for the sampler or guider (or Apply ControlNet).",
                       "Negative prompt and a mid-grey image, with the same visual detail guidance.",
                       "The empty video, one latent per frame, for the sampler's latent_image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT,
            "context": (CONTEXT, {"tooltip": "From Encode Image Context (one image)."}),
            "guidance": (GUIDANCE, {"tooltip": "From Visual Detail Guidance (one image): the mode, the frames and "
                                               "the size."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_RANGE - 1, "control_after_generate": True,
                             "tooltip": "The noise of the guidance latents. Give DynamiCrafter Noise the same seed "
                                        "to get I2V Sampler's video for that seed."}),
            "fs": SAMPLING_INPUTS["fs"],
        }, "optional": {
            "camera": (CAMERA, {"tooltip": "CamI2V checkpoints only: the camera's path, from Camera Trajectory. It "
                                           "travels with both conditionings; with Context Windows each window takes "
                                           "its own frames' poses."}),
        }}

    def condition(self, model, context, guidance, seed: int, fs: int, camera=None):
        model = expect(model, DynamiCrafterModel, "model", "Load DynamiCrafter")
        context = expect(context, ImageContext, "context", "Encode Image Context")
        guidance = expect(guidance, Guidance, "guidance", "Visual Detail Guidance")
        cond = context.conditioning
        positive_context = scheduled_context(context, guidance.frames)
        mean = guidance.start[0]
        if cond.context.shape[0] != 1 or mean.shape[0] != 1:
            raise InputError(f"DynamiCrafter's MODEL makes one video per run, the context holds "
                             f"{cond.context.shape[0]} image(s) and the guidance {mean.shape[0]}: give one image, "
                             "or use I2V Sampler for a batch")
        if model.core.variant == "tooncrafter" and guidance.mode == "i2v":
            raise InputError("ToonCrafter interpolates: set Visual Detail Guidance's mode to interpolation or loop")
        if guidance.mode != "i2v":
            check_interpolation(model, f"guidance mode {guidance.mode}")
        fs = fs or model.core.defaults.fs
        check_fs(fs)
        concat = draw_visual_detail_guidance(model.core, guidance.start, guidance.end, guidance.frames,
                                             seed_generator(seed))
        # ComfyUI's latents (the samplers' LATENT output); image to video needs one frame (every frame has it)
        concat = latent_output(model, concat)["samples"]
        if guidance.mode == "i2v":
            concat = concat[:1]
        extra = {native.CONCAT: concat, native.FS: fs}
        camera = camera_of(model, camera, guidance.frames)
        if camera is not None:
            if guidance.mode != "i2v":
                raise InputError(f"a camera path animates one image: set Visual Detail Guidance's mode to i2v (CamI2V "
                                 f"has no {guidance.mode} mode), or disconnect `camera`")
            if camera.camera_cfg != 1.0:
                raise InputError(f"Camera Trajectory's camera_cfg {camera.camera_cfg:g} needs I2V Sampler's third "
                                 "guidance pass, which ComfyUI's samplers do not make: set it to 1 for the native "
                                 "path, or use I2V Sampler")
            # both branches see the camera, as the original's sampler gives it to the unconditional one too
            extra[native.CAMERA] = native.CameraCond(camera, model.core, seed, mean.shape[-2] * 8,
                                                     mean.shape[-1] * 8)
        draws = posterior_shapes(mean.shape, guidance.end is not None)
        # the draws made here travel with the positive (the DDIM sampler's step noise follows them) and the latent
        # (DynamiCrafter Noise's initial noise follows them)
        positive = [[positive_context, {**extra, native.SEED_DRAWS: draws,
                                        "cross_attn_controlnet": positive_context[:, :native.TEXT_TOKENS]}]]
        negative = [[cond.uncond_context,
                     {**extra, "cross_attn_controlnet": cond.uncond_context[:, :native.TEXT_TOKENS]}]]
        h, w = mean.shape[-2:]
        latent = {"samples": torch.zeros(guidance.frames, 4, h, w),
                  native.SEED_DRAWS: draws,
                  native.LOOP: guidance.mode == "loop"}
        if guidance.references is not None:
            latent[native.REFERENCES] = guidance.references
        return (positive, negative, latent)


def scheduled_context(context: ImageContext, frames: int) -> torch.Tensor:
    """The positive context: one row, or with a prompt schedule one row per frame (each frame's prompt), which
    ComfyUI's context windows cut to the window's frames like any per-frame conditioning; a window is conditioned
    on the prompt of its first frame (native.py)."""
    if len(context.schedule) <= 1:
        return context.conditioning.context
    return torch.cat([prompt_at(context.schedule, t).context for t in range(frames)])


class Scheduler:
    DESCRIPTION = ("The timesteps of the original's DDIM as SIGMAS (DynamiCrafter's own table, dynamic rescale "
                   "included), for SamplerCustomAdvanced with any sampler.")
    CATEGORY = "sampling/custom_sampling/schedulers"
    FUNCTION = "sigmas"
    RETURN_TYPES = ("SIGMAS",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": NATIVE_MODEL_INPUT,
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "DDIM steps; the original uses 50."}),
            "spacing": SAMPLING_INPUTS["spacing"],
            "end": (list(ENDS), {"default": "original",
                                 "tooltip": "original: the last step lands on the first timestep, as the original "
                                            "(with DynamiCrafter DDIM Sampler: its exact video). clean: it ends at "
                                            "sigma 0, as ComfyUI's samplers expect."}),
        }}

    def sigmas(self, model, steps: int, spacing: str, end: str):
        ms = native.model_sampling_of(model, "DynamiCrafter Scheduler")
        spacing = ms.defaults.spacing if spacing == "auto" else spacing
        if spacing not in SPACINGS:
            raise InputError(f"spacing {spacing!r} is not one of auto, {', '.join(SPACINGS)}")
        ts = ddim_timesteps(steps, spacing, ms.num_timesteps).flip(0)
        last = ms.sigmas[:1] if end == "original" else torch.zeros(1)
        return (torch.cat([ms.sigmas.cpu()[ts], last.cpu()]),)


class DDIMSampler:
    DESCRIPTION = ("The original's DDIM as a SAMPLER: its eta, its dynamic rescale of the prediction and its last "
                   "step. Needs DynamiCrafter Scheduler's sigmas.")
    CATEGORY = "sampling/custom_sampling/samplers"
    FUNCTION = "sampler"
    RETURN_TYPES = ("SAMPLER",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "eta": SAMPLING_INPUTS["eta"],
            "original_last_step": ("BOOLEAN", {
                "default": True,
                "tooltip": "On: as the original, the last step keeps the prediction's dynamic-rescale scale (the "
                           "last latent 1.4% smaller at 50 steps with the 512 models). Off: the exact rescale on "
                           "every step."}),
        }}

    def sampler(self, eta: float, original_last_step: bool):
        return (native.ddim_sampler(eta, original_last_step),)


class Guider:
    DESCRIPTION = ("The original's classifier-free guidance as a GUIDER: cfg, optional image cfg (a third pass) and "
                   "its guidance rescale over the whole video. Stock CFGGuider or KSampler lack the rescale (see "
                   "DynamiCrafter Guidance Rescale).")
    CATEGORY = "sampling/custom_sampling/guiders"
    FUNCTION = "guider"
    RETURN_TYPES = ("GUIDER",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": NATIVE_MODEL_INPUT,
            "positive": ("CONDITIONING", {"tooltip": "DynamiCrafter Conditioning's positive."}),
            "negative": ("CONDITIONING", {"tooltip": "DynamiCrafter Conditioning's negative."}),
            "cfg": SAMPLING_INPUTS["cfg"],
            "image_cfg": SAMPLING_INPUTS["image_cfg"],
            "guidance_rescale": SAMPLING_INPUTS["guidance_rescale"],
        }}

    def guider(self, model, positive, negative, cfg: float, image_cfg: float, guidance_rescale: float):
        ms = native.model_sampling_of(model, "DynamiCrafter Guider")
        rescale = ms.defaults.guidance_rescale if guidance_rescale < 0 else guidance_rescale
        return (native.guider(model, positive, negative, cfg, image_cfg, rescale),)


class Noise:
    DESCRIPTION = ("The initial noise in DynamiCrafter's seed order: with DynamiCrafter Conditioning's seed and the "
                   "DDIM Sampler, the same video as I2V Sampler for that seed, on any device.")
    CATEGORY = "sampling/custom_sampling/noise"
    FUNCTION = "noise"
    RETURN_TYPES = ("NOISE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"noise_seed": ("INT", {
            "default": 0, "min": 0, "max": SEED_RANGE - 1, "control_after_generate": True,
            "tooltip": "The seed; the same as DynamiCrafter Conditioning's gives I2V Sampler's video."})}}

    def noise(self, noise_seed: int):
        return (native.Noise(noise_seed),)


class GuidanceRescale:
    DESCRIPTION = ("The original's guidance rescale for stock KSampler / CFGGuider: on the model's prediction "
                   "(v), over the whole video. ComfyUI's RescaleCFG is not it (per frame, and a plain schedule's v).")
    CATEGORY = "advanced/model"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": NATIVE_MODEL_INPUT,
            "guidance_rescale": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.05,
                                           "tooltip": "0.7 as the original (512, 1024, interpolation); 0 for 256."}),
        }}

    def patch(self, model, guidance_rescale: float):
        native.model_sampling_of(model, "DynamiCrafter Guidance Rescale")
        patched = model.clone()
        patched.set_model_sampler_cfg_function(native.rescale_cfg_function(guidance_rescale))
        return (patched,)


class Decode:
    DESCRIPTION = ("Decodes a DynamiCrafter video LATENT with the checkpoint's own VAE (ToonCrafter's decoder with "
                   "its keyframes), dropping a loop's repeated last frame.")
    CATEGORY = "latent/video"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The video frames (one image per frame, 0..1).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT,
            "samples": ("LATENT", {"tooltip": "From the sampler (one latent per frame)."}),
        }}

    def decode(self, model, samples):
        model = expect(model, DynamiCrafterModel, "model", "Load DynamiCrafter")
        latents = samples["samples"]
        if latents.ndim != 4 or latents.shape[1] != 4:
            raise InputError(f"`samples` holds latents of shape {tuple(latents.shape)}; DynamiCrafter's are "
                             "(frames, 4, height/8, width/8)")
        video_latents = (latents.float() * model.core.config.scale_factor).transpose(0, 1)[None]
        video = decode(model, video_latents, samples.get(native.REFERENCES))
        if samples.get(native.LOOP):
            video = video[:, :, :-1]
        return (frames_to_images(video),)


class ApplySketch:
    DESCRIPTION = ("ToonCrafter's sketch guidance on the native MODEL: Sketch Guidance's drawings steer the "
                   "interpolation through its sketch encoder, as in I2V Sampler, for SamplerCustomAdvanced or KSampler "
                   "(and after or before Apply ControlNet).")
    CATEGORY = "conditioning/video_models"
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT,
            "positive": ("CONDITIONING", {"tooltip": "DynamiCrafter Conditioning's positive."}),
            "negative": ("CONDITIONING", {"tooltip": "DynamiCrafter Conditioning's negative."}),
            "sketch": (SKETCH, {"tooltip": "From Sketch Guidance (its strength applies)."}),
            "guidance": (GUIDANCE, {"tooltip": "The Visual Detail Guidance the conditioning was made from: the "
                                               "video's frames and size."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                        "tooltip": "Where in the sampling the sketches start to steer (0: first "
                                                   "step)."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                      "tooltip": "Where they stop (1: last step), as Apply ControlNet's."}),
        }}

    def apply(self, model, positive, negative, sketch, guidance, start_percent: float, end_percent: float):
        model = expect(model, DynamiCrafterModel, "model", "Load DynamiCrafter")
        guidance = expect(guidance, Guidance, "guidance", "Visual Detail Guidance")
        options = sketch_options(model, sketch, guidance)  # refuses a DynamiCrafter model, checks the drawings
        if options["control_scale"] == 0:
            return (positive, negative)  # strength 0: exactly the video without sketches
        return tuple(native.apply_sketch([positive, negative], sketch.encoder, options["hint"],
                                         options["control_scale"], (start_percent, end_percent)))
