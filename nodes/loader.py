"""Load DynamiCrafter: a checkpoint from models/dynamicrafter, its networks handed to ComfyUI's model management."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ..dynamicrafter_core.checkpoint import REALCAM_BASES, load_model
from ..dynamicrafter_core.errors import BaseCheckpointNeededError, ModelFileNotFoundError
from ..dynamicrafter_core.weights import RELEASED
from . import host
from .sockets import MODEL, DynamiCrafterModel

log = logging.getLogger(__name__)

WEIGHT_DTYPES = ["auto", "fp32", "fp16", "bf16", "fp8_e4m3fn"]
VARIANTS = ["auto", "512", "512_interp"]
NO_BASE = "none"
# ComfyUI's fp16/bf16 choice weighs the UNet's size against free memory; the released UNet has 1.44e9 parameters
UNET_PARAMETERS = 1_438_854_980
FP8 = torch.float8_e4m3fn

# stage (an attribute of the core model) -> (ComfyUI's device pair for it, streaming patcher?), as ComfyUI's own
# models choose: networks made of comfy.ops layers take ComfyUI's core patcher, which streams them under Dynamic
# VRAM (its UNets, its SD VAE, its CLIP vision); the OpenCLIP towers are open_clip's plain torch.nn modules, whose
# attention keeps its largest weights (nn.MultiheadAttention's in_proj) on a module with children: a streaming
# patcher moves those to the GPU in place and never back, so they take the whole-module patcher, as ComfyUI's VAEs
# with weights its casting cannot stream do (`disable_offload`).
PATCHERS = {"unet": ("unet", True), "vae": ("vae", True), "query_transformer": ("encoders", True),
            "text_encoder": ("encoders", False), "image_encoder": ("encoders", False),
            "pose_encoder": ("unet", True)}  # CamI2V's camera encoder runs where the UNet does


def readme() -> str:
    """models/dynamicrafter/README.txt, written at first start."""
    rows = "\n".join(f"  {f.filename:<36} {f.resolution:<9} {f.size:<8} {f.purpose}\n      {f.url}"
                     for f in RELEASED.values())
    return ("DynamiCrafter checkpoints for the DynamiCrafter Animate nodes (Load DynamiCrafter).\n\n"
            "Download a file from its address below and save it here under the name in the first column\n"
            "(the example workflows use these names):\n\n"
            f"{rows}\n\n"
            "Pruned .safetensors versions work too. A fine-tune's own inference yaml goes next to its checkpoint\n"
            "under the same name (my_model.ckpt + my_model.yaml). More folders can be added in ComfyUI's\n"
            "extra_model_paths.yaml under the key `dynamicrafter:`.\n")


def dtype_plan(choice: str, devices: dict) -> dict:
    """stage -> weight dtype, plus "unet_compute". auto follows ComfyUI (unet_dtype, vae_dtype, text encoder dtype);
    fp32/fp16/bf16 set the UNet, the Query Transformer and the CLIP towers, the VAE keeps ComfyUI's VAE dtype (fp32 or
    bf16) unless fp32 is asked for; fp8_e4m3fn stores the UNet's linear and conv weights in 8 bits."""
    unet_dev, vae_dev, enc_dev = (devices[k][0] for k in ("unet", "vae", "encoders"))
    named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e4m3fn": FP8}.get(choice)
    unet = named or host.unet_dtype(unet_dev, UNET_PARAMETERS)
    if named in (torch.float32, torch.float16, torch.bfloat16):
        encoders = named
    else:
        encoders = host.text_encoder_dtype(enc_dev)
        if encoders.itemsize < 2 or host.is_cpu(enc_dev):
            # the OpenCLIP towers compute in their weights' dtype: no fp8 maths, and half precision is slow on CPUs
            encoders = torch.float32
    return {"unet": unet, "unet_compute": host.compute_dtype(unet, unet_dev),
            "vae": torch.float32 if named == torch.float32 else host.vae_dtype(vae_dev),
            "encoders": encoders}


def cast_weights_to_fp8(module: torch.nn.Module) -> None:
    """Linear and conv weights to float8 e4m3fn; biases and norms stay in the compute dtype. The layers come from
    comfy.ops.manual_cast (host.ops for fp8), which casts each weight to the input's dtype when it runs."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            m.weight = torch.nn.Parameter(m.weight.detach().to(FP8), requires_grad=False)


def missing_file_message(name: str, input_name: str = "ckpt_name") -> str:
    known = {f.filename: f for f in RELEASED.values()}
    folders = ", ".join(host.checkpoint_folders())
    if name in known:
        return (f"{name} is not in models/dynamicrafter (looked in: {folders}). Download {known[name].url} "
                f"({known[name].size}) and save it there as {name}, then press R to refresh the list.")
    return (f"{input_name} {name!r} is not in models/dynamicrafter (looked in: {folders}). Put the checkpoint there "
            "(models/dynamicrafter/README.txt lists the released files), then press R to refresh the list.")


class Loader:
    DESCRIPTION = ("Loads a DynamiCrafter checkpoint (256, 512, 1024, 512 interpolation, ToonCrafter, CamI2V) from "
                   "models/dynamicrafter. Its UNet, VAE and encoders are handed to ComfyUI's model management, so "
                   "they are offloaded like any other model and freed by Unload Models.")
    CATEGORY = "loaders/video_models"
    FUNCTION = "load"
    RETURN_TYPES = (MODEL, "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = ("The DynamiCrafter model for Encode Image Context, Visual Detail Guidance and the samplers.",
                       "Which variant was detected and how, the resolution, the CLIP towers in the file and the "
                       "dtypes chosen.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (host.checkpoint_names(), {
                "tooltip": "The checkpoint, from models/dynamicrafter (and the folders extra_model_paths.yaml adds "
                           "under `dynamicrafter:`). A .yaml/.json with the same name next to it is used as its "
                           "configuration."}),
            "weight_dtype": (WEIGHT_DTYPES, {
                "default": "auto",
                "tooltip": "auto: ComfyUI's choice for each network. fp32/fp16/bf16: the UNet, Query Transformer "
                           "and CLIP towers in that type (the VAE stays fp32 or bf16 unless fp32: fp16 turns its "
                           "frames black). fp8_e4m3fn: UNet weights stored in 8 bits (half of fp16's memory), "
                           "computed in bf16/fp16; slightly less faithful."}),
            "variant": (VARIANTS, {
                "default": "auto",
                "tooltip": "auto: told from the weights (and, for 512 vs 512 interpolation, whose tensors are "
                           "identical in layout, from 'interp' in the file name). Pick 512 or 512_interp for a "
                           "renamed file."}),
        }, "optional": {
            "base_ckpt_name": ([NO_BASE, *host.checkpoint_names()], {
                "default": NO_BASE,
                "tooltip": "RealCam-I2V files only (256_realcam-i2v_50k.safetensors, ...), which hold just the "
                           "camera weights: the DynamiCrafter checkpoint they load on, of their size "
                           f"({REALCAM_BASES}). Leave 'none' for every other file."}),
        }}

    def load(self, ckpt_name: str, weight_dtype: str, variant: str, base_ckpt_name: Optional[str] = None):
        path = host.checkpoint_path(ckpt_name)
        if path is None:
            raise ModelFileNotFoundError(missing_file_message(ckpt_name))
        base = None
        if base_ckpt_name not in (None, NO_BASE):
            base = host.checkpoint_path(base_ckpt_name)
            if base is None:
                raise ModelFileNotFoundError(missing_file_message(base_ckpt_name, "base_ckpt_name"))
        devices = host.devices()
        plan = dtype_plan(weight_dtype, devices)
        # dtype=None keeps the file's tensors as they are (memory-mapped for .ckpt); each network is cast below
        # one layer family for all of its networks: they compute in their weights' dtype except a UNet stored in
        # another (fp8, or fp16 where ComfyUI computes in fp32), which then needs layers that cast as they run
        ops = host.ops(plan["unet"], plan["unet_compute"])
        try:
            core = load_model(path, dtype=None, variant=None if variant == "auto" else variant, ops=ops, base=base)
        except BaseCheckpointNeededError as e:
            raise BaseCheckpointNeededError(
                f"{ckpt_name} holds only RealCam-I2V's camera weights, which load on top of a DynamiCrafter "
                f"checkpoint of the same size: choose that checkpoint in base_ckpt_name ({REALCAM_BASES}), "
                "from models/dynamicrafter") from e
        core.vae.to(plan["vae"])
        unet_storage = plan["unet_compute"] if plan["unet"] == FP8 else plan["unet"]
        core.unet.to(unet_storage)
        if plan["unet"] == FP8:
            cast_weights_to_fp8(core.unet)
        core.unet.compute_dtype = plan["unet_compute"]
        patchers = {}
        for stage, (place, streaming) in PATCHERS.items():
            module = getattr(core, stage)
            if module is None:  # a pruned file: ComfyUI's CLIP / CLIP_VISION stand in
                continue
            if place == "encoders":
                module.to(plan["encoders"])
            if stage == "pose_encoder":
                module.to(plan["unet_compute"])  # small: kept in the dtype it computes in
            if stage == "unet":
                module = host.diffusion_model(core)
            patchers[stage] = host.model_patcher(module, *devices[place], streaming=streaming)
        names = {k: str(v).replace("torch.", "") for k, v in plan.items()}
        info = (f"{core.describe()} | weights: UNet {names['unet']} (computed in {names['unet_compute']}), "
                f"VAE {names['vae']}, encoders {names['encoders']} | {ckpt_name}"
                f"{'' if base is None else ' on ' + base_ckpt_name}")
        log.info("Load DynamiCrafter: %s", info)
        return (DynamiCrafterModel(core=core, patchers=patchers, name=ckpt_name, dtypes=plan), info)
