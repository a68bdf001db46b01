"""The command line on the fixture checkpoint: a playable video with the requested frames, reproducible by seed,
and clear errors (exit status 2, one line, no traceback) for bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

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


def test_png_frames_and_gif_outputs(tmp_path, photo):
    folder = tmp_path / "frames"
    assert cli("animate", photo, *tiny("--frames", "3", "-o", folder)).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    gif = tmp_path / "loop.gif"
    result = cli("loop", photo, *tiny("--frames", "5", "-o", gif))
    assert result.returncode == 0, result.stderr
    assert read_video(gif).shape[0] == 4  # the loop's last frame repeats the first and is dropped


@pytest.mark.parametrize("args,message", [
    (("animate", "no_such.png"), "does not exist"),
    (("animate", "{photo}", "--width", "500"), "multiple of 64"),
    (("animate", "{photo}", "--steps", "0"), "steps"),
    (("animate", "{photo}", "--eta", "-1"), "eta"),
])
def test_bad_input_gets_one_clear_line(args, message, photo, tmp_path):
    args = [a.format(photo=photo) for a in args]
    result = cli(*args, "--checkpoint", CHECKPOINT, "--config", CONFIG_FILE, "-o", tmp_path / "x.mp4")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_unknown_spacing_is_rejected_with_the_choices(photo):
    result = cli("animate", photo, *tiny("--spacing", "karras"))
    assert result.returncode == 2 and "uniform_trailing" in result.stderr


def test_not_a_checkpoint(tmp_path, photo):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x00" * 64)
    result = cli("animate", photo, "--checkpoint", fake, "-o", tmp_path / "x.mp4")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "model.safetensors" in result.stderr


def test_without_a_checkpoint_it_says_what_to_download_and_where(tmp_path, photo):
    env_home = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "dynamicrafter_core", "animate", str(photo)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, **env_home, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert "huggingface.co/Doubiiu/DynamiCrafter_512" in result.stderr
    assert "dynamicrafter_512_v1.ckpt" in result.stderr and "--download" in result.stderr
