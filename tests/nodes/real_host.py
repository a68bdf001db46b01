"""The real-host tier's shared part: a real ComfyUI (COMFYUI_DIR, prepared by tests/acceptance/comfyui_host.py)
imported in-process as it runs with --cpu, the pack's nodes on it, and the tiny checkpoint in a model folder.
Test modules import the fixtures and `pytestmark` from here."""
import os
import sys
from pathlib import Path

import pytest
import torch

from .helpers import FIXTURE, TINY, comfy_image

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
# slow too: with COMFYUI_DIR set, these take minutes, and the default tier stays under 5 (`-m comfyui` runs them)
pytestmark = [pytest.mark.comfyui, pytest.mark.slow, pytest.mark.skipif(
    not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
    reason="no real ComfyUI: set COMFYUI_DIR to a ComfyUI prepared with "
           "`python tests/acceptance/comfyui_host.py prepare <ComfyUI source>` (e.g. ~/.cache/comfyui-host/ComfyUI)")]
FAST = dict(steps=3, cfg=7.5, image_cfg=0.0, eta=1.0, fs=0, guidance_rescale=-1.0, spacing="auto")


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """ComfyUI's modules, imported as ComfyUI does with --cpu, and the tiny checkpoint in a folder that
    extra_model_paths.yaml added under `dynamicrafter:` before the pack registered its own."""
    sys.path.insert(0, COMFYUI_DIR)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management
    import comfy.ops
    import comfy.utils
    import folder_paths

    extra = tmp_path_factory.mktemp("extra_dynamicrafter")
    (extra / TINY).symlink_to(FIXTURE / TINY)
    (extra / "tiny_v07.json").write_text((FIXTURE / "tiny_v07.config.json").read_text())
    folder_paths.folder_names_and_paths.pop("dynamicrafter", None)
    folder_paths.add_model_folder_path("dynamicrafter", str(extra))  # what a YAML entry does
    yield {"mm": comfy.model_management, "ops": comfy.ops, "utils": comfy.utils, "folder_paths": folder_paths,
           "args": args}
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def real(pack, comfy):
    """The nodes with the real host; Load DynamiCrafter's list from the real folder_paths."""
    default = pack.nodes.host.register_model_folder(pack.nodes.loader.readme())
    assert Path(default, "README.txt").is_file()
    nodes = {node_id: cls() for node_id, cls in pack.NODE_CLASS_MAPPINGS.items()}
    return nodes


def load(real, weight_dtype="auto", variant="auto"):
    loader = real["DynamiCrafterAnimate_Loader"]
    return loader.load(ckpt_name=TINY, weight_dtype=weight_dtype, variant=variant)


def i2v(real, model, seed=7, unique_id=None, **options):
    guidance, frame = real["DynamiCrafterAnimate_VisualDetailGuidance"].encode(
        model=model, image=comfy_image((96, 128)), mode="i2v", width=64, height=64, fit="crop", frames=4)
    (context,) = real["DynamiCrafterAnimate_EncodeImageContext"].encode(model=model, image=frame, prompt="a cat",
                                                                        negative_prompt="")
    frames, _ = real["DynamiCrafterAnimate_I2VSampler"].generate(model=model, context=context, guidance=guidance,
                                                                 seed=seed, unique_id=unique_id, **FAST, **options)
    return frames, frame


@pytest.fixture
def dynamic_vram(comfy):
    """What ComfyUI 0.33+ switches on at start-up when Dynamic VRAM is on (by default on NVIDIA GPUs): comfy.ops builds
    Linear layers without weights until they are loaded, and the core patcher is the streaming one. On the CPU its
    patcher falls back to the estimate-based one, as ComfyUI does for CPU devices."""
    try:
        import comfy.memory_management as memory
    except ImportError:
        memory = None
    if not hasattr(memory, "aimdo_enabled"):
        pytest.skip("this ComfyUI predates Dynamic VRAM (ComfyUI 0.33)")
    import comfy.model_patcher as patchers

    saved = memory.aimdo_enabled, patchers.CoreModelPatcher
    memory.aimdo_enabled, patchers.CoreModelPatcher = True, patchers.ModelPatcherDynamic
    assert comfy["ops"].manual_cast.Linear(2, 3).weight is None  # really switched on: weightless until loaded
    yield
    memory.aimdo_enabled, patchers.CoreModelPatcher = saved


def context_windows_fail_for_frames_in_batch() -> bool:
    """ComfyUI 0.3.64's context windows compare the whole batch of timesteps with the sigmas in set_step, which fails
    for any model with its frames in the batch, as DynamiCrafter's MODEL."""
    import types

    try:
        import comfy.context_windows as windows
    except ImportError:  # none at all (0.3.45): there the node itself is missing
        return False
    try:
        windows.IndexListContextHandler.set_step(types.SimpleNamespace(), torch.ones(2),
                                                 {"transformer_options": {"sample_sigmas": torch.ones(3)}})
    except RuntimeError:
        return True
    return False


def context_windows(unet, length=16, overlap=4, causal_anchor=False):
    """Core Context Windows (Manual) on the frames (dim 0), with ComfyUI 0.33's causal anchor off as the README
    advises (it would show every window one frame more than it was trained on) unless `causal_anchor`."""
    import inspect

    try:
        import comfy.context_windows as windows
        from comfy_extras.nodes_context_windows import ContextWindowsManualNode
    except ImportError:
        pytest.skip("this ComfyUI has no context windows")
    if context_windows_fail_for_frames_in_batch():
        pytest.skip("this ComfyUI's context windows fail for any model with frames in the batch (its set_step "
                    "compares every frame's timestep with the sigmas; fixed in later releases)")
    options = dict(context_length=length, context_overlap=overlap, context_stride=1, closed_loop=False, dim=0,
                   context_schedule=windows.ContextSchedules.STATIC_STANDARD,
                   fuse_method=windows.ContextFuseMethods.PYRAMID)
    accepted = inspect.signature(ContextWindowsManualNode.execute).parameters
    options.update({k: False for k in ("freenoise", "causal_window_fix") if k in accepted})
    if causal_anchor:
        if "causal_window_fix" not in accepted:
            pytest.skip("this ComfyUI's context windows have no causal anchor")
        options["causal_window_fix"] = True
    return ContextWindowsManualNode.execute(unet, **options).result[0]
