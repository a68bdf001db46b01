"""Checkpoint files: reading them safely, the released key layout, telling the variant from the weights, and
loading without random initialisation or a second copy of the weights.

The released layout is a file format and stays at this edge: `PREFIXES` maps each top-level prefix to the submodule
that holds it (inside, module names equal the released names), `LEGACY_NAMES` renames the 256 checkpoint's old fs
MLP, and `IGNORED` lists what the original also loads but never uses.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import pickle
import re
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch
import torch.nn as nn

from .config import VARIANT_CONFIGS, VARIANTS, ModelConfig, from_original
from .errors import BaseCheckpointNeededError, CheckpointError, ConfigError, ModelFileNotFoundError
from .model import DynamiCrafter

log = logging.getLogger(__name__)

PREFIXES = {
    "model.diffusion_model.": "unet",
    "first_stage_model.": "vae",
    "image_proj_model.": "query_transformer",
    "cond_stage_model.model.": "text_encoder",
    "embedder.model.visual.": "image_encoder.visual",
    "pose_encoder.": "pose_encoder",  # CamI2V's camera encoder
}

# RealCam-I2V's files hold only the camera weights; each loads on the DynamiCrafter checkpoint of its size
REALCAM_BASES = "dynamicrafter_256_v1.ckpt for 256_realcam-i2v_*, dynamicrafter_512_v1.ckpt for 512_realcam-i2v_*"

LEGACY_NAMES = {"model.diffusion_model.framestride_embed.": "model.diffusion_model.fps_embedding."}

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "scale_arr", "scale_factor",
    "logvar", "lvlb_weights")
IGNORED = SCHEDULE_BUFFERS + (
    # the text tower's projection head and the image tower's text half and head: unused by DynamiCrafter
    "cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale",
    "embedder.model.token_embedding.", "embedder.model.positional_embedding", "embedder.model.ln_final.",
    "embedder.model.text_projection", "embedder.model.logit_scale", "embedder.model.visual.ln_post.",
    "embedder.model.visual.proj")

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")

StateDict = Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# Reading files


class _SafetensorsFile(Mapping):
    """A read-only mapping over a .safetensors file that loads each tensor when asked (no whole-file copy)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt", device="cpu")
        self._keys = list(self._file.keys())
        self._key_set = set(self._keys)

    def __getitem__(self, key):
        return self._file.get_tensor(key)

    def __contains__(self, key):  # Mapping's would read the tensor, and safetensors raises its own error for a miss
        return key in self._key_set

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def _unwrap(obj, path: Path) -> dict:
    """The state dict inside a Lightning {"state_dict": ...}, a DeepSpeed {"module": ...} or a bare dict."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "module"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} holds no tensors: it is not a model checkpoint")
    out = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            # DeepSpeed saves "_forward_module.<key>"; DDP saves "module.<key>"
            key = re.sub(r"^(_forward_module\.|module\.)", "", str(key))
            out[key] = value
    return out


def file_format(head: bytes, size: int) -> str:
    """What a file holds, told from its first 9 bytes rather than its name: "safetensors" (an 8-byte little-endian
    header length, then the JSON header), "zip" (torch.save since PyTorch 1.6), "pickle" (older torch.save, pickle
    protocol 2+) or "unknown"."""
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def read_state_dict(path: Union[str, Path]) -> StateDict:
    """Read a checkpoint without executing any code from it: safetensors, or `.ckpt` through
    torch.load(weights_only=True). The format is told from the file's first bytes, whatever its suffix."""
    path = Path(path)
    if not path.exists():
        raise ModelFileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a folder; pass the checkpoint file inside it (e.g. model.ckpt)")
    if not path.is_file():  # opening a FIFO would wait for a writer forever
        raise CheckpointError(f"{str(path)!r} is not a regular file (a pipe, a socket or a device); pass the "
                              "checkpoint file itself")
    with open(path, "rb") as f:
        head = f.read(9)
    kind = file_format(head, path.stat().st_size)
    damaged = ("The file is damaged or incomplete (an interrupted download?) or is not a checkpoint at all; download "
               "it again.")
    if kind == "unknown":
        expected = "safetensors" if path.suffix.lower() in SAFETENSORS_SUFFIXES else "a PyTorch checkpoint"
        raise CheckpointError(f"{path.name} cannot be read as {expected}: its first bytes are neither a safetensors "
                              f"header nor PyTorch's zip or pickle format. {damaged}")
    if kind == "safetensors":
        try:
            return _SafetensorsFile(path)
        except Exception as e:  # safetensors raises its own error types for every kind of damage
            raise CheckpointError(f"{path.name} cannot be read as safetensors ({e}). {damaged}") from e
    try:
        with _torch_load_path(path) as load_path:
            try:
                obj = torch.load(load_path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                obj = torch.load(load_path, map_location="cpu", weights_only=True)  # legacy format cannot mmap
    except Exception as e:  # torch.load reports damage and refusals with many exception types
        # torch's own text advises loading with weights_only=False, which would run the file's code: quote its cause
        if isinstance(e, pickle.UnpicklingError) and "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"refused to load {path.name}: besides tensors it contains Python objects whose unpickling could run "
                f"arbitrary code ({_torch_cause(e)}). Use a .safetensors version of the checkpoint, or convert this "
                "one in an environment you trust.") from e
        raise CheckpointError(f"{path.name} cannot be read as a PyTorch checkpoint ({_torch_cause(e)}). {damaged}") \
            from e
    return _unwrap(obj, path)


@contextlib.contextmanager
def _torch_load_path(path: Path):
    """A name torch.load reads as a PyTorch file: newer PyTorch hands any path ending in .safetensors to safetensors,
    so a torch.save file under that name is loaded through a link named otherwise (mmap needs a path, not a file)."""
    if not str(path).endswith(".safetensors"):
        yield path
        return
    with tempfile.TemporaryDirectory() as folder:
        link = Path(folder) / "checkpoint.ckpt"
        link.symlink_to(path.resolve())
        yield link


def _torch_cause(error: Exception) -> str:
    """torch.load's reason for a failure, without its advice to load with weights_only=False."""
    for line in str(error).splitlines():
        line = line.strip()
        if line and "weights_only" not in line and not line.startswith(("Weights only load failed", "(1)", "(2)",
                                                                            "Please file an issue", "Check the")):
            return line.removeprefix("WeightsUnpickler error: ")
    return type(error).__name__


# ---------------------------------------------------------------------------------------------------------------
# What a file is


def rename_legacy(sd: StateDict) -> dict:
    """Released names as the current code has them (the 256 file's `framestride_embed` -> `fps_embedding`)."""
    out = {}
    for key in sd:
        new = key
        for old, current in LEGACY_NAMES.items():
            if key.startswith(old):
                new = current + key[len(old):]
        out[new] = key
    return out  # current name -> name in the file


def _any(keys: Iterable[str], pattern: str) -> bool:
    rx = re.compile(pattern)
    return any(rx.search(k) for k in keys)


def looks_like(keys: Iterable[str]) -> str:
    """A short guess at what model a state dict belongs to, for error messages."""
    keys = list(keys)
    if _any(keys, r"^pose_encoder\.") and _any(keys, r"\.epipolar\.epipolar_attn\."):
        return "a CamI2V checkpoint (camera-controlled DynamiCrafter)"
    if _any(keys, r"^model\.diffusion_model\..*temopral_conv"):
        if _any(keys, r"^first_stage_model\.decoder\.attn_refinement"):
            return "a ToonCrafter checkpoint"
        if _any(keys, r"^model\.diffusion_model\..*attn2\.alpha$"):
            return "a DynamiCrafter 256 checkpoint"
        return "a DynamiCrafter 512/1024 checkpoint"
    if _any(keys, r"^conditioner\.embedders") and _any(keys, r"time_stack|time_mixer"):
        return "a Stable Video Diffusion checkpoint"
    if _any(keys, r"^model\.diffusion_model\..*(temporal|motion_modules)"):
        return "a video model that is not DynamiCrafter (e.g. VideoCrafter / AnimateDiff)"
    if _any(keys, r"^cond_stage_model\.transformer\.text_model"):
        return "a Stable Diffusion 1.x image checkpoint (768-wide CLIP text encoder)"
    if _any(keys, r"^conditioner\.embedders\.1"):
        return "a Stable Diffusion XL image checkpoint"
    if _any(keys, r"^cond_stage_model\.model\.transformer"):
        return "a Stable Diffusion 2.x image checkpoint"
    if _any(keys, r"^model\.diffusion_model\."):
        return "an image diffusion model that is not DynamiCrafter"
    if _any(keys, r"^(double_blocks|single_blocks|blocks\.\d+\.(self_attn|cross_attn))"):
        return "a transformer video/image model (Flux / Wan / similar), not DynamiCrafter"
    if _any(keys, r"^(encoder|decoder)\.(down|up|mid)"):
        return "a standalone VAE"
    if _any(keys, r"^(visual\.|vision_model\.|text_model\.)"):
        return "a CLIP model"
    return "not a DynamiCrafter checkpoint"


def detect_variant(keys: Iterable[str], scale_arr: Optional[torch.Tensor] = None, name_hint: str = "",
                   override: Optional[str] = None) -> tuple[str, str]:
    """(variant, how it was told) from the weights; the file name only separates what the weights cannot.

    scale_arr: the file's dynamic-rescale curve; its base (0.3 vs 0.7) tells 1024 from 512."""
    keys = list(keys)
    if override not in (None, "", "auto"):
        if override not in VARIANTS:
            raise ConfigError(f"unknown variant override {override!r}; use one of {', '.join(VARIANTS)} or 'auto'")
    if _any(keys, r"^first_stage_model\.decoder\.(attn_refinement|.*time_stack)"):
        return "tooncrafter", "ToonCrafter dual-reference decoder keys"
    if _any(keys, r"^pose_encoder\."):
        if _any(keys, r"^model\.diffusion_model\..*attn2\.alpha$"):
            return "cami2v_256", "CamI2V camera keys (`pose_encoder.*`) and image-gate `alpha` keys (256 model)"
        return "cami2v_512", "CamI2V camera keys (`pose_encoder.*`), no image-gate `alpha` keys (512 model)"
    if _any(keys, r"^model\.diffusion_model\..*attn2\.alpha$"):
        return "256", "learnable image-gate `alpha` keys (256 model)"
    hint = name_hint.lower()
    if scale_arr is not None and scale_arr.ndim == 1 and scale_arr.numel() and not scale_arr.is_meta:
        base = float(scale_arr[-1])  # one value: the file sets the tensor's size, which may be anything
        if abs(base - 0.3) < 0.05:
            return "1024", f"scale_arr base {base:.2f} (1024 model)"
        family, how = "512", f"scale_arr base {base:.2f} (512 family)"
    elif "1024" in hint:
        return "1024", "file name (no scale_arr in the file to tell 512 from 1024)"
    else:
        family, how = "512", "default (no scale_arr in the file to tell 512 from 1024)"
    if override in ("512", "512_interp"):
        return override, f"{how}; {override} chosen by override"
    if "interp" in hint or "loop" in hint:
        return "512_interp", f"{how}; interpolation model by its file name (512 and 512_interp weights have the same layout)"
    return family, how


SIDECAR_SUFFIXES = (".yaml", ".yml", ".json", ".config.json")


def sidecar_config(path: Path) -> Optional[Path]:
    """A fine-tune's own config next to it: same stem, .yaml / .yml (original format), .json or .config.json."""
    for suffix in SIDECAR_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _expected(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.state_dict(keep_vars=True))


def assign_weights(target: nn.Module, layout: nn.Module, prefix: str, sd: StateDict, names: dict, device, dtype, what: str,
          guess: str, cfg_note: str) -> None:
    """Assign the tensors under `prefix` to `target`, refusing missing, extra and wrongly shaped ones. The keys and
    shapes to expect come from `layout`, the same network built from plain torch.nn layers: a host's layer classes
    may hold no weights until they are loaded (ComfyUI's Dynamic VRAM builds comfy.ops Linear layers without them),
    so `target` itself cannot say what it needs."""
    expected = _expected(layout)
    present = {k[len(prefix):]: k for k in names if k.startswith(prefix) and not k.startswith(IGNORED)}
    missing = sorted(set(expected) - set(present))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{what} is missing `{prefix + missing[0]}`{more}. The file looks like {guess}. {cfg_note}")
    extra = sorted(set(present) - set(expected))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{what} has `{prefix + extra[0]}`{more}, which the configuration does not have. "
            f"The file looks like {guess}. {cfg_note}")
    tensors = {}
    for local, wanted in expected.items():
        key = prefix + local
        tensor = sd[names[key]]
        if tuple(tensor.shape) != tuple(wanted.shape):
            raise CheckpointError(
                f"{what}: `{key}` has shape {list(tensor.shape)} in the file, but {list(wanted.shape)} is expected. "
                f"The file looks like {guess}. {cfg_note}")
        if wanted.is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(
                f"{what}: `{key}` holds {str(tensor.dtype).replace('torch.', '')} values, but DynamiCrafter's weights "
                "are floating point (float32, float16 or bfloat16): this looks like an integer-quantised file, which "
                "this loader does not read. Use the released checkpoint or a float16/bfloat16 conversion of it.")
        # always a copy: a tensor left memory-mapped would tie the model to the file, and replacing or truncating the
        # file while it is loaded (a re-download, a copy over the same name) would then corrupt it or kill the process
        tensors[local] = tensor.to(device=device, dtype=dtype if dtype and tensor.is_floating_point() else tensor.dtype,
                                   copy=True)
    target.load_state_dict(tensors, strict=True, assign=True)


# RealCam-I2V scales each path's translations to metres with its depth_predictor (Depth-Anything-V2 metric); that
# model is not implemented here, so users are told once per process that their translations are used as given.
_realcam_depth_warned = False


def _warn_realcam_depth(sd, what: str) -> None:
    """Log once when a camera-only file (RealCam-I2V's: pose_encoder.*, no UNet) is loaded on a base."""
    global _realcam_depth_warned
    keys = list(sd.keys())
    if _realcam_depth_warned or not any(k.startswith("pose_encoder.") for k in keys) or any(
            "temopral_conv" in k for k in keys):
        return
    _realcam_depth_warned = True
    log.warning("%s is a RealCam-I2V camera file: its metric-depth scaling (Depth-Anything-V2) is not implemented, "
                "so camera translations are used as given (no metric scaling); scale them with the path's speed", what)


def load_model(source: Union[str, Path, StateDict], config: Union[None, dict, str, Path, ModelConfig] = None,
               device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = torch.float32,
               variant: Optional[str] = None, ops=nn, base: Union[None, str, Path, StateDict] = None) -> DynamiCrafter:
    """Build DynamiCrafter from a checkpoint file (.safetensors / .ckpt) or a state dict.

    config:  the original inference yaml's `model:` section (dict, path, or ModelConfig); by default a sidecar
             `<stem>.yaml` / `<stem>.json` next to the file, else the released configuration of the variant.
    device:  where the weights go; "meta" builds shapes only.
    dtype:   the weights' dtype (None keeps what the file stores).
    variant: "auto"/None, or an override ("512" vs "512_interp" cannot be told from the weights).
    base:    a DynamiCrafter checkpoint (path or state dict) under `source`: the file's tensors replace or add to the
             base's. RealCam-I2V's files hold only the camera weights and load this way, on the DynamiCrafter model
             of their size (their depth_predictor.* is not used).
    """
    path = None
    if isinstance(source, (str, Path)):
        path = Path(source)
        sd = read_state_dict(path)
        what = f"checkpoint {path.name}"
    elif isinstance(source, Mapping):
        sd = source
        what = "the state dict"
    else:
        raise CheckpointError(f"load_model takes a file path or a state dict, not {type(source).__name__}")
    device = torch.device(device)
    if base is not None:
        _warn_realcam_depth(sd, what)
        base_sd = read_state_dict(base) if isinstance(base, (str, Path)) else base
        if not isinstance(base_sd, Mapping):
            raise CheckpointError(f"base must be a file path or a state dict, not {type(base).__name__}")
        sd = collections.ChainMap(dict(sd), base_sd)  # the file's tensors win
        what = f"{what} on {'base ' + Path(base).name if isinstance(base, (str, Path)) else 'a base state dict'}"

    names = rename_legacy(sd)  # current name -> name in the file
    if base is None and any(k.startswith("pose_encoder.") for k in names) and not any(
            "temopral_conv" in k for k in names):
        raise BaseCheckpointNeededError(
            f"{what} holds only camera weights (pose_encoder.*, the epipolar layers: a RealCam-I2V file): it loads on "
            f"top of the DynamiCrafter checkpoint of its size; pass that file as the base ({REALCAM_BASES})")
    if not any(k.startswith("model.diffusion_model.") for k in names) or not any(
            "temopral_conv" in k for k in names):
        raise CheckpointError(
            f"{what} is not a DynamiCrafter checkpoint: it looks like {looks_like(names)}. Load one of the "
            "DynamiCrafter files (dynamicrafter_512, _1024, _256, _512_interp, or ToonCrafter); see the README's "
            "model table.")
    guess = looks_like(names)
    found, how = detect_variant(names, sd["scale_arr"] if "scale_arr" in sd else None,
                                name_hint=path.name if path else "", override=variant)

    if config is None and path is not None and (side := sidecar_config(path)) is not None:
        config, how = side, f"{how}; configuration from {side.name}"
    if config is None:
        cfg = VARIANT_CONFIGS[found]
        looked = ", ".join(path.with_suffix(s).name for s in SIDECAR_SUFFIXES) if path else "none (a state dict)"
        cfg_note = (f"It was checked against the released {found} configuration, as no configuration was given or "
                    f"found beside it (looked for {looked}"
                    f"{' in ' + str(path.parent) if path else ''}); if it is a fine-tune with its own inference yaml, "
                    "put the yaml next to the file under one of those names, or pass it as the configuration.")
    else:
        cfg = config if isinstance(config, ModelConfig) else from_original(config)
        cfg_note = "It was checked against the given configuration: check that the two belong together."

    first_weight = "model.diffusion_model.input_blocks.0.0.weight"  # the UNet computes in this tensor's dtype
    if dtype is None and first_weight in names and sd[names[first_weight]].dtype.itemsize == 1:
        log.info("%s stores float8 weights, which no kernel computes in: loading it as float32", what)
        dtype = torch.float32
    has_text = any(k.startswith("cond_stage_model.model.") for k in names)
    has_image = any(k.startswith("embedder.model.visual.") for k in names)
    with torch.device("meta"):
        model = DynamiCrafter(cfg, with_text_encoder=has_text, with_image_encoder=has_image, ops=ops)
        # the networks `ops` builds, again from torch.nn layers: their layout
        layout = model if ops is nn else DynamiCrafter(cfg, with_text_encoder=False, with_image_encoder=False)
    towers = {"text_encoder": has_text, "image_encoder.visual": has_image}  # open_clip's torch.nn, whatever `ops`
    for prefix, attr in PREFIXES.items():
        if attr == "pose_encoder" and model.pose_encoder is None:
            continue  # a camera-free model: a file's pose encoder is refused with its epipolar layers by the UNet's check
        if towers.get(attr, True):
            target = model.get_submodule(attr)
            reference = target if attr in towers else layout.get_submodule(attr)
            assign_weights(target, reference, prefix, sd, names, device, dtype, what, guess, cfg_note)
    unknown = sorted(k for k in names if not k.startswith(tuple(PREFIXES)) and not k.startswith(IGNORED))
    if unknown:
        log.info("ignored %d tensors outside DynamiCrafter's networks (first: %s)", len(unknown), unknown[0])
    model.variant, model.variant_source = found, how
    model.source = what
    model.eval().requires_grad_(False)
    if not (has_text and has_image):
        log.info("%s has no CLIP %s tower: text/image encoders must come from elsewhere", what,
                 " and ".join(n for n, h in (("text", has_text), ("image", has_image)) if not h))
    return model
