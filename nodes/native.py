"""DynamiCrafter as a native ComfyUI MODEL: the conversions and builders around comfy_model.py's ComfyUI classes (with
host.py, the modules that touch comfy.*).

The MODEL's diffusion model *is* the core UNet the bundled samplers call, so both paths share one set of weights and
one ModelPatcher. What ComfyUI needs around it:

- `ModelSamplingDynamiCrafter`: the schedule as ComfyUI's samplers see it. The dynamic rescale is folded into the
  sigma table (core sampler.effective_sigmas: sigma_eff = sigma_t / s(t)), so every ComfyUI sampler integrates the
  process the model was trained on. x (ComfyUI's latent, x0 + sigma_eff eps) and z (the model's input,
  sqrt(ᾱ) s x0 + sqrt(1 - ᾱ) eps) differ by the factor alpha' = s sqrt(ᾱ).
- `DynamiCrafterBase`: ComfyUI's BaseModel around the core UNet. Frames travel in the batch dimension (T, 4, h, w),
  as SVD's do; the conditions (cross-attention context, visual detail guidance latents, fs) come from DynamiCrafter
  Conditioning.
- the original's DDIM as a ComfyUI SAMPLER, its guidance as a GUIDER and a cfg function, its noise order as a NOISE.

The maths is the core's (dynamicrafter_core.sampler); this module only converts between ComfyUI's conventions and it.
The ComfyUI classes are comfy_model.py's, imported on first use, so the node modules import without ComfyUI.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from ..dynamicrafter_core import noise as seed_noise
from ..dynamicrafter_core.compiled import compiled_during
from ..dynamicrafter_core.errors import InputError
from ..dynamicrafter_core.sampler import combine_cfg, ddim_sigma, ddim_update, exact_alphas_cumprod, rescale_cfg
from ..dynamicrafter_core.unet import TEXT_TOKENS, BlockPatches

log = logging.getLogger(__name__)
# keys of DynamiCrafter Conditioning's CONDITIONING entries (ComfyUI hands every key to BaseModel.extra_conds)
CONCAT = "dynamicrafter_concat"  # the visual detail guidance latents, unscaled, (1 or T, 4, h, w)
FS = "dynamicrafter_fs"
# SEED_DRAWS: in the positive (for the DDIM sampler's step noise) and the LATENT (for DynamiCrafter Noise's initial noise)
SEED_DRAWS = "dynamicrafter_draws"  # the shapes the conditioning drew from the seed before the initial noise
# keys of its LATENT, which SamplerCustomAdvanced and KSampler pass on to their output
LOOP = "dynamicrafter_loop"  # the last frame repeats the first: Decode drops it
REFERENCES = "dynamicrafter_references"  # ToonCrafter: the keyframes' features for its decoder
CAMERA = "dynamicrafter_camera"  # CamI2V: the camera path (CameraCond), in both conditionings

SNAP = 1e-4  # timesteps this close to an integer are that timestep
CONDITIONING_HINT = ("connect DynamiCrafter Conditioning's positive and negative outputs (directly, or through "
                     "Apply ControlNet) to the sampler or guider")


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation (numpy.interp) for increasing xp; exact at the points of xp."""
    x = x.clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.shape[0] - 1)
    x0, x1 = xp[i - 1], xp[i]
    w = (x - x0) / (x1 - x0)
    return torch.where(x == x1, fp[i], fp[i - 1] + w * (fp[i] - fp[i - 1]))


def per_row(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row value (N,) shaped to broadcast over `like` (N, ...)."""
    return value.reshape(value.shape[:1] + (1,) * (like.ndim - 1)) if value.ndim else value



# ---------------------------------------------------------------------------------------------------------------
# conversions between ComfyUI's conventions and the core's


@dataclass(frozen=True)
class ScheduleTables:
    """The model sampling's tables on one device, float32."""
    log_sigmas: torch.Tensor  # the table of sigma_eff's logs
    steps: torch.Tensor  # 0 .. num_timesteps - 1
    scales: torch.Tensor  # s(t)
    alphas_cumprod: torch.Tensor  # ᾱ (0 at the last timestep with zero terminal SNR)


# keys of extra_conds_shapes (ComfyUI's estimate before sampling hands them to memory_required)
BRANCH = "dynamicrafter_branch"  # one per conditioning: the guidance branches
CONTROLLED = "dynamicrafter_controlled"  # a ControlNet or the sketch encoder runs beside the UNet
FRAME_CHECKS = "dynamicrafter_frame_checks"  # transformer_options key of a sampling run's FrameChecks
COMPILE = "dynamicrafter_compile"  # model_options key: the UNet runs compiled layer by layer in this MODEL's runs


class FrameChecks:
    """Whether every frame of each video carried the same sigma and the same conditioning, on every UNet call of a
    sampling run. DynamiCrafter's UNet takes one timestep and one context per video; a sampler or extension that
    gives frames their own would otherwise be flattened to the first frame's. The comparisons stay on the device;
    `check` reads them back once, when the run ends."""

    def __init__(self):
        self.calls = []

    def record(self, sigmas: torch.Tensor, context: torch.Tensor, frames: int, windowed: bool) -> None:
        """`windowed`: a context window's call, whose frames may carry a prompt schedule's prompts (the window
        takes its first frame's, by design): only their sigmas must agree."""
        videos = sigmas.shape[0] // frames
        sigmas, context = sigmas.reshape(videos, frames), context.reshape(videos, frames, *context.shape[1:])
        context_differs = torch.zeros((), dtype=torch.bool, device=sigmas.device) if windowed else \
            (context != context[:, :1]).any().to(sigmas.device)
        self.calls.append((torch.stack([(sigmas != sigmas[:, :1]).any(), context_differs]), sigmas.detach()))

    def check(self) -> None:
        if not self.calls:
            return
        flags = torch.stack([flag for flag, _ in self.calls]).cpu()
        for (sigma_differs, context_differs), (_, sigmas) in zip(flags.tolist(), self.calls):
            if sigma_differs:
                got = ", ".join(f"{v:.6g}" for v in sigmas[0].tolist())
                raise InputError(f"a sampler gave the frames of one video different sigmas ({got}): DynamiCrafter's "
                                 "UNet denoises every frame of a video at one noise level. Use a sampler that steps "
                                 "the whole latent at once (DynamiCrafter DDIM Sampler or ComfyUI's own), without "
                                 "per-frame noise levels")
            if context_differs:
                raise InputError("the frames of one video were given different conditioning: DynamiCrafter's UNet "
                                 "takes one cross-attention context per video. Give the sampler one conditioning per "
                                 "video (DynamiCrafter Conditioning's, not a batch of prompts or images); a prompt "
                                 "schedule needs Context Windows (Manual) between DynamiCrafter Model and the sampler "
                                 "(each window takes one prompt), or give Encode Image Context one prompt")


class CameraCond:
    """CamI2V's camera in a conditioning: the path (nodes.camera.Camera), the core model whose pose encoder reads it,
    the seed of its zero-translation noise and the video's pixel size. Compared by identity, so ComfyUI batches the
    two conditionings that share it."""

    def __init__(self, camera, core, seed: int, height: int, width: int):
        self.camera, self.core, self.seed, self.height, self.width = camera, core, seed, height, width

    def features(self, videos: int, frames: int, transformer_options: dict, device):
        """The camera for one UNet call over `videos` x `frames` latent frames: the whole video's, or with context
        windows the window's own frames' poses (relative to the video's first frame, the image's)."""
        window = transformer_options.get("context_window")
        if window is None:
            index = list(range(frames))
        else:
            index = list(window.index_list)
            if getattr(window, "causal_anchor_index", None) is not None and window.causal_anchor_index >= 0:
                raise InputError("the camera path does not work with Context Windows' causal_window_fix (it puts a "
                                 "frame from before the window in front of it, whose pose is not the window's): turn "
                                 "causal_window_fix off, or disconnect `camera`")
            if len(index) != frames:
                raise InputError(f"the context window names {len(index)} frames for a call over {frames}")
        return self.camera.features(self.core, index, self.height, self.width, device, self.seed)


def window_rows(concat: torch.Tensor, rows: int, frames: int, transformer_options: dict) -> torch.Tensor:
    """The concat latents for a batch of `rows` = n videos x `frames` frames. A core whose context windows slice
    only the noise leaves each video's full-length latents: take the window's frames, so an end latent stays on the
    video's last frame and not on every window's."""
    if concat.shape[0] == rows:
        return concat
    n = rows // frames
    window = transformer_options.get("context_window")
    if window is None or concat.shape[0] % n:
        raise InputError(f"the visual detail guidance has {concat.shape[0]} rows for {rows} frames")
    full = concat.reshape(n, concat.shape[0] // n, *concat.shape[1:])
    return full[:, list(window.index_list)].reshape(rows, *concat.shape[1:])


def window_frames(window) -> list:
    """The video frames a context window hands the model, in its order: ComfyUI 0.33's causal_window_fix puts the
    frame before the window in front of it."""
    anchor = getattr(window, "causal_anchor_index", None)
    return ([anchor] if anchor is not None and anchor >= 0 else []) + list(window.index_list)


def controls_of(conds: list) -> list:
    """The distinct control objects (Apply ControlNet's, with the ones each chains after) in ComfyUI's conds."""
    found = {}
    for cond in conds:
        for entry in cond or []:
            control = entry.get("control")
            while control is not None and id(control) not in found:
                found[id(control)] = control
                control = getattr(control, "previous_controlnet", None)
    return list(found.values())


def hints_per_window(executor, model, conds, x_in, timestep, model_options):
    """A CALC_COND_BATCH wrapper: under context windows, each ControlNet sees the hint frames of the window's own
    frames. ComfyUI windows the latents and conditions but not control hints: every window would get the hint's first
    frames, and the second window of a 32-frame video would follow frames 0-15 of the clip instead of its own."""
    window = model_options.get("transformer_options", {}).get("context_window")
    if window is None:
        return executor(model, conds, x_in, timestep, model_options)
    frames = window_frames(window)
    total = getattr(window, "total_frames", 0) or max(frames) + 1
    swapped = []
    try:
        for control in controls_of(conds):
            hint = getattr(control, "cond_hint_original", None)
            if not isinstance(hint, torch.Tensor) or hint.ndim != 4 or hint.shape[0] == 1:
                continue  # one hint for every frame, or not a per-frame image hint (the sketch encoder refuses)
            if hint.shape[0] != total:
                raise InputError(f"Apply ControlNet's image holds {hint.shape[0]} frames for a video of {total}: with "
                                 "Context Windows each window takes the hints of its own frames, so give one hint "
                                 f"image per frame ({total}) or one for every frame")
            swapped.append((control, hint))
            # ComfyUI rebuilds its processed hint (resized, on the device) from the original when it is None
            control.cond_hint_original, control.cond_hint = hint[frames], None
        return executor(model, conds, x_in, timestep, model_options)
    finally:
        for control, hint in swapped:
            control.cond_hint_original, control.cond_hint = hint, None


BLOCK_PATCHES = ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")  # what block_patches runs


def unhonoured_unet_patches(transformer_options: dict) -> list:
    """The model patches in `transformer_options` that this UNet does not run: attention patches and replacements
    (PAG, SAG, HyperTile, IP-Adapter, token merging set them), which act inside SD's attention layers."""
    patches = sorted(k for k, v in transformer_options.get("patches", {}).items() if v and k not in BLOCK_PATCHES)
    replaced = sorted(k for k, v in transformer_options.get("patches_replace", {}).items() if v)
    return [f"patches[{k!r}]" for k in patches] + [f"patches_replace[{k!r}]" for k in replaced]


def context_windows_fail_for_frames_in_batch(handler) -> bool:
    """Whether this ComfyUI's context windows break on a model with its frames in the batch: ComfyUI 0.3.64's
    set_step compares every row's timestep with the sampler's sigmas (later releases compare the first)."""
    import types

    set_step = getattr(type(handler), "set_step", None)
    if set_step is None:
        return False
    try:
        set_step(types.SimpleNamespace(), torch.ones(2), {"transformer_options": {"sample_sigmas": torch.ones(3)}})
    except RuntimeError:
        return True
    except Exception:  # noqa: BLE001 - any other behaviour is not the failure this looks for
        return False
    return False


def comfyui_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "(version unknown)"


def sampling_run(executor, *args, **kwargs):
    """An OUTER_SAMPLE wrapper around every sampling run of DynamiCrafter Model's MODEL (KSampler, SamplerCustom,
    SamplerCustomAdvanced, any guider): refuses context windows this ComfyUI cannot run on it, names the patches
    that do not reach its UNet once, runs the UNet compiled when DynamiCrafter Model asked for it, and reads the run's
    frame checks (FrameChecks) when it ends."""
    options = executor.class_obj.model_options
    handler = options.get("context_handler")
    if handler is not None and context_windows_fail_for_frames_in_batch(handler):
        raise InputError(f"Context Windows cannot run DynamiCrafter's MODEL on ComfyUI {comfyui_version()}: its "
                         "context windows compare every frame's timestep with the sampler's sigmas, and this model's "
                         "frames travel in the batch. Update ComfyUI (0.33 runs them), or remove Context Windows and "
                         "make at most 16 frames per run")
    transformer_options = options.setdefault("transformer_options", {})
    skipped = unhonoured_unet_patches(transformer_options)
    if skipped:
        log.warning("DynamiCrafter's UNet does not run %s: attention patches and replacements (PAG, SAG, HyperTile, "
                    "IP-Adapter, ...) have no effect on this model", ", ".join(skipped))
    checks = transformer_options[FRAME_CHECKS] = FrameChecks()
    unet = executor.class_obj.model_patcher.model.diffusion_model
    with compiled_during(unet, bool(options.get(COMPILE)), "DynamiCrafter Model"):
        out = executor(*args, **kwargs)
    checks.check()
    return out


def native_patcher(patcher, compile_unet: bool = False):
    """DynamiCrafter Model's MODEL: a clone of the shared patcher with the native path's wrappers (and, with
    compile_unet, its UNet compiled layer by layer in its sampling runs). Refused on a ComfyUI whose internals that
    the native classes override or read changed (comfy_model.INTERNALS), rather than run wrong."""
    import comfy.patcher_extension

    from . import comfy_model

    changed = comfy_model.changed_internals()
    if changed:
        raise InputError(f"DynamiCrafter's native MODEL relies on ComfyUI internals that ComfyUI {comfyui_version()} "
                         f"changed: {'; '.join(changed)}. Use a ComfyUI the README names as tested (0.3.45 to "
                         "0.33), or I2V Sampler, which does not depend on them")
    model = patcher.clone()
    wrappers = comfy.patcher_extension.WrappersMP
    model.add_wrapper_with_key(wrappers.CALC_COND_BATCH, "dynamicrafter_hints", hints_per_window)
    model.add_wrapper_with_key(wrappers.OUTER_SAMPLE, "dynamicrafter_run", sampling_run)
    model.model_options[COMPILE] = compile_unet
    return model


def control_residuals(control: Optional[dict]) -> Optional[list]:
    """ComfyUI's ControlNet output {"output": [one per input block, in their order], "middle": [one]} -> the core
    UNet's list (skips, then middle; None where nothing is added). ComfyUI has already applied the strength."""
    if not control:
        return None
    if control.get("input"):
        raise InputError("a T2I-Adapter (control added inside the UNet's input blocks) is not supported by "
                         "DynamiCrafter; use an SD2.1 ControlNet")
    outputs, middle = list(control.get("output") or []), list(control.get("middle") or [])
    if not outputs and not middle:
        return None
    return outputs + [middle[0] if middle else None]


def block_patches(transformer_options: dict) -> Optional[BlockPatches]:
    """ComfyUI's input_block_patch / input_block_patch_after_skip / output_block_patch (FreeU, ...) as the core
    UNet's block patches, with transformer_options["block"] set as ComfyUI's UNet sets it."""
    patches = transformer_options.get("patches", {})
    if not any(patches.get(k) for k in ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")):
        return None

    def options(kind, i):
        return {**transformer_options, "block": (kind, i)}

    def input_patch(fn):
        return lambda i, h: fn(h, options("input", i))

    def output_patch(fn):
        return lambda i, h, skip: fn(h, skip, options("output", i))

    return BlockPatches(after_input=[input_patch(f) for f in patches.get("input_block_patch", [])],
                        after_skip=[input_patch(f) for f in patches.get("input_block_patch_after_skip", [])],
                        before_output=[output_patch(f) for f in patches.get("output_block_patch", [])])


def image_negative(positive: list, negative: list) -> list:
    """The three-branch guidance's third conditioning: the negative prompt with the real image's tokens (what
    pipeline.text_image_context calls text_uncond_context), from DynamiCrafter Conditioning's two outputs."""
    if len(positive) != 1 or len(negative) != 1:
        raise InputError("image_cfg needs one positive and one negative conditioning from DynamiCrafter "
                         "Conditioning (combined conditionings have no single image to take)")
    (pos, pos_extra), (neg, neg_extra) = positive[0], negative[0]
    # a prompt schedule's positive has a row per frame (the same image tokens in each)
    context = torch.cat([neg[:, :TEXT_TOKENS].expand(pos.shape[0], -1, -1), pos[:, TEXT_TOKENS:]], dim=1)
    extra = dict(pos_extra)
    if "cross_attn_controlnet" in neg_extra:
        extra["cross_attn_controlnet"] = neg_extra["cross_attn_controlnet"]
    return [[context, extra]]


def guided_output(predictions: list, cfg: float, image_cfg: Optional[float], rescale: float) -> torch.Tensor:
    """The guided model output from the branches' model outputs (float32, frames in the batch), as the original
    guides: combine_cfg, then rescale_cfg spread over the whole video (here the frames are the batch: one video,
    viewed in the core's (1, 4, T, h, w) layout)."""
    m = combine_cfg(predictions, cfg, image_cfg)
    if rescale:
        video = [v[None].transpose(1, 2) for v in (m, predictions[0])]
        m = rescale_cfg(video[0], video[1], rescale)[0].transpose(0, 1)
    return m


def cfg_denoised(model_sampling, x, sigma, outs, cfg: float, image_cfg: Optional[float],
                 rescale: float) -> torch.Tensor:
    """The guided denoised latent from the branches' denoised latents at ComfyUI's x (a stock sampler's call):
    guided_output on the model outputs they imply, converted back."""
    converted = [model_sampling.prediction(sigma, d, x) for d in outs]
    m = guided_output([p.float() for p, _ in converted], cfg, image_cfg, rescale)
    return model_sampling.denoised(m, converted[0][1])


def dynamicrafter_sampling(model_sampling, what: str):
    """DynamiCrafter's model sampling, or a sentence for `what` (a node) that cannot work without it."""
    from . import comfy_model

    if not isinstance(model_sampling, comfy_model.ModelSamplingDynamiCrafter):
        raise InputError(f"{what} needs DynamiCrafter's MODEL (from DynamiCrafter Model); this model samples with "
                         f"{type(model_sampling).__name__}. If it is DynamiCrafter's, a model-sampling node "
                         "(ModelSamplingDiscrete and the like) replaced its schedule, which drops DynamiCrafter's "
                         "rescale: remove that node")
    return model_sampling


def model_sampling_of(model_patcher, what: str):
    return dynamicrafter_sampling(model_patcher.get_model_object("model_sampling"), what)


# ---------------------------------------------------------------------------------------------------------------
# the original's DDIM as a ComfyUI sampler function


def table_timestep(ms, sigma: float) -> int:
    """The integer timestep of a sigma of the table (DynamiCrafter Scheduler's sigmas are)."""
    t = float(ms.timestep(torch.tensor([float(sigma)]))[0])
    if t != round(t):
        raise InputError(f"sigma {float(sigma):.6g} is not one of DynamiCrafter's timesteps: the DDIM sampler needs "
                         "DynamiCrafter Scheduler's sigmas")
    return int(round(t))


def ddim_plan(ms, sigmas: torch.Tensor) -> tuple[list, Optional[int]]:
    """The timesteps DDIM visits, decreasing, and the one its last step lands on (None: sigma 0, the clean latent),
    from DynamiCrafter Scheduler's sigmas. With end "original" the last step lands on timestep 0, which uniform
    trailing spacing at 667 steps and more also visits: the original then steps from 0 to 0."""
    clean = float(sigmas[-1]) == 0.0
    ts = [table_timestep(ms, s) for s in sigmas[:-1]]
    t_end = None if clean else table_timestep(ms, sigmas[-1])
    ends = clean or t_end < ts[-1] or t_end == ts[-1] == 0
    if not ends or any(a <= b for a, b in zip(ts, ts[1:])):
        raise InputError("the sigmas must decrease; use DynamiCrafter Scheduler")
    return ts, t_end


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta: float = 1.0,
                original_last_step: bool = True, step_noise: Optional[torch.Tensor] = None):
    """DDIM exactly as the original (core sampler.ddim_update, the bundled sampler's step), through ComfyUI's guider.

    sigmas: DynamiCrafter Scheduler's, ending at the table's first sigma ("original": the original's last step to
    ᾱ[0], which returns the latent there) or at 0 ("clean": the predicted clean latent).
    The sampler keeps the model's latent z (ComfyUI's x times alpha') and calls the guider in the model sampling's
    unet_latents(): the UNet gets z itself and the step takes the guided output as the UNet and the guidance
    computed it (guided_output), no conversion between them.
    Step noise: `step_noise` (steps, T, 4, h, w) when given, else the seed's stream after the draws the conditioning
    and the initial noise made (core noise.py), so DynamiCrafter Noise + this sampler repeat the bundled sampler's
    video for the same seed."""
    extra_args = dict(extra_args or {})
    ms = dynamicrafter_sampling(model.inner_model.inner_model.model_sampling, "DynamiCrafter DDIM Sampler")
    schedule = ms.schedule
    sigmas = sigmas.float()
    ts, t_end = ddim_plan(ms, sigmas)
    clean = t_end is None
    # ᾱ and sigma of each step as the core's ddim_parameters computes them
    ac = exact_alphas_cumprod(schedule)
    a_t = ac[torch.tensor(ts)]
    a_prev = torch.cat([ac[torch.tensor(ts[1:], dtype=torch.long)],
                        torch.ones(1, dtype=torch.float64) if clean else ac[t_end:t_end + 1]])
    step_sigma = ddim_sigma(a_t, a_prev, eta)
    stream = None if step_noise is not None else _step_stream(model, x, extra_args.get("seed"))

    def factor(sigma):
        return ms.z_factor(sigma.reshape(1).to(x.device))

    start_noise, start_latent = getattr(model, "noise", None), getattr(model, "latent_image", None)
    if start_noise is not None and float(sigmas[0]) >= float(ms.sigma_max) * (1 - 1e-5):
        z = start_noise.float()  # from pure noise: the original's x_T itself, not a rounding of noise / alpha'
        if start_latent is not None:
            z = z + start_latent.float() * factor(sigmas[0])
    else:
        z = x.float() * factor(sigmas[0])
    s_in = x.new_ones([x.shape[0]])
    drawn = 0
    for i, t in enumerate(ts):
        sigma = sigmas[i].to(x.device) * s_in
        z_t, out = z, guided_output_at(model, ms, z, sigma, extra_args)
        last = i == len(ts) - 1
        t_prev = ts[i + 1] if not last else t if (original_last_step and not clean) else (t_end or 0)
        noise = None
        if float(step_sigma[i]) > 0:
            noise = step_noise[drawn] if step_noise is not None else stream()
            drawn += 1
        z, _ = ddim_update(schedule, out, z, t, t_prev, float(a_t[i]), float(a_prev[i]), float(step_sigma[i]),
                           None if noise is None else noise.to(z))
        if callback is not None:  # previews show ComfyUI's denoised latent
            denoised = ms.denoised(out, ms.unet_state(sigma, z_t))
            callback({"x": z, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    return z


def guided_output_at(model, ms, z: torch.Tensor, sigma: torch.Tensor, extra_args: dict) -> torch.Tensor:
    """The guided model output (float32) at the model's latent z. `model` is the guider as the sampler gets it
    (ComfyUI's KSamplerX0Inpaint around it). DynamiCrafter Guider is called in unet_latents(). Two calls stay in
    ComfyUI's x (x = z / alpha', the denoised latent converted back, as ComfyUI's samplers do): another guider
    (CFGGuider and its cfg functions work on denoised latents at x) and a noise mask (Set Latent Noise Mask, mixed
    in by that wrapper in x)."""
    from . import comfy_model

    if isinstance(model.inner_model, comfy_model.Guider) and extra_args.get("denoise_mask") is None:
        with ms.unet_latents():
            return model(z, sigma, **extra_args).float()
    x = z / per_row(ms.z_factor(sigma), z)
    return ms.prediction(sigma, model(x, sigma, **extra_args), x)[0].float()


def _step_stream(model, x: torch.Tensor, seed: Optional[int]):
    """Step noise from the seed's stream, after what DynamiCrafter Conditioning and the initial noise drew."""
    if seed is None:
        raise InputError("the DynamiCrafter DDIM sampler needs a seed (SamplerCustomAdvanced passes the noise's)")
    conds = getattr(model.inner_model, "conds", {}) or {}
    positive = conds.get("positive") or [{}]
    gen = seed_noise.replay(seed_noise.generator(seed), list(positive[0].get(SEED_DRAWS, [])) + [video_shape(x)])
    return lambda: video_noise(gen, x)


def initial_noise(seed: int, latent: dict) -> torch.Tensor:
    """x_T for a LATENT (T, 4, h, w), drawn after the conditioning's draws."""
    return video_noise(seed_noise.replay(seed_noise.generator(seed), latent.get(SEED_DRAWS, [])), latent["samples"])


def video_shape(frames: torch.Tensor) -> tuple:
    """The core's layout (1, 4, T, h, w) of ComfyUI's frames in the batch (T, 4, h, w): one video."""
    t, channels, h, w = frames.shape
    return (1, channels, t, h, w)


def video_noise(gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A draw in the core's video layout, as the bundled sampler makes it, handed over with frames in the batch."""
    return seed_noise.normal(gen, video_shape(like))[0].transpose(0, 1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# building


def unet_config(cfg) -> dict:
    """The UNet's layout in the terms of ComfyUI's SD UNet config, which its LoRA loader maps diffusers / kohya key
    names with (comfy.utils.unet_to_diffusers): the spatial layers sit where SD2.1's do. The UNet itself is ours."""
    levels = len(cfg.channel_mult)
    attention = [1 if 2 ** level in cfg.attention_resolutions else 0 for level in range(levels)]
    return {"disable_unet_model_creation": True, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "model_channels": cfg.model_channels, "context_dim": cfg.context_dim,
            "num_res_blocks": [cfg.num_res_blocks] * levels, "channel_mult": list(cfg.channel_mult),
            "transformer_depth": [d for d in attention for _ in range(cfg.num_res_blocks)],
            "transformer_depth_output": [d for d in attention for _ in range(cfg.num_res_blocks + 1)],
            "transformer_depth_middle": 1, "use_linear_in_transformer": True}


def native_model(core):
    """ComfyUI's BaseModel whose diffusion model is `core.unet` (the same module, not a copy). Its dtype is the
    UNet's compute dtype (fp8 weights compute in it), so ComfyUI's manual cast needs no dtype of its own."""
    from . import comfy_model

    return comfy_model.DynamiCrafterBase(comfy_model.DynamiCrafterConfig(unet_config(core.config.unet)), core)


def ddim_sampler(eta: float, original_last_step: bool = True, step_noise: Optional[torch.Tensor] = None):
    import comfy.samplers

    options = {"eta": eta, "original_last_step": original_last_step}
    if step_noise is not None:
        options["step_noise"] = step_noise
    return comfy.samplers.KSAMPLER(sample_ddim, extra_options=options)


GUIDER_SKIPS = {"sampler_cfg_function": "its guidance (RescaleCFG, DynamiCrafter Guidance Rescale, ...)",
                "sampler_pre_cfg_function": "the branches before guidance",
                "sampler_calc_cond_batch_function": "how the branches are batched"}


def guider(model_patcher, positive, negative, cfg: float, image_cfg: float, guidance_rescale: float):
    """DynamiCrafter Guider's GUIDER. It runs the branches and the guidance itself: the model's hooks on ComfyUI's
    own guidance (GUIDER_SKIPS) are not used, each named once here; post-cfg functions are run."""
    from . import comfy_model

    for hook, what in GUIDER_SKIPS.items():
        if model_patcher.model_options.get(hook):
            log.warning("DynamiCrafter Guider does the original's guidance itself: the model's %s (%s) is not used; "
                        "it works with KSampler and CFGGuider", hook, what)
    g = comfy_model.Guider(model_patcher, cfg, image_cfg, guidance_rescale)
    g.set_conds(positive, negative)
    return g


def apply_sketch(conditionings: list, encoder, hint: torch.Tensor, strength: float, percent_range: tuple) -> list:
    """Each conditioning with the sketch encoder as its (first) control object, after any ControlNet already on it,
    as core Apply ControlNet (Advanced) chains them. Entries with the same earlier control share one sketch control,
    so ComfyUI can run the guidance branches in one batch, as the bundled sampler does."""
    from . import comfy_model

    shared = {}
    out = []
    for conditioning in conditionings:
        applied = []
        for context, extra in conditioning:
            previous = extra.get("control")
            if id(previous) not in shared:
                control = comfy_model.SketchControl(encoder, hint).set_cond_hint(hint, strength, percent_range)
                if previous is not None:
                    control.set_previous_controlnet(previous)
                shared[id(previous)] = control
            applied.append([context, {**extra, "control": shared[id(previous)], "control_apply_to_uncond": False}])
        out.append(applied)
    return out


class Noise:
    """A ComfyUI NOISE: the initial noise of DynamiCrafter's seed order (core noise.py)."""

    def __init__(self, seed: int):
        self.seed = seed

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        return initial_noise(self.seed, input_latent)


def rescale_cfg_function(rescale: float):
    """A sampler_cfg_function (stock KSampler / CFGGuider) with the original's guidance rescale; returns what
    ComfyUI expects, the input minus the guided denoised latent."""

    def cfg_function(args):
        model = args["model"]
        x, sigma = args["input"], args["sigma"]
        outs = [args["cond_denoised"], args["uncond_denoised"]]
        return x - cfg_denoised(model.model_sampling, x, sigma, outs, args["cond_scale"], None, rescale)

    return cfg_function
