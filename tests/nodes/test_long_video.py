"""Continue Video and Colour Match run as ComfyUI runs them, against the core's continue_video for the same seed."""
import pytest
import torch

from dynamicrafter_core.colour import colour_match
from dynamicrafter_core.long_video import continue_video, frame_to_image

from .fake_host import Interrupted
from .helpers import comfy_image
from .test_nodes import FAST, call, check_image, to_core

CONTINUE = "DynamiCrafterAnimate_ContinueVideo"
COLOUR = "DynamiCrafterAnimate_ColourMatch"
SEGMENT = 4  # the tiny Query Transformer's video length: fast segments


def run(nodes, model, image, frames=10, prompt="a cat", seed=7, **extra):
    inputs = dict(model=model, image=image, prompt=prompt, negative_prompt="", frames=frames, segment_frames=SEGMENT,
                  overlap=0, colour_match="mean_std", colour_strength=1.0, width=64, height=64, fit="crop", seed=seed,
                  **FAST, unique_id="3")
    return call(nodes, CONTINUE, **{**inputs, **extra})[0]


def test_continue_video_is_the_cores_long_video_for_the_same_seed(nodes, host, loaded, tiny_model, monkeypatch):
    image = comfy_image((64, 64), seed=2)
    frames = run(nodes, loaded["model"], image, frames=10, prompt="0: a cat | 4: a dog", seed=7)
    check_image(frames, 10)
    monkeypatch.setattr(tiny_model, "variant", "512")
    expected = continue_video(tiny_model, to_core(image), "0: a cat | 4: a dog", frames=10, segment_frames=SEGMENT,
                              seed=7, steps=3)
    assert torch.equal(frames, expected)
    steps = [r for r in host.reports if r[2] is not None]
    assert [r[:2] for r in steps] == [(i, 9) for i in range(1, 10)]  # one bar over the three segments


def test_each_segment_is_conditioned_on_its_prompt_and_starts_from_the_last_frame(nodes, host, loaded, pack,
                                                                                  monkeypatch):
    seen = []
    real = pack.nodes.long_video.image_context
    monkeypatch.setattr(pack.nodes.long_video, "image_context",
                        lambda model, images, prompt, *a: seen.append((images.clone(), prompt))
                        or real(model, images, prompt, *a))
    frames = run(nodes, loaded["model"], comfy_image((64, 64)), frames=13, prompt="0: a cat | 4: a dog | 7: a bird")
    assert [p for _, p in seen] == ["a cat", "a dog", "a bird", "a bird"]
    for k in range(1, 4):  # segment k starts from output frame 3 k, the colour-matched last frame before it
        assert torch.equal(seen[k][0], frame_to_image(frames[3 * k]))


def test_cancel_in_segment_3_leaves_the_next_run_identical(nodes, host, loaded):
    image = comfy_image((64, 64), seed=5)
    reference = run(nodes, loaded["model"], image, seed=11)
    host.reports.clear()
    host.cancel_after_steps = 7  # inside the third segment (3 steps each)
    with pytest.raises(Interrupted):
        run(nodes, loaded["model"], image, seed=11)
    assert torch.equal(run(nodes, loaded["model"], image, seed=11), reference)


def test_keyframes_with_the_interpolation_model(nodes, host, loaded):
    keys = torch.cat([comfy_image((64, 64), seed=s) for s in (1, 2)])
    frames = run(nodes, loaded["interp"], comfy_image((64, 64)), keyframes=keys)
    check_image(frames, 2 * SEGMENT - 1)  # one segment per keyframe; `frames` is not used
    with pytest.raises(ValueError, match="interpolation"):
        run(nodes, loaded["model"], comfy_image((64, 64)), keyframes=keys)


def test_refusals(nodes, host, loaded, monkeypatch):
    with pytest.raises(ValueError, match="entry 2"):
        run(nodes, loaded["model"], comfy_image((64, 64)), prompt="0: a cat | a dog")
    with pytest.raises(ValueError, match="one start image"):
        run(nodes, loaded["model"], comfy_image((64, 64), batch=2))
    monkeypatch.setattr(loaded["model"].core, "variant", "tooncrafter")
    with pytest.raises(ValueError, match="ToonCrafter interpolates between two keyframes.*connect `keyframes`"):
        run(nodes, loaded["model"], comfy_image((64, 64)))


def test_colour_match_node(nodes):
    video = torch.stack([comfy_image((32, 32), seed=1)[0] * (1 - 0.1 * k) for k in range(4)])
    (out,) = call(nodes, COLOUR, images=video, method="mean_std", strength=1.0, per="frame")
    torch.testing.assert_close(out, colour_match(video, video[:1]), rtol=0, atol=0)  # the first frame by default
    assert (out[1:] - out[:1]).abs().mean() < (video[1:] - video[:1]).abs().mean() / 4
    (same,) = call(nodes, COLOUR, images=video, method="histogram", strength=0.0, per="video", reference=video[3:])
    assert torch.equal(same, video)


def test_frame_interpolate_takes_a_prompt_per_segment(nodes, host, loaded, pack, monkeypatch):
    prompts = []
    real = pack.nodes.sampler.image_context
    monkeypatch.setattr(pack.nodes.sampler, "image_context",
                        lambda model, images, prompt, *a: prompts.append(prompt) or real(model, images, prompt, *a))
    keys = torch.cat([comfy_image((64, 64), seed=s) for s in range(3)])
    call(nodes, "DynamiCrafterAnimate_FrameInterpolate", model=loaded["interp"], keyframes=keys,
         prompt="0: a cat | 4: a dog", negative_prompt="", loop=False, width=64, height=64, fit="crop",
         frames=SEGMENT, seed=1, **FAST)
    assert prompts == ["a cat", "a dog"]  # segment 1's first new frame is output frame 4
