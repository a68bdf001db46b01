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

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .config import ModelConfig
from .errors import InputError
from .settings import check_eta, check_steps

SPACINGS = ("uniform", "uniform_trailing")

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
# Guidance: wrappers that turn a conditional model into one denoiser


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023 §3.4: match the std of the guided output to the conditional one, mixed by phi.
    The std is per sample over all other dims, unbiased (torch's default), as the original."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1.0 - phi) * guided


def guided_denoiser(model_fn: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor], context: torch.Tensor,
                    uncond_context: Optional[torch.Tensor], cfg: float, guidance_rescale: float = 0.0,
                    image_cfg: Optional[float] = None, text_uncond_context: Optional[torch.Tensor] = None,
                    batch_branches: bool = True) -> Denoiser:
    """Classifier-free guidance around `model_fn(x, t, context)`.

    Two branches:   m = m_u + cfg (m_c - m_u)
    Three branches (the original's multi-condition mode, `image_cfg` set, `text_uncond_context` = empty text with
    the real image context):
                    m = m_uu + image_cfg (m_u,img - m_uu) + cfg (m_c - m_u,img)
    then, with guidance_rescale phi > 0, rescale_guidance(m, m_c, phi). cfg == 1 calls the model once.
    The branches run as one batch unless `batch_branches` is False (less memory, same result).
    """
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
        if three:
            m_c, m_uu, m_ui = outs
            m = m_uu + image_cfg * (m_ui - m_uu) + cfg * (m_c - m_ui)
        else:
            m_c, m_u = outs
            m = m_u + cfg * (m_c - m_u)
        return rescale_guidance(m, m_c, guidance_rescale) if guidance_rescale > 0 else m

    return denoise


# ---------------------------------------------------------------------------------------------------------------
# DDIM


def ddim_parameters(schedule: NoiseSchedule, timesteps: torch.Tensor, eta: float):
    """a_t, a_prev, sigma_t for each visited timestep (ascending order), as float64 tensors.

    The original keeps ᾱ in a float32 buffer and reads it from there; doing the same keeps the last digits equal."""
    ac = schedule.alphas_cumprod.float().double()
    a_t = ac[timesteps]
    a_prev = torch.cat([ac[:1], ac[timesteps[:-1]]])
    sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    return a_t, a_prev, sigma


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[int],
                eta: float = 1.0, noise: Optional[Callable[[int], torch.Tensor]] = None,
                callback: Optional[StepCallback] = None) -> torch.Tensor:
    """DDIM from x (noise at timesteps[-1]) down to the clean latent.

    noise(i) gives the standard-normal noise of step i (first step first); callback receives
    {"i", "t", "x", "denoised"} after every step."""
    check_eta(eta)
    timesteps = torch.as_tensor(timesteps).long()
    a_t_all, a_prev_all, sigma_all = ddim_parameters(schedule, timesteps, eta)
    sqrt_ac = schedule.alphas_cumprod.sqrt().float()
    sqrt_1m_ac = (1.0 - schedule.alphas_cumprod).sqrt().float()
    scale = schedule.scale_arr.float() if schedule.scale_arr is not None else None
    n = len(timesteps)
    for i in range(n):
        index = n - 1 - i
        t = int(timesteps[index])
        a_t, a_prev, sigma = (float(v[index]) for v in (a_t_all, a_prev_all, sigma_all))
        out = denoiser(x, t).float()
        if schedule.parameterization == "v":
            eps = sqrt_ac[t] * out + sqrt_1m_ac[t] * x
            x0 = sqrt_ac[t] * x - sqrt_1m_ac[t] * out
        else:
            eps = out
            x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t ** 0.5
        if scale is not None:
            # s(t_prev) / s(t): the model was trained on latents scaled by s(t); the last step keeps ratio 1
            t_prev = int(timesteps[index - 1]) if index > 0 else t
            x0 = x0 * (scale[t_prev] / scale[t])
        x = a_prev ** 0.5 * x0 + max(1.0 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise(i).to(x)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x
