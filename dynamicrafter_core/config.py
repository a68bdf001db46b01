"""Model configuration: the original inference yaml's `model:` section as typed dataclasses, and per-variant defaults.

The released checkpoints come with `configs/inference_{256,512,1024}_v1.0.yaml` in Doubiiu/DynamiCrafter (and
ToonCrafter's own). `from_original` reads that section (a dict, or a path to the yaml / a json of the same content)
so a fine-tune that ships its yaml builds exactly; `VARIANT_CONFIGS` holds the same information for the released
files so that no yaml is needed for them.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Optional, Union

from .errors import ConfigError

VARIANTS = ("256", "512", "1024", "512_interp", "tooncrafter", "cami2v_256", "cami2v_512")


@dataclass(frozen=True)
class EpipolarConfig:
    """CamI2V's `epipolar_config`: the epipolar attention added to the camera-aware temporal blocks."""
    registers: int = 4  # num_register_tokens: learned tokens every query may attend to
    # attention_resolution: the UNet levels (downsampling 1, 2, 4, 8) whose epipolar attention is masked; the others
    # attend to every token of every frame (the 512 model leaves its finest level, 40x64, unmasked)
    masked_ds: tuple = (8, 4, 2, 1)
    perturb_zero_translation: bool = True  # add_small_perturbation_on_zero_T


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
    # CamI2V: the temporal blocks (all but init_attn's width) also take the camera; None for plain DynamiCrafter
    epipolar: Optional[EpipolarConfig] = None


@dataclass(frozen=True)
class PoseEncoderConfig:
    """CamI2V's `pose_encoder_config.params` (CameraPoseEncoder, as CamI2V's released models build it)."""
    channels: tuple = (320, 640, 1280, 1280)  # one per UNet level: the UNet's widths
    blocks: int = 2  # nums_rb
    cin: int = 384  # 6 Plücker channels x downscale²
    downscale: int = 8  # downscale_factor: PixelUnshuffle to the latent size
    ksize: int = 1
    heads: int = 8  # temporal_attention_nhead
    max_frames: int = 16  # temporal_position_encoding_max_len


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
    pose_encoder: Optional[PoseEncoderConfig] = None  # CamI2V's camera encoder

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
    # CamI2V's demo (cami2v_gradio_app.py): 25 steps, cfg 5.5, frame stride 2; the 512 model's fps by its default_fs
    "cami2v_256": SamplingDefaults(fs=2, spacing="uniform_trailing", guidance_rescale=0.7, steps=25, cfg=5.5),
    "cami2v_512": SamplingDefaults(fs=10, spacing="uniform_trailing", guidance_rescale=0.7, steps=25, cfg=5.5),
}

_VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}


def _released(variant: str) -> ModelConfig:
    clip = ClipConfig(arch=copy.deepcopy(_VIT_H_14))
    if variant.startswith("cami2v_"):  # configs/inference/003_cami2v_{256x256,512x320}.yaml: the base model + camera
        base = _released(variant[len("cami2v_"):])
        epipolar = EpipolarConfig() if variant == "cami2v_256" else EpipolarConfig(masked_ds=(8, 4, 2))
        unet = replace(base.unet, epipolar=epipolar, default_fs=base.unet.default_fs if variant == "cami2v_256" else 10)
        return replace(base, unet=unet, pose_encoder=PoseEncoderConfig())
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
    camera = target.endswith("CamI2V")
    if not (target.endswith("LatentVisualDiffusion") or camera):
        raise ConfigError(f"the configuration builds {target!r}; only DynamiCrafter's LatentVisualDiffusion and "
                          "CamI2V's CamI2V are supported")
    if p.get("conditioning_key", "hybrid") != "hybrid":
        raise ConfigError(f"conditioning_key {p.get('conditioning_key')!r} is not supported (DynamiCrafter uses 'hybrid')")

    unet_p = _params(p.get("unet_config"), "unet_config")
    for key, released in _UNSUPPORTED_UNET.items():
        if key in unet_p and unet_p[key] != released:
            raise ConfigError(f"unet_config `{key}: {unet_p[key]!r}` is not supported (released models use {released!r})")
    if unet_p.get("num_head_channels", -1) in (-1, None):
        raise ConfigError("unet_config must set num_head_channels (every released model uses 64)")
    unet = UNetConfig(**_pick(UNetConfig, unet_p, tuples=("attention_resolutions", "channel_mult")))
    pose_encoder = None
    if camera:
        pose_encoder, epipolar = _camera_configs(p)
        unet = replace(unet, epipolar=epipolar)

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
    return ModelConfig(unet=unet, vae=vae, text_encoder=text, image_encoder=image, query_transformer=qt,
                       pose_encoder=pose_encoder, **top)


# CameraPoseEncoder options: the value CamI2V's released models use (anything else is another architecture)
_CAMERA_FIXED = {"sk": True, "use_conv": False, "compression_factor": 1, "temporal_position_encoding": True,
                 "attention_block_types": ["Temporal_Self"]}
_EPIPOLAR_FIXED = {"is_3d_full_attn": False, "apply_epipolar_soft_mask": False, "epipolar_hybrid_attention": False,
                   "epipolar_hybrid_attention_v2": False, "only_self_pixel_on_current_frame": False,
                   "current_frame_as_register_token": False, "only_on_cond_frame": False, "compression_factor": 1}


def _camera_configs(p: dict) -> tuple[PoseEncoderConfig, EpipolarConfig]:
    """CamI2V's `pose_encoder_config` and `epipolar_config` (model.params of configs/inference/003_cami2v_*.yaml)."""
    add_type = p.get("add_type", "add_into_temporal_attn")
    if add_type != "add_to_main_branch":
        raise ConfigError(f"CamI2V add_type {add_type!r} is not supported (the released models use "
                          "'add_to_main_branch')")
    enc = _params(p.get("pose_encoder_config"), "pose_encoder_config")
    epi = p.get("epipolar_config")
    if epi is None:
        raise ConfigError("the CamI2V configuration has no `epipolar_config` section")
    for section, fixed in ((enc, _CAMERA_FIXED), (epi, _EPIPOLAR_FIXED)):
        for key, released in fixed.items():
            if key in section and section[key] != released:
                raise ConfigError(f"CamI2V option `{key}: {section[key]!r}` is not supported (the released models use "
                                  f"{released!r})")
    pose = PoseEncoderConfig(channels=tuple(enc.get("channels", (320, 640, 1280, 1280))), blocks=enc.get("nums_rb", 3),
                             cin=enc.get("cin", 64), downscale=enc["downscale_factor"], ksize=enc.get("ksize", 3),
                             heads=enc.get("temporal_attention_nhead", 8),
                             max_frames=enc.get("temporal_position_encoding_max_len", 16))
    epipolar = EpipolarConfig(registers=epi.get("num_register_tokens", 0),
                              masked_ds=tuple(epi.get("attention_resolution", (8, 4, 2, 1))),
                              perturb_zero_translation=epi.get("add_small_perturbation_on_zero_T", False))
    return pose, epipolar
