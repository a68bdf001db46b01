"""Model configuration: the original inference yaml's `model:` section as typed dataclasses, and per-variant defaults.

The released checkpoints come with `configs/inference_{256,512,1024}_v1.0.yaml` in Doubiiu/DynamiCrafter (and
ToonCrafter's own). `from_original` reads that section (a dict, or a path to the yaml / a json of the same content)
so a fine-tune that ships its yaml builds exactly; `VARIANT_CONFIGS` holds the same information for the released
files so that no yaml is needed for them.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Union

from .errors import ConfigError

VARIANTS = ("256", "512", "1024", "512_interp", "tooncrafter")


@dataclass(frozen=True)
class UNetConfig:
    """`unet_config.params` of the original (`lvdm.modules.networks.openaimodel3d.UNetModel`)."""
    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: tuple = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: tuple = (1, 2, 4, 4)
    num_head_channels: int = 64
    context_dim: int = 1024
    # the image branch of the dual cross-attention is gated by tanh(alpha) + 1 only in the 256 model
    image_cross_attention_scale_learnable: bool = False
    default_fs: int = 24
    fs_condition: bool = True
    addition_attention: bool = True  # the `init_attn` temporal transformer after the first conv
    temporal_conv: bool = True
    temporal_attention: bool = True


@dataclass(frozen=True)
class VAEConfig:
    """`first_stage_config.params` (`AutoencoderKL`, or ToonCrafter's `AutoencoderKL_Dualref`)."""
    embed_dim: int = 4
    z_channels: int = 4
    ch: int = 128
    ch_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple = ()
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    dual_reference: bool = False  # ToonCrafter's decoder


@dataclass(frozen=True)
class ClipConfig:
    """An OpenCLIP tower: `arch` resolved to open_clip's model config dict (embed_dim, vision_cfg, text_cfg)."""
    arch: dict = field(default_factory=dict)

    @property
    def text_width(self) -> int:
        return int(self.arch["text_cfg"]["width"])

    @property
    def vision_width(self) -> int:
        return int(self.arch["vision_cfg"]["width"])


@dataclass(frozen=True)
class QueryTransformerConfig:
    """`image_proj_stage_config.params` (`lvdm.modules.encoders.resampler.Resampler`)."""
    dim: int = 1024
    depth: int = 4
    dim_head: int = 64
    heads: int = 12
    num_queries: int = 16
    embedding_dim: int = 1280
    output_dim: int = 1024
    ff_mult: int = 4
    video_length: int = 16


@dataclass(frozen=True)
class ModelConfig:
    """`model.params` of `LatentVisualDiffusion`."""
    parameterization: str = "v"
    rescale_betas_zero_snr: bool = True
    linear_start: float = 0.00085
    linear_end: float = 0.012
    timesteps: int = 1000
    scale_factor: float = 0.18215
    use_dynamic_rescale: bool = True
    base_scale: float = 0.7
    turning_step: int = 400
    latent_size: tuple = (40, 64)  # `image_size`, in latent pixels (h, w)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: ClipConfig = field(default_factory=ClipConfig)
    image_encoder: ClipConfig = field(default_factory=ClipConfig)
    query_transformer: QueryTransformerConfig = field(default_factory=QueryTransformerConfig)

    @property
    def resolution(self) -> tuple:
        """Output (height, width) in pixels."""
        return (self.latent_size[0] * 8, self.latent_size[1] * 8)


@dataclass(frozen=True)
class SamplingDefaults:
    """What the original scripts pass for each variant (MODEL_SPEC §5.6)."""
    fs: int
    spacing: str
    guidance_rescale: float
    steps: int = 50
    cfg: float = 7.5
    eta: float = 1.0
    frames: int = 16


SAMPLING_DEFAULTS = {
    # fs: FPS (smaller = more motion), except for 256, where it is the frame stride (larger = more motion)
    "256": SamplingDefaults(fs=3, spacing="uniform", guidance_rescale=0.0),
    "512": SamplingDefaults(fs=24, spacing="uniform_trailing", guidance_rescale=0.7),
    "1024": SamplingDefaults(fs=10, spacing="uniform_trailing", guidance_rescale=0.7),
    "512_interp": SamplingDefaults(fs=5, spacing="uniform_trailing", guidance_rescale=0.7),
    "tooncrafter": SamplingDefaults(fs=10, spacing="uniform_trailing", guidance_rescale=0.7),
}

_VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}


def _released(variant: str) -> ModelConfig:
    clip = ClipConfig(arch=copy.deepcopy(_VIT_H_14))
    if variant == "256":
        return ModelConfig(parameterization="eps", rescale_betas_zero_snr=False, use_dynamic_rescale=False,
                           latent_size=(32, 32),
                           unet=UNetConfig(image_cross_attention_scale_learnable=True, default_fs=3),
                           text_encoder=clip, image_encoder=clip)
    if variant == "1024":
        return ModelConfig(base_scale=0.3, latent_size=(72, 128), unet=UNetConfig(default_fs=10),
                           text_encoder=clip, image_encoder=clip)
    if variant == "tooncrafter":
        return ModelConfig(vae=VAEConfig(dual_reference=True), text_encoder=clip, image_encoder=clip)
    return ModelConfig(text_encoder=clip, image_encoder=clip)  # 512 and 512_interp share one yaml


VARIANT_CONFIGS = {v: _released(v) for v in VARIANTS}


# ---------------------------------------------------------------------------------------------------------------
# Reading the original yaml


def _params(section: Optional[dict], what: str) -> dict:
    if section is None:
        raise ConfigError(f"the configuration has no `{what}` section; pass the original inference yaml's `model:` part")
    return dict(section.get("params", section))


def _pick(cls, params: dict, renames: Optional[dict] = None, tuples=()) -> dict:
    """The entries of `params` that `cls` knows, under its field names."""
    names = {f.name for f in fields(cls)}
    renames = renames or {}
    out = {}
    for key, value in params.items():
        key = renames.get(key, key)
        if key in names:
            out[key] = tuple(value) if key in tuples and value is not None else value
    return out


_UNSUPPORTED_UNET = {
    # option: the value every released model uses (anything else changes the architecture and is not built here)
    "use_linear": True, "use_relative_position": False, "use_causal_attention": False,
    "use_scale_shift_norm": False, "resblock_updown": False, "tempspatial_aware": False, "dims": 2,
    "temporal_selfatt_only": True, "conv_resample": True, "transformer_depth": 1, "image_cross_attention": True,
}


def _clip(params: dict, default_arch: dict) -> ClipConfig:
    arch = params.get("arch", "ViT-H-14")
    if isinstance(arch, dict):
        if not {"vision_cfg", "text_cfg", "embed_dim"} <= set(arch):
            raise ConfigError(f"an OpenCLIP `arch` dict needs embed_dim, vision_cfg and text_cfg; got {sorted(arch)}")
        return ClipConfig(arch=copy.deepcopy(arch))
    if arch == "ViT-H-14":
        return ClipConfig(arch=copy.deepcopy(default_arch))
    try:
        import open_clip
        cfg = open_clip.get_model_config(arch)
    except ImportError:  # pragma: no cover - open_clip is a dependency
        cfg = None
    if not cfg:
        raise ConfigError(f"unknown OpenCLIP architecture {arch!r} in the configuration; use an open_clip model name "
                          "such as 'ViT-H-14' or an open_clip model config dict")
    return ClipConfig(arch=copy.deepcopy(cfg))


def load_config_file(path: Union[str, Path]) -> dict:
    """The `model:` section of an original-format yaml, or a json of the same content."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        try:
            import yaml
        except ImportError as e:
            raise ConfigError(f"reading {path.name} needs PyYAML (`pip install pyyaml`), or convert it to .json") from e
        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} does not hold a mapping; expected the original inference yaml")
    return data.get("model", data)


MAX_TIMESTEPS = 10_000


def from_original(model_section: Union[dict, str, Path]) -> ModelConfig:
    """Build a ModelConfig from the original yaml's `model:` section (dict, or a path to the yaml/json)."""
    if not isinstance(model_section, dict):
        model_section = load_config_file(model_section)
    if "model" in model_section and "params" not in model_section:
        model_section = model_section["model"]
    p = _params(model_section, "model")
    target = str(model_section.get("target", "lvdm.models.ddpm3d.LatentVisualDiffusion"))
    if not target.endswith("LatentVisualDiffusion"):
        raise ConfigError(f"the configuration builds {target!r}; only DynamiCrafter's LatentVisualDiffusion is supported")
    if p.get("conditioning_key", "hybrid") != "hybrid":
        raise ConfigError(f"conditioning_key {p.get('conditioning_key')!r} is not supported (DynamiCrafter uses 'hybrid')")

    unet_p = _params(p.get("unet_config"), "unet_config")
    for key, released in _UNSUPPORTED_UNET.items():
        if key in unet_p and unet_p[key] != released:
            raise ConfigError(f"unet_config `{key}: {unet_p[key]!r}` is not supported (released models use {released!r})")
    if unet_p.get("num_head_channels", -1) in (-1, None):
        raise ConfigError("unet_config must set num_head_channels (every released model uses 64)")
    unet = UNetConfig(**_pick(UNetConfig, unet_p, tuples=("attention_resolutions", "channel_mult")))

    vae_section = p.get("first_stage_config")
    vae_p = _params(vae_section, "first_stage_config")
    dd = dict(vae_p.get("ddconfig", {}))
    dd["embed_dim"] = vae_p.get("embed_dim", 4)
    dd["dual_reference"] = str(vae_section.get("target", "")).endswith("Dualref")
    vae = VAEConfig(**_pick(VAEConfig, dd, tuples=("ch_mult", "attn_resolutions")))

    text = _clip(_params(p.get("cond_stage_config"), "cond_stage_config"), _VIT_H_14)
    layer = _params(p.get("cond_stage_config"), "cond_stage_config").get("layer", "last")
    if layer != "penultimate":
        raise ConfigError(f"cond_stage_config layer {layer!r} is not supported (DynamiCrafter uses 'penultimate')")
    image = _clip(_params(p.get("img_cond_stage_config"), "img_cond_stage_config"), _VIT_H_14)
    qt = QueryTransformerConfig(**_pick(QueryTransformerConfig, _params(p.get("image_proj_stage_config"),
                                                                         "image_proj_stage_config")))

    top = _pick(ModelConfig, p, renames={"image_size": "latent_size"}, tuples=("latent_size",))
    if "latent_size" in top and isinstance(p.get("image_size"), int):
        top["latent_size"] = (p["image_size"], p["image_size"])
    top.setdefault("parameterization", "eps")  # the original's code defaults, for keys a yaml leaves out
    top.setdefault("rescale_betas_zero_snr", False)
    top.setdefault("use_dynamic_rescale", False)
    if p.get("uncond_type", "empty_seq") != "empty_seq":
        # the original's zero_embed takes zeros for the unconditional prompt; no released model uses it, and this
        # implementation builds the unconditional branch from the (negative) prompt only
        raise ConfigError(f"uncond_type {p['uncond_type']!r} is not supported: the unconditional branch is encoded "
                          "from the empty (or negative) prompt, uncond_type 'empty_seq', as in every released model")
    steps = top.get("timesteps", 1000)
    if not isinstance(steps, int) or not 1 <= steps <= MAX_TIMESTEPS:  # the schedule's arrays are this long
        raise ConfigError(f"timesteps {steps!r} is out of range: the noise schedule takes a whole number of 1 to "
                          f"{MAX_TIMESTEPS} steps (the released models use 1000); check the configuration")
    if top["parameterization"] not in ("eps", "v"):
        raise ConfigError(f"parameterization {top['parameterization']!r} is not supported (use 'eps' or 'v')")
    return ModelConfig(unet=unet, vae=vae, text_encoder=text, image_encoder=image, query_transformer=qt, **top)
