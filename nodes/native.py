"""DynamiCrafter as a native ComfyUI MODEL: the second module that touches comfy.* (host.py is the first).

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
The ComfyUI classes are built on first use, so the node modules import without ComfyUI.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

import torch

from ..dynamicrafter_core import noise as seed_noise
from ..dynamicrafter_core.errors import InputError
from ..dynamicrafter_core.sampler import (combine_cfg, ddim_sigma, ddim_update, effective_sigmas, exact_alphas_cumprod,
                                          prediction_from_x0, rescale_cfg, x0_from_prediction)
from ..dynamicrafter_core.unet import TEXT_TOKENS, BlockPatches
from . import memory

log = logging.getLogger(__name__)
# keys of DynamiCrafter Conditioning's CONDITIONING entries (ComfyUI hands every key to BaseModel.extra_conds)
CONCAT = "dynamicrafter_concat"  # the visual detail guidance latents, unscaled, (1 or T, 4, h, w)
FS = "dynamicrafter_fs"
# DRAWS: in the positive (for the DDIM sampler's step noise) and the LATENT (for DynamiCrafter Noise's initial noise)
DRAWS = "dynamicrafter_draws"  # the shapes the conditioning drew from the seed before the initial noise
# keys of its LATENT, which SamplerCustomAdvanced and KSampler pass on to their output
LOOP = "dynamicrafter_loop"  # the last frame repeats the first: Decode drops it
REFERENCES = "dynamicrafter_references"  # ToonCrafter: the keyframes' features for its decoder
CAMERA = "dynamicrafter_camera"  # CamI2V: the camera path (CameraCond), in both conditionings

SNAP = 1e-4  # timesteps this close to an integer are that timestep
CONDITIONING_HINT = ("connect DynamiCrafter Conditioning's positive and negative outputs (directly, or through "
                     "Apply ControlNet) to the sampler or guider")


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation (numpy.interp) for increasing xp; exact at the points of xp."""
    x = x.clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.shape[0] - 1)
    x0, x1 = xp[i - 1], xp[i]
    w = (x - x0) / (x1 - x0)
    return torch.where(x == x1, fp[i], fp[i - 1] + w * (fp[i] - fp[i - 1]))


def _rows(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row value (N,) shaped to broadcast over `like` (N, ...)."""
    return value.reshape(value.shape[:1] + (1,) * (like.ndim - 1)) if value.ndim else value


@functools.lru_cache(maxsize=None)
def classes():
    """The ComfyUI classes, built once ComfyUI is importable."""
    import comfy.conds
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_sampling
    import comfy.patcher_extension
    import comfy.samplers
    import comfy.supported_models_base

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
            sigmas = effective_sigmas(schedule).float()
            self.register_buffer("sigmas", sigmas)
            # log of the float32 table, as the log of a float32 sigma a scheduler hands back is computed
            self.register_buffer("log_sigmas", sigmas.log())
            scale = schedule.scale_arr[:schedule.num_timesteps] if schedule.scale_arr is not None else None
            scale = (scale if scale is not None else torch.ones(self.num_timesteps, dtype=torch.float64))
            self.register_buffer("scales", scale.float())
            # float64 copies on the CPU (not buffers: some devices have no float64), looked up per step
            self.exact_scales, self.exact_alphas_cumprod = scale.double(), exact_alphas_cumprod(schedule)

        def set_sigmas(self, sigmas):  # ComfyUI's own ModelSamplingDiscrete would replace the table: keep ours
            raise InputError("DynamiCrafter's model sampling folds its dynamic rescale into its sigmas; do not patch "
                             "it with ModelSamplingDiscrete (remove that node)")

        # -- sigma -> timestep, s(t), ᾱ -----------------------------------------------------------------------

        def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
            """Continuous timestep of sigma (an integer at the table's points)."""
            ls = self.log_sigmas
            steps = torch.arange(ls.shape[0], dtype=ls.dtype, device=ls.device)
            t = _interp(sigma.float().to(ls.device).log(), ls, steps)
            # a table sigma whose log another device rounded differently is still its timestep
            t = torch.where((t - t.round()).abs() < SNAP, t.round(), t)
            return t.view(sigma.shape).to(sigma.device)

        def _at(self, sigma: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
            """s(t) and ᾱ at each sigma, in `dtype` (float64 when the sampler carries latents in float64): at the
            table's points the training values (ᾱ = 0 at the last timestep with zero terminal SNR, which the sigma
            table can only approach), between them the interpolated s and the ᾱ that sigma implies."""
            t = self.timestep(sigma)
            on_table = t == t.round()
            index = t.round().long().clamp(0, self.num_timesteps - 1).cpu()
            s = torch.where(on_table, self.exact_scales[index].to(t.device, dtype), self._scale(t).to(dtype))
            implied = 1.0 / (1.0 + (sigma.to(dtype) * s) ** 2)
            a = torch.where(on_table, self.exact_alphas_cumprod[index].to(t.device, dtype), implied)
            return s, a

        def _scale(self, t: torch.Tensor) -> torch.Tensor:
            steps = torch.arange(self.scales.shape[0], dtype=t.dtype, device=self.scales.device)
            return _interp(t.to(self.scales.device), steps, self.scales).to(t.device)

        def z_factor(self, sigma: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            """alpha' = s(t) sqrt(ᾱ), ᾱ = 1 / (1 + (sigma s)^2): the model's input z = alpha' x."""
            s, _ = self._at(sigma, dtype)
            return s / (1.0 + (sigma.to(dtype) * s) ** 2) ** 0.5

        # -- ComfyUI's model-sampling interface (maths in the latent's dtype) ----------------------------------

        def calculate_input(self, sigma, noise):
            return noise * _rows(self.z_factor(sigma, noise.dtype), noise)

        def _state(self, sigma, model_input) -> tuple:
            """(z, ᾱ, s) for ComfyUI's latent at sigma, per row, in the latent's dtype."""
            z = self.calculate_input(sigma, model_input)
            s, a = (_rows(v, model_input) for v in self._at(sigma, model_input.dtype))
            return z, a, s

        def calculate_denoised(self, sigma, model_output, model_input):
            return self.denoised(model_output, self._state(sigma, model_input))

        def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
            # from pure noise the model's input is the noise itself, as the original starts
            noise = noise / _rows(self.z_factor(sigma), noise) if max_denoise else noise * _rows(sigma, noise)
            return noise + latent_image

        def inverse_noise_scaling(self, sigma, latent):
            return latent

        def prediction(self, sigma, denoised, model_input) -> tuple[torch.Tensor, tuple]:
            """The model output (v or eps) that gives `denoised`, and what converts it back: guidance and its
            rescale act on the model output, as the original's. In float64 the round trip returns the float32
            model output exactly."""
            z, a, s = state = self._state(sigma, model_input)
            return prediction_from_x0(self.parameterization, denoised.to(z.dtype) * s, z, a), state

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

    class DynamiCrafterBase(comfy.model_base.BaseModel):
        def __init__(self, config, core):
            kind = comfy.model_base.ModelType.V_PREDICTION if core.schedule.parameterization == "v" \
                else comfy.model_base.ModelType.EPS
            super().__init__(config, kind)
            self.diffusion_model = core.unet
            self.model_sampling = ModelSamplingDynamiCrafter(core.schedule, core.defaults)
            self.memory_usage_factor = memory.UNET_FACTOR

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

        def memory_required(self, input_shape, cond_shapes={}):
            unet = self.diffusion_model
            return memory.unet(1, 1, input_shape[0], tuple(input_shape[2:]), unet.cfg.model_channels,
                               unet.dtype.itemsize)

        def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                         **kwargs):
            frames = kwargs.get("num_video_frames")
            if c_concat is None or c_crossattn is None or frames is None:
                raise InputError(f"DynamiCrafter's MODEL was given conditioning without its visual detail guidance: "
                                 f"{CONDITIONING_HINT}")
            window = transformer_options.get("context_window")
            if getattr(window, "causal_anchor_index", None) is not None and window.causal_anchor_index >= 0:
                frames += 1  # ComfyUI 0.33's causal_window_fix puts the frame before the window in front of it
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
            if xc.shape[0] % frames:
                raise InputError(f"the UNet was given {xc.shape[0]} latent frames for videos of {frames}: the batch "
                                 "must hold whole videos (frames in the batch, one video per run)")
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
        memory_usage_factor = memory.UNET_FACTOR

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
            denoised = cfg_denoised(self.inner_model.model_sampling, x, timestep, outs, self.cfg,
                                    self.image_cfg or None, self.guidance_rescale)
            for fn in model_options.get("sampler_post_cfg_function", []):
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

    return {"ModelSampling": ModelSamplingDynamiCrafter, "Base": DynamiCrafterBase, "Config": DynamiCrafterConfig,
            "Guider": Guider, "KSAMPLER": comfy.samplers.KSAMPLER, "SketchControl": SketchControl}


# ---------------------------------------------------------------------------------------------------------------
# conversions between ComfyUI's conventions and the core's


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
    context = torch.cat([neg[:, :TEXT_TOKENS], pos[:, TEXT_TOKENS:]], dim=1)
    extra = dict(pos_extra)
    if "cross_attn_controlnet" in neg_extra:
        extra["cross_attn_controlnet"] = neg_extra["cross_attn_controlnet"]
    return [[context, extra]]


def cfg_denoised(model_sampling, x, sigma, outs, cfg: float, image_cfg: Optional[float],
                 rescale: float) -> torch.Tensor:
    """The guided denoised latent from the branches' denoised latents, as the original guides: combine_cfg and
    rescale_cfg on the model outputs in float32, the rescale's spread over the whole video (here the frames are
    the batch: one video, viewed in the core's (1, 4, T, h, w) layout)."""
    converted = [model_sampling.prediction(sigma, d, x) for d in outs]
    predictions = [p.float() for p, _ in converted]
    m = combine_cfg(predictions, cfg, image_cfg)
    if rescale:
        video = [v[None].transpose(1, 2) for v in (m, predictions[0])]
        m = rescale_cfg(video[0], video[1], rescale)[0].transpose(0, 1)
    return model_sampling.denoised(m, converted[0][1])


def ours(model_sampling, what: str):
    """DynamiCrafter's model sampling, or a sentence for `what` (a node) that cannot work without it."""
    if type(model_sampling).__name__ != "ModelSamplingDynamiCrafter" or not hasattr(model_sampling, "schedule"):
        raise InputError(f"{what} needs DynamiCrafter's MODEL (from DynamiCrafter Model); this model samples with "
                         f"{type(model_sampling).__name__}. If it is DynamiCrafter's, a model-sampling node "
                         "(ModelSamplingDiscrete and the like) replaced its schedule, which drops DynamiCrafter's "
                         "rescale: remove that node")
    return model_sampling


def model_sampling_of(model_patcher, what: str):
    return ours(model_patcher.get_model_object("model_sampling"), what)


# ---------------------------------------------------------------------------------------------------------------
# the original's DDIM as a ComfyUI sampler function


def table_timestep(ms, sigma: float) -> int:
    """The integer timestep of a sigma of the table (DynamiCrafter Scheduler's sigmas are)."""
    t = float(ms.timestep(torch.tensor([float(sigma)]))[0])
    if t != round(t):
        raise InputError(f"sigma {float(sigma):.6g} is not one of DynamiCrafter's timesteps: the DDIM sampler needs "
                         "DynamiCrafter Scheduler's sigmas")
    return int(round(t))


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta: float = 1.0,
                original_last_step: bool = True, step_noise: Optional[torch.Tensor] = None):
    """DDIM exactly as the original (core sampler.ddim_update, the bundled sampler's step), through ComfyUI's guider.

    sigmas: DynamiCrafter Scheduler's, ending at the table's first sigma ("original": the original's last step to
    ᾱ[0], which returns the latent there) or at 0 ("clean": the predicted clean latent).
    The latent passes the guider in float64 (on CUDA and the CPU), so the model output the step takes is
    the float32 one the UNet and the guidance computed, not a rounding of it.
    Step noise: `step_noise` (steps, T, 4, h, w) when given, else the seed's stream after the draws the conditioning
    and the initial noise made (core noise.py), so DynamiCrafter Noise + this sampler repeat the bundled sampler's
    video for the same seed."""
    extra_args = dict(extra_args or {})
    ms = ours(model.inner_model.inner_model.model_sampling, "DynamiCrafter DDIM Sampler")
    schedule = ms.schedule
    carrier = torch.float64 if x.device.type in ("cuda", "cpu") else torch.float32  # some backends lack float64
    sigmas = sigmas.float()
    clean = float(sigmas[-1]) == 0.0
    ts = [table_timestep(ms, s) for s in sigmas[:-1]]
    t_end = None if clean else table_timestep(ms, sigmas[-1])
    if any(a <= b for a, b in zip(ts + ([] if clean else [t_end]), ts[1:] + ([] if clean else [t_end]))):
        raise InputError("the sigmas must decrease; use DynamiCrafter Scheduler")
    # ᾱ and sigma of each step as the core's ddim_parameters computes them
    ac = exact_alphas_cumprod(schedule)
    a_t = ac[torch.tensor(ts)]
    a_prev = torch.cat([ac[torch.tensor(ts[1:], dtype=torch.long)],
                        torch.ones(1, dtype=torch.float64) if clean else ac[t_end:t_end + 1]])
    step_sigma = ddim_sigma(a_t, a_prev, eta)
    stream = None if step_noise is not None else _step_stream(model, x, extra_args.get("seed"))

    def factor(sigma, dtype=torch.float32):
        return ms.z_factor(sigma.reshape(1).to(x.device), dtype)

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
        sigma = sigmas[i].to(x.device)
        x_in = z.to(carrier) / factor(sigma, carrier)
        denoised = model(x_in, sigma * s_in, **extra_args)
        out = ms.prediction(sigma * s_in, denoised, x_in)[0].float()
        last = i == len(ts) - 1
        t_prev = ts[i + 1] if not last else t if (original_last_step and not clean) else (t_end or 0)
        noise = None
        if float(step_sigma[i]) > 0:
            noise = step_noise[drawn] if step_noise is not None else stream()
            drawn += 1
        z, _ = ddim_update(schedule, out, z, t, t_prev, float(a_t[i]), float(a_prev[i]), float(step_sigma[i]),
                           None if noise is None else noise.to(z))
        if callback is not None:
            callback({"x": z, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised.float()})
    return z


def _step_stream(model, x: torch.Tensor, seed: Optional[int]):
    """Step noise from the seed's stream, after what DynamiCrafter Conditioning and the initial noise drew."""
    if seed is None:
        raise InputError("the DynamiCrafter DDIM sampler needs a seed (SamplerCustomAdvanced passes the noise's)")
    conds = getattr(model.inner_model, "conds", {}) or {}
    positive = conds.get("positive") or [{}]
    gen = seed_noise.replay(seed_noise.generator(seed), list(positive[0].get(DRAWS, [])) + [video_shape(x)])
    return lambda: video_noise(gen, x)


def initial_noise(seed: int, latent: dict) -> torch.Tensor:
    """x_T for a LATENT (T, 4, h, w), drawn after the conditioning's draws."""
    return video_noise(seed_noise.replay(seed_noise.generator(seed), latent.get(DRAWS, [])), latent["samples"])


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


def native_model(core, compute_dtype: Optional[torch.dtype] = None):
    """ComfyUI's BaseModel whose diffusion model is `core.unet` (the same module, not a copy)."""
    c = classes()
    config = c["Config"](unet_config(core.config.unet))
    if compute_dtype is not None and compute_dtype != core.unet.dtype:
        config.manual_cast_dtype = compute_dtype
    return c["Base"](config, core)


def ddim_sampler(eta: float, original_last_step: bool = True, step_noise: Optional[torch.Tensor] = None):
    options = {"eta": eta, "original_last_step": original_last_step}
    if step_noise is not None:
        options["step_noise"] = step_noise
    return classes()["KSAMPLER"](sample_ddim, extra_options=options)


def guider(model_patcher, positive, negative, cfg: float, image_cfg: float, guidance_rescale: float):
    if "sampler_cfg_function" in model_patcher.model_options:
        log.warning("DynamiCrafter Guider does the original's guidance itself: the model's cfg patch (RescaleCFG, "
                    "DynamiCrafter Guidance Rescale, ...) is not used; it works with KSampler and CFGGuider")
    g = classes()["Guider"](model_patcher, cfg, image_cfg, guidance_rescale)
    g.set_conds(positive, negative)
    return g


def apply_sketch(conditionings: list, encoder, hint: torch.Tensor, strength: float, percent_range: tuple) -> list:
    """Each conditioning with the sketch encoder as its (first) control object, after any ControlNet already on it,
    as core Apply ControlNet (Advanced) chains them. Entries with the same earlier control share one sketch control,
    so ComfyUI can run the guidance branches in one batch, as the bundled sampler does."""
    shared = {}
    out = []
    for conditioning in conditionings:
        applied = []
        for context, extra in conditioning:
            previous = extra.get("control")
            if id(previous) not in shared:
                control = classes()["SketchControl"](encoder, hint).set_cond_hint(hint, strength, percent_range)
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
