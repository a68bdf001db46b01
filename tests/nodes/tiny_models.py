"""Tiny models for ComfyUI's own ControlNet and LoRA nodes on DynamiCrafter's native MODEL, shared by the in-process
tests (test_native_control_lora.py) and the server tier (test_comfyui_host.py), which puts them in a server's model
folders. All weights are random from fixed seeds.

- a copy of tiny_v07 whose UNet is 64 channels wide with 64-channel heads (ComfyUI's ControlNet loader assumes
  64-channel attention heads), with its sidecar config;
- an SD2.1-layout ControlNet for that UNet, built with ComfyUI's own ControlNet class (ComfyUI must be importable);
- a LoRA for tiny_v07 (or any UNet) on given modules, in kohya / generic key names.

`.safetensors` paths are written with safetensors, any other suffix with torch.save (ComfyUI reads both).
"""
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from dynamicrafter_core.config import from_original
from dynamicrafter_core.unet import UNet

from .helpers import FIXTURE, TINY

UNET = "model.diffusion_model."
HINT_GAINS = {"input_hint_block.": 1.5}  # the hint, 8 layers deep, must still steer
LORA_RANK, LORA_ALPHA = 4, 2.0

# LoRA key (without .lora_up.weight / .lora_down.weight / .alpha) -> the released UNet's module it must patch
LORA_TARGETS = {
    # the released names, kohya style: spatial self-attention, the image cross-attention, temporal layers
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k_ip":
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip",
    "lora_unet_output_blocks_3_1_transformer_blocks_0_attn2_to_v_ip":
        "output_blocks.3.1.transformer_blocks.0.attn2.to_v_ip",
    "lora_unet_input_blocks_1_2_transformer_blocks_0_attn1_to_q": "input_blocks.1.2.transformer_blocks.0.attn1.to_q",
    "lora_unet_input_blocks_1_0_temopral_conv_conv1_2": "input_blocks.1.0.temopral_conv.conv1.2",  # a Conv3d
    # the released names, generic style
    "diffusion_model.middle_block.2.transformer_blocks.0.attn1.to_v": "middle_block.2.transformer_blocks.0.attn1.to_v",
    "diffusion_model.output_blocks.4.1.proj_out": "output_blocks.4.1.proj_out",
    # SD2.1's diffusers names, kohya style: the spatial layers sit where SD2.1's do
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k":
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "lora_unet_down_blocks_1_resnets_1_conv1": "input_blocks.5.0.in_layers.2",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_q":
        "middle_block.1.transformer_blocks.0.attn2.to_q",
    "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_2":
        "output_blocks.5.1.transformer_blocks.0.ff.net.2",
}


def save(tensors: dict, path: Path) -> None:
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if Path(path).suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, str(path))


def randomize(module: torch.nn.Module, seed: int, gains: dict) -> None:
    """Every parameter drawn from `seed` (ComfyUI's layers skip initialisation), the zero convolutions too, so a
    ControlNet adds something from the first step: weights N(0, gain / sqrt(fan-in)) with the gain of the first
    prefix of `gains` the name starts with (else 0.5), norm scales 1, biases small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                gain = next((g for prefix, g in gains.items() if name.startswith(prefix)), 0.5)
                p.copy_(torch.randn(p.shape, generator=generator) * gain / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.01)


def write_wide_checkpoint(folder: Path, name: str, config_name: str) -> SimpleNamespace:
    """tiny_v07 with a UNet 64 channels wide (random weights, seed 0) and 64-channel heads, as `folder/name` with its
    sidecar config `folder/config_name`; the VAE, CLIP towers, Query Transformer and schedule are tiny_v07's.
    Returns the UNet's config and skip channels."""
    section = json.loads((FIXTURE / "tiny_v07.config.json").read_text())["model"]
    section["params"]["unet_config"]["params"].update(model_channels=64, num_head_channels=64)
    (Path(folder) / config_name).write_text(json.dumps({"model": section}))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet(from_original(section).unet)
    state = {k: v for k, v in load_file(str(FIXTURE / TINY)).items() if not k.startswith(UNET)}
    state.update({UNET + k: v for k, v in unet.state_dict().items()})
    save(state, Path(folder) / name)
    return SimpleNamespace(cfg=unet.cfg, skip_channels=unet.skip_channels)


def sd21_controlnet(cfg, seed: int = 1, gains: dict = HINT_GAINS) -> torch.nn.Module:
    """An SD2.1-layout ControlNet (ComfyUI's own class) for a UNet of config `cfg` (SD2.1's level layout), random
    weights from `seed`; its residuals have that UNet's skip channels."""
    from comfy.cldm.cldm import ControlNet
    from comfy.ops import disable_weight_init

    levels = len(cfg.channel_mult)
    assert levels == 4 and cfg.num_res_blocks == 2 and tuple(cfg.attention_resolutions) == (4, 2, 1)  # SD2.1's layout
    net = ControlNet(
        image_size=32, in_channels=4, hint_channels=3, model_channels=cfg.model_channels,
        num_res_blocks=[cfg.num_res_blocks] * levels, channel_mult=list(cfg.channel_mult), num_head_channels=64,
        transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1, context_dim=cfg.context_dim,
        use_linear_in_transformer=True, use_spatial_transformer=True, operations=disable_weight_init)
    randomize(net, seed=seed, gains=gains)
    return net


def write_controlnet(path: Path, wide: SimpleNamespace, seed: int = 1) -> torch.nn.Module:
    """sd21_controlnet for the wide UNet, saved in LDM key names (what core Load ControlNet Model reads)."""
    net = sd21_controlnet(wide.cfg, seed)
    assert tuple(z[0].weight.shape[0] for z in net.zero_convs) == tuple(wide.skip_channels)
    save(net.state_dict(), path)
    return net


def write_lora(path: Path, targets: dict, weight_of: Callable[[str], torch.Tensor], seed: int) -> dict:
    """A rank-LORA_RANK LoRA (random, from `seed`) with a lora_up, lora_down and alpha for each key of `targets`,
    shaped for the weight of its module (`weight_of(module path)`); returns its tensors."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, module in targets.items():
        w = weight_of(module)
        tensors[f"{key}.lora_down.weight"] = torch.randn((LORA_RANK, *w.shape[1:]), generator=generator)
        tensors[f"{key}.lora_up.weight"] = torch.randn((w.shape[0], LORA_RANK) + (1,) * (w.ndim - 2),
                                                       generator=generator)
        tensors[f"{key}.alpha"] = torch.tensor(LORA_ALPHA)
    save(tensors, path)
    return tensors


def checkpoint_weights(path: Path = FIXTURE / TINY) -> Callable[[str], torch.Tensor]:
    """weight_of for write_lora from a checkpoint file: a UNet module path -> its weight in the file."""
    state = load_file(str(path))
    return lambda module: state[f"{UNET}{module}.weight"]
