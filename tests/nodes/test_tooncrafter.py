"""ToonCrafter through the nodes users already know: Visual Detail Guidance in interpolation mode keeps the keyframes'
encoder features, the samplers decode with them, and the frames are the core's for the same seed."""
import json

import pytest
import torch

from dynamicrafter_core.pipeline import animate, fit_image

from ..conftest import TESTS
from .fake_host import HOST_FUNCTIONS, FakeHost
from .helpers import comfy_image

TOON = TESTS / "fixtures" / "tiny_toon"
FRAMES = 8  # the fixture's: at 8 the original's middle-frame re-decode is exercised (frames 3 and 4)
FAST = {"steps": 3, "cfg": 7.5, "image_cfg": 0.0, "eta": 1.0, "fs": 0, "guidance_rescale": -1.0, "spacing": "auto"}


@pytest.fixture(scope="module")
def toon(pack, tmp_path_factory):
    """The tiny ToonCrafter through Load DynamiCrafter, from a model folder with its sidecar configuration."""
    folder = tmp_path_factory.mktemp("toon")
    (folder / "tiny_toon.safetensors").symlink_to(TOON / "tiny_toon.safetensors")
    config = json.loads((TOON / "tiny_toon.config.json").read_text())["model"]
    (folder / "tiny_toon.json").write_text(json.dumps({"model": config}))
    fake = FakeHost(folder)
    saved = {name: getattr(pack.nodes.host, name) for name in HOST_FUNCTIONS}
    for name in HOST_FUNCTIONS:
        setattr(pack.nodes.host, name, getattr(fake, name))
    try:
        model, info = pack.nodes.loader.Loader().load(ckpt_name="tiny_toon.safetensors", weight_dtype="auto",
                                                      variant="auto")
    finally:
        for name, value in saved.items():
            setattr(pack.nodes.host, name, value)
    assert "DynamiCrafter tooncrafter" in info
    return model


def to_core(image):
    return image.movedim(-1, 1) * 2 - 1


def test_tooncrafter_interpolation_gives_the_cores_frames(nodes, host, toon):
    start, end = comfy_image((64, 64), seed=1), comfy_image((80, 96), seed=5)
    guidance, frame = nodes["DynamiCrafterAnimate_VisualDetailGuidance"].encode(
        model=toon, image=start, mode="interpolation", width=64, height=64, fit="crop", frames=FRAMES,
        end_image=end)
    assert guidance.references is not None and len(guidance.references) == 5
    (context,) = nodes["DynamiCrafterAnimate_EncodeImageContext"].encode(model=toon, image=frame, prompt="a cat",
                                                                         negative_prompt="")
    frames, latent = nodes["DynamiCrafterAnimate_I2VSampler"].generate(model=toon, context=context,
                                                                      guidance=guidance, seed=4, **FAST)
    reference = animate(toon.core, to_core(frame), "a cat", end_image=fit_image(to_core(end), 64, 64, "crop"),
                        mode="interp", frames=FRAMES, seed=4, steps=3)
    assert frames.shape == (FRAMES, 64, 64, 3) and torch.equal(frames, reference)


def test_frame_interpolate_chains_keyframes_with_tooncrafter(nodes, host, toon):
    keys = torch.cat([comfy_image((64, 64), seed=s) for s in range(3)])
    frames, latent = nodes["DynamiCrafterAnimate_FrameInterpolate"].interpolate(
        model=toon, keyframes=keys, prompt="", negative_prompt="", loop=False, width=64, height=64, fit="crop",
        frames=FRAMES, seed=9, **FAST)
    segments = [animate(toon.core, to_core(keys[i:i + 1]), "", end_image=to_core(keys[i + 1:i + 2]), mode="interp",
                        frames=FRAMES, seed=9 + i, steps=3) for i in range(2)]
    assert torch.equal(frames, torch.cat([segments[0], segments[1][1:]]))
    assert latent["samples"].shape[0] == 2 * FRAMES - 1


def test_tooncrafter_asked_for_image_to_video_names_what_to_connect(nodes, host, toon):
    with pytest.raises(ValueError, match=r"is ToonCrafter, which interpolates between two keyframes: set mode to "
                                         r"interpolation and connect `end_image`"):
        nodes["DynamiCrafterAnimate_VisualDetailGuidance"].encode(model=toon, image=comfy_image(), mode="i2v",
                                                                  width=64, height=64, fit="crop", frames=FRAMES)
