"""ToonCrafter through the nodes users already know: Visual Detail Guidance in interpolation mode keeps the keyframes'
encoder features, the samplers decode with them, and the frames are the core's for the same seed."""
import json

import pytest
import torch

from dynamicrafter_core.pipeline import animate, fit_image, frames_to_images

from ..conftest import TESTS
from .fake_host import hosting
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
    with hosting(pack, folder):
        model, info = pack.nodes.loader.Loader().load(ckpt_name="tiny_toon.safetensors", weight_dtype="auto",
                                                      variant="auto")
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
                        mode="interpolation", frames=FRAMES, seed=4, steps=3)
    assert frames.shape == (FRAMES, 64, 64, 3) and torch.equal(frames, reference)


def test_frame_interpolate_chains_keyframes_with_tooncrafter(nodes, host, toon):
    keys = torch.cat([comfy_image((64, 64), seed=s) for s in range(3)])
    frames, latent = nodes["DynamiCrafterAnimate_FrameInterpolate"].interpolate(
        model=toon, keyframes=keys, prompt="", negative_prompt="", loop=False, width=64, height=64, fit="crop",
        frames=FRAMES, seed=9, **FAST)
    segments = [animate(toon.core, to_core(keys[i:i + 1]), "", end_image=to_core(keys[i + 1:i + 2]),
                        mode="interpolation", frames=FRAMES, seed=9 + i, steps=3) for i in range(2)]
    assert torch.equal(frames, torch.cat([segments[0], segments[1][1:]]))
    assert latent["samples"].shape[0] == 2 * FRAMES - 1


def test_tooncrafter_asked_for_image_to_video_names_what_to_connect(nodes, host, toon):
    with pytest.raises(ValueError, match=r"is ToonCrafter, which interpolates between two keyframes: set mode to "
                                         r"interpolation and connect `end_image`"):
        nodes["DynamiCrafterAnimate_VisualDetailGuidance"].encode(model=toon, image=comfy_image(), mode="i2v",
                                                                  width=64, height=64, fit="crop", frames=FRAMES)


@pytest.fixture(scope="module")
def sketch_encoder(pack, toon, tmp_path_factory):
    """tiny_toon_sketch.safetensors in the ControlNet folder with its control_stage_config beside it."""
    folder = tmp_path_factory.mktemp("controlnet")
    (folder / "tiny_sketch.safetensors").symlink_to(TOON / "tiny_toon_sketch.safetensors")
    config = json.loads((TOON / "tiny_toon.config.json").read_text())["controlnet"]["config"]
    (folder / "tiny_sketch.json").write_text(json.dumps(config))
    with hosting(pack, folder):
        (encoder,) = pack.nodes.sketch.SketchEncoderLoader().load(sketch_encoder_name="tiny_sketch.safetensors")
    return encoder


def drawings(frames=FRAMES, size=64, blank=(1,)):
    """Dark strokes on white, one image per frame, `blank` frames left white (no drawing there)."""
    images = torch.ones(frames, size, size, 3)
    for t in range(frames):
        if t not in blank:
            images[t, 10 + 3 * t: 14 + 3 * t, 8:56] = 0.0
    return images


START, END = comfy_image((64, 64), seed=1), comfy_image((64, 64), seed=5)


def interpolate_with(nodes, toon, sketch=None, seed=4, everything=False):
    """I2V Sampler's frames from START to END (with everything: also its latent and the guidance)."""
    guidance, frame = nodes["DynamiCrafterAnimate_VisualDetailGuidance"].encode(
        model=toon, image=START, mode="interpolation", width=64, height=64, fit="crop", frames=FRAMES,
        end_image=END)
    (context,) = nodes["DynamiCrafterAnimate_EncodeImageContext"].encode(model=toon, image=frame, prompt="a cat",
                                                                         negative_prompt="")
    extra = {} if sketch is None else {"sketch": sketch}
    frames, latent = nodes["DynamiCrafterAnimate_I2VSampler"].generate(model=toon, context=context,
                                                                      guidance=guidance, seed=seed, **FAST, **extra)
    return (frames, latent, guidance) if everything else frames


def core_with_sketches(pack, toon, sketch, seed=4):
    """The core's interpolation from START to END with the sketch encoder and the drawings placed on the frames (the
    pack's own core: its ControlNet class is the one the encoder is)."""
    return pack.dynamicrafter_core.pipeline.animate(toon.core, to_core(START), "a cat", end_image=to_core(END), mode="interpolation", frames=FRAMES,
                   seed=seed, steps=FAST["steps"], control=sketch.encoder.control, hint=sketch.hint(FRAMES, 64, 64),
                   control_scale=sketch.strength)


def test_sketch_guidance_steers_the_interpolation_and_strength_0_is_none(pack, nodes, host, toon, sketch_encoder):
    plain = interpolate_with(nodes, toon)
    (none,) = nodes["DynamiCrafterAnimate_SketchGuidance"].encode(sketch_encoder=sketch_encoder,
                                                                  sketches=drawings(), strength=0.0, invert=True)
    assert torch.equal(interpolate_with(nodes, toon, none), plain)
    (sketch,) = nodes["DynamiCrafterAnimate_SketchGuidance"].encode(sketch_encoder=sketch_encoder,
                                                                    sketches=drawings(), strength=0.6, invert=True)
    hint = sketch.hint(FRAMES, 64, 64)
    assert hint.shape == (1, 1, FRAMES, 64, 64) and hint[0, 0, 1].max() == 0  # blank: no lines
    assert hint[0, 0, 0].max() == 1  # the drawing's dark strokes, as the white lines the encoder reads
    guided = interpolate_with(nodes, toon, sketch)
    assert torch.equal(guided, core_with_sketches(pack, toon, sketch))  # the core's sketch guidance, for the same seed
    assert (guided - plain).abs().mean() > 1e-3


def test_sparse_drawings_go_to_the_frames_named_and_are_scaled_to_the_video(pack, nodes, host, toon,
                                                                           sketch_encoder):
    strokes = drawings(2, 128, blank=())  # two drawings at twice the video's size
    (sparse,) = nodes["DynamiCrafterAnimate_SketchGuidance"].encode(sketch_encoder=sketch_encoder, sketches=strokes,
                                                                    strength=0.6, invert=True, at="2, 5")
    hint = sparse.hint(FRAMES, 64, 64)
    assert hint.shape == (1, 1, FRAMES, 64, 64)
    assert [bool(hint[0, 0, t].max() > 0) for t in range(FRAMES)] == [t in (2, 5) for t in range(FRAMES)]
    assert torch.equal(interpolate_with(nodes, toon, sparse), core_with_sketches(pack, toon, sparse))


@pytest.mark.parametrize("count,at,message", [
    (FRAMES - 2, "", r"Sketch Guidance: 6 drawings for a video of 8 frames: give one per frame, or name the frames "
                     r"the drawings are for \(`at`"),
    (2, "3", r"Sketch Guidance: 1 frame number\(s\) for 2 drawing\(s\)"),
    (1, "8", r"Sketch Guidance: a drawing is for frame 8, but the video's frames are 0 to 7"),
])
def test_sketches_that_do_not_fit_the_video_are_named(nodes, host, toon, sketch_encoder, count, at, message):
    (sketch,) = nodes["DynamiCrafterAnimate_SketchGuidance"].encode(
        sketch_encoder=sketch_encoder, sketches=drawings(count), strength=0.6, invert=True, at=at)
    with pytest.raises(ValueError, match=message):
        interpolate_with(nodes, toon, sketch)


def test_at_must_name_frame_numbers(nodes, sketch_encoder):
    with pytest.raises(ValueError, match=r"`at` 'middle' is not a list of frame numbers"):
        nodes["DynamiCrafterAnimate_SketchGuidance"].encode(sketch_encoder=sketch_encoder, sketches=drawings(1),
                                                            strength=0.6, invert=True, at="middle")


def test_sketches_for_a_dynamicrafter_model_name_the_tooncrafter_file(nodes, host, loaded, sketch_encoder):
    (sketch,) = nodes["DynamiCrafterAnimate_SketchGuidance"].encode(sketch_encoder=sketch_encoder,
                                                                    sketches=drawings(4), strength=0.6, invert=True)
    interp = loaded["interp"]
    guidance, frame = nodes["DynamiCrafterAnimate_VisualDetailGuidance"].encode(
        model=interp, image=comfy_image(), mode="loop", width=64, height=64, fit="crop", frames=4)
    (context,) = nodes["DynamiCrafterAnimate_EncodeImageContext"].encode(model=interp, image=frame, prompt="",
                                                                         negative_prompt="")
    with pytest.raises(ValueError, match=r"`sketch` is ToonCrafter's sketch guidance; .* Load "
                                         r"tooncrafter_512_interp_v1\.ckpt, or disconnect `sketch`"):
        nodes["DynamiCrafterAnimate_I2VSampler"].generate(model=interp, context=context, guidance=guidance, seed=1,
                                                         sketch=sketch, **FAST)


def test_a_sketch_encoder_of_another_width_is_refused_by_name(pack, host, toon, tmp_path):
    (tmp_path / "tiny_sketch.safetensors").symlink_to(TOON / "tiny_toon_sketch.safetensors")  # no config: released
    host.folder = tmp_path
    with pytest.raises(ValueError, match=r"tiny_sketch\.safetensors: `input_blocks\.0\.0\.weight` has shape "
                                         r"\[32, 4, 3, 3\], so the file is .* but the released sketch_encoder's "
                                         r"configuration .* builds model_channels 320"):
        pack.nodes.sketch.SketchEncoderLoader().load(sketch_encoder_name="tiny_sketch.safetensors")


def test_a_small_gpu_decodes_tooncrafter_in_passes_and_says_so(pack, nodes, host, toon, monkeypatch, caplog):
    """Where the whole video's decode does not fit, fewer frames per pass (as the original does past 16 frames),
    with a warning that it is less faithful, instead of running out of memory."""
    whole = interpolate_with(nodes, toon)
    monkeypatch.setattr(pack.nodes.host, "is_cpu", lambda device: False)  # the fake's device stands for a GPU
    need = pack.nodes.memory.video_decoder(1, FRAMES, 64, 64, toon.core.vae.cfg.ch, 4)
    host.free_bytes = need // 2
    with caplog.at_level("WARNING"):
        passes, latent, guidance = interpolate_with(nodes, toon, everything=True)
    assert "decoding 4 frames per pass, which is less faithful" in caplog.text
    # the core's decode in passes of 4 frames (the same latents: the sampling does not depend on the memory)
    video_latents = (latent["samples"] * toon.core.config.scale_factor).transpose(0, 1)[None]
    in_passes = toon.core.decode_latents(video_latents, 4, references=guidance.references)
    assert torch.equal(passes, frames_to_images(in_passes))
    assert not torch.equal(passes, whole)


def test_continue_video_chains_cartoon_keyframes_and_refuses_image_to_video(nodes, host, toon):
    from dynamicrafter_core.long_video import continue_video

    start, keys = comfy_image((64, 64), seed=1), torch.cat([comfy_image((64, 64), seed=s) for s in (2, 3)])
    settings = dict(model=toon, image=start, prompt="0: a cat | 8: a dog", negative_prompt="", frames=64,
                    segment_frames=FRAMES, overlap=0, colour_match="mean_std", colour_strength=1.0, width=64,
                    height=64, fit="crop", seed=9, **FAST)
    (frames,) = nodes["DynamiCrafterAnimate_ContinueVideo"].generate(**settings, keyframes=keys)
    expected = continue_video(toon.core, to_core(start), "0: a cat | 8: a dog", frames=None,
                              keyframes=[to_core(keys[i:i + 1]) for i in range(2)], segment_frames=FRAMES, seed=9,
                              steps=3)
    assert frames.shape == (2 * FRAMES - 1, 64, 64, 3) and torch.equal(frames, expected)
    with pytest.raises(ValueError, match=r"ToonCrafter interpolates between two keyframes.*connect `keyframes`"):
        nodes["DynamiCrafterAnimate_ContinueVideo"].generate(**settings)
