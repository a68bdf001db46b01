"""Noise schedule, guidance and the DDIM sampler (original: `lvdm/models/utils_diffusion.py`,
`lvdm/models/samplers/ddim.py`, `ddim_multiplecond.py`).

Notation (DDIM, Song et al. 2021, eq. 12):

    a_t      alpha-bar at the current timestep t        (ᾱ_t)
    a_prev   alpha-bar at the next (less noisy) timestep (ᾱ_{t-1}); the last step uses ᾱ[0], not 1
    sigma_t  eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    x0       predicted clean latent;  eps  predicted noise;  v = sqrt(a_t) eps - sqrt(1 - a_t) x0

    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma_t^2) eps + sigma_t z,  z ~ N(0, I)

The sampler takes a denoiser `fn(x, t) -> model output` (v or eps) and knows nothing of guidance; guidance is a
wrapper that builds such a function. DynamiCrafter's dynamic rescale of x0 (scale_arr) belongs to the schedule and is
applied inside the step, after guidance, leaving eps as it was (as the original does).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .config import ModelConfig
from .errors import InputError
from .settings import check_eta, check_steps

SPACINGS = ("uniform", "uniform_trailing")
CAMERA_CFG_SCHEDULES = ("constant", "cosine")  # CamI2V's camera_cfg_scheduler

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]
StepCallback = Callable[[dict], None]


def linear_betas(linear_start: float, linear_end: float, timesteps: int) -> np.ndarray:
    """betas = linspace(sqrt(start), sqrt(end), T)^2, in float64."""
    return np.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=np.float64) ** 2


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Algorithm 1: shift sqrt(ᾱ) so its last value is 0, rescale so its first is unchanged."""
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab ** 2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


@dataclass
class NoiseSchedule:
    """ᾱ for every training timestep, the parameterization, and the dynamic-rescale curve s(t) (or None)."""
    alphas_cumprod: torch.Tensor  # float64 (T,)
    parameterization: str = "v"
    scale_arr: Optional[torch.Tensor] = None  # float64 (T + turning_step,)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "NoiseSchedule":
        betas = linear_betas(cfg.linear_start, cfg.linear_end, cfg.timesteps)
        if cfg.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        ac = torch.from_numpy(np.cumprod(1.0 - betas))
        scale = None
        if cfg.use_dynamic_rescale:
            # s(t) falls linearly from 1 to base_scale over the first `turning_step` timesteps, then stays there
            scale = torch.from_numpy(np.concatenate([np.linspace(1.0, cfg.base_scale, cfg.turning_step),
                                                     np.full(cfg.timesteps, cfg.base_scale)]))
        return cls(ac, cfg.parameterization, scale)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @functools.cached_property
    def sqrt_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(ᾱ) and sqrt(1 - ᾱ) as float32 tables, as the original's sampler reads them."""
        return self.alphas_cumprod.sqrt().float(), (1.0 - self.alphas_cumprod).sqrt().float()


def ddim_timesteps(steps: int, spacing: str = "uniform_trailing", num_timesteps: int = 1000) -> torch.Tensor:
    """The timesteps DDIM visits, ascending.

    uniform:          arange(0, T, T // S) + 1        e.g. S=50: [1, 21, ..., 981]
    uniform_trailing: round(arange(T, 0, -T / S)) - 1  e.g. S=50: [19, 39, ..., 999] (starts at pure noise)

    As in the original, `uniform` visits more than S timesteps when S does not divide T (S=30: 31), and for some S
    (3, 9, 27, 37, ...) it would step past the last timestep; those are refused with a step count that works."""
    check_steps(steps, num_timesteps)
    if spacing == "uniform":
        ts = _uniform(steps, num_timesteps)
        if ts[-1] >= num_timesteps:
            ok = next(s for s in range(steps + 1, num_timesteps + 1) if _uniform(s, num_timesteps)[-1] < num_timesteps)
            raise InputError(f"{steps} steps with spacing uniform would visit timestep {ts[-1]}, past the model's "
                             f"last ({num_timesteps - 1}); use {ok} steps, or spacing uniform_trailing")
    elif spacing == "uniform_trailing":
        ts = np.flip(np.round(np.arange(num_timesteps, 0, -num_timesteps / steps))).astype(np.int64) - 1
    else:
        raise InputError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    return torch.from_numpy(np.ascontiguousarray(ts)).long()


def _uniform(steps: int, num_timesteps: int) -> np.ndarray:
    return np.arange(0, num_timesteps, num_timesteps // steps) + 1


# ---------------------------------------------------------------------------------------------------------------
# Classifier-free guidance (cfg): wrappers that turn a conditional model into one denoiser


def rescale_cfg(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023 §3.4: match the std of the guided output to the conditional one, mixed by phi.
    The std is per sample over all other dims, unbiased (torch's default), as the original."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1.0 - phi) * guided


def cfg_denoiser(model_fn: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor], context: torch.Tensor,
                 uncond_context: Optional[torch.Tensor], cfg: float, guidance_rescale: float = 0.0,
                 image_cfg: Optional[float] = None, text_uncond_context: Optional[torch.Tensor] = None,
                 batch_branches: bool = True, camera_cfg: float = 1.0, camera_cfg_schedule: str = "constant",
                 nocam_fn: Optional[Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]] = None) -> Denoiser:
    """Classifier-free guidance around `model_fn(x, t, context)`.

    Two branches:   m = m_u + cfg (m_c - m_u)
    Three branches (the original's multi-condition mode, `image_cfg` set, `text_uncond_context` = empty text with
    the real image context):
                    m = m_uu + image_cfg (m_u,img - m_uu) + cfg (m_c - m_u,img)
    then, with guidance_rescale phi > 0, rescale_cfg(m, m_c, phi). cfg == 1 calls the model once.
    The branches run as one batch unless `batch_branches` is False (less memory, same result).
    CamI2V's camera guidance (`camera_cfg` != 1, `nocam_fn` the model without the camera), before the rescale:
                    m += (camera_cfg - 1) w(t) (m_c - m_c,nocam),  w = 1 or, "cosine", cos((1 - t/999) π/2)
    """
    if camera_cfg != 1.0:
        if nocam_fn is None or uncond_context is None or cfg == 1.0:
            raise InputError("camera guidance (camera_cfg != 1) needs classifier-free guidance (cfg != 1) and a "
                             "camera; set camera_cfg to 1")
        if camera_cfg_schedule not in CAMERA_CFG_SCHEDULES:
            raise InputError(f"unknown camera_cfg_schedule {camera_cfg_schedule!r}; use one of "
                             f"{', '.join(CAMERA_CFG_SCHEDULES)}")
    if cfg == 1.0 or uncond_context is None:
        return lambda x, t: model_fn(x, t, context)
    contexts = [context, uncond_context]
    three = image_cfg is not None and text_uncond_context is not None
    if three:
        contexts.append(text_uncond_context)

    n = len(contexts)
    stacked = torch.cat(contexts) if batch_branches else None  # once per run, not per step

    def denoise(x, t):
        if batch_branches:
            outs = model_fn(torch.cat([x] * n), t, stacked).chunk(n)
        else:
            outs = [model_fn(x, t, c) for c in contexts]
        m = combine_cfg(outs, cfg, image_cfg if three else None)
        if camera_cfg != 1.0:
            weight = 1.0 if camera_cfg_schedule == "constant" else math.cos((1.0 - t / 999) * math.pi / 2)
            m = m + (camera_cfg - 1.0) * weight * (outs[0] - nocam_fn(x, t, context))
        return rescale_cfg(m, outs[0], guidance_rescale) if guidance_rescale > 0 else m

    return denoise


def combine_cfg(outs: Sequence[torch.Tensor], cfg: float, image_cfg: Optional[float] = None) -> torch.Tensor:
    """The guided prediction from the branches' predictions, in cfg_denoiser's order: (conditional,
    unconditional) or, with image_cfg, (conditional, unconditional, empty text with the image). Linear, so it may be
    applied to any prediction that is affine in the model output with the same coefficients for every branch (v,
    eps, or the denoised latent at one noise level)."""
    if image_cfg is not None:
        m_c, m_uu, m_ui = outs
        return m_uu + image_cfg * (m_ui - m_uu) + cfg * (m_c - m_ui)
    m_c, m_u = outs
    return m_u + cfg * (m_c - m_u)


# ---------------------------------------------------------------------------------------------------------------
# DDIM


def ddim_parameters(schedule: NoiseSchedule, timesteps: torch.Tensor, eta: float):
    """a_t, a_prev, sigma_t for each visited timestep (ascending order), as float64 tensors.

    The original keeps ᾱ in a float32 buffer and reads it from there; doing the same keeps the last digits equal."""
    ac = exact_alphas_cumprod(schedule)
    a_t = ac[timesteps]
    a_prev = torch.cat([ac[:1], ac[timesteps[:-1]]])
    return a_t, a_prev, ddim_sigma(a_t, a_prev, eta)


def exact_alphas_cumprod(schedule: NoiseSchedule) -> torch.Tensor:
    """ᾱ as the original's sampler reads it: from a float32 buffer (so the last digits agree), in float64."""
    return schedule.alphas_cumprod.float().double()


def ddim_sigma(a_t, a_prev, eta: float):
    """DDIM's step noise level sigma_t (module docstring) for tensors or floats of ᾱ."""
    return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, a_prev: float, sigma: float,
              noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DDIM's update (module docstring): the latent at ᾱ = a_prev from the predicted x0 and eps; `noise` (standard
    normal) is needed when sigma > 0."""
    x = a_prev ** 0.5 * x0 + max(1.0 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0:
        x = x + sigma * noise.to(x)
    return x


def prediction_from_x0(parameterization: str, x0: torch.Tensor, z: torch.Tensor, a_t) -> torch.Tensor:
    """The inverse of x0_from_prediction: the model output (v or eps) that predicts x0 from z at ᾱ = a_t (a float
    or a tensor broadcasting to z). Guidance rescale acts on the model output; a host that hands over x0 converts."""
    if parameterization == "v":
        return (a_t ** 0.5 * z - x0) / (1.0 - a_t) ** 0.5
    return (z - a_t ** 0.5 * x0) / (1.0 - a_t) ** 0.5


def x0_from_prediction(parameterization: str, out: torch.Tensor, z: torch.Tensor, a_t) -> torch.Tensor:
    """The x0 a model output (v or eps) at ᾱ = a_t predicts for the latent z, as the original computes it."""
    if parameterization == "v":
        return a_t ** 0.5 * z - (1.0 - a_t) ** 0.5 * out
    return (z - (1.0 - a_t) ** 0.5 * out) / a_t ** 0.5


def rescale_ratio(schedule: NoiseSchedule, t: int, t_prev: int):
    """DynamiCrafter's dynamic rescale of x0 between two timesteps: s(t_prev) / s(t) (1 without rescale). The
    model was trained on latents scaled by s(t); the original's last step passes t_prev = t (ratio 1)."""
    if schedule.scale_arr is None:
        return 1.0
    scale = schedule.scale_arr.float()
    return scale[t_prev] / scale[t]


# Zero terminal SNR makes ᾱ exactly 0 at the last timestep, where sigma = sqrt((1 - ᾱ) / ᾱ) is infinite. Hosts that
# integrate in sigma (ComfyUI, diffusers) put this ᾱ in its place; only the sigma table uses it.
TERMINAL_ALPHA_BAR = 4.8973451890853435e-08


def effective_sigmas(schedule: NoiseSchedule) -> torch.Tensor:
    """sigma_eff(t) = sigma_t / s(t) for every training timestep, float64, increasing.

    With the dynamic rescale the model was trained on z_t = sqrt(ᾱ_t) s(t) x0 + sqrt(1 - ᾱ_t) eps, so
    z_t / (s(t) sqrt(ᾱ_t)) = x0 + sigma_eff(t) eps: a sampler that integrates x0 + sigma eps with this table follows
    the process the model learned. Without rescale it is the plain sigma table."""
    ac = schedule.alphas_cumprod.clone()
    ac[ac <= 0] = TERMINAL_ALPHA_BAR
    sigmas = ((1.0 - ac) / ac).sqrt()
    if schedule.scale_arr is not None:
        sigmas = sigmas / schedule.scale_arr[:ac.shape[0]]
    return sigmas


def ddim_update(schedule: NoiseSchedule, out: torch.Tensor, x: torch.Tensor, t: int, t_prev: int, a_t: float,
                a_prev: float, sigma: float, noise: Optional[torch.Tensor] = None):
    """One step of the original's DDIM from x at timestep t, given the (guided) model output: returns (the latent at
    ᾱ = a_prev, the predicted x0). t_prev only sets the dynamic rescale's ratio s(t_prev) / s(t) (the original's last
    step passes t). Every sampler of the project takes its steps here, so their float32 maths is one."""
    if schedule.parameterization == "v":  # the float32 tables, as the original
        sqrt_ac, sqrt_1m_ac = schedule.sqrt_tables
        eps = sqrt_ac[t] * out + sqrt_1m_ac[t] * x
        x0 = sqrt_ac[t] * x - sqrt_1m_ac[t] * out
    else:
        x0, eps = x0_from_prediction("eps", out, x, a_t), out
    x0 = x0 * rescale_ratio(schedule, t, t_prev)
    return ddim_step(x0, eps, a_prev, sigma, noise), x0


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[int],
                eta: float = 1.0, noise: Optional[Callable[[int], torch.Tensor]] = None,
                callback: Optional[StepCallback] = None) -> torch.Tensor:
    """DDIM from x (noise at timesteps[-1]) down to the clean latent.

    noise(i) gives the standard-normal noise of step i (first step first); callback receives
    {"i", "t", "x", "denoised"} after every step."""
    check_eta(eta)
    timesteps = torch.as_tensor(timesteps).long()
    a_t_all, a_prev_all, sigma_all = ddim_parameters(schedule, timesteps, eta)
    n = len(timesteps)
    for i in range(n):
        index = n - 1 - i
        t = int(timesteps[index])
        a_t, a_prev, sigma = (float(v[index]) for v in (a_t_all, a_prev_all, sigma_all))
        out = denoiser(x, t).float()
        # the last step keeps ratio 1 (the original's t_prev is t there)
        x, x0 = ddim_update(schedule, out, x, t, int(timesteps[index - 1]) if index > 0 else t, a_t, a_prev, sigma,
                            noise(i) if sigma > 0 else None)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x
