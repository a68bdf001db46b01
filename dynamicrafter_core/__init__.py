"""DynamiCrafter (Xing et al., arXiv 2310.12190) in plain PyTorch: animate a still image with a video diffusion model
that sees the image twice, as text-aligned context tokens and as visual detail guidance latents.

No ComfyUI import anywhere in this package; `nodes/` adapts it to ComfyUI.
"""
from .checkpoint import detect_variant, load_model, read_state_dict
from .colour import colour_match
from .config import SAMPLING_DEFAULTS, VARIANT_CONFIGS, VARIANTS, ModelConfig, from_original
from .controlnet import ControlNet, ControlNetConfig, controlnet_config, load_controlnet
from .errors import (CheckpointError, ConfigError, DynamiCrafterError, InputError, MissingEncoderError,
                     ModelFileNotFoundError)
from .long_video import continue_video
from .model import DynamiCrafter
from .pipeline import animate, sample
from .sampler import NoiseSchedule, cfg_denoiser, ddim_timesteps, sample_ddim

__version__ = "0.2.0"

__all__ = [
    "load_model", "read_state_dict", "detect_variant", "DynamiCrafter", "ModelConfig", "from_original", "VARIANTS",
    "VARIANT_CONFIGS", "SAMPLING_DEFAULTS", "animate", "sample", "ddim_timesteps", "sample_ddim", "cfg_denoiser",
    "NoiseSchedule", "DynamiCrafterError", "CheckpointError", "ConfigError", "InputError", "MissingEncoderError",
    "ModelFileNotFoundError", "load_controlnet", "ControlNet", "ControlNetConfig", "controlnet_config",
    "continue_video", "colour_match",
]
