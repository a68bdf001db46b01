"""ToonCrafter's sketch guidance: a ControlNet (Zhang et al., arXiv 2302.05543) that turns one line drawing per frame
into 13 residuals for the UNet's skip connections and middle block.

There is no official code for it; the released `sketch_encoder.ckpt` loads strictly into lllyasviel's ControlNet with
Stable Diffusion 2.1's settings and `hint_channels` 1 (the community fork mattyamonaca/ToonCrafter_with_SketchGuidance,
`cldm/cldm.py` `ControlNet` and `configs/cldm_v21.yaml`, whose behaviour this module follows; shared docs
TOONCRAFTER.md §5). Unlike the UNet it has no temporal layers and no fs embedding: every frame is an independent image,
and its cross-attention attends to the whole context, text and image tokens alike (the fork's Stable Diffusion
attention; kijai's wrapper sees only the 77 text tokens, which a caller gets by passing `context[:, :77]`).

Module attribute names are the released file's keys (`time_embed`, `input_blocks`, `input_hint_block`, `zero_convs`,
`middle_block`, `middle_block_out`, no prefix). The blocks are the UNet's own (`unet.py`): a ResBlock without its
temporal conv and a SpatialTransformer attending to the whole context compute exactly Stable Diffusion's. Every layer
class comes from `ops` (default `torch.nn`).

Shapes: x (B, 4, T, h, w), hint (B, C_hint, T, 8h, 8w); inside, frames are folded into the batch, (B*T, C, h, w).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from .checkpoint import StateDict, assign_weights, looks_like, read_state_dict, sidecar_config
from .config import load_config_file
from .errors import CheckpointError, ConfigError, InputError
from .settings import check_pixels, is_whole
from .unet import Downsample, ResBlock, SpatialTransformer, UNetBlock, timestep_embedding

# the hint encoder's widths; its convs into widths 2, 4 and 6 have stride 2, so it meets the latents at 1/8 the size
HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)
HINT_STRIDE_2 = (2, 4, 6)
LATENT_SCALE = 8  # hint pixels per latent pixel


# ---------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ControlNetConfig:
    """`control_stage_config.params` (`cldm.cldm.ControlNet`); the defaults are the released sketch_encoder's
    (`configs/cldm_v21.yaml` with `hint_channels` 1)."""
    in_channels: int = 4  # the noisy latent z_t only, not the UNet's concat channels
    hint_channels: int = 1  # one grey channel: white lines on black
    model_channels: int = 320
    attention_resolutions: tuple = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: tuple = (1, 2, 4, 4)
    num_head_channels: int = 64  # -1: `num_heads` heads of whatever width the level has
    num_heads: int = -1
    context_dim: int = 1024

    def heads(self, channels: int) -> tuple[int, int]:
        """(heads, dim_head) of a transformer at `channels`, as the original computes them."""
        if self.num_head_channels == -1:
            return self.num_heads, channels // self.num_heads
        return channels // self.num_head_channels, self.num_head_channels

    @property
    def residual_channels(self) -> tuple:
        """The channels of residuals 0 .. 12: the UNet's skip connections in order, then the middle block."""
        out = [self.model_channels]
        for level, mult in enumerate(self.channel_mult):
            out += [mult * self.model_channels] * self.num_res_blocks
            if level != len(self.channel_mult) - 1:
                out.append(mult * self.model_channels)
        return tuple(out + [out[-1]])


SKETCH_ENCODER = ControlNetConfig()

# options of the original class that change nothing at inference, and those whose every other value would build a
# network this module does not (each with the only value accepted; None: the key must be absent or null)
_IGNORED = ("image_size", "dropout", "use_checkpoint", "use_fp16", "use_bf16", "num_heads_upsample",
            "use_new_attention_order", "legacy")
_FIXED = {"use_spatial_transformer": True, "use_linear_in_transformer": True, "transformer_depth": 1, "dims": 2,
          "conv_resample": True, "use_scale_shift_norm": False, "resblock_updown": False, "n_embed": None,
          "disable_self_attentions": None, "num_attention_blocks": None, "disable_middle_self_attn": False}
# the original's defaults for keys a yaml leaves out (the two transformer switches default to the SD 1 layout there)
_ORIGINAL_DEFAULTS = {"channel_mult": (1, 2, 4, 8), "num_head_channels": -1, "num_heads": -1,
                      "use_spatial_transformer": False, "use_linear_in_transformer": False}
_REQUIRED = ("in_channels", "hint_channels", "model_channels", "num_res_blocks", "attention_resolutions",
             "context_dim")


def controlnet_config(section: Union[ControlNetConfig, dict, str, Path]) -> ControlNetConfig:
    """A ControlNetConfig from the original yaml's `control_stage_config` section ({target, params} or its params),
    a `model:` section holding one, or a path to such a yaml / json."""
    if isinstance(section, ControlNetConfig):
        return section
    if isinstance(section, (str, Path)):
        section = load_config_file(section)
    if not isinstance(section, Mapping):
        raise ConfigError(f"a ControlNet configuration is the original yaml's control_stage_config section (a dict) "
                          f"or a path to the yaml; got {type(section).__name__}")
    params = section.get("params", section)
    if isinstance(params, Mapping) and "control_stage_config" in params:  # the whole model section
        section = params["control_stage_config"]
        params = section.get("params", section)
    target = str(section.get("target", "cldm.cldm.ControlNet"))
    if not target.endswith("ControlNet"):
        raise ConfigError(f"control_stage_config builds {target!r}; only the ControlNet (cldm.cldm.ControlNet) is "
                          "supported")
    params = dict(params)
    known = set(_IGNORED) | set(_FIXED) | set(_ORIGINAL_DEFAULTS) | set(_REQUIRED)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"control_stage_config has `{unknown[0]}`, which the original ControlNet does not take; "
                          "check the section")
    missing = [k for k in _REQUIRED if params.get(k) is None]
    if missing:
        raise ConfigError(f"control_stage_config must set `{missing[0]}` (the released sketch_encoder: "
                          f"{getattr(SKETCH_ENCODER, missing[0])!r})")
    absent = set(_ORIGINAL_DEFAULTS) - set(params)
    for key, value in _ORIGINAL_DEFAULTS.items():
        params.setdefault(key, value)
    for key, accepted in _FIXED.items():
        value = params.get(key, accepted)
        if key == "transformer_depth" and isinstance(value, (list, tuple)) and set(value) == {1}:
            value = 1
        if value != accepted:
            given = (f"leaves `{key}` out, which the original reads as {value!r}; that is" if key in absent
                     else f"`{key}: {value!r}` is")
            raise ConfigError(f"control_stage_config {given} not supported: the sketch ControlNet (cldm_v21.yaml) "
                              f"sets {key}: {accepted!r}")
    for key in ("in_channels", "hint_channels", "model_channels", "num_res_blocks", "context_dim"):
        if not is_whole(params[key]) or params[key] < 1:
            raise ConfigError(f"control_stage_config `{key}` must be a whole number of at least 1; got "
                              f"{params[key]!r}")
    for key in ("channel_mult", "attention_resolutions"):
        value = params[key]
        if not isinstance(value, (list, tuple)) or not all(is_whole(v) and v >= 1 for v in value) or (
                key == "channel_mult" and not value):
            raise ConfigError(f"control_stage_config `{key}` must be a list of whole numbers >= 1; got {value!r}")
    nhc, nh = params["num_head_channels"], params["num_heads"]
    if nhc == -1 and nh == -1:
        raise ConfigError("control_stage_config must set num_head_channels (the sketch ControlNet uses 64) or "
                          "num_heads")
    cfg = ControlNetConfig(**{f.name: (tuple(params[f.name]) if f.name in ("channel_mult", "attention_resolutions")
                                       else params[f.name]) for f in fields(ControlNetConfig)})
    for mult in cfg.channel_mult:
        ch = mult * cfg.model_channels
        heads, dim_head = cfg.heads(ch)
        if ch % 32 or heads < 1 or heads * dim_head != ch:
            raise ConfigError(f"control_stage_config gives a level {ch} channels wide, which GroupNorm(32) and "
                              f"{'num_head_channels ' + str(nhc) if nhc != -1 else 'num_heads ' + str(nh)} cannot "
                              "divide evenly")
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# The network


def check_hint(hint, batch: int, frames: int, height: int, width: int, channels: int, values: bool = True) -> None:
    """Refuse a hint that is not (batch or 1, channels, frames, height, width) of real values in [0, 1]. `values`:
    also scan the values (once per video; the ControlNet's own call checks only the shape)."""
    if not isinstance(hint, torch.Tensor):
        raise InputError(f"the sketch hint must be a torch.Tensor (batch, {channels}, frames, height, width) in "
                         f"[0, 1]; got {type(hint).__name__}")
    if hint.ndim != 5:
        raise InputError(f"the sketch hint must be (batch, {channels}, frames, height, width); got shape "
                         f"{tuple(hint.shape)}")
    b, c, t, h, w = hint.shape
    if c != channels:
        raise InputError(f"the sketch hint has {c} channels but this ControlNet takes {channels}: give one grey "
                         "channel per frame, white lines on black")
    if b not in (1, batch):
        raise InputError(f"the sketch hint has batch {b} but there are {batch} videos; give one hint video, or one "
                         "per video")
    if t != frames:
        raise InputError(f"the sketch hint has {t} frames but the video has {frames}: give exactly one hint frame "
                         "per video frame (an all-black frame where there is no drawing)")
    if (h, w) != (height, width):
        raise InputError(f"the sketch hint frames are {w}x{h} pixels (width x height) but the video is "
                         f"{width}x{height}: resize the drawings to the video's size")
    if not values:
        return
    if not hint.is_floating_point():
        raise InputError(f"sketch hint values must be floats in [0, 1]; got {str(hint.dtype).replace('torch.', '')} "
                         "(divide 0..255 values by 255)")
    check_pixels("sketch hint", hint, 0.0, 1.0, "drawings", " (white lines, 1, on black, 0)")


def sketch_hint(drawings: torch.Tensor, frames: int, height: int, width: int, at: Optional[list] = None,
                invert: bool = True) -> torch.Tensor:
    """Drawings (N, H, W) in [0, 1] -> the sketch hint (1, 1, frames, height, width): each drawing scaled to the
    video and put at its frame (`at`, one frame number per drawing; None: one drawing per frame, in order), black
    (no drawing) elsewhere. invert: the drawings are dark lines on light, as drawn, while the sketch encoder reads
    white lines on black (the sketch fork feeds it inverted line art)."""
    import torch.nn.functional as F

    if invert:
        drawings = 1.0 - drawings
    if tuple(drawings.shape[-2:]) != (height, width):
        drawings = F.interpolate(drawings[:, None].float(), size=(height, width), mode="bilinear", antialias=True,
                                 align_corners=False)[:, 0].clamp(0, 1)
    count = drawings.shape[0]
    if at is None:
        if count != frames:
            raise InputError(f"{count} drawings for a video of {frames} frames: give one per frame, or name the frames "
                             "the drawings are for")
        return drawings[None, None].contiguous()
    if len(at) != count:
        raise InputError(f"{len(at)} frame number(s) for {count} drawing(s): give one frame number per drawing, in "
                         "the drawings' order")
    outside = [i for i in at if not 0 <= i < frames]
    if outside:
        raise InputError(f"a drawing is for frame {outside[0]}, but the video's frames are 0 to {frames - 1}")
    hint = torch.zeros(frames, height, width)
    hint[list(at)] = drawings.float()
    return hint[None, None]


class ControlNet(nn.Module):
    """forward(x (B, 4, T, h, w), hint (B, C_hint, T, 8h, 8w) in [0, 1], t (B,), context (B, L, D)) -> 13 residuals
    (B, C_k, T, h_k, w_k), not yet multiplied by a control scale: residual k for the UNet's skip k, the last for its
    middle block."""

    def __init__(self, cfg: ControlNetConfig = SKETCH_ENCODER, ops=nn):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(ops.Linear(mc, emb_dim), nn.SiLU(), ops.Linear(emb_dim, emb_dim))

        hint_layers, ch = [], cfg.hint_channels
        for i, width in enumerate(HINT_WIDTHS):
            hint_layers += [ops.Conv2d(ch, width, 3, padding=1, stride=2 if i in HINT_STRIDE_2 else 1), nn.SiLU()]
            ch = width
        hint_layers.append(ops.Conv2d(ch, mc, 3, padding=1))  # zero-initialised in training
        self.input_hint_block = nn.Sequential(*hint_layers)

        def transformer(channels):
            heads, dim_head = cfg.heads(channels)
            return SpatialTransformer(channels, heads, dim_head, cfg.context_dim, False, ops=ops, whole_context=True)

        def zero_conv(channels):  # zero-initialised in training
            return nn.Sequential(ops.Conv2d(channels, channels, 1))

        self.input_blocks = nn.ModuleList([UNetBlock([ops.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        self.zero_convs = nn.ModuleList([zero_conv(mc)])
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb_dim, mult * mc, temporal_conv=False, ops=ops)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(UNetBlock(layers))
                self.zero_convs.append(zero_conv(ch))
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(UNetBlock([Downsample(ch, ops=ops)]))
                self.zero_convs.append(zero_conv(ch))
                ds *= 2
        self.middle_block = UNetBlock([ResBlock(ch, emb_dim, ch, temporal_conv=False, ops=ops), transformer(ch),
                                       ResBlock(ch, emb_dim, ch, temporal_conv=False, ops=ops)])
        self.middle_block_out = zero_conv(ch)

    # tokens per feed-forward call, as UNet.ff_tokens (0: all at once; None: by device)
    ff_tokens: Optional[int] = None

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def forward(self, x: torch.Tensor, hint: torch.Tensor, t: torch.Tensor,
                context: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels:
            raise InputError(f"the ControlNet takes the noisy latents (batch, {self.cfg.in_channels}, frames, h, w); "
                             f"got shape {tuple(x.shape)}")
        b, _, frames, h, w = x.shape
        check_hint(hint, b, frames, h * LATENT_SCALE, w * LATENT_SCALE, self.cfg.hint_channels, values=False)
        if context.ndim != 3 or context.shape[0] not in (1, b) or context.shape[2] != self.cfg.context_dim:
            raise InputError(f"the ControlNet's context must be (batch {b}, tokens, {self.cfg.context_dim}); got "
                             f"shape {tuple(context.shape)}")
        dtype = self.dtype
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        # every frame sees the whole context (B, L, D) -> (B*T, L, D)
        context = context.expand(b, -1, -1).to(dtype).repeat_interleave(frames, dim=0)

        hidden = x.transpose(1, 2).reshape(b * frames, -1, h, w).to(dtype)  # (BT, C, h, w)
        hint = hint.expand(b, -1, -1, -1, -1).transpose(1, 2).reshape(b * frames, -1, *hint.shape[-2:])
        guide = self.input_hint_block(hint.to(dtype))  # (BT, model_channels, h, w)
        outs = []
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            hidden = block(hidden, emb, context, b, self.ff_tokens)
            if i == 0:
                hidden = hidden + guide
            outs.append(zero_conv(hidden))
        hidden = self.middle_block(hidden, emb, context, b, self.ff_tokens)
        outs.append(self.middle_block_out(hidden))
        return [out.view(b, frames, *out.shape[1:]).transpose(1, 2) for out in outs]  # (B, C, T, h, w) views


# ---------------------------------------------------------------------------------------------------------------
# Loading

HINT_KEY = "input_hint_block.0.weight"
FIRST_KEY = "input_blocks.0.0.weight"


def describe_controlnet(sd: StateDict) -> str:
    """What a ControlNet state dict is, from its tensors' shapes, for error messages."""
    keys = list(sd)  # (a safetensors file's mapping answers `in` only through its key list)
    if HINT_KEY not in keys or FIRST_KEY not in keys:
        return looks_like(keys)
    mc, hint = sd[FIRST_KEY].shape[0], sd[HINT_KEY].shape[1]
    to_k = next((k for k in keys if re.search(r"attn2\.to_k\.weight$", k)), None)
    ctx = sd[to_k].shape[1] if to_k else None
    what = (f"a ControlNet with model_channels {mc}, {hint} hint channel{'s' if hint != 1 else ''}"
            f"{f' and context width {ctx}' if ctx else ''}")
    if (mc, hint, ctx) == (320, 1, 1024):
        return what + " (the sketch_encoder's layout)"
    if ctx == 768:
        return what + " (a Stable Diffusion 1.x ControlNet, not ToonCrafter's sketch encoder)"
    if ctx == 1024 and hint != 1:
        return what + " (a Stable Diffusion 2.x ControlNet for colour hints, not ToonCrafter's sketch encoder)"
    if ctx == 2048:
        return what + " (a Stable Diffusion XL ControlNet, not ToonCrafter's sketch encoder)"
    return what


def load_controlnet(source: Union[str, Path, StateDict], config: Union[None, dict, str, Path, ControlNetConfig] = None,
                    device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = torch.float32,
                    ops=nn) -> ControlNet:
    """Build the sketch ControlNet from its file (`sketch_encoder.ckpt` or a .safetensors of it) or a state dict.

    config: the original yaml's `control_stage_config` section (dict, path or ControlNetConfig); by default a
            <stem>.yaml / .json beside the file, else the released sketch_encoder's. device: where the weights
            go. dtype: the weights' dtype (None: the file's).
    Every key must be there with its shape, and nothing else; every tensor is copied out of the file."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        sd = read_state_dict(path)
        what = f"ControlNet file {path.name}"
        if config is None and (side := sidecar_config(path)) is not None:
            config = side  # a <stem>.yaml / .json beside it holds its own control_stage_config
    elif isinstance(source, Mapping):
        sd = source
        what = "the ControlNet state dict"
    else:
        raise CheckpointError(f"load_controlnet takes a file path or a state dict, not {type(source).__name__}")
    cfg = SKETCH_ENCODER if config is None else controlnet_config(config)
    against = ("the released sketch_encoder's configuration (cldm_v21.yaml, hint_channels 1)" if config is None
               else "the given configuration")
    keys = set(sd)  # (a safetensors file's mapping answers `in` only through its key list)
    if HINT_KEY not in keys:
        raise CheckpointError(f"{what} is not a ControlNet: it has no `{HINT_KEY}` (the hint encoder's first conv). "
                              f"It looks like {looks_like(keys)}. Load ToonCrafter's sketch_encoder.ckpt.")
    guess = describe_controlnet(sd)
    if FIRST_KEY in keys and sd[FIRST_KEY].shape[0] != cfg.model_channels:
        raise CheckpointError(
            f"{what}: `{FIRST_KEY}` has shape {list(sd[FIRST_KEY].shape)}, so the file is {guess}, but "
            f"{against} builds model_channels {cfg.model_channels}. Pass the ControlNet's own control_stage_config.")
    cfg_note = (f"It was checked against {against}; "
                + ("pass the ControlNet's own control_stage_config if it is another." if config is None
                   else "check that the two belong together."))
    device = torch.device(device)
    with torch.device("meta"):
        net = ControlNet(cfg, ops=ops)
        layout = net if ops is nn else ControlNet(cfg)
    assign_weights(net, layout, "", sd, {k: k for k in keys}, device, dtype, what, guess, cfg_note)
    net.source = what
    return net.eval().requires_grad_(False)
