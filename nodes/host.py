"""Every contact with ComfyUI: the model folder, devices and dtypes, model management, progress and cancel, and
ComfyUI's own CLIP / CLIP vision objects.

ComfyUI is imported inside the functions, never at module level, so the node modules import (and are unit-tested)
without it, and a ComfyUI API change is mended here and nowhere else. Tests replace the functions above the
"ComfyUI objects" line with fakes (tests/nodes/fake_host.py); the two below it only call methods of objects that
ComfyUI hands to a node.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence

import torch

log = logging.getLogger(__name__)

FOLDER = "dynamicrafter"  # models/dynamicrafter, and the extra_model_paths.yaml key


def register_model_folder(readme: str) -> Optional[str]:
    """Make `dynamicrafter` a model folder listing checkpoint files, keeping every path extra_model_paths.yaml added
    (ComfyUI reads that file before it imports packs), and create models/dynamicrafter with a README on first start.
    Returns the default folder, or None outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        log.debug("folder_paths is not importable: not running inside ComfyUI, no model folder registered")
        return None
    default = os.path.join(folder_paths.models_dir, FOLDER)
    extensions = set(folder_paths.supported_pt_extensions)
    if FOLDER in folder_paths.folder_names_and_paths:
        # a YAML entry creates the key with an empty extension set (= list every file, READMEs and sidecar configs
        # too): keep its paths in their order and their list object, add ours, and list checkpoints only
        paths, existing = folder_paths.folder_names_and_paths[FOLDER]
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(existing) | extensions)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], extensions)
    try:
        os.makedirs(default, exist_ok=True)
        readme_path = os.path.join(default, "README.txt")
        if not os.path.exists(readme_path):
            with open(readme_path, "w", encoding="utf-8") as f:
                f.write(readme)
    except OSError as e:  # a read-only install still works with the YAML paths
        log.warning("could not create %s (%s); put DynamiCrafter checkpoints in a folder listed under `%s:` in "
                    "extra_model_paths.yaml instead", default, e, FOLDER)
    return default


def checkpoint_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list(FOLDER)


def checkpoint_path(name: str) -> Optional[str]:
    import folder_paths

    return folder_paths.get_full_path(FOLDER, name)


def controlnet_names() -> list[str]:
    """ComfyUI's models/controlnet, where ToonCrafter's sketch encoder goes."""
    import folder_paths

    return folder_paths.get_filename_list("controlnet")


def controlnet_path(name: str) -> Optional[str]:
    import folder_paths

    return folder_paths.get_full_path("controlnet", name)


def input_directory() -> str:
    """ComfyUI's input folder, where a relative pose file name is looked up (Camera Trajectory)."""
    import folder_paths

    return folder_paths.get_input_directory()


def checkpoint_folders() -> list[str]:
    import folder_paths

    return folder_paths.get_folder_paths(FOLDER)


# -- devices and dtypes: ComfyUI's choices (loader.py decides how the weight-dtype widget overrides them) -----------


def devices() -> dict[str, tuple[torch.device, torch.device]]:
    """(load device, offload device) for each stage, as ComfyUI places its own UNet, VAE and text encoders."""
    import comfy.model_management as mm

    return {"unet": (mm.get_torch_device(), mm.unet_offload_device()),
            "vae": (mm.vae_device(), mm.vae_offload_device()),
            "encoders": (mm.text_encoder_device(), mm.text_encoder_offload_device())}


def unet_dtype(device: torch.device, parameters: int) -> torch.dtype:
    import comfy.model_management as mm

    return mm.unet_dtype(device, parameters, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])


def compute_dtype(weight_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """What ComfyUI computes in for weights stored as `weight_dtype` on `device` (fp8 -> bf16/fp16, fp16 on the CPU ->
    fp32, ...)."""
    import comfy.model_management as mm

    return mm.unet_manual_cast(weight_dtype, device) or weight_dtype


def vae_dtype(device: torch.device) -> torch.dtype:
    import comfy.model_management as mm

    # fp16 is left out on purpose: this KL-f8 VAE overflows in fp16 (black or NaN frames)
    return mm.vae_dtype(device, [torch.bfloat16, torch.float32])


def text_encoder_dtype(device: torch.device) -> torch.dtype:
    import comfy.model_management as mm

    return mm.text_encoder_dtype(device)


def is_cpu(device: torch.device) -> bool:
    return torch.device(device).type == "cpu"


def intermediate_device() -> torch.device:
    import comfy.model_management as mm

    return mm.intermediate_device()


def ops(weight_dtype: torch.dtype, compute_dtype: torch.dtype):
    """Layer classes that ComfyUI's model management can load partially (lowvram) or stream (Dynamic VRAM).

    Weights stored in the dtype they compute in: comfy.ops.disable_weight_init, as ComfyUI picks for its own models
    (comfy.ops.pick_operations). A layer that ComfyUI loads whole then runs torch's own forward; ComfyUI switches on
    casting (`comfy_cast_weights`) only for the layers it leaves on the offload device, patches on the fly or streams
    (Dynamic VRAM streams them all). manual_cast instead casts in every layer on every call: ~20 us of Python per
    layer on the project's CPU, ~870 layers per UNet call, which on a GPU can make a sampling step wait for the CPU
    (tests/bench/comfy_path_probe.py measures it). Weights stored in another dtype (fp8, or fp16 computed in fp32):
    manual_cast, which casts each weight to the input's dtype as it runs."""
    import comfy.ops

    return comfy.ops.disable_weight_init if weight_dtype == compute_dtype else comfy.ops.manual_cast


# -- model management ------------------------------------------------------------------------------------------


def model_patcher(module: torch.nn.Module, load_device: torch.device, offload_device: torch.device,
                  streaming: bool):
    """ComfyUI's patcher for one network. streaming: ComfyUI's own core patcher, which under Dynamic VRAM (ComfyUI
    0.33+, on by default on NVIDIA) keeps the large comfy.ops layers in host memory and copies them in per call and
    loads the rest to the GPU; elsewhere it is the estimate-based ModelPatcher. Not streaming: the estimate-based
    ModelPatcher always, which moves the whole module in and out."""
    import comfy.model_management as mm
    import comfy.model_patcher

    if streaming:
        cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    else:
        cls = comfy.model_patcher.ModelPatcher
    if hasattr(mm, "archive_model_dtypes"):  # ComfyUI 0.33+: each weight's dtype, which streaming copies it in
        mm.archive_model_dtypes(module)
    return cls(module, load_device=load_device, offload_device=offload_device)


def diffusion_model(core) -> torch.nn.Module:
    """What ComfyUI manages for the UNet: a ComfyUI BaseModel whose diffusion model is `core.unet` itself, so the
    patcher that loads it for the bundled samplers is also the MODEL that KSampler, LoRA and ControlNet take."""
    from . import native

    return native.native_model(core)


def load(patchers: Sequence, memory_required: int, full: bool = False) -> None:
    """Ask ComfyUI for room: it evicts least recently used models (ours and others) until `memory_required` bytes of
    activations fit beside the weights, then loads the weights, partially (lowvram) unless `full`."""
    import comfy.model_management as mm

    mm.load_models_gpu(list(patchers), memory_required=int(memory_required), force_full_load=full)


def free_memory(device: torch.device) -> int:
    """Bytes free on `device` for working memory now (after ComfyUI made room for the loaded models)."""
    import comfy.model_management as mm

    return int(mm.get_free_memory(device))


def check_interrupt() -> None:
    """Raises ComfyUI's InterruptProcessingException once Cancel was pressed; callers never catch it."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def progress(total: int, node_id: Optional[str], device: torch.device) -> Callable[[int, Optional[torch.Tensor]], None]:
    """A progress reporter: report(done, latents) moves the node's progress bar and, when ComfyUI is started with a
    --preview-method, shows the first frame of `latents` (B, 4, T, h, w) (SD-VAE space, scaled) as a preview."""
    import comfy.latent_formats
    import comfy.utils
    import latent_preview

    bar = comfy.utils.ProgressBar(total, node_id=node_id)
    previewer = latent_preview.get_previewer(device, comfy.latent_formats.SD15())

    def report(done: int, latents: Optional[torch.Tensor] = None) -> None:
        preview = None
        if previewer is not None and latents is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", latents[:1, :, 0].float())
        bar.update_absolute(done, total, preview)

    return report


# -- ComfyUI objects handed to a node (no import needed: these only call their methods) --------------------------


def encode_text_with_clip(clip, prompts: Sequence[str]) -> list[torch.Tensor]:
    """ComfyUI CLIP -> one (1, tokens, width) tensor per prompt; ComfyUI appends 77-token chunks for long prompts."""
    return [clip.encode_from_tokens(clip.tokenize(p)) for p in prompts]


def encode_image_with_clip_vision(clip_vision, images: torch.Tensor) -> torch.Tensor:
    """ComfyUI CLIP_VISION, IMAGE (B, H, W, 3) in 0..1 -> (B, tokens, width) last-layer tokens without post-layernorm.
    crop=False squashes to 224x224 as DynamiCrafter's own image encoder does."""
    return clip_vision.encode_image(images, crop=False)["last_hidden_state"]
