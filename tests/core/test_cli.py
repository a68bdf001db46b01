"""The command line on the fixture checkpoint: a playable video with the requested frames, reproducible by seed,
and clear errors (exit status 2, one line, no traceback) for bad input."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dynamicrafter_core.__main__ import main
from dynamicrafter_core.unet import fp8_matmul_unsupported
from dynamicrafter_core.video_io import read_video

from ..conftest import CHECKPOINT, CONFIG_FILE, TESTS

ROOT = TESTS.parent


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dynamicrafter_core", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=600)


def tiny(*args):
    return ("--checkpoint", CHECKPOINT, "--config", CONFIG_FILE, "--steps", "2", *args)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "photo.png"
    rgba = (np.random.RandomState(3).rand(80, 120, 4) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)  # RGBA on purpose: converted, not refused
    return path


def test_animate_writes_a_playable_mp4_with_the_requested_frames(tmp_path, photo):
    out = tmp_path / "clip.mp4"
    result = cli("animate", photo, "--prompt", "a red square", *tiny("--frames", "6", "--seed", "5", "-o", out))
    assert result.returncode == 0, result.stderr
    frames = read_video(out)
    assert frames.shape == (6, 64, 64, 3)
    again = tmp_path / "again.mp4"
    assert cli("animate", photo, "--prompt", "a red square",
               *tiny("--frames", "6", "--seed", "5", "-o", again)).returncode == 0
    assert torch.equal(read_video(again), frames)


def test_frames_past_one_segment_continue_the_video_with_a_prompt_schedule(tmp_path, photo, capsys):
    out = tmp_path / "long.mp4"
    status, err = in_process(capsys, "animate", photo, "--prompt", "0: a red square | 16: a blue sky",
                             *tiny("--frames", "20", "--steps", "1", "-o", out))
    assert status == 0, err
    assert read_video(out).shape == (20, 64, 64, 3)
    assert "segment 2/2" in err


def test_keyframes_chain_interpolations_from_the_command_line(tmp_path, photo, capsys):
    out = tmp_path / "chain"
    status, err = in_process(capsys, "animate", photo, "--keyframe", photo, "--keyframe", photo, "--prompt", "a cat",
                             *tiny("--variant", "512_interp", "--steps", "1", "--segment-frames", "4", "-o", out))
    assert status == 0, err
    assert len(list(out.iterdir())) == 7  # 4 frames, then 3 new ones: the boundary frame once


@pytest.mark.slow  # two more runs in new processes (~30 s each on two cores); the mp4 test above stays default
def test_png_frames_and_gif_outputs(tmp_path, photo):
    folder = tmp_path / "frames"
    assert cli("animate", photo, *tiny("--frames", "3", "-o", folder)).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    gif = tmp_path / "loop.gif"
    result = cli("loop", photo, *tiny("--frames", "5", "-o", gif))
    assert result.returncode == 0, result.stderr
    assert read_video(gif).shape[0] == 4  # the loop's last frame repeats the first and is dropped


@pytest.mark.slow  # the first step compiles about 20 small graphs: tens of seconds on two cores
def test_compile_gives_the_same_video_within_rounding(tmp_path, photo):
    """--compile is a speed option: the video it writes is the eager one (float32 rounding aside; a PNG frame holds
    8 bits per channel, so at most one level apart)."""
    eager, fast = tmp_path / "eager", tmp_path / "fast"
    assert cli("animate", photo, "--prompt", "a red square", *tiny("--frames", "3", "--eta", "0", "-o", eager)
               ).returncode == 0
    result = cli("animate", photo, "--prompt", "a red square",
                 *tiny("--frames", "3", "--eta", "0", "--compile", "-o", fast))
    assert result.returncode == 0, result.stderr
    assert "compiled layer by layer" in result.stderr
    a, b = (torch.from_numpy(np.stack([np.asarray(Image.open(f)) for f in sorted(folder.iterdir())])).int()
            for folder in (eager, fast))
    assert a.shape == b.shape == (3, 64, 64, 3) and (a - b).abs().max() <= 1


@pytest.mark.skipif(fp8_matmul_unsupported(torch.device("cpu")) is not None,
                    reason=f"torch {torch.__version__} does not multiply float8 matrices on the CPU")
def test_fp8_weights_and_products_make_the_video(tmp_path, photo, capsys):
    """--fp8 matmul on a CPU (this torch multiplies float8 there): the UNet's linear layers run float8 products, and
    the video stays the bf16 one but for float8's rounding: closer to it than another seed's video is."""
    videos = {}
    for name, options in (("bf16", ()), ("weights", ("--fp8", "weights")), ("matmul", ("--fp8", "matmul")),
                          ("another seed", ("--seed", "7"))):
        out = tmp_path / name.replace(" ", "_")
        status, err = in_process(capsys, "animate", photo, "--prompt", "a red square", "--dtype", "bf16", *options,
                                 *tiny("--frames", "3", "--eta", "0", "-o", out))
        assert status == 0, err
        videos[name] = torch.from_numpy(np.stack([np.asarray(Image.open(f)) for f in sorted(out.iterdir())])).float()
        if name == "matmul":
            assert "its linear layers multiply in float8" in err
    seed_distance = (videos["another seed"] - videos["bf16"]).abs().mean()
    for fp8 in ("weights", "matmul"):
        assert videos[fp8].shape == videos["bf16"].shape == (3, 64, 64, 3)
        assert 0 < (videos[fp8] - videos["bf16"]).abs().mean() < seed_distance / 2


def in_process(capsys, *args):
    """main() as `python -m dynamicrafter_core` runs it: (exit status, stderr)."""
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (("animate", "no_such.png"), "does not exist"),
    (("animate", "{photo}", "--width", "500"), "multiple of 64"),
    (("animate", "{photo}", "--steps", "0"), "steps"),
    (("animate", "{photo}", "--eta", "-1"), "eta"),
    (("animate", "{photo}", "--frames", "40", "--prompt", "0: a boat | sails away"), "entry 2 ('sails away')"),
    (("animate", "{photo}", "--prompt", "0: a boat | 16: sails away"), "--prompt is a schedule, but 16 frames"),
    (("animate", "{photo}", "--frames", "40", "--overlap", "15"), "overlap must be a whole number from 0 to 14"),
    (("animate", "{photo}", "--keyframe", "{photo}", "--loop"), "cannot be combined with --end or --loop"),
    (("animate", "{photo}", "--fp8", "matmul", "--dtype", "fp32"), "--fp8 matmul computes in bf16, not float32"),
])
def test_bad_input_gets_one_clear_line(args, message, photo, tmp_path, capsys):
    args = [a.format(photo=photo) for a in args]
    status, err = in_process(capsys, *args, "--checkpoint", CHECKPOINT, "--config", CONFIG_FILE,
                             "-o", tmp_path / "x.mp4")
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err.strip().splitlines()[-1]


def test_unknown_spacing_is_rejected_with_the_choices(photo, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["animate", str(photo), *map(str, tiny("--spacing", "karras"))])
    assert exit_info.value.code == 2 and "uniform_trailing" in capsys.readouterr().err


def test_not_a_checkpoint(tmp_path, photo, capsys):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x00" * 64)
    status, err = in_process(capsys, "animate", photo, "--checkpoint", fake, "-o", tmp_path / "x.mp4")
    assert status == 2 and "model.safetensors" in err and "download it again" in err


def test_without_a_checkpoint_it_says_what_to_download_and_where(tmp_path, photo, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("DYNAMICRAFTER_MODELS", "COMFYUI_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    status, err = in_process(capsys, "animate", photo)
    assert status == 2
    assert "huggingface.co/Doubiiu/DynamiCrafter_512" in err
    assert "dynamicrafter_512_v1.ckpt" in err and "--download" in err


def test_a_missing_prompt_is_said_and_the_command_names_who_chose_the_interpolation_model(tmp_path, photo, capsys):
    """The tiny file is 512-family, whose weights cannot tell 512 from 512_interp: `interpolate` asks for the
    interpolation model itself, and says so rather than blaming an override the user never gave."""
    status, err = in_process(capsys, "interpolate", photo, photo, *tiny("--frames", "4", "-o", tmp_path / "x.gif"))
    assert status == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes == [('note: no --prompt given, so the prompt is empty; that is allowed, but DynamiCrafter is '
                      'text-conditioned: describe the motion you want, e.g. --prompt "waves rolling in"')]
    assert "512_interp chosen by this command (interpolation needs the interpolation model)" in err
    assert "override" not in err


def test_an_explicit_empty_prompt_and_variant_are_taken_as_given(tmp_path, photo, capsys):
    status, err = in_process(capsys, "interpolate", photo, photo, "--prompt", "", "--variant", "512_interp",
                             *tiny("--frames", "4", "-o", tmp_path / "x.gif"))
    assert status == 0, err
    assert "note: " not in err
    assert "512_interp chosen by --variant 512_interp" in err


TOON = TESTS / "fixtures" / "tiny_toon"


@pytest.fixture(scope="module")
def toon_files(tmp_path_factory):
    """The tiny ToonCrafter and its sketch encoder beside it, each with its configuration as a sidecar."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("toon")
    shutil.copy(TOON / "tiny_toon.safetensors", folder / "tiny_toon.safetensors")
    shutil.copy(TOON / "tiny_toon.config.json", folder / "tiny_toon.config.json")
    shutil.copy(TOON / "tiny_toon_sketch.safetensors", folder / "sketch_encoder.safetensors")
    config = json.loads((TOON / "tiny_toon.config.json").read_text())["controlnet"]["config"]
    (folder / "sketch_encoder.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow  # two ToonCrafter runs in new processes (~60 s)
def test_tooncrafter_interpolates_with_sketches_from_the_command_line(tmp_path, photo, toon_files):
    end = tmp_path / "end.png"
    Image.fromarray((np.random.RandomState(5).rand(64, 64, 3) * 255).astype(np.uint8)).save(end)
    sketches = tmp_path / "sketches"
    sketches.mkdir()
    drawing = np.full((64, 64), 255, np.uint8)
    drawing[20:24, 8:56] = 0  # one dark stroke on white, for the middle frame
    Image.fromarray(drawing).save(sketches / "04.png")
    common = ("interpolate", photo, end, "--checkpoint", toon_files / "tiny_toon.safetensors", "--frames", "8",
              "--steps", "2", "--seed", "3")
    plain = cli(*common, "-o", tmp_path / "plain.gif")
    assert plain.returncode == 0, plain.stderr
    guided = cli(*common, "--sketch", sketches, "--sketch-encoder", toon_files / "sketch_encoder.safetensors",
                 "-o", tmp_path / "guided.gif")
    assert guided.returncode == 0, guided.stderr
    a, b = read_video(tmp_path / "plain.gif"), read_video(tmp_path / "guided.gif")
    assert a.shape == b.shape == (8, 64, 64, 3) and not torch.equal(a, b)


def test_sketches_that_cannot_be_placed_are_refused_before_loading(tmp_path, photo, toon_files):
    sketches = tmp_path / "sketches"
    sketches.mkdir()
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(sketches / "middle.png")
    result = cli("interpolate", photo, photo, "--checkpoint", tmp_path / "absent.ckpt", "--frames", "8",
                 "--sketch", sketches, "-o", tmp_path / "x.gif")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --sketch holds 1 drawings for 8 frames, so each file must be named by its frame number (counted "
        "from 0, e.g. 08.png); middle.png is not")
