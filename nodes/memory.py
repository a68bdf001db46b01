"""Activation memory each stage needs on the GPU beside its weights, for ComfyUI's load_models_gpu(memory_required=).

ComfyUI counts the weights itself (ModelPatcher.model_size()); these are the working tensors of one call (the CPU
needs no estimate: ComfyUI does not budget it).

  UNet forward:  20.5 x N x (h w) x model_channels x bytes   N = videos x guidance branches x frames, h w the latent
                 grid. Calibrated on the peaks measured above the weights on an H200 (PyTorch's allocator, SDPA
                 attention; shared/docs/PERF_H200.md section 2): a guided step (2 branches, 16 frames) in bf16 at 512
                 (40 x 64 latent, model_channels 320) 1.0 GiB, at 1024 (72 x 128) 3.5 GiB; the factor is the larger of
                 the two (20.5 at 512, 19.9 at 1024), so the estimate is 1.0 and 3.6 GiB (x MARGIN). It is linear
                 in N: a third branch (image cfg) adds half of a guided step's.
  ControlNet:    an SD 2.1 ControlNet or ToonCrafter's sketch encoder is the UNet's input half without its temporal
                 layers: CONTROL_SHARE of the UNet's working memory for the same rows (an estimate, not measured).
  VAE decode:    6.0 x H x W x ch x bytes per frame (decoded one frame at a time; encode needs 4.2): 512x320 fp32:
                 0.47 GiB, 1024x576: 1.7 GiB (includes the mid-block attention scores); and the decoded float32
                 frames, kept on the device until the last, twice while they are concatenated (16 at 512: 63 MB).
  CLIP towers:   at most 257 tokens x ~20k values per token per image (ViT-H block transients): a few MiB, below
                 ComfyUI's own floor of 0.8 GiB for any load.
"""
from __future__ import annotations

UNET_FACTOR = 20.5
CONTROL_SHARE = 0.5
VAE_FACTOR = 6.0
ENCODER_VALUES_PER_IMAGE = 257 * 20_000
MARGIN = 1.1  # allocator fragmentation and the sampler's own float32 latents


def unet(videos: int, branches: int, frames: int, latent_hw: tuple, model_channels: int, bytes_per_value: int,
         controlled: bool = False) -> int:
    """The UNet's working memory for one call; `controlled`: with a ControlNet or the sketch encoder beside it."""
    h, w = latent_hw
    share = 1.0 + (CONTROL_SHARE if controlled else 0.0)
    return int(MARGIN * UNET_FACTOR * share * videos * branches * frames * h * w * model_channels * bytes_per_value)


def vae(height: int, width: int, channels: int, bytes_per_value: int) -> int:
    return int(MARGIN * VAE_FACTOR * height * width * channels * bytes_per_value)


def decoded_frames(videos: int, frames: int, height: int, width: int) -> int:
    """The float32 RGB frames a decode holds on the device until its last one, and their concatenation."""
    return 2 * 4 * 3 * videos * frames * height * width


def video_decoder(videos: int, frames: int, height: int, width: int, channels: int, bytes_per_value: int) -> int:
    """ToonCrafter's decoder holds a whole video: the 2D decoder's per-frame working memory for every frame (not
    measured separately; its temporal layers and the keyframe fusion add one more full-resolution activation)."""
    return int(MARGIN * (VAE_FACTOR + 1) * videos * frames * height * width * channels * bytes_per_value)


def encoders(images: int, bytes_per_value: int) -> int:
    return int(MARGIN * ENCODER_VALUES_PER_IMAGE * images * bytes_per_value)
