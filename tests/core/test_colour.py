"""Colour Match: a video that drifted in colour and exposure is brought back to its reference frame."""
import math

import pytest
import torch

from dynamicrafter_core.colour import colour_match, to_lab
from dynamicrafter_core.errors import InputError


def delta_e_2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 colour difference (Sharma, Wu and Dalal 2005) of (..., 3) Lab values, elementwise."""
    l1, a1, b1 = lab1.unbind(-1)
    l2, a2, b2 = lab2.unbind(-1)
    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_bar ** 7 / (c_bar ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.rad2deg(torch.atan2(b1, a1p)) % 360
    h2p = torch.rad2deg(torch.atan2(b2, a2p)) % 360
    dl, dc = l2 - l1, c2p - c1p
    dh = h2p - h1p
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(c1p * c2p == 0, torch.zeros_like(dh), dh)
    dH = 2 * torch.sqrt(c1p * c2p) * torch.sin(torch.deg2rad(dh / 2))
    l_bar, cp_bar = (l1 + l2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    h_bar = torch.where((h1p - h2p).abs() > 180, torch.where(hsum < 360, hsum + 360, hsum - 360), hsum) / 2
    h_bar = torch.where(c1p * c2p == 0, hsum, h_bar)
    t = (1 - 0.17 * torch.cos(torch.deg2rad(h_bar - 30)) + 0.24 * torch.cos(torch.deg2rad(2 * h_bar))
         + 0.32 * torch.cos(torch.deg2rad(3 * h_bar + 6)) - 0.20 * torch.cos(torch.deg2rad(4 * h_bar - 63)))
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    rc = 2 * torch.sqrt(cp_bar ** 7 / (cp_bar ** 7 + 25.0 ** 7))
    sl = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    sc, sh = 1 + 0.045 * cp_bar, 1 + 0.015 * cp_bar * t
    rt = -torch.sin(torch.deg2rad(2 * d_theta)) * rc
    return torch.sqrt((dl / sl) ** 2 + (dc / sc) ** 2 + (dH / sh) ** 2 + rt * (dc / sc) * (dH / sh))


@pytest.mark.parametrize("lab1, lab2, expected", [  # pairs 1, 7 and 17 of Sharma et al.'s test data
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
])
def test_the_colour_difference_used_below_is_ciede2000(lab1, lab2, expected):
    assert delta_e_2000(torch.tensor(lab1), torch.tensor(lab2)).item() == pytest.approx(expected, abs=1e-4)


def reference_frame(h=48, w=64) -> torch.Tensor:
    """A textured picture well inside 0..1, so the drift below never clips."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    ripple = 0.08 * torch.sin(x * 17) * torch.cos(y * 11)
    return torch.stack([0.30 + 0.35 * x + ripple, 0.45 + 0.2 * y - ripple, 0.55 - 0.25 * x * y + ripple], -1)


def drifted(reference: torch.Tensor, frames: int = 8) -> torch.Tensor:
    """Each frame warmer (red up, blue down) and darker than the one before: a chained video's typical drift."""
    out = []
    for k in range(frames):
        cast = torch.tensor([1 + 0.03 * k, 1.0, 1 - 0.04 * k])
        exposure = 0.95 ** k
        out.append((reference * cast * exposure + 0.01 * k).clamp(0, 1))
    return torch.stack(out)


def mean_delta_e(frames: torch.Tensor, reference: torch.Tensor) -> float:
    a = to_lab(frames).permute(0, 2, 3, 1)
    b = to_lab(reference[None]).permute(0, 2, 3, 1).expand_as(a)
    return delta_e_2000(a, b).mean().item()


@pytest.mark.parametrize("method", ["mean_std", "histogram"])
@pytest.mark.parametrize("per", ["frame", "video"])
def test_a_drifting_video_is_brought_back_to_the_reference(method, per):
    reference = reference_frame()
    video = drifted(reference)
    before = mean_delta_e(video, reference)
    if per == "video":  # one correction for the whole segment: a segment drifted as a whole
        video = drifted(reference, 1).expand(6, -1, -1, -1) * 0.85 + torch.tensor([0.05, 0.02, 0.0])
        before = mean_delta_e(video, reference)
    after = mean_delta_e(colour_match(video, reference, method, per=per), reference)
    assert before > 5  # the drift is plainly visible
    assert after < 2  # and is gone: below about two just-noticeable differences on average


def test_strength_zero_is_the_identity_and_half_is_between():
    reference = reference_frame()
    video = drifted(reference)
    assert colour_match(video, reference, strength=0.0) is video
    half = mean_delta_e(colour_match(video, reference, strength=0.5), reference)
    full = mean_delta_e(colour_match(video, reference, strength=1.0), reference)
    assert full < half < mean_delta_e(video, reference)


@pytest.mark.parametrize("method", ["mean_std", "histogram"])
def test_flat_frames_and_a_grey_reference_give_finite_frames(method):
    grey = torch.full((16, 16, 3), 0.5)
    video = drifted(reference_frame(16, 16), 3)
    out = colour_match(video, grey, method)
    assert torch.isfinite(out).all()
    assert (out - 0.5).abs().max() < 0.01  # matched to a flat grey: grey
    flat = torch.full((2, 16, 16, 3), 0.2)
    out = colour_match(flat, reference_frame(16, 16), method)
    assert torch.isfinite(out).all() and out.std(dim=(1, 2)).max() < 1e-4  # a flat frame stays flat


def test_frames_outside_0_1_are_clamped_and_nan_is_refused():
    reference = reference_frame()
    video = drifted(reference, 2)
    over = video.clone()
    over[:, :4] = 1.5
    out = colour_match(over, reference)
    assert 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(out, colour_match(over.clamp(0, 1), reference), rtol=0, atol=0)
    over[0, 0, 0, 0] = math.nan
    with pytest.raises(InputError, match="NaN"):
        colour_match(over, reference)


def test_bad_settings_name_the_setting():
    reference = reference_frame()
    with pytest.raises(InputError, match="method 'lab'.*mean_std, histogram"):
        colour_match(drifted(reference, 1), reference, "lab")
    with pytest.raises(InputError, match="strength.*1.5"):
        colour_match(drifted(reference, 1), reference, strength=1.5)
    with pytest.raises(InputError, match="reference.*one frame"):
        colour_match(drifted(reference, 1), drifted(reference, 2))
    with pytest.raises(InputError, match=r"\(frames, height, width, 3\)"):
        colour_match(torch.rand(1, 3, 8, 8), reference)
