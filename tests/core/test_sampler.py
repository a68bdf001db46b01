"""The schedule and the DDIM sampler against the values the original computes (MODEL_SPEC §5), and guidance."""
import pytest
import torch

import dynamicrafter_core as dc
from dynamicrafter_core.config import VARIANT_CONFIGS
from dynamicrafter_core.sampler import NoiseSchedule, cfg_denoiser, ddim_parameters, rescale_cfg


def test_uniform_spacing_starts_at_one():
    ts = dc.ddim_timesteps(50, "uniform").tolist()
    assert ts[:3] == [1, 21, 41] and ts[-1] == 981 and len(ts) == 50


def test_trailing_spacing_ends_at_pure_noise():
    ts = dc.ddim_timesteps(50, "uniform_trailing").tolist()
    assert ts[:3] == [19, 39, 59] and ts[-1] == 999 and len(ts) == 50
    # round() of the original: 1000/6 steps land on 166, 332, 499, 666, 832, 999
    assert dc.ddim_timesteps(6, "uniform_trailing").tolist() == [166, 332, 499, 666, 832, 999]


@pytest.mark.parametrize("steps,spacing,eta,message", [
    (0, "uniform", 1.0, "steps"), (1.5, "uniform", 1.0, "steps"), (10, "karras", 1.0, "spacing"),
])
def test_bad_sampler_settings_are_refused(steps, spacing, eta, message):
    with pytest.raises(dc.InputError, match=message):
        dc.ddim_timesteps(steps, spacing)


def test_zero_terminal_snr_schedule():
    ac = NoiseSchedule.from_config(VARIANT_CONFIGS["512"]).alphas_cumprod
    assert ac[999].item() == 0.0
    assert ac[0].item() == pytest.approx(0.999150, abs=1e-6)
    assert ac[998].item() == pytest.approx(1.968e-7, rel=1e-2)


def test_plain_schedule_of_the_256_model():
    schedule = NoiseSchedule.from_config(VARIANT_CONFIGS["256"])
    assert schedule.parameterization == "eps" and schedule.scale_arr is None
    assert schedule.alphas_cumprod[999].item() == pytest.approx(0.0046601, rel=1e-4)


def test_dynamic_rescale_curve_by_variant():
    for variant, base in (("512", 0.7), ("1024", 0.3)):
        scale = NoiseSchedule.from_config(VARIANT_CONFIGS[variant]).scale_arr
        assert scale.shape == (1400,) and scale[0] == 1.0
        assert scale[399].item() == pytest.approx(base) and scale[1399].item() == pytest.approx(base)


def test_ddim_sigmas_at_eta_one():
    schedule = NoiseSchedule.from_config(VARIANT_CONFIGS["512"])
    a_t, a_prev, sigma = ddim_parameters(schedule, dc.ddim_timesteps(50, "uniform_trailing"), 1.0)
    assert a_prev[0].item() == pytest.approx(0.99915, abs=1e-5)  # the last step goes to ᾱ[0], not 1
    assert a_t[-1].item() == 0.0 and a_prev[-1].item() == pytest.approx(8.58e-5, rel=1e-2)
    assert sigma[-1].item() == pytest.approx(0.99996, abs=1e-5)  # first step taken
    assert a_t[0].item() == pytest.approx(0.98101, abs=1e-5) and sigma[0].item() == pytest.approx(0.0285, abs=1e-4)


def test_negative_eta_is_refused():
    schedule = NoiseSchedule.from_config(VARIANT_CONFIGS["512"])
    with pytest.raises(dc.InputError, match="eta"):
        dc.sample_ddim(lambda x, t: x, torch.zeros(1), schedule, [19, 999], eta=-0.5)


class CountingModel:
    """A conditional 'model' whose output depends on the context, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, ctx):
        self.calls += 1
        return x * 0.5 + ctx.mean(dim=(1, 2)).view(-1, *[1] * (x.ndim - 1))


def contexts():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 5, 3, generator=g) for _ in range(3)]


def test_cfg_one_calls_the_model_once_per_step():
    model = CountingModel()
    c, u, _ = contexts()
    cfg_denoiser(model, c, u, cfg=1.0)(torch.ones(2, 4), 10)
    assert model.calls == 1


def test_batched_branches_equal_separate_calls():
    c, u, tu = contexts()
    x = torch.randn(2, 4, 3)
    for kwargs in ({}, {"image_cfg": 2.0, "text_uncond_context": tu}):
        batched = cfg_denoiser(CountingModel(), c, u, 7.5, 0.7, batch_branches=True, **kwargs)(x, 10)
        separate = cfg_denoiser(CountingModel(), c, u, 7.5, 0.7, batch_branches=False, **kwargs)(x, 10)
        torch.testing.assert_close(batched, separate)


def test_three_branch_guidance_with_equal_scales_is_plain_cfg():
    # m_uu + s (m_ui - m_uu) + s (m_c - m_ui) = m_uu + s (m_c - m_uu)
    c, u, tu = contexts()
    x = torch.randn(2, 4, 3)
    two = cfg_denoiser(CountingModel(), c, u, 5.0)(x, 10)
    three = cfg_denoiser(CountingModel(), c, u, 5.0, image_cfg=5.0, text_uncond_context=tu)(x, 10)
    torch.testing.assert_close(two, three)
    other = cfg_denoiser(CountingModel(), c, u, 5.0, image_cfg=1.0, text_uncond_context=tu)(x, 10)
    assert not torch.allclose(two, other)


def test_guidance_rescale_matches_the_conditional_std():
    g = torch.Generator().manual_seed(1)
    guided, cond = torch.randn(2, 4, 8, generator=g) * 3, torch.randn(2, 4, 8, generator=g)
    full = rescale_cfg(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2)), cond.std(dim=(1, 2)))
    torch.testing.assert_close(rescale_cfg(guided, cond, 0.0), guided)


def test_stochastic_sampling_uses_the_given_step_noise():
    schedule = NoiseSchedule.from_config(VARIANT_CONFIGS["512"])
    ts = dc.ddim_timesteps(4, "uniform_trailing")
    noise = torch.randn(4, 1, 3)

    def run(eta, scale):
        return dc.sample_ddim(lambda x, t: torch.zeros_like(x), torch.ones(1, 3), schedule, ts, eta,
                              lambda i: noise[i] * scale)

    torch.testing.assert_close(run(1.0, 1.0), run(1.0, 1.0))
    assert not torch.allclose(run(1.0, 1.0), run(1.0, 2.0))
    torch.testing.assert_close(run(0.0, 1.0), run(0.0, 2.0))  # eta 0: the noise has no effect


def test_uniform_spacing_quirks_of_the_original():
    assert len(dc.ddim_timesteps(30, "uniform")) == 31  # 1000 // 30 = 33 apart: 31 visits, as the original
    with pytest.raises(dc.InputError, match="use 4 steps"):  # 1000 // 3 = 333 apart would reach timestep 1000
        dc.ddim_timesteps(3, "uniform")
