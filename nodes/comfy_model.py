"""DynamiCrafter as a native ComfyUI MODEL: the classes ComfyUI calls (its model sampling, BaseModel, config, guider
and control object), subclasses of ComfyUI's own. Imported only where ComfyUI exists (native.py imports it on first
use), so the node modules import without ComfyUI. The conversions they make are native.py's functions."""
from __future__ import annotations

import contextlib
import functools
import inspect

import torch

import comfy.conds
import comfy.controlnet
import comfy.latent_formats
import comfy.model_base
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import comfy.supported_models_base

from ..dynamicrafter_core.errors import InputError
from ..dynamicrafter_core.sampler import effective_sigmas, exact_alphas_cumprod, prediction_from_x0, x0_from_prediction
from ..dynamicrafter_core.unet import TEXT_TOKENS
from . import memory
from .native import (BRANCH, CAMERA, CONCAT, CONDITIONING_HINT, CONTROLLED, FRAME_CHECKS, FS, SNAP, FrameChecks,
                     ScheduleTables, block_patches, cfg_denoised, control_residuals, guided_output, image_negative,
                     interp, per_row, window_rows)


class ModelSamplingDynamiCrafter(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """The table of sigma_eff (module docstring) for ComfyUI's samplers and schedulers, plus the exact ᾱ and s(t)
    of every timestep for the conversions. Table points map back to their integer timestep exactly."""

    def __init__(self, schedule, defaults):
        torch.nn.Module.__init__(self)
        self.schedule = schedule  # the core NoiseSchedule (float64), for the exact DDIM sampler
        self.parameterization = schedule.parameterization
        self.defaults = defaults  # the variant's sampling defaults (config.SamplingDefaults)
        self.sigma_data = 1.0
        self.num_timesteps = schedule.num_timesteps
        self.zsnr = bool(schedule.alphas_cumprod[-1] == 0)
        if self.zsnr and self.parameterization == "eps":
            # x0 = (z - sqrt(1 - ᾱ) eps) / sqrt(ᾱ): at the last timestep ᾱ = 0 and an eps model says nothing of x0
            raise InputError("this checkpoint's configuration predicts eps (parameterization: eps) with a zero "
                             "terminal SNR schedule (rescale_betas_zero_snr), which cannot give the clean latent at "
                             "the last timestep; DynamiCrafter's zero-SNR models predict v: fix the configuration")
        sigmas = effective_sigmas(schedule).float()
        self.register_buffer("sigmas", sigmas)
        # log of the float32 table, as the log of a float32 sigma a scheduler hands back is computed
        self.register_buffer("log_sigmas", sigmas.log())
        scale = schedule.scale_arr[:schedule.num_timesteps] if schedule.scale_arr is not None else None
        scale = (scale if scale is not None else torch.ones(self.num_timesteps, dtype=torch.float64))
        self.register_buffer("scales", scale.float())
        self.exact_alphas_cumprod = exact_alphas_cumprod(schedule)
        self.on_device = {}  # device -> ScheduleTables
        self.unet_space = False  # see unet_latents()

    def tables(self, device: torch.device) -> ScheduleTables:
        """The tables on `device`, copied there on first use: a step looks its timesteps up where its sigmas are,
        without reading anything back to the host. Not buffers: ComfyUI moves a model's buffers only with weights,
        and a step may run before the weights are loaded (Dynamic VRAM)."""
        if device not in self.on_device:
            self.on_device[device] = ScheduleTables(
                log_sigmas=self.log_sigmas.to(device), scales=self.scales.to(device),
                steps=torch.arange(self.num_timesteps, dtype=torch.float32, device=device),
                alphas_cumprod=self.exact_alphas_cumprod.to(device, torch.float32))
        return self.on_device[device]

    @contextlib.contextmanager
    def unet_latents(self):
        """Within it, the latent a sampler hands the model is the UNet's own input z (not ComfyUI's x = z / alpha')
        and the model answers with the UNet's raw output (v or eps), not a denoised latent: calculate_input and
        calculate_denoised are identities. The DDIM sampler runs in it, so the UNet, ControlNets and the sketch
        encoder get the sampler's z itself and the step takes the guided output the UNet and the guidance computed,
        with no conversion between them: the latents equal the bundled sampler's by construction, in float32 on any
        device. ComfyUI's own samplers never enter it."""
        previous, self.unet_space = self.unet_space, True
        try:
            yield self
        finally:
            self.unet_space = previous

    def set_sigmas(self, sigmas):  # ModelSamplingDiscrete's table setter: the table here is the schedule itself
        raise InputError("DynamiCrafter's sigma table is its schedule, with the dynamic rescale folded in, and "
                         "cannot be replaced; sample with the model sampling DynamiCrafter Model gives")

    # -- sigma -> timestep, s(t), ᾱ -----------------------------------------------------------------------

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of sigma (an integer at the table's points)."""
        tables = self.tables(sigma.device)
        t = interp(sigma.float().log(), tables.log_sigmas, tables.steps)
        # a table sigma whose log another device rounded differently is still its timestep
        return torch.where((t - t.round()).abs() < SNAP, t.round(), t).view(sigma.shape)

    def scale_and_alphas_cumprod(self, sigma: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """s(t) and ᾱ at each sigma, in `dtype`: at the table's points the training values (ᾱ = 0 at the last
        timestep with zero terminal SNR, which the sigma table can only approach; s is the table's, which the
        interpolation returns exactly there), between them the interpolated s and the ᾱ that sigma implies."""
        tables = self.tables(sigma.device)
        t = self.timestep(sigma)
        on_table = t == t.round()
        index = t.round().long().clamp(0, self.num_timesteps - 1)
        s = interp(t, tables.steps, tables.scales).to(dtype)
        implied = 1.0 / (1.0 + (sigma.to(dtype) * s) ** 2)
        a = torch.where(on_table, tables.alphas_cumprod[index].to(dtype), implied)
        return s, a

    def z_factor(self, sigma: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """alpha' = s(t) sqrt(ᾱ), ᾱ = 1 / (1 + (sigma s)^2): the model's input z = alpha' x."""
        s, _ = self.scale_and_alphas_cumprod(sigma, dtype)
        return s / (1.0 + (sigma.to(dtype) * s) ** 2) ** 0.5

    # -- ComfyUI's model-sampling interface (maths in the latent's dtype) ----------------------------------

    def calculate_input(self, sigma, noise):
        if self.unet_space:
            return noise
        return noise * per_row(self.z_factor(sigma, noise.dtype), noise)

    def calculate_denoised(self, sigma, model_output, model_input):
        if self.unet_space:
            return model_output
        return self.denoised(model_output, self._state(sigma, model_input))

    def unet_state(self, sigma, z) -> tuple:
        """(z, ᾱ, s) at the UNet's input z and sigma, per row, in z's dtype: what converts its outputs."""
        s, a = (per_row(v, z) for v in self.scale_and_alphas_cumprod(sigma, z.dtype))
        return z, a, s

    def _state(self, sigma, model_input) -> tuple:
        """unet_state for ComfyUI's latent x at sigma (z = alpha' x)."""
        return self.unet_state(sigma, model_input * per_row(self.z_factor(sigma, model_input.dtype), model_input))

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        # from pure noise the model's input is the noise itself, as the original starts
        noise = noise / per_row(self.z_factor(sigma), noise) if max_denoise else noise * per_row(sigma, noise)
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent

    def prediction(self, sigma, denoised, model_input) -> tuple[torch.Tensor, tuple]:
        """The model output (v or eps) that gives `denoised` at ComfyUI's latent x, and what converts it back:
        guidance and its rescale act on the model output, as the original's. Outside unet_latents() only (ComfyUI's
        own samplers): a conversion there, not a round trip the DDIM sampler relies on."""
        state = self._state(sigma, model_input)
        return self.output(denoised, state), state

    def output(self, denoised, state) -> torch.Tensor:
        """The model output (v or eps) that gives `denoised` at `state` (unet_state)."""
        z, a, s = state
        return prediction_from_x0(self.parameterization, denoised.to(z.dtype) * s, z, a)

    def denoised(self, prediction, state) -> torch.Tensor:
        """The denoised latent (ComfyUI's x0, unscaled by s) from a model output at `state` (_state)."""
        z, a, s = state
        return x0_from_prediction(self.parameterization, prediction.to(z.dtype), z, a) / s


class CONDFrames(comfy.conds.CONDNoiseShape):
    """Per-frame latents (1 or T rows): one row is repeated to the batch; T rows are kept whole even for a
    shorter batch (a context window of a core that does not slice them), _apply_model picks the window's."""

    def process_cond(self, batch_size, area=None, **kwargs):
        if self.cond.shape[0] >= batch_size:
            return self._copy_with(self.cond)
        return super().process_cond(batch_size, area=area, **kwargs)


def comfy_memory_usage_factor(model_channels: int) -> float:
    """memory.UNET_FACTOR in ComfyUI's memory_usage_factor units: bytes = rows x h w x dtype bytes x 0.01 x factor MiB
    (BaseModel.memory_required with flash attention), per UNet call."""
    return memory.MARGIN * memory.UNET_FACTOR * model_channels / (0.01 * 2 ** 20)


class DynamiCrafterBase(comfy.model_base.BaseModel):
    def __init__(self, config, core):
        kind = comfy.model_base.ModelType.V_PREDICTION if core.schedule.parameterization == "v" \
            else comfy.model_base.ModelType.EPS
        super().__init__(config, kind)
        self.diffusion_model = core.unet
        self.model_sampling = ModelSamplingDynamiCrafter(core.schedule, core.defaults)
        # ComfyUI's units (MiB per 100 latent values per byte of dtype, its flash-attention formula), for code that
        # reads the factor; memory_required below is what ComfyUI asks
        self.memory_usage_factor = comfy_memory_usage_factor(core.unet.cfg.model_channels)

    def extra_conds(self, **kwargs):
        cross_attn, concat, noise = kwargs.get("cross_attn"), kwargs.get(CONCAT), kwargs["noise"]
        if cross_attn is None or concat is None:
            raise InputError(f"this conditioning was not made for DynamiCrafter (it has no visual detail "
                             f"guidance latents): {CONDITIONING_HINT}")
        width = self.diffusion_model.cfg.context_dim
        if cross_attn.shape[-1] != width or cross_attn.shape[1] <= TEXT_TOKENS:
            raise InputError(f"the conditioning's context is {tuple(cross_attn.shape)}, DynamiCrafter needs "
                             f"(1, {TEXT_TOKENS} text + image tokens, {width}): {CONDITIONING_HINT}")
        frames = noise.shape[0]
        if concat.shape[0] not in (1, frames):
            raise InputError(f"the latent has {frames} frames but the conditioning was made for "
                             f"{concat.shape[0]}: use the LATENT of the same DynamiCrafter Conditioning")
        out = {"c_crossattn": comfy.conds.CONDCrossAttn(cross_attn),
               "c_concat": CONDFrames(self.process_latent_in(concat)),
               "fs": comfy.conds.CONDRegular(torch.tensor([int(kwargs.get(FS, 0))], dtype=torch.long)),
               "num_video_frames": comfy.conds.CONDConstant(frames)}
        text = kwargs.get("cross_attn_controlnet")
        if text is not None:
            out["crossattn_controlnet"] = comfy.conds.CONDCrossAttn(text)
        if kwargs.get(CAMERA) is not None:
            # one object for the whole video: each call picks its frames' poses (a context window's or all)
            out[CAMERA] = comfy.conds.CONDConstant(kwargs[CAMERA])
        return out

    def extra_conds_shapes(self, **kwargs):
        """What ComfyUI's estimate before sampling hands memory_required, per conditioning: one BRANCH entry each
        (image cfg's third counted), and CONTROLLED where a ControlNet or the sketch encoder runs beside the UNet."""
        return {BRANCH: [1], **({CONTROLLED: [1]} if kwargs.get("control") is not None else {})}

    def memory_required(self, input_shape, cond_shapes={}):
        """Bytes of working memory for a UNet call on `input_shape` (rows = branches x frames). ComfyUI's estimate
        before sampling asks for two branches' rows: with three conditionings (image cfg) it is three. The estimate
        does not follow ComfyUI's attention mode: this UNet's attention is its own (memory-efficient SDPA)."""
        rows, branches = input_shape[0], len(cond_shapes.get(BRANCH, ()))
        if branches > 2:
            rows = rows // 2 * branches
        unet = self.diffusion_model
        return memory.unet(1, 1, rows, tuple(input_shape[2:]), unet.cfg.model_channels, unet.dtype.itemsize,
                           controlled=bool(cond_shapes.get(CONTROLLED)))

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                     **kwargs):
        frames = kwargs.get("num_video_frames")
        if c_concat is None or c_crossattn is None or frames is None:
            raise InputError(f"DynamiCrafter's MODEL was given conditioning without its visual detail guidance: "
                             f"{CONDITIONING_HINT}")
        window = transformer_options.get("context_window")
        if getattr(window, "causal_anchor_index", None) is not None and window.causal_anchor_index >= 0:
            frames += 1  # ComfyUI 0.33's causal_window_fix puts the frame before the window in front of it
        if x.shape[0] % frames:
            raise InputError(f"the UNet was given {x.shape[0]} latent frames for videos of {frames}: the batch "
                             "must hold whole videos (frames in the batch, one video per run)")
        # the UNet takes one sigma and one conditioning per video: the sampling run checks that each video's frames
        # carried one (without a host sync per call; a call outside a run is checked at once)
        checks = transformer_options.get(FRAME_CHECKS) or FrameChecks()
        checks.record(t, c_crossattn, frames, windowed=window is not None)
        if FRAME_CHECKS not in transformer_options:
            checks.check()
        concat = window_rows(c_concat, x.shape[0], frames, transformer_options)
        xc = torch.cat([self.model_sampling.calculate_input(t, x), concat.to(x)], dim=1)
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._diffusion, self, comfy.patcher_extension.get_all_wrappers(
                comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options))
        camera = kwargs.get(CAMERA)
        if camera is not None:
            camera = camera.features(x.shape[0] // frames, frames, transformer_options, x.device)
        out = executor.execute(xc, self.model_sampling.timestep(t).float(), c_crossattn, None, control,
                               transformer_options, fs=kwargs.get("fs"), num_video_frames=frames, camera=camera)
        return self.model_sampling.calculate_denoised(t, out.float(), x)

    def _diffusion(self, xc, timesteps, context, y=None, control=None, transformer_options={}, fs=None,
                   num_video_frames=None, camera=None):
        """The UNet on ComfyUI's layout: frames in the batch, (n T, 8, h, w) -> (n T, 4, h, w), one context
        and fs row per frame (the same for each frame of a video)."""
        frames = num_video_frames
        n = xc.shape[0] // frames
        x5 = xc.reshape(n, frames, *xc.shape[1:]).transpose(1, 2)
        first = slice(None, None, frames)  # one row per video
        out = self.diffusion_model(x5, timesteps[first], context[first], None if fs is None else fs[first],
                                   control=control_residuals(control), patches=block_patches(transformer_options),
                                   camera=camera)
        return out.transpose(1, 2).reshape(xc.shape[0], -1, *xc.shape[2:])


class DynamiCrafterConfig(comfy.supported_models_base.BASE):
    unet_extra_config = {}
    latent_format = comfy.latent_formats.SD15


class Guider(comfy.samplers.CFGGuider):
    """The original's classifier-free guidance: two branches (cfg), or three with image_cfg (negative prompt
    with the real image as the third), then its guidance rescale on the model output over the whole video."""

    def __init__(self, model_patcher, cfg: float, image_cfg: float, guidance_rescale: float):
        super().__init__(model_patcher)
        self.cfg, self.image_cfg, self.guidance_rescale = cfg, image_cfg, guidance_rescale

    def set_conds(self, positive, negative):
        conds = {"positive": positive, "negative": negative}
        if self.image_cfg:
            conds["image_negative"] = image_negative(positive, negative)
        self.inner_set_conds(conds)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        # cfg 1 is one pass, image_cfg or not, as in the bundled sampler
        names = ["positive"] if self.cfg == 1 else \
            ["positive", "negative"] + (["image_negative"] if self.image_cfg else [])
        # ComfyUI batches the conditionings it is given last first: handing them over reversed puts the
        # branches in one UNet batch in the bundled sampler's order, so both paths compute the same numbers
        outs = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds.get(k) for k in reversed(names)], x,
                                              timestep, model_options)[::-1]
        if len(outs) == 1:
            return outs[0]
        ms = self.inner_model.model_sampling
        post_cfg = model_options.get("sampler_post_cfg_function", [])
        if not ms.unet_space:
            denoised = cfg_denoised(ms, x, timestep, outs, self.cfg, self.image_cfg or None, self.guidance_rescale)
            return self.post_cfg(post_cfg, denoised, outs, x, timestep, model_options)
        # the DDIM sampler's call (unet_latents): x is the UNet's input z and the outputs are the UNet's own
        guided = guided_output([o.float() for o in outs], self.cfg, self.image_cfg or None, self.guidance_rescale)
        if not post_cfg:
            return guided
        # post-cfg functions work on ComfyUI's denoised latents at ComfyUI's x: converted for them and back
        state = ms.unet_state(timestep, x)
        x_comfy = x / per_row(ms.z_factor(timestep, x.dtype), x)
        denoised = self.post_cfg(post_cfg, ms.denoised(guided, state), [ms.denoised(o, state) for o in outs],
                                 x_comfy, timestep, model_options)
        return ms.output(denoised, state)

    def post_cfg(self, functions, denoised, outs, x, timestep, model_options):
        """ComfyUI's post-cfg functions (model_options' sampler_post_cfg_function) on the guided denoised latent."""
        for fn in functions:
            denoised = fn({"denoised": denoised, "cond": self.conds.get("positive"),
                           "uncond": self.conds.get("negative"), "cond_scale": self.cfg, "model": self.inner_model,
                           "uncond_denoised": outs[1], "cond_denoised": outs[0], "sigma": timestep,
                           "model_options": model_options, "input": x})
        return denoised


class SketchControl(comfy.controlnet.ControlBase):
    """ToonCrafter's sketch encoder as one of ComfyUI's control objects (what Apply ControlNet puts in a
    conditioning): ComfyUI loads it with the model, honours its strength and start / end percent and chains it
    with other ControlNets. It sees what the bundled sampler's sketch guidance gives it: the model's noisy
    latent z (no concat), the timestep, the branch's whole context and one drawing per frame."""

    def __init__(self, encoder, hint: torch.Tensor):
        super().__init__()
        self.encoder, self.cond_hint_original = encoder, hint  # hint (1, 1, T, H, W)
        self.model_sampling_current = None

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self):
        self.model_sampling_current = None
        super().cleanup()

    def get_models(self):
        return super().get_models() + [self.encoder.patcher]

    def copy(self):
        c = SketchControl(self.encoder, self.cond_hint_original)
        self.copy_to(c)
        return c

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options={}):
        previous = None if self.previous_controlnet is None else \
            self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and not self.timestep_range[1] <= t[0] <= self.timestep_range[0]:
            return previous
        ms = self.model_sampling_current
        hint = self.cond_hint_original
        frames, rows = hint.shape[2], x_noisy.shape[0]
        in_pass = cond.get("num_video_frames", frames)  # a context window's length, when windows are on
        if in_pass != frames or rows % frames or transformer_options.get("context_window") is not None:
            raise InputError(f"the sketch guidance holds {frames} frames but the UNet sees {in_pass} at a time: "
                             "sketches belong to the whole video and do not work with context windows; remove "
                             "Context Windows or Apply Sketch Guidance")
        n = rows // frames
        z = ms.calculate_input(t, x_noisy).float()
        z = z.reshape(n, frames, *z.shape[1:]).transpose(1, 2)
        first = slice(None, None, frames)
        device = self.encoder.patcher.load_device
        residuals = self.encoder.control(z.to(device), hint.to(device).expand(n, -1, -1, -1, -1),
                                         ms.timestep(t)[first].to(device), cond["c_crossattn"][first].to(device))
        per_frame = [r.transpose(1, 2).reshape(rows, *r.shape[1:2], *r.shape[3:]) for r in residuals]
        return self.control_merge({"output": per_frame[:-1], "middle": per_frame[-1:]}, previous, None)


# ---------------------------------------------------------------------------------------------------------------
# the ComfyUI internals the classes above override or read


def parameters(function) -> list:
    return list(inspect.signature(function).parameters)


def source(function) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def causal_anchor_prepended() -> bool:
    """Context windows without a causal anchor, or with ComfyUI 0.33's (the frame before the window put in front of
    it, which _apply_model counts and window_frames includes)."""
    try:
        import comfy.context_windows as windows
    except ImportError:
        return True
    handler = getattr(windows, "IndexListContextHandler", None)
    if handler is None or "causal_window_fix" not in parameters(handler.__init__):
        return True
    return "causal_anchor_index" in source(windows.IndexListContextWindow.get_tensor)


INTERNALS = (
    ("BaseModel._apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs), which "
     "DynamiCrafter's MODEL overrides",
     lambda: parameters(comfy.model_base.BaseModel._apply_model)[:7] == ["self", "x", "t", "c_concat", "c_crossattn",
                                                                         "control", "transformer_options"]),
    ("BaseModel.apply_model calling _apply_model",
     lambda: "_apply_model" in source(comfy.model_base.BaseModel.apply_model)),
    ("the wrappers DIFFUSION_MODEL, CALC_COND_BATCH and OUTER_SAMPLE (comfy.patcher_extension)",
     lambda: all(hasattr(comfy.patcher_extension.WrappersMP, k) for k in ("DIFFUSION_MODEL", "CALC_COND_BATCH",
                                                                           "OUTER_SAMPLE"))
     and hasattr(comfy.patcher_extension.WrapperExecutor, "new_class_executor")),
    ("comfy.samplers.calc_cond_batch(model, conds, x_in, timestep, model_options), which DynamiCrafter Guider calls",
     lambda: parameters(comfy.samplers.calc_cond_batch) == ["model", "conds", "x_in", "timestep", "model_options"]),
    ("CFGGuider.predict_noise(x, timestep, model_options, seed) and inner_set_conds, which DynamiCrafter Guider "
     "overrides and calls",
     lambda: parameters(comfy.samplers.CFGGuider.predict_noise) == ["self", "x", "timestep", "model_options", "seed"]
     and hasattr(comfy.samplers.CFGGuider, "inner_set_conds")),
    ("ControlBase's cond_hint_original, cond_hint and previous_controlnet, which the sketch control and the hints "
     "per context window use",
     lambda: all(hasattr(comfy.controlnet.ControlBase(), a) for a in ("cond_hint_original", "cond_hint",
                                                                       "previous_controlnet"))),
    ("context windows' causal anchor (the frame before a window put in front of it)", causal_anchor_prepended),
)


@functools.lru_cache(maxsize=None)
def changed_internals() -> tuple:
    """What of INTERNALS this ComfyUI no longer has, as sentences (empty where it has all)."""
    changed = []
    for what, holds in INTERNALS:
        try:
            ok = holds()
        except Exception:  # noqa: BLE001 - a missing class or attribute is a change like any other
            ok = False
        if not ok:
            changed.append(what)
    return tuple(changed)
