"""The Python API a user calls: image to video, interpolation, loop, and how images of any kind are prepared."""
import numpy as np
import pytest
import torch
from PIL import Image

import dynamicrafter_core as dc
from dynamicrafter_core.pipeline import (animate, encode_image_context, fit_image, load_image,
                                         visual_detail_guidance)

FAST = dict(frames=4, steps=2)


def test_same_seed_same_video_other_seed_other_video(tiny_model, image):
    a = animate(tiny_model, image, "a red square", seed=7, **FAST)
    b = animate(tiny_model, image, "a red square", seed=7, **FAST)
    c = animate(tiny_model, image, "a red square", seed=8, **FAST)
    assert a.shape == (4, 64, 64, 3) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_the_prompt_changes_the_video(tiny_model, image):
    a = animate(tiny_model, image, "a red square", seed=1, **FAST)
    b = animate(tiny_model, image, "waves crashing on rocks", seed=1, **FAST)
    assert (a - b).abs().max() > 1e-4


def test_interpolation_and_loop_need_the_interp_model(tiny_model, image):
    with pytest.raises(dc.InputError, match="512_interp"):
        animate(tiny_model, image, end_image=-image, mode="interpolation", **FAST)


def test_loop_drops_the_repeated_last_frame(tiny_config, image):
    from tests.conftest import CHECKPOINT

    model = dc.load_model(CHECKPOINT, config=tiny_config, variant="512_interp")
    assert model.variant == "512_interp"
    video = animate(model, image, mode="loop", frames=5, steps=2)
    assert video.shape[0] == 4
    interp = animate(model, image, end_image=-image, mode="interpolation", frames=5, steps=2)
    assert interp.shape[0] == 5


def test_interpolation_guidance_has_latents_at_both_ends_only():
    start, end = torch.ones(1, 4, 8, 8), -torch.ones(1, 4, 8, 8)
    concat = visual_detail_guidance(start, 6, end)
    assert concat.shape == (1, 4, 6, 8, 8)
    assert (concat[:, :, 0] == 1).all() and (concat[:, :, -1] == -1).all() and (concat[:, :, 1:-1] == 0).all()
    i2v = visual_detail_guidance(start, 6)
    assert (i2v == 1).all()
    with pytest.raises(dc.InputError, match="same size"):
        visual_detail_guidance(start, 6, torch.zeros(1, 4, 8, 10))


def test_context_is_text_then_image_tokens(tiny_model, image):
    frame = fit_image(image, 64, 64)
    cond = encode_image_context(tiny_model, frame, "a cat", "blurry")
    text = tiny_model.encode_text(["a cat", "blurry"])
    tokens = tiny_model.project_image(tiny_model.encode_image(torch.cat([frame, torch.zeros_like(frame)])))
    torch.testing.assert_close(cond.context, torch.cat([text[:1], tokens[:1]], 1))
    torch.testing.assert_close(cond.uncond_context, torch.cat([text[1:], tokens[1:]], 1))  # mid-grey image
    torch.testing.assert_close(cond.text_uncond_context, torch.cat([text[1:], tokens[:1]], 1))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "RGB"])
def test_image_files_of_any_mode_become_rgb(tmp_path, mode):
    rgb = (np.random.RandomState(0).rand(40, 56, 3) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert(mode).save(tmp_path / "in.png")
    img = load_image(tmp_path / "in.png")
    assert img.shape == (1, 3, 40, 56) and -1 <= img.min() and img.max() <= 1


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png") == 1).all()


def test_missing_or_unreadable_image_files(tmp_path):
    with pytest.raises(dc.InputError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(dc.InputError, match="not an image"):
        load_image(tmp_path / "text.png")


def test_fit_modes(image):
    wide = image  # 128x96 (4:3) into a 2:1 frame
    for fit in ("crop", "pad", "stretch"):
        assert fit_image(wide, 64, 128, fit).shape == (1, 3, 64, 128)
    padded = fit_image(wide, 64, 128, "pad")
    assert (padded[..., :10] == -1).all() and (padded[..., -10:] == -1).all()  # black bars left and right
    cropped = fit_image(wide, 64, 128, "crop")
    assert (cropped[..., :10] > -1).any()
    gray = fit_image(image[:, :1], 64, 64)
    assert gray.shape == (1, 3, 64, 64)
    rgba = fit_image(torch.cat([image, torch.ones_like(image[:, :1])], 1), 64, 64)
    torch.testing.assert_close(rgba, fit_image(image, 64, 64))


@pytest.mark.parametrize("height,width,message", [(64, 500, "multiple of 64"), (0, 64, "multiple of 64"),
                                                  (320, 512, "smaller than the model's latent grid")])
def test_bad_sizes_are_explained(height, width, message):
    tiny = torch.zeros(1, 3, 16, 16)
    with pytest.raises(dc.InputError, match=message):
        fit_image(tiny, height, width)


def test_bad_sampler_settings_are_refused_before_any_work(tiny_model, image):
    for kwargs, message in (({"steps": 0}, "steps"), ({"eta": -1.0}, "eta"), ({"spacing": "linear"}, "spacing"),
                            ({"frames": 1}, "frames"), ({"mode": "boomerang"}, "mode"), ({"fit": "zoom"}, "fit")):
        with pytest.raises(dc.InputError, match=message):
            animate(tiny_model, image, **{**FAST, **kwargs})


def test_empty_image_batch(tiny_model):
    with pytest.raises(dc.InputError, match="empty"):
        animate(tiny_model, torch.zeros(0, 3, 64, 64), **FAST)
