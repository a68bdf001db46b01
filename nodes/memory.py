"""Activation memory each stage needs on the GPU beside its weights, for ComfyUI's load_models_gpu(memory_required=).

ComfyUI counts the weights itself (ModelPatcher.model_size()); these are the working tensors of one call. The factors
were measured by running the networks at the released sizes on the meta device while summing the bytes of every
live tensor (peak over the call), with attention that keeps no score matrix, as SDPA's flash / memory-efficient
kernels do on CUDA (the CPU needs no estimate: ComfyUI does not budget it):

  UNet forward:  48.6 x N x (h w) x model_channels x bytes   N = videos x guidance branches x frames, h w the latent
                 grid; the same factor at 256, 512 and 1024 and for 2 or 3 branches, so it is linear as written.
                 512x320, 16 frames, cfg (2 branches), fp16: 2.4 GiB; 1024x576: 8.5 GiB; 256x256: 0.95 GiB.
  VAE decode:    6.0 x H x W x ch x bytes per frame (decoded one frame at a time; encode needs 4.2): 512x320 fp32:
                 0.47 GiB, 1024x576: 1.7 GiB (includes the mid-block attention scores).
  CLIP towers:   at most 257 tokens x ~20k values per token per image (ViT-H block transients): a few MiB, below
                 ComfyUI's own floor of 0.8 GiB for any load.
"""
from __future__ import annotations

UNET_FACTOR = 48.6
VAE_FACTOR = 6.0
ENCODER_VALUES_PER_IMAGE = 257 * 20_000
MARGIN = 1.1  # allocator fragmentation and the sampler's own float32 latents


def unet(videos: int, branches: int, frames: int, latent_hw: tuple, model_channels: int, bytes_per_value: int) -> int:
    h, w = latent_hw
    return int(MARGIN * UNET_FACTOR * videos * branches * frames * h * w * model_channels * bytes_per_value)


def vae(height: int, width: int, channels: int, bytes_per_value: int) -> int:
    return int(MARGIN * VAE_FACTOR * height * width * channels * bytes_per_value)


def video_decoder(videos: int, frames: int, height: int, width: int, channels: int, bytes_per_value: int) -> int:
    """ToonCrafter's decoder holds a whole video: the 2D decoder's per-frame working memory for every frame (not
    measured separately; its temporal layers and the keyframe fusion add one more full-resolution activation)."""
    return int(MARGIN * (VAE_FACTOR + 1) * videos * frames * height * width * channels * bytes_per_value)


def encoders(images: int, bytes_per_value: int) -> int:
    return int(MARGIN * ENCODER_VALUES_PER_IMAGE * images * bytes_per_value)
