"""Image to video, interpolation and loop: the whole recipe (original: `image_guided_synthesis` in
`scripts/evaluation/inference.py`).

1. text-aligned image context: cat[CLIP text(prompt), P(CLIP image(start))]; unconditional: cat[CLIP text(negative
   or ""), P(CLIP image(mid-grey))]
2. visual detail guidance: the start image's VAE latent on every frame (i2v), or the start and end latents on the
   first and last frames with zeros between (interpolation; loop = interpolation back to the start image)
3. DDIM over the UNet with classifier-free guidance (the concat latents stay in the unconditional branch)
4. decode frame by frame
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .controlnet import LATENT_SCALE, ControlNet, check_hint
from .epipolar import CameraFeatures
from .trajectory import CameraPath
from .errors import InputError, NumericalError
from .model import DynamiCrafter, check_finite, weights_device
from .noise import generator as seed_generator
from .noise import normal
from .sampler import SPACINGS, StepCallback, cfg_denoiser, ddim_timesteps, sample_ddim
from .settings import (check_cfg_settings, check_eta, check_frames, check_fs, check_number, check_pixels, check_prompt,
                       check_seed, check_steps)

DEFAULT_CONTROL_SCALE = 0.6  # the sketch fork's default (its gradio app); it offers 0 to 1

MODES = ("i2v", "interpolation", "loop")
TOONCRAFTER_I2V = ("ToonCrafter interpolates between two keyframes: give an end image (mode 'interpolation') or use "
                   "mode 'loop'; for image to video from one image load a DynamiCrafter checkpoint "
                   "(dynamicrafter_512_v1.ckpt)")
FITS = ("crop", "pad", "stretch")


def sample(model: DynamiCrafter, context: torch.Tensor, uncond_context: Optional[torch.Tensor], concat: torch.Tensor,
           steps: int = 50, cfg: float = 7.5, eta: float = 1.0, guidance_rescale: float = 0.7,
           spacing: str = "uniform_trailing", fs: Union[int, torch.Tensor, None] = None,
           x_T: Optional[torch.Tensor] = None, step_noise: Optional[torch.Tensor] = None,
           generator: Optional[torch.Generator] = None, image_cfg: Optional[float] = None,
           text_uncond_context: Optional[torch.Tensor] = None, callback: Optional[StepCallback] = None,
           batch_branches: bool = True, device: Union[str, torch.device, None] = None,
           control: Optional[ControlNet] = None, hint: Optional[torch.Tensor] = None,
           control_scale: float = DEFAULT_CONTROL_SCALE, camera: Optional[CameraFeatures] = None,
           camera_cfg: float = 1.0, camera_cfg_schedule: str = "constant") -> torch.Tensor:
    """DDIM sampling of DynamiCrafter latents (B, 4, T, h, w).

    context / uncond_context: (B, 77 + 16 T, D); concat: (B, 4, T, h, w) visual detail guidance latents.
    Noise: `x_T` and `step_noise` (steps, B, 4, T, h, w) when given, else drawn from `generator` on the CPU in the
    order of noise.py (x_T, then each stochastic step's).
    image_cfg + text_uncond_context: the three-branch guidance with its own image scale.
    device: where to sample (default: where the UNet's first layer is; a host that loads the UNet partially says).
    control + hint: ToonCrafter's sketch guidance, a ControlNet (`load_controlnet`) and one drawing per frame,
    (B or 1, 1, T, 8h, 8w) in [0, 1], white lines on black. At every step, in every guidance branch, the ControlNet
    sees the noisy latents x_t, the hint, t and that branch's context, and its residuals enter that branch's UNet call
    times `control_scale` (0 to 2; 0 gives the video without the sketch; the sketch fork's default is 0.6).
    camera: CamI2V's camera (`model.encode_camera`), seen by every guidance branch, as the original's sampler gives
    it to the unconditional one too; camera_cfg != 1 adds a pass without it (CamI2V's camera guidance, off by
    default), weighted "constant" or "cosine" over the timesteps.
    """
    check_steps(steps, model.schedule.num_timesteps)
    check_eta(eta)
    check_cfg_settings(cfg, guidance_rescale, image_cfg)
    if fs is not None:
        check_fs(fs)
    if spacing not in SPACINGS:
        raise InputError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    if concat.ndim != 5:
        raise InputError(f"concat latents must be (batch, 4, frames, h, w); got shape {tuple(concat.shape)}")
    if context.shape[0] != concat.shape[0]:
        raise InputError(f"the context has batch {context.shape[0]} but the guidance latents have batch "
                         f"{concat.shape[0]}; give one context per video")
    b, c, t, h, w = concat.shape
    shape = (b, model.config.unet.out_channels, t, h, w)
    dev = torch.device(device) if device is not None else model.device
    check_control(model, control, hint, control_scale, context, concat, dev if device is None else None)
    guide = control is not None and control_scale != 0  # scale 0: exactly the video without the sketch
    if guide:
        hint = hint.to(dev).expand(b, -1, -1, -1, -1)
    if fs is None:
        fs = model.defaults.fs
    fs = torch.as_tensor(fs, dtype=torch.long).reshape(-1).expand(b).to(dev)

    x = (x_T if x_T is not None else normal(generator, shape)).to(dev, torch.float32)
    if step_noise is not None and step_noise.shape[0] < steps:
        raise InputError(f"step_noise holds {step_noise.shape[0]} steps of noise; {steps} are needed")
    noise = (lambda i: step_noise[i]) if step_noise is not None else (lambda i: normal(generator, shape))

    concat = concat.to(dev, torch.float32)
    unet = model.unet
    if camera is not None:
        check_number("camera_cfg", camera_cfg, 1.0, 10.0, "how much more the camera path is followed than the model "
                     "would; 1 (the default) leaves it out, CamI2V's demo offers 1 to 4")
        camera = CameraFeatures([f.to(dev) for f in camera.features],
                                camera.masks.to(dev) if camera.masks is not None else None)
        unet.check_camera(camera, b, t, h, w)
    elif camera_cfg != 1.0:
        raise InputError("camera_cfg is the camera's guidance scale; give a camera, or leave camera_cfg at 1")

    def with_camera(n):
        if camera is None or n == 1 or camera.features[0].shape[0] == 1:
            return camera  # a batch-1 camera broadcasts over the guidance branches
        return CameraFeatures([f.repeat(n, 1, 1, 1, 1) for f in camera.features], camera.masks)

    def model_fn(x, t, ctx, use_camera=True):
        n = x.shape[0] // b
        xc = torch.cat([x, concat.repeat(n, 1, 1, 1, 1)], dim=1)
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=dev)
        if camera is not None:
            return unet(xc, tt, ctx, fs.repeat(n), camera=with_camera(n) if use_camera else None)
        if not guide:
            return unet(xc, tt, ctx, fs.repeat(n))
        # the sketch fork's apply_model: the ControlNet on x_t (not the concat), each branch with its own context
        residuals = control(x, hint.repeat(n, 1, 1, 1, 1), tt, ctx)
        return unet(xc, tt, ctx, fs.repeat(n), control=residuals, control_scale=control_scale)

    ctx = context.to(dev)
    unc = uncond_context.to(dev) if uncond_context is not None else None
    tunc = text_uncond_context.to(dev) if text_uncond_context is not None else None
    check_finite("the context (the prompt's and the image's encodings)", [ctx, unc, tunc],
                 "the text or image encoder's weights are damaged, or it overflowed in float16")
    check_finite("the visual detail guidance latents", [concat],
                 "the VAE encoder's weights are damaged, or it overflowed in float16")
    denoiser = cfg_denoiser(model_fn, ctx, unc, cfg, guidance_rescale, image_cfg, tunc, batch_branches,
                            camera_cfg, camera_cfg_schedule, lambda x, t, c: model_fn(x, t, c, use_camera=False))
    timesteps = ddim_timesteps(steps, spacing, model.schedule.num_timesteps)

    def watch(step: dict) -> None:
        # a NaN spreads to every frame and is written as black: stop at the step where it appeared, and say so
        if not torch.isfinite(step["x"]).all():
            raise NumericalError(
                f"the UNet produced NaN or Inf at step {step['i'] + 1} of {len(timesteps)}: its weights are damaged, "
                f"or {str(unet.dtype).replace('torch.', '')} overflowed; load the model in bfloat16 or float32")
        if callback is not None:
            callback(step)

    with torch.no_grad():
        return sample_ddim(denoiser, x, model.schedule, timesteps, eta, noise, watch)


def check_control(model: DynamiCrafter, control, hint, control_scale, context: torch.Tensor, concat: torch.Tensor,
                  device: Optional[torch.device]) -> None:
    """Refuse sketch-guidance inputs that do not fit the video or the model, before any work. `device`: where the
    ControlNet's weights must be (None: not checked, a host that streams weights names the device itself)."""
    if control is None:
        if hint is not None:
            raise InputError("a sketch hint was given without a ControlNet to read it; pass control=load_controlnet("
                             "'sketch_encoder.ckpt'), or leave the hint out")
        return
    if not isinstance(control, ControlNet):
        raise InputError(f"control must be a ControlNet from dynamicrafter_core.load_controlnet; got "
                         f"{type(control).__name__}")
    if model.variant != "tooncrafter":
        raise InputError(f"sketch guidance is ToonCrafter's (its sketch_encoder was trained with it); the loaded model "
                         f"is DynamiCrafter {model.variant}. Load tooncrafter_512_interp_v1.ckpt, or leave the "
                         "ControlNet and the sketches out")
    if hint is None:
        raise InputError("a ControlNet was given without a sketch hint; pass hint=(batch, 1, frames, height, width) "
                         "in [0, 1], one drawing per frame")
    check_number("control_scale", control_scale, 0.0, 2.0,
                 "how strongly the sketch steers the video; 0 ignores it, the sketch fork uses 0.6")
    b, _, frames, h, w = concat.shape
    cfg = control.cfg
    check_hint(hint, b, frames, h * LATENT_SCALE, w * LATENT_SCALE, cfg.hint_channels)
    if context.shape[-1] != cfg.context_dim:
        raise InputError(f"the ControlNet reads a context {cfg.context_dim} wide, but this model's is "
                         f"{context.shape[-1]}: the ControlNet belongs to another model")
    skips = getattr(model.unet, "skip_channels", None)
    if skips is not None and tuple(cfg.residual_channels) != tuple(skips) + skips[-1:]:
        raise InputError(f"the ControlNet's residuals have {list(cfg.residual_channels)} channels but the UNet's "
                         f"skip connections and middle block have {list(skips) + [skips[-1]]}: the ControlNet "
                         "belongs to another model")
    if device is not None and weights_device(control) != device:
        raise InputError(f"the ControlNet is on {weights_device(control)} but sampling runs on {device}; load it "
                         f"with device={str(device)!r}")


# ---------------------------------------------------------------------------------------------------------------
# Images in


def load_image(path) -> torch.Tensor:
    """An image file -> (1, 3, H, W) in [-1, 1], RGB (alpha is composited on white, grayscale is expanded)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            image = im
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path.name} is not an image this program can read ({e})") from e
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with C = 1 (grayscale), 3, or 4 (alpha dropped) in [-1, 1], or uint8 in 0..255 -> (B, 3, H, W)
    float in [-1, 1], contiguous (a ComfyUI IMAGE arrives channels-last, and convolutions round differently on that
    layout: a seed must give one video)."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"an image batch must be a torch.Tensor (batch, channels, height, width) in [-1, 1]; got a "
                         f"{type(images).__name__}. Read files with dynamicrafter_core.pipeline.load_image; an "
                         "(H, W, 3) uint8 array becomes one with torch.from_numpy(array).permute(2, 0, 1)[None]")
    if images.dtype == torch.uint8:
        images = images.float() / 127.5 - 1.0
    elif not images.is_floating_point():
        raise InputError(f"image values must be floats in [-1, 1] or uint8 in 0..255; got {images.dtype}")
    check_pixels("image", images, -1.0, 1.0, "an image",
                 ": an image in 0..255 is a uint8 tensor, or divide it by 127.5 and subtract 1")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise InputError(f"an image batch must be (batch, channels, height, width); got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise InputError("the image batch is empty; give at least one image")
    c = images.shape[1]
    if c not in (1, 3, 4):
        raise InputError(f"images need 1 (grayscale), 3 (RGB) or 4 (RGBA) channels; got {c}")
    return (images.expand(-1, 3, -1, -1) if c == 1 else images[:, :3]).contiguous()


def check_side(name: str, value) -> None:
    """`height` or `width` of the video: a multiple of 64 from 64 to 4096."""
    if not isinstance(value, int) or isinstance(value, bool) or not 64 <= value <= 4096 or value % 64:
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        nearest = min(4096, max(64, int(round(value / 64)) * 64)) if finite else 512
        raise InputError(f"{name} {value!r} is not a multiple of 64 from 64 to 4096: the UNet halves the latent grid "
                         f"(1/8 of the pixels) three times. Use {nearest}.")


def check_size(height: int, width: int) -> None:
    check_side("height", height)
    check_side("width", width)


def fit_image(images: torch.Tensor, height: int, width: int, fit: str = "crop") -> torch.Tensor:
    """(B, C, h, w) in [-1, 1] -> (B, 3, height, width).

    crop:    scale so the image covers the frame, then cut the centre (default; nothing is distorted)
    pad:     scale so the whole image fits, then fill the borders with black
    stretch: scale each side to the frame (distorts other aspect ratios)
    (The original command line resizes the shorter side and centre-crops, which pads narrow images with black.)"""
    import torch.nn.functional as F

    check_size(height, width)
    if fit not in FITS:
        raise InputError(f"unknown fit {fit!r}; use one of {', '.join(FITS)}")
    images = as_rgb(images).float()
    _, _, h, w = images.shape
    if h < height // 8 or w < width // 8:
        raise InputError(f"the image is {w}x{h} pixels, smaller than the model's latent grid ({width // 8}x"
                         f"{height // 8}) for a {width}x{height} video; use an image of at least {width // 4}x"
                         f"{height // 4} pixels")

    def resize(x, size):
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)

    if fit == "stretch":
        return resize(images, (height, width))
    scale = (max if fit == "crop" else min)(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = resize(images, (nh, nw))
    if fit == "crop":
        top, left = (nh - height) // 2, (nw - width) // 2
        return x[:, :, top:top + height, left:left + width].contiguous()
    out = torch.full((x.shape[0], 3, height, width), -1.0)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[:, :, top:top + nh, left:left + nw] = x
    return out


# ---------------------------------------------------------------------------------------------------------------
# Conditioning


@dataclass
class Conditioning:
    """Both streams for one video: cross-attention contexts and the visual detail guidance latents."""
    context: torch.Tensor  # (B, 77 + 16 T, D) text + image context
    uncond_context: torch.Tensor  # negative text + mid-grey image context
    text_uncond_context: torch.Tensor  # negative text + real image context (three-branch guidance)


def text_image_context(text: torch.Tensor, negative_text: torch.Tensor, image_tokens: torch.Tensor,
                       grey_image_tokens: torch.Tensor) -> Conditioning:
    """Assemble the contexts from encoded text (B, 77, D) and projected image tokens (B, 16 T, D)."""
    b = image_tokens.shape[0]
    text, negative_text = (x.expand(b, -1, -1) if x.shape[0] == 1 else x for x in (text, negative_text))
    grey_image_tokens = grey_image_tokens.expand(b, -1, -1)
    return Conditioning(context=torch.cat([text, image_tokens], 1),
                        uncond_context=torch.cat([negative_text, grey_image_tokens], 1),
                        text_uncond_context=torch.cat([negative_text, image_tokens], 1))


def encode_image_context(model: DynamiCrafter, image: torch.Tensor, prompt: str = "",
                         negative_prompt: str = "") -> Conditioning:
    """The text-aligned image context of `image` (B, 3, H, W) in [-1, 1] (the frame as the video will show it)."""
    check_prompt("prompt", prompt)
    check_prompt("negative_prompt", negative_prompt)
    image = as_rgb(image)
    text = model.encode_text([prompt, negative_prompt])
    tokens = model.project_image(model.encode_image(torch.cat([image, torch.zeros_like(image[:1])])))
    return text_image_context(text[:1], text[1:], tokens[:-1], tokens[-1:])


def draw_visual_detail_guidance(model: DynamiCrafter, start: tuple, end: Optional[tuple], frames: int,
                                generator: torch.Generator) -> torch.Tensor:
    """The visual detail guidance (B, 4, T, h, w) from the VAE posteriors (mean, std) of the start and (interpolation,
    loop) end images, their noise drawn from `generator` first, as noise.py orders a run's draws."""
    latent_start = model.sample_latents(start, generator=generator)
    latent_end = model.sample_latents(end, generator=generator) if end is not None else None
    return visual_detail_guidance(latent_start, frames, latent_end)


def visual_detail_guidance(latent_start: torch.Tensor, frames: int,
                           latent_end: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, 4, h, w) latents -> (B, 4, T, h, w): the start latent on every frame (i2v), or start on the first and end
    on the last frame with zeros between (interpolation and loop)."""
    if frames < 2 and latent_end is not None:
        raise InputError("interpolation needs at least 2 frames")
    if latent_end is None:
        return latent_start[:, :, None].expand(-1, -1, frames, -1, -1).contiguous()
    if latent_end.shape != latent_start.shape:
        raise InputError(f"the start and end images give latents of different shapes {tuple(latent_start.shape)} "
                         f"and {tuple(latent_end.shape)}; give both images the same size")
    concat = torch.zeros(*latent_start.shape[:2], frames, *latent_start.shape[2:], dtype=latent_start.dtype)
    concat[:, :, 0], concat[:, :, -1] = latent_start, latent_end
    return concat


def frames_to_images(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B*T, H, W, 3) in [0, 1] on the CPU."""
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).flatten(0, 1).cpu().contiguous()


def animate(model: DynamiCrafter, image: torch.Tensor, prompt: str = "", end_image: Optional[torch.Tensor] = None,
            mode: str = "i2v", negative_prompt: str = "", frames: int = 16, steps: Optional[int] = None,
            cfg: Optional[float] = None, eta: Optional[float] = None, fs: Optional[int] = None,
            guidance_rescale: Optional[float] = None, spacing: Optional[str] = None, seed: int = 123,
            image_cfg: Optional[float] = None, height: Optional[int] = None, width: Optional[int] = None,
            fit: str = "crop", callback: Optional[StepCallback] = None, low_memory: bool = False,
            control: Optional[ControlNet] = None, hint: Optional[torch.Tensor] = None,
            control_scale: float = 0.6, camera: Optional[CameraPath] = None, camera_cfg: float = 1.0) -> torch.Tensor:
    """A still image (B, C, H, W) in [-1, 1] -> video frames (T, H, W, 3) in [0, 1] (B*T frames for B images).

    mode: "i2v" (image to video), "interpolation" (start -> end_image), "loop" (start -> start, the repeated last
    frame dropped). Unset sampler settings take the variant's defaults (the original scripts' values).
    ToonCrafter interpolates only ("interpolation" or "loop"); its decoder takes the keyframes' encoder features, and
    `control` (load_controlnet) with `hint` (B, 1, T, H, W) in [0, 1], one sketch per frame, guides it by sketches.
    low_memory: keep only the networks in use on the device (the encoders, then the UNet; the rest waits on the CPU)
    and run the guidance branches one after the other. The same video, with less GPU memory and some transfers.
    camera: a CamI2V model's camera path (trajectory.camera_path / preset_path / read_pose_file), its first `frames`
    poses, relative to the image's frame; camera_cfg > 1 follows it more strongly (a third guidance pass)."""
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "interpolation" and end_image is None:
        raise InputError("interpolation needs an end image")
    if mode != "i2v" and not model.supports_interpolation:
        raise InputError(f"{mode} needs an interpolation checkpoint (DynamiCrafter 512_interp); the loaded model is "
                         f"{model.variant}. Download dynamicrafter_512_interp_v1.ckpt, or pass variant='512_interp' "
                         "if this file is the interpolation model under another name.")
    if camera is not None and mode != "i2v":
        raise InputError(f"a camera path animates one image (mode 'i2v'); CamI2V has no {mode} mode")
    if mode == "i2v" and model.variant == "tooncrafter":
        raise InputError(TOONCRAFTER_I2V)
    check_frames(frames)
    check_seed(seed)
    d = model.defaults
    steps = d.steps if steps is None else steps
    cfg, eta = d.cfg if cfg is None else cfg, d.eta if eta is None else eta
    fs, spacing = d.fs if fs is None else fs, spacing or d.spacing
    guidance_rescale = d.guidance_rescale if guidance_rescale is None else guidance_rescale
    check_steps(steps)
    check_eta(eta)
    check_cfg_settings(cfg, guidance_rescale, image_cfg)
    check_fs(fs)
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        check_prompt(name, text)
    if spacing not in SPACINGS:
        raise InputError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    height, width = height or model.config.resolution[0], width or model.config.resolution[1]

    start = fit_image(image, height, width, fit)
    end = None
    if mode == "loop":
        end = start
    elif mode == "interpolation":
        end = fit_image(end_image, height, width, fit)
        if end.shape[0] != start.shape[0]:
            if end.shape[0] != 1 and start.shape[0] != 1:
                raise InputError(f"{start.shape[0]} start images but {end.shape[0]} end images; give one end image "
                                 "or one per start image")
            n = max(start.shape[0], end.shape[0])
            start, end = start.expand(n, -1, -1, -1), end.expand(n, -1, -1, -1)

    generator = seed_generator(seed)
    home = weights_device(model.vae)  # low_memory moves the other networks; the VAE stays
    if low_memory:
        model.place("encode", home)
    cond = encode_image_context(model, start, prompt, negative_prompt)
    concat = draw_visual_detail_guidance(model, model.encode_posterior(start),
                                         model.encode_posterior(end) if end is not None else None, frames, generator)
    references = model.encode_references(start, end) if model.config.vae.dual_reference else None
    if low_memory:
        model.place("sample", home)
    features = None
    if camera is not None:
        path = camera.fitted(frames)
        # the zero-translation perturbation from a generator of its own: the run's noise stays as without a camera
        features = model.encode_camera(path.intrinsics(height, width)[None], path.c2w[None], height, width,
                                       generator=seed_generator(seed))
    latents = sample(model, cond.context, cond.uncond_context, concat, steps=steps, cfg=cfg, eta=eta,
                     guidance_rescale=guidance_rescale, spacing=spacing, fs=fs, generator=generator,
                     image_cfg=image_cfg, text_uncond_context=cond.text_uncond_context, callback=callback,
                     batch_branches=not low_memory, control=control, hint=hint, control_scale=control_scale,
                     camera=features, camera_cfg=camera_cfg)
    video = model.decode_latents(latents, references=references)
    if mode == "loop":
        video = video[:, :, :-1]  # the last frame repeats the first (the original drops it after decoding)
    return frames_to_images(video)
