"""The 3D denoising UNet of DynamiCrafter (paper §3; original `lvdm/modules/networks/openaimodel3d.py` and
`lvdm/modules/attention.py`).

Module attribute names are the released checkpoint's key names, misspelling included (`temopral_conv`), so a state
dict loads without a renaming table and ComfyUI-style LoRA key matching stays possible. Every layer class comes from
`ops` (default `torch.nn`), so a host can inject casting / non-initialising layers (e.g. `comfy.ops.manual_cast`).

Shapes: B videos of T frames; spatial layers see (B*T, C, H, W), temporal layers (B, C, T, H, W) as a view of it.
Every layer keeps the memory format it is given, so the hidden state can be channels-last (`UNet.channels_last`):
then the transformers' (B*T, H*W, C) tokens are a view of it rather than a copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import ProjectedAttention, attention
from .config import UNetConfig
from .epipolar import CameraFeatures, Epipolar
from .errors import InputError

TEXT_TOKENS = 77
IMAGE_TOKENS_PER_FRAME = 16  # the original hard-codes this when it decides whether to split the context per frame
# When UNet.ff_tokens is None, the feed-forward runs over as many tokens at a time as keep its intermediate (about
# 16 C values per token) within these bytes: on a CPU a slice that stays in cache is faster, on a GPU the slices only
# bound the largest temporary of the UNet.
CPU_FF_BYTES = 4 << 20  # 2048 tokens of the 32-wide test model
GPU_FF_BYTES = 512 << 20


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cos first: [cos(t f_k), sin(t f_k)], f_k = max_period^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def group_norm_fp32(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """The ResBlock / output GroupNorms of the original run in float32 whatever the compute dtype (there, autocast
    keeps their weights in float32 too). A plain layer holding narrower weights gets them upcast here; a host's
    casting layer (`ops`) casts them to the float32 input itself.

    Measured on an H200 (bf16, one guided 512 step): CUDA's GroupNorm run on the bf16 tensor itself instead would be
    2 % faster but moves the output further from the float32 model's (max difference 1.45 of its std instead of
    0.95), so the upcast stays."""
    if type(norm).forward is nn.GroupNorm.forward and norm.weight is not None and norm.weight.dtype != torch.float32:
        return F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)
    return norm(x.float()).to(x.dtype)


def ff_token_limit(ff_tokens: Optional[int], x: torch.Tensor) -> int:
    """UNet.ff_tokens resolved for (..., C) tokens x: how many the feed-forward takes at a time (0: all)."""
    if ff_tokens is not None:
        return ff_tokens
    budget = CPU_FF_BYTES if x.device.type == "cpu" else GPU_FF_BYTES
    return max(1, budget // (16 * x.shape[-1] * x.element_size()))


class FeedForward(nn.Module):
    """GEGLU feed-forward: Linear(C, 8C) -> a * gelu(g) -> Linear(4C, C). Keys `net.0.proj`, `net.2`."""

    def __init__(self, dim: int, mult: int = 4, ops=nn):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(nn.Module(), nn.Identity(), ops.Linear(inner, dim))
        self.net[0].proj = ops.Linear(dim, inner * 2)

    def forward(self, x, max_tokens: int = 0):
        """Token by token, so `max_tokens` at a time gives the same result with a smaller intermediate."""
        if not max_tokens or x.shape[:-1].numel() <= max_tokens:
            return self._forward(x)
        flat = x.reshape(-1, x.shape[-1])
        return torch.cat([self._forward(part) for part in flat.split(max_tokens)]).view(*x.shape[:-1], -1)

    def _forward(self, x):
        a, gate = self.net[0].proj(x).chunk(2, dim=-1)
        return self.net[2](F.gelu(gate).mul_(a))  # in place: one 4C-wide temporary fewer


class CrossAttention(ProjectedAttention):
    """Self- or cross-attention; with `image_context` the dual cross-attention of §3.1:

    out = softmax(Q K_txt^T) V_txt + lambda * softmax(Q K_img^T) V_img, sharing Q and to_out,
    lambda = tanh(alpha) + 1 when the gate is learnable (256 model), else 1.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None,
                 image_context: bool = False, learnable_gate: bool = False, ops=nn, whole_context: bool = False):
        if image_context and whole_context:
            raise ValueError("the dual cross-attention splits the context into text and image tokens; it cannot "
                             "also attend to the whole context")
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        super().__init__(query_dim, context_dim, inner, heads, ops=ops)
        # whole_context: attend to every context token as one sequence (Stable Diffusion's attention, which the sketch
        # ControlNet uses) instead of DynamiCrafter's first TEXT_TOKENS
        self.whole_context = whole_context
        self.image_context = image_context
        if image_context:
            self.to_k_ip = ops.Linear(context_dim, inner, bias=False)
            self.to_v_ip = ops.Linear(context_dim, inner, bias=False)
            if learnable_gate:
                self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x, context=None):
        q = self.to_q(x)
        if context is None:
            return self.to_out(attention(q, self.to_k(x), self.to_v(x), self.heads))
        text = context if self.whole_context else context[:, :TEXT_TOKENS]
        out = attention(q, self.to_k(text), self.to_v(text), self.heads)
        if self.image_context:
            image = context[:, TEXT_TOKENS:]
            out_ip = attention(q, self.to_k_ip(image), self.to_v_ip(image), self.heads)
            if hasattr(self, "alpha"):
                # a parameter of a non-leaf module: a partially loaded host may leave it elsewhere
                out_ip = out_ip * (torch.tanh(self.alpha.to(out_ip)) + 1)
            out = out + out_ip
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    """x + attn1(LN x); x + attn2(LN x, context); x + FF(LN x)."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None,
                 image_context: bool = False, learnable_gate: bool = False, ops=nn, whole_context: bool = False):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head, ops=ops)
        self.ff = FeedForward(dim, ops=ops)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim, image_context, learnable_gate, ops=ops,
                                    whole_context=whole_context)
        self.norm1 = ops.LayerNorm(dim)
        self.norm2 = ops.LayerNorm(dim)
        self.norm3 = ops.LayerNorm(dim)

    def forward(self, x, context=None, ff_tokens: int = 0):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x), ff_tokens) + x


class CameraTransformerBlock(BasicTransformerBlock):
    """CamI2V's temporal block (`cami2v_modified_modules.py`, add_type add_to_main_branch). With a camera, n = norm1(x)
    and f the level's pose feature:

        x + pluker_projection(n + f) + epipolar(n + f) + attn1(n)

    then attn2 and the feed-forward as before; without one it is the plain block (the released weights keep working as
    DynamiCrafter's)."""

    def __init__(self, dim: int, heads: int, dim_head: int, registers: int, ops=nn):
        super().__init__(dim, heads, dim_head, ops=ops)
        self.pluker_projection = ops.Linear(dim, dim)
        self.epipolar = Epipolar(dim, heads, registers, ops=ops)

    def forward(self, x, context=None, ff_tokens: int = 0, camera=None):
        """camera: (feature (B or 1, C, T, h, w), mask, batch B, h, w) for tokens x (B h w, T, C), or None."""
        if camera is None:
            return super().forward(x, context, ff_tokens)
        feature, mask, batch, h, w = camera
        n = self.norm1(x)
        f = feature.to(n.dtype).expand(batch, -1, -1, -1, -1).permute(0, 3, 4, 2, 1).reshape(n.shape)
        nf = n + f
        x = self.pluker_projection(nf) + self.epipolar(nf, batch, h, w, mask) + self.attn1(n) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x), ff_tokens) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the H*W tokens, cross-attending to text and per-frame image context
    (`whole_context`: to the whole context as one sequence, as Stable Diffusion's does)."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, learnable_gate: bool, ops=nn,
                 whole_context: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.norm = ops.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = ops.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, heads, dim_head, context_dim, not whole_context, learnable_gate, ops=ops,
                                  whole_context=whole_context)])
        self.proj_out = ops.Linear(inner, channels)

    def forward(self, x, context, ff_tokens: Optional[int] = None):
        bt, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(bt, h * w, c))  # a view when channels-last
        limit = ff_token_limit(ff_tokens, tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, limit)
        tokens = self.proj_out(tokens)
        return x + tokens.view(bt, h, w, c).permute(0, 3, 1, 2)  # x first: the sum keeps x's memory format


class TemporalTransformer(nn.Module):
    """Transformer over the T frames of each spatial position; both attentions are self-attention, with no
    positional encoding and no mask. Its GroupNorm takes statistics over all frames together.

    `conv_proj` selects the 1x1 Conv1d projections of `init_attn` (the per-level blocks use Linear).
    `camera_registers` (CamI2V): its block is camera-aware, with that many epipolar register tokens."""

    def __init__(self, channels: int, heads: int, dim_head: int, conv_proj: bool = False, ops=nn,
                 camera_registers: Optional[int] = None):
        super().__init__()
        inner = heads * dim_head
        self.conv_proj = conv_proj
        self.camera = camera_registers is not None
        self.norm = ops.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = ops.Conv1d(channels, inner, 1) if conv_proj else ops.Linear(channels, inner)
        block = (CameraTransformerBlock(inner, heads, dim_head, camera_registers, ops=ops) if self.camera
                 else BasicTransformerBlock(inner, heads, dim_head, ops=ops))
        self.transformer_blocks = nn.ModuleList([block])
        self.proj_out = ops.Conv1d(inner, channels, 1) if conv_proj else ops.Linear(inner, channels)

    def _project(self, layer, tokens):
        if self.conv_proj:  # Conv1d wants channels before time
            return layer(tokens.transpose(1, 2)).transpose(1, 2)
        return layer(tokens)

    def forward(self, x, batch_size: int, ff_tokens: Optional[int] = None, camera=None):
        """x: (B*T, C, H, W) as the spatial layers hold it; returns the same shape and memory format. camera: the
        level's (pose feature, epipolar mask) for a camera-aware block, or None."""
        bt, c, h, w = x.shape
        b, t = batch_size, bt // batch_size
        frames = x.view(b, t, c, h, w)
        # (B, C, T, H, W) is a view: channels-last-3d when x is channels-last, which GroupNorm reads as it is
        tokens = self.norm(frames.transpose(1, 2)).permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)  # (BHW, T, C)
        tokens = self._project(self.proj_in, tokens)
        limit = ff_token_limit(ff_tokens, tokens)
        for block in self.transformer_blocks:
            if self.camera and camera is not None:
                tokens = block(tokens, None, limit, (*camera, b, h, w))
            else:
                tokens = block(tokens, None, limit)
        tokens = self._project(self.proj_out, tokens)
        # the residual sum writes the (B, H, W, T, C) tokens back in x's layout in one pass
        return (frames + tokens.view(b, h, w, t, c).permute(0, 3, 4, 1, 2)).view(bt, c, h, w)


class TemporalConvBlock(nn.Module):
    """Four (GroupNorm, SiLU, Conv3d (3,1,1)) stages along time, added to the input (ModelScope-style)."""

    def __init__(self, channels: int, ops=nn):
        super().__init__()
        for i in range(1, 5):
            conv = ops.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
            layers = [ops.GroupNorm(32, channels), nn.SiLU()] + ([] if i == 1 else [nn.Identity()]) + [conv]
            setattr(self, f"conv{i}", nn.Sequential(*layers))

    # None: the four stages run channels-last-3d on the CPU, where the convolution is then about 3x faster than on
    # the NCDHW tensor the original's GroupNorm hands it (the tiny-width UNet step at the 512 latent size: 4.8 ->
    # 4.3 s), and NCDHW elsewhere (an H200's bf16 512 step: 1.7 % faster than channels-last, the same output). The
    # residual sum returns x's own layout. The benchmark's straightforward run sets False.
    channels_last: Optional[bool] = None

    def forward(self, x):
        channels_last = x.device.type == "cpu" if self.channels_last is None else self.channels_last
        h = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
        return x + self.conv4(self.conv3(self.conv2(self.conv1(h))))


class ResBlock(nn.Module):
    """GN-SiLU-Conv, + Linear(SiLU(emb)), GN-SiLU-Conv, + skip; then the temporal conv block over (B, C, T, H, W)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, temporal_conv: bool, ops=nn):
        super().__init__()
        self.in_layers = nn.Sequential(ops.GroupNorm(32, channels), nn.SiLU(),
                                       ops.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(ops.GroupNorm(32, out_channels), nn.SiLU(), nn.Identity(),
                                        ops.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if channels == out_channels
                                else ops.Conv2d(channels, out_channels, 1))
        if temporal_conv:
            self.temopral_conv = TemporalConvBlock(out_channels, ops=ops)  # sic: the released key name

    def forward(self, x, emb, batch_size: int):
        h = self.in_layers[2](F.silu(group_norm_fp32(self.in_layers[0], x)))
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        h = self.out_layers[3](F.silu(group_norm_fp32(self.out_layers[0], h)))
        h = self.skip_connection(x) + h
        if hasattr(self, "temopral_conv"):
            bt, c, hh, ww = h.shape
            h5 = h.view(batch_size, bt // batch_size, c, hh, ww).transpose(1, 2)  # (B, C, T, H, W), a view
            h = self.temopral_conv(h5).transpose(1, 2).view(bt, c, hh, ww)
        return h


class Downsample(nn.Module):
    def __init__(self, channels: int, ops=nn):
        super().__init__()
        self.op = ops.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, ops=nn):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


# ---------------------------------------------------------------------------------------------------------------
# float8 weight storage: half the bytes of bf16; each layer upcasts its own weight when it runs. Optionally the linear
# layers multiply in float8 too (Hopper / Ada tensor cores run it at twice bf16's rate).

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
MATMUL_MULTIPLE = 16  # CUDA's float8 matrix product needs both weight dimensions divisible by 16


def _fp8_forward(self, x):
    weight = self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    if isinstance(self, nn.Linear):
        return F.linear(x, weight, bias)
    return self._conv_forward(x, weight, bias)


def fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> its float8 values and the float32 (M, 1) scales they are multiplied by: each row (token) scaled so
    that its largest magnitude maps to float8's largest, so a token of small values keeps its precision."""
    scale = x.abs().amax(1, keepdim=True).float().clamp(min=torch.finfo(torch.float32).tiny) / FP8_MAX
    return (x.float() / scale).to(FP8), scale


def _fp8_matmul_forward(self, x):
    """x W^T + b with both factors in float8: the tokens quantised per token as they come, the weight per output
    channel once (store_fp8); the product accumulates in float32 and is written in x's dtype."""
    rows, scale = fp8_rows(x.reshape(-1, x.shape[-1]))
    out = torch._scaled_mm(rows, self.weight.t(), scale_a=scale, scale_b=self.weight_scale.t(),
                           bias=None if self.bias is None else self.bias.to(x.dtype), out_dtype=x.dtype)
    return out.reshape(*x.shape[:-1], out.shape[-1])


# the plain layer classes and their float8-weight twins (same parameter names, so the same state-dict keys)
FP8_LAYERS = {cls: type(f"Float8{cls.__name__}", (cls,), {"forward": _fp8_forward})
              for cls in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)}
FP8_MATMUL_LINEAR = type("Float8MatmulLinear", (FP8_LAYERS[nn.Linear],), {"forward": _fp8_matmul_forward})


def fp8_matmul_unsupported(device: torch.device) -> Optional[str]:
    """Why `device` cannot multiply float8 matrices (None when it can): an NVIDIA GPU needs float8 tensor cores
    (compute capability 8.9: Ada, Hopper and later); a CPU needs a torch that implements it (2.5 and later)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return (f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no float8 "
                    "tensor cores; they start at 8.9 (Ada, Hopper)")
        return None
    try:
        one = torch.ones(MATMUL_MULTIPLE, MATMUL_MULTIPLE, device=device).to(FP8)
        torch._scaled_mm(one, one.t(), scale_a=torch.ones(MATMUL_MULTIPLE, 1, device=device),
                         scale_b=torch.ones(1, MATMUL_MULTIPLE, device=device), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError, AttributeError) as e:
        return f"torch {torch.__version__} cannot multiply float8 matrices on {device.type} ({str(e).splitlines()[0]})"
    return None


def store_fp8(module: nn.Module, compute_dtype: torch.dtype, matmul: bool = False) -> None:
    """Linear / Conv weights to float8 e4m3 with one scale per output channel (its largest magnitude maps to 448, so
    small weights keep their precision); every other parameter (biases, norms) to `compute_dtype`. matmul: linear
    layers whose sizes allow it multiply in float8 (inputs quantised per token); convolutions still upcast."""
    for layer in module.modules():
        kind = type(layer)
        if kind in FP8_LAYERS:
            weight = layer.weight.detach().float()
            amax = weight.abs().amax(tuple(range(1, weight.ndim)), keepdim=True)
            scale = amax.clamp(min=torch.finfo(torch.float32).tiny) / FP8_MAX
            layer.__class__ = FP8_LAYERS[kind]  # the same module with the upcasting forward
            layer.weight = nn.Parameter((weight / scale).to(FP8), requires_grad=False)
            layer.register_buffer("weight_scale", scale, persistent=False)
        elif isinstance(layer, tuple(FP8_LAYERS)) and not isinstance(layer, tuple(FP8_LAYERS.values())):
            raise TypeError(f"float8 storage wraps torch.nn layers, not {kind.__name__}; a host that injects its own "
                            "layers (ops) should use its own float8 support")
        if isinstance(layer, FP8_LAYERS[nn.Linear]):
            fits = layer.in_features % MATMUL_MULTIPLE == 0 and layer.out_features % MATMUL_MULTIPLE == 0
            layer.__class__ = FP8_MATMUL_LINEAR if matmul and fits else FP8_LAYERS[nn.Linear]
        for name, param in layer.named_parameters(recurse=False):
            if param.dtype != FP8:
                setattr(layer, name, nn.Parameter(param.detach().to(compute_dtype), requires_grad=False))


class UNetBlock(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks: layers applied in order, each with what it needs."""

    @property
    def takes_camera(self) -> bool:
        return any(isinstance(layer, TemporalTransformer) and layer.camera for layer in self)

    def forward(self, x, emb, context, batch_size: int, ff_tokens: Optional[int] = None, camera=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch_size)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, ff_tokens)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, batch_size, ff_tokens, camera)
            else:
                x = layer(x)
        return x


@dataclass
class BlockPatches:
    """Functions a host runs between the UNet's blocks, on the per-frame hidden state (B*T, C, h, w), in list order:
    after_input (i, hidden) -> hidden after input block i, before its skip is saved; after_skip (i, hidden) -> hidden
    after it is saved; before_output (i, hidden, skip) -> (hidden, skip) before output block i joins them (ComfyUI's
    input_block_patch, input_block_patch_after_skip and output_block_patch, which FreeU uses)."""
    after_input: Sequence[Callable] = ()
    after_skip: Sequence[Callable] = ()
    before_output: Sequence[Callable] = ()


class UNet(nn.Module):
    """The 3D UNet. forward(x (B, 8, T, h, w), t (B,), context (B, L, D), fs (B,)) -> (B, 4, T, h, w).

    With `control` (a ControlNet's residuals, each (B, C_k, T, h_k, w_k)): residual k times `control_scale` is added
    to skip k (skips numbered in the order the input blocks produce them, 0 after init_attn) where the output blocks
    take it, and the last residual times `control_scale` to the middle block's output (as the sketch fork's
    ControlledUnetModel, mattyamonaca/ToonCrafter_with_SketchGuidance `cldm/cldm.py`)."""

    def __init__(self, cfg: UNetConfig, ops=nn):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_dim = mc * 4
        hc = cfg.num_head_channels
        gate = cfg.image_cross_attention_scale_learnable
        # CamI2V makes every temporal block camera-aware whose width differs from init_attn's (8 heads of hc)
        registers = cfg.epipolar.registers if cfg.epipolar is not None else None
        self.time_embed = nn.Sequential(ops.Linear(mc, emb_dim), nn.SiLU(), ops.Linear(emb_dim, emb_dim))
        if cfg.fs_condition:
            self.fps_embedding = nn.Sequential(ops.Linear(mc, emb_dim), nn.SiLU(), ops.Linear(emb_dim, emb_dim))

        def level_layers(ch_in, ch_out, ds):
            layers = [ResBlock(ch_in, emb_dim, ch_out, cfg.temporal_conv, ops=ops)]
            if ds in cfg.attention_resolutions:
                layers.append(SpatialTransformer(ch_out, ch_out // hc, hc, cfg.context_dim, gate, ops=ops))
                if cfg.temporal_attention:
                    layers.append(TemporalTransformer(ch_out, ch_out // hc, hc, ops=ops,
                                                      camera_registers=None if ch_out == 8 * hc else registers))
            return layers

        self.input_blocks = nn.ModuleList([UNetBlock([ops.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        if cfg.addition_attention:
            self.init_attn = UNetBlock([TemporalTransformer(mc, 8, hc, conv_proj=True, ops=ops)])
        skip_channels = [mc]
        ch, ds = mc, 1
        self.input_ds, self.output_ds = [1], []  # each block's downsampling, which picks its camera feature
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.input_blocks.append(UNetBlock(level_layers(ch, mult * mc, ds)))
                self.input_ds.append(ds)
                ch = mult * mc
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(UNetBlock([Downsample(ch, ops=ops)]))
                self.input_ds.append(ds)
                skip_channels.append(ch)
                ds *= 2
        self.middle_ds = ds
        self.skip_channels = tuple(skip_channels)  # what a ControlNet's residuals 0 .. n-1 must match

        middle = [ResBlock(ch, emb_dim, ch, cfg.temporal_conv, ops=ops),
                  SpatialTransformer(ch, ch // hc, hc, cfg.context_dim, gate, ops=ops)]
        if cfg.temporal_attention:
            middle.append(TemporalTransformer(ch, ch // hc, hc, ops=ops,
                                              camera_registers=None if ch == 8 * hc else registers))
        middle.append(ResBlock(ch, emb_dim, ch, cfg.temporal_conv, ops=ops))
        self.middle_block = UNetBlock(middle)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = level_layers(ch + skip_channels.pop(), mult * mc, ds)
                self.output_ds.append(ds)
                ch = mult * mc
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, ops=ops))
                    ds //= 2
                self.output_blocks.append(UNetBlock(layers))

        self.out = nn.Sequential(ops.GroupNorm(32, ch), nn.SiLU(), ops.Conv2d(mc, cfg.out_channels, 3, padding=1))

    # None: compute in the weights' dtype. Set it when weights are stored in a narrower type (fp8) than the maths.
    compute_dtype: Optional[torch.dtype] = None
    # Speed / memory settings; none changes the result beyond float rounding.
    # ff_tokens: tokens per feed-forward call (0: all at once; None: by device, see ff_token_limit)
    ff_tokens: Optional[int] = None
    # channels_last: keep the hidden state NHWC (the convolutions' preferred layout; the tokens become views). Off by
    # default: on a CPU it saved 3-4% of a step, but its other rounding grows 100-fold over a stochastic sampling run
    # (parity's interp_eta1: 1.9e-3 of the 1e-2 tolerance, against 3e-5 in NCHW); on a GPU it is unmeasured.
    channels_last: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype or self.input_blocks[0][0].weight.dtype

    def store_fp8(self, compute_dtype: torch.dtype = torch.bfloat16, matmul: bool = False) -> "UNet":
        """Keep the weights in float8 (1.4 GB for the released UNet instead of 2.9 GB in bf16) and compute in
        `compute_dtype`; each layer upcasts its weight as it runs. For UNets built with torch.nn layers.

        matmul=True: the linear layers (47 % of the UNet's FLOPs; the convolutions are another 47 %) multiply
        in float8 on the tensor cores, their inputs quantised per token as they come; bf16 compute only. Further from
        the float32 model than float8 storage alone (`bench --fp8-matmul` prints how far); opt in. Refused, saying
        why, on a device that cannot."""
        if matmul:
            if compute_dtype != torch.bfloat16:
                raise InputError(f"float8 matrix products write bfloat16 (what CUDA's row-scaled float8 product "
                                 f"supports); got compute dtype {str(compute_dtype).replace('torch.', '')}: use bf16")
            device = self.input_blocks[0][0].weight.device
            if (why := fp8_matmul_unsupported(device)) is not None:
                raise InputError(f"float8 matrix products are not available here: {why}. Store the weights in "
                                 "float8 without them (store_fp8(matmul=False), bench --fp8), which any device runs")
        store_fp8(self, compute_dtype, matmul)
        self.compute_dtype = compute_dtype
        return self

    def frame_context(self, context: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, L, D) -> (B*T, L', D). With exactly 16 image tokens per frame (L = 77 + 16 T) frame i sees tokens
        [16i, 16i+16); otherwise every frame sees the whole context (the original's rule)."""
        b, length, d = context.shape
        if length == TEXT_TOKENS + frames * IMAGE_TOKENS_PER_FRAME:
            text = context[:, :TEXT_TOKENS].repeat_interleave(frames, dim=0)
            image = context[:, TEXT_TOKENS:].reshape(b * frames, IMAGE_TOKENS_PER_FRAME, d)
            return torch.cat([text, image], dim=1)
        return context.repeat_interleave(frames, dim=0)

    def control_residuals(self, control: Sequence[Optional[torch.Tensor]], scale: float, batch_size: int,
                          frames: int) -> list[Optional[torch.Tensor]]:
        """A ControlNet's residuals, each (B, C, T, h, w) or already per frame (B*T, C, h, w), or None (nothing
        added there), as scaled (B*T, C, h, w) tensors (cast to the hidden state's dtype where they are added); the
        count is checked here, each shape where it is added."""
        expected = len(self.skip_channels) + 1
        if len(control) != expected:
            raise InputError(f"the UNet takes {expected} ControlNet residuals (one per skip connection and one for "
                             f"the middle block), got {len(control)}; the ControlNet was made for another UNet")
        out = []
        for k, r in enumerate(control):
            if r is None:
                out.append(None)
                continue
            if r.ndim == 5 and r.shape[0] == batch_size and r.shape[2] == frames:
                r = r.transpose(1, 2).reshape(batch_size * frames, r.shape[1], r.shape[3], r.shape[4])
            elif r.ndim != 4 or r.shape[0] != batch_size * frames:
                raise InputError(f"ControlNet residual {k} has shape {tuple(r.shape)}; (batch {batch_size}, "
                                 f"channels, {frames} frames, height, width) or ({batch_size * frames} frames, "
                                 "channels, height, width) is expected")
            out.append(r * scale if scale != 1 else r)
        return out

    def check_camera(self, camera: CameraFeatures, batch: int, frames: int, h: int, w: int) -> None:
        """Refuse a camera that does not fit this UNet or this call, before any work."""
        if self.cfg.epipolar is None:
            raise InputError("a camera was given to a UNet without camera control; load a CamI2V checkpoint "
                             "(256_cami2v.pt, 512_cami2v_50k.pt, ...) or leave the camera out")
        widths = [self.cfg.model_channels * m for m in self.cfg.channel_mult]
        if len(camera.features) != len(widths):
            raise InputError(f"the camera has {len(camera.features)} feature levels; this UNet takes {len(widths)}")
        for k, (f, width) in enumerate(zip(camera.features, widths)):
            want = (width, frames, h >> k, w >> k)
            if f.ndim != 5 or tuple(f.shape[1:]) != want or f.shape[0] not in (1, batch):
                raise InputError(f"camera feature {k} has shape {tuple(f.shape)}; ({batch} or 1, {', '.join(map(str, want))}) "
                                 f"is expected for {frames} frames of {h}x{w} latents: the camera was made for "
                                 "another video size or frame count")

    @staticmethod
    def _add_residual(hidden: torch.Tensor, residual: Optional[torch.Tensor], k: int) -> torch.Tensor:
        if residual is None:
            return hidden
        if residual.shape != hidden.shape:
            raise InputError(f"ControlNet residual {k} has {residual.shape[1]} channels of "
                             f"{residual.shape[2]}x{residual.shape[3]}, where the UNet has {hidden.shape[1]} of "
                             f"{hidden.shape[2]}x{hidden.shape[3]}: the ControlNet was made for another UNet")
        return hidden + residual.to(hidden.dtype)  # hidden first: the sum keeps its memory format

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                fs: Optional[torch.Tensor] = None, control: Optional[Sequence[torch.Tensor]] = None,
                control_scale: float = 1.0, patches: Optional[BlockPatches] = None,
                camera: Optional[CameraFeatures] = None) -> torch.Tensor:
        """patches: a host's functions between the blocks (BlockPatches); none by default.
        camera (CamI2V): the pose encoder's features and the epipolar masks for the camera-aware temporal blocks; a
        block at downsampling ds takes feature log2(ds), the middle block the last one. None: plain DynamiCrafter."""
        b, _, frames, h, w = x.shape
        if camera is not None:
            self.check_camera(camera, b, frames, h, w)

        def level(block, ds, hidden, index=None):
            if camera is None or not block.takes_camera:
                return None
            return camera.level(int(math.log2(ds)) if index is None else index, ds, hidden.shape[-2], hidden.shape[-1])
        dtype = self.dtype
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(dtype))
        if self.cfg.fs_condition:
            if fs is None:
                fs = torch.full((b,), self.cfg.default_fs, dtype=torch.long, device=x.device)
            fs = torch.as_tensor(fs, device=x.device).reshape(-1).expand(b)
            emb = emb + self.fps_embedding(timestep_embedding(fs, self.cfg.model_channels).to(dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        context = self.frame_context(context.to(dtype), frames)

        hidden = x.transpose(1, 2).reshape(b * frames, -1, h, w).to(dtype)  # (BT, C, h, w)
        if self.channels_last:
            hidden = hidden.contiguous(memory_format=torch.channels_last)
        patches = patches or BlockPatches()
        skips = []
        for i, block in enumerate(self.input_blocks):
            hidden = block(hidden, emb, context, b, self.ff_tokens, level(block, self.input_ds[i], hidden))
            if i == 0 and hasattr(self, "init_attn"):
                hidden = self.init_attn(hidden, emb, context, b, self.ff_tokens)
            for patch in patches.after_input:
                hidden = patch(i, hidden)
            skips.append(hidden)
            for patch in patches.after_skip:
                hidden = patch(i, hidden)
        hidden = self.middle_block(hidden, emb, context, b, self.ff_tokens,
                                   level(self.middle_block, self.middle_ds, hidden, index=-1))
        residuals = None if control is None else self.control_residuals(control, control_scale, b, frames)
        if residuals:  # the last residual goes to the middle block's output, the others to the skips, last first
            hidden = self._add_residual(hidden, residuals.pop(), len(residuals))
        for i, block in enumerate(self.output_blocks):
            skip = skips.pop()
            if residuals:
                skip = self._add_residual(skip, residuals.pop(), len(residuals))
            for patch in patches.before_output:
                hidden, skip = patch(i, hidden, skip)
            hidden = torch.cat([hidden, skip], dim=1)
            hidden = block(hidden, emb, context, b, self.ff_tokens, level(block, self.output_ds[i], hidden))
        out = self.out[2](F.silu(group_norm_fp32(self.out[0], hidden)))
        return out.reshape(b, frames, -1, h, w).transpose(1, 2).to(x.dtype)
