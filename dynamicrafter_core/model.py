"""DynamiCrafter: the networks of one checkpoint and the calls that use them (original: `LatentVisualDiffusion` in
`lvdm/models/ddpm3d.py`).

All images are (B, 3, H, W) in [-1, 1]; latents are scaled by `scale_factor` (0.18215), as the UNet sees them.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from . import camera as cam
from .config import SAMPLING_DEFAULTS, ModelConfig, SamplingDefaults
from .context import ImageEncoder, QueryTransformer, TextEncoder
from .epipolar import CameraFeatures, EpipolarMasks
from .errors import InputError, MissingEncoderError, NumericalError
from .pose_encoder import PoseEncoder
from .sampler import NoiseSchedule
from .unet import UNet
from .vae import AutoencoderKL, sample_posterior


def weights_device(network: nn.Module) -> torch.device:
    """Where a network's weights are, which is where it runs in plain PyTorch. Every call below also takes `device`:
    a host that streams weights (ComfyUI's Dynamic VRAM keeps large layers in host memory and copies them per call)
    names the device to run on, because there the weights' device says nothing about it."""
    return next(network.parameters()).device


def check_finite(what: str, tensors, cause: str) -> None:
    """Refuse NaN / Inf where a network's input or output must be real numbers: they would spread to every frame and
    be written as black without a word. `cause` says what to do about it."""
    for tensor in tensors:
        if tensor is not None and not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).sum().item()
            raise NumericalError(f"{what} hold {bad} NaN or Inf values of {tensor.numel()}: {cause}")


class DynamiCrafter(nn.Module):
    """The UNet, the VAE, the Query Transformer and (unless the file was pruned) the two OpenCLIP towers."""

    def __init__(self, cfg: ModelConfig, with_text_encoder: bool = True, with_image_encoder: bool = True, ops=nn):
        super().__init__()
        self.config = cfg
        self.unet = UNet(cfg.unet, ops=ops)
        self.vae = AutoencoderKL(cfg.vae, ops=ops)
        self.query_transformer = QueryTransformer(cfg.query_transformer, ops=ops)
        self.text_encoder = TextEncoder(cfg.text_encoder) if with_text_encoder else None
        self.image_encoder = ImageEncoder(cfg.image_encoder) if with_image_encoder else None
        self.pose_encoder = PoseEncoder(cfg.pose_encoder, ops=ops) if cfg.pose_encoder is not None else None
        self.schedule = NoiseSchedule.from_config(cfg)
        self.variant = "512"
        self.variant_source = "default"
        self.source = "state dict"

    # -- description -------------------------------------------------------------------------------------------

    @property
    def defaults(self) -> SamplingDefaults:
        return SAMPLING_DEFAULTS[self.variant]

    @property
    def device(self) -> torch.device:
        """Where the UNet's weights are: where it runs when the caller names no device."""
        return weights_device(self.unet)

    @property
    def supports_interpolation(self) -> bool:
        return self.variant in ("512_interp", "tooncrafter")

    def describe(self) -> str:
        towers = [name for name, tower in (("text", self.text_encoder), ("image", self.image_encoder)) if tower]
        clip = f"CLIP towers: {', '.join(towers)}" if towers else "no CLIP towers (pruned file)"
        h, w = self.config.resolution
        return (f"DynamiCrafter {self.variant} ({self.variant_source}); {w}x{h}, "
                f"{self.config.parameterization}-prediction; {clip}")

    def place(self, stage: str, device) -> None:
        """Low-memory mode: only the networks of `stage` on `device`, the others on the CPU. "encode": the CLIP
        towers and the Query Transformer (2 GB in bf16); "sample": the UNet (2.9 GB). The VAE stays where it is."""
        encoders = [m for m in (self.text_encoder, self.image_encoder, self.query_transformer) if m is not None]
        samplers = [m for m in (self.unet, self.pose_encoder) if m is not None]
        wanted, spare = (encoders, samplers) if stage == "encode" else (samplers, encoders)
        for module in spare:
            module.to("cpu")
        for module in wanted:
            module.to(device)

    # -- the text-aligned image context ------------------------------------------------------------------------

    def _require(self, tower, what: str, comfy_input: str):
        if tower is None:
            raise MissingEncoderError(
                f"this checkpoint has no CLIP {what} encoder (it was pruned to the UNet, VAE and Query Transformer). "
                f"Use the full checkpoint, or in ComfyUI connect the `{comfy_input}` input of Encode Image Context "
                f"({'an SD2.x OpenCLIP-H text encoder' if what == 'text' else 'a CLIP ViT-H/14 vision model'}).")
        return tower

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], device=None) -> torch.Tensor:
        """Prompts -> (B, 77, D) OpenCLIP tokens, penultimate layer + ln_final."""
        encoder = self._require(self.text_encoder, "text", "clip")
        if isinstance(prompts, str):
            prompts = [prompts]
        return encoder(encoder.tokenize(prompts).to(device or weights_device(encoder)))

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, device=None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 257, W_clip), all last-layer CLIP tokens."""
        encoder = self._require(self.image_encoder, "image", "clip_vision")
        return encoder(images.to(device or weights_device(encoder)))

    @torch.no_grad()
    def project_image(self, clip_tokens: torch.Tensor, device=None) -> torch.Tensor:
        """The Query Transformer: (B, 257, W_clip) -> (B, 16 * T, D)."""
        expected = self.config.query_transformer.embedding_dim
        if clip_tokens.ndim != 3 or clip_tokens.shape[-1] != expected:
            raise InputError(f"the image tokens have shape {tuple(clip_tokens.shape)}, but the Query Transformer "
                             f"takes (batch, tokens, {expected}): the CLIP ViT-H/14 last hidden state (1280 wide for "
                             "the released models)")
        qt = self.query_transformer
        return qt(clip_tokens.to(device or weights_device(qt)))

    # -- the camera (CamI2V) ----------------------------------------------------------------------------------

    @property
    def takes_camera(self) -> bool:
        return self.pose_encoder is not None

    @torch.no_grad()
    def encode_camera(self, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int,
                      cond_frame: Optional[int] = 0,
                      translation_scale: float = 1.0, t_pairs: Optional[torch.Tensor] = None,
                      generator: Optional[torch.Generator] = None, device=None) -> CameraFeatures:
        """A camera path -> what the UNet's camera-aware blocks read (original: `get_batch_input_camera_condition_
        process`). K (B, T, 3, 3): intrinsics in pixels of the height x width video; c2w (B, T, 4, 4): camera-to-world
        poses, made relative to frame `cond_frame` here (None: they already are, to the image's camera, as a context
        window's frames are). t_pairs: the pairs' translations after the zero-translation perturbation, to reproduce
        a given run; else drawn from `generator`."""
        if self.pose_encoder is None:
            raise InputError(f"this model is DynamiCrafter {self.variant}, without camera control; load a CamI2V "
                             "checkpoint (256_cami2v.pt, 512_cami2v_50k.pt, ...) to follow a camera path")
        epi = self.config.unet.epipolar
        dev = device or weights_device(self.pose_encoder)
        K, c2w = K.to(dev, torch.float32), c2w.to(dev, torch.float32)
        rel = c2w if cond_frame is None else cam.relative_poses(c2w, cond_frame, translation_scale)
        rays = cam.plucker_rays(K, rel, height, width)
        dtype = self.pose_encoder.encoder_conv_in.weight.dtype
        features = [f.float() for f in self.pose_encoder(rays.to(dtype))]
        pairs = cam.pose_pairs(rel)
        if t_pairs is None:
            t_pairs = pairs[..., :3, 3:4]
            if epi.perturb_zero_translation:
                t_pairs = cam.perturb_zero_translations(t_pairs, generator)
        F = cam.fundamental_matrices(K, pairs[..., :3, :3], t_pairs.to(dev, torch.float32))
        return CameraFeatures(features, EpipolarMasks(F, tuple(epi.masked_ds), epi.registers))

    # -- the visual detail guidance (VAE) ----------------------------------------------------------------------

    @torch.no_grad()
    def encode_posterior(self, images: torch.Tensor, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> the VAE posterior (mean, std), each (B, 4, H/8, W/8) float32, one image at a
        time (the original's per-frame encoding)."""
        vae = self.vae
        dev, dtype = device or weights_device(vae), vae.dtype
        mean, std = zip(*(vae.encode(images[i:i + 1].to(dev, dtype)) for i in range(images.shape[0])))
        mean, std = torch.cat(mean).float(), torch.cat(std).float()
        check_finite("the VAE encoder's latents", [mean, std], f"its weights are damaged, or it overflowed in "
                     f"{str(dtype).replace('torch.', '')}; load it in bfloat16 or float32")
        return mean, std

    def sample_latents(self, posterior: tuple[torch.Tensor, torch.Tensor], noise: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """scale_factor * (mean + std * noise); noise drawn image by image from `generator` (on the CPU) unless
        given."""
        mean, std = posterior
        latents = [sample_posterior(mean[i:i + 1], std[i:i + 1], None if noise is None else noise[i:i + 1],
                                    generator) for i in range(mean.shape[0])]
        return torch.cat(latents) * self.config.scale_factor

    def encode_latents(self, images: torch.Tensor, noise: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) = scale_factor * (mean + std * noise), the UNet's latents."""
        return self.sample_latents(self.encode_posterior(images), noise, generator)

    @torch.no_grad()
    def encode_references(self, start: torch.Tensor, end: torch.Tensor, device=None) -> list[torch.Tensor]:
        """ToonCrafter: the keyframes (B, 3, H, W) in [-1, 1] -> the five VAE encoder features its decoder fuses into
        the video, each (B, C, 2, h, w), the start keyframe first (AutoencoderKL.encode_references)."""
        if not self.config.vae.dual_reference:
            raise InputError(f"encode_references is for ToonCrafter's dual-reference decoder; this model is "
                             f"DynamiCrafter {self.variant}, whose decoder takes no keyframe features")
        vae = self.vae
        dev, dtype = device or weights_device(vae), vae.dtype
        return vae.encode_references(start.to(dev, dtype), end.to(dev, dtype))

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk: Optional[int] = None, device=None,
                       references: Optional[list] = None, redecode: Optional[bool] = None,
                       on_pass: Optional[Callable[[], None]] = None) -> torch.Tensor:
        """(B, 4, h, w) -> (B, 3, H, W), or (B, 4, T, h, w) -> (B, 3, T, H, W); `chunk` frames per decoder call
        (default 1). Unclamped. The frames stay on the device until all are made; on_pass runs after each decoder
        call (a host's Cancel check), and nothing waits for the device in between.

        ToonCrafter (B, 4, T, h, w): by default each video in one pass of its decoder, whose temporal layers and
        keyframe features (`references`, from encode_references) see all T frames; then, unless `redecode` is False,
        the original's substitution of the two middle frames (T >= 4). `chunk` below T decodes that many frames per
        pass, each pass with the keyframe features on its own first and last frame, as the original does for videos
        longer than 16 frames: less memory, and less faithful for the 16-frame videos it decodes whole."""
        vae = self.vae
        dev, dtype = device or weights_device(vae), vae.dtype
        check_finite("the latents to decode", [latents], "the sampler that made them failed")
        z = (latents / self.config.scale_factor).to(dev, dtype)
        if self.config.vae.dual_reference:
            frames = self._decode_video(z, references, redecode is not False, chunk, on_pass)
        else:
            if references is not None:
                raise InputError(f"references are keyframe features for ToonCrafter's decoder; this model is "
                                 f"DynamiCrafter {self.variant}, whose decoder takes none")
            video = z.ndim == 5
            if video:
                b, c, t, h, w = z.shape
                z = z.transpose(1, 2).reshape(b * t, c, h, w)
            chunk, parts = chunk or 1, []
            for i in range(0, z.shape[0], chunk):
                parts.append(vae.decode(z[i:i + chunk]).float())
                if on_pass is not None:
                    on_pass()
            frames = torch.cat(parts)
            if video:
                frames = frames.reshape(b, t, *frames.shape[1:]).transpose(1, 2)
        check_finite("the VAE decoder's frames", [frames], f"its weights are damaged, or it overflowed in "
                     f"{str(dtype).replace('torch.', '')}; load it in bfloat16 or float32 (in ComfyUI: do not start "
                     "it with --fp16-vae)")
        return frames

    def _decode_video(self, z: torch.Tensor, references: Optional[list], redecode: bool,
                      chunk: Optional[int], on_pass: Optional[Callable[[], None]]) -> torch.Tensor:
        """ToonCrafter: (B, 4, T, h, w) scaled-back latents -> (B, 3, T, H, W) float32."""
        if z.ndim != 5:
            raise InputError(f"ToonCrafter decodes whole videos: latents (batch, 4, frames, h, w), got shape "
                             f"{tuple(z.shape)}")
        if references is not None:
            references = [r.to(z) for r in references]

        def one_pass(latents):  # `chunk` frames per decoder pass, by default all of them
            b, c, t, h, w = latents.shape
            parts = []
            for i in range(0, t, chunk or t):
                part = latents[:, :, i:i + (chunk or t)]
                n = part.shape[2]
                frames = self.vae.decode(part.transpose(1, 2).reshape(b * n, c, h, w), references, frames=n)
                parts.append(frames.float().unflatten(0, (b, n)).transpose(1, 2))
                if on_pass is not None:
                    on_pass()
            return torch.cat(parts, dim=2)

        frames = one_pass(z)
        t = z.shape[2]
        if redecode and t >= 4:
            # The original decodes the latents again without the second and the second-to-last frame, and takes
            # the two middle frames from that shorter video (scripts/evaluation/inference.py, TOONCRAFTER.md §2.6).
            keep = [i for i in range(t) if i not in (1, t - 2)]
            middle = one_pass(z[:, :, keep])
            frames[:, :, t // 2 - 1:t // 2 + 1] = middle[:, :, t // 2 - 2:t // 2]
        return frames
