"""Writing frames: mp4 (H.264 through PyAV), animated webp or gif (Pillow), or a folder of PNGs."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

FORMATS = {".mp4": "mp4", ".webp": "webp", ".gif": "gif", "": "png"}


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, H, W, 3) float in [0, 1] -> uint8 array."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def output_format(path, fps: float) -> str:
    """The format `path`'s suffix asks for; refuses an unknown suffix or a frame rate that is not positive, so a
    caller can check both before the (slow) sampling."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"unsupported output {path.name!r}: use .mp4, .webp, .gif, or a folder name for PNG frames")
    if not isinstance(fps, (int, float)) or not 0 < fps <= 240:
        raise InputError(f"fps must be a number from above 0 to 240 (the playback rate); got {fps!r}")
    return kind


def write_video(frames: torch.Tensor, path, fps: float = 8.0, crf: int = 10) -> Path:
    """Write (T, H, W, 3) frames in [0, 1]. The suffix picks the format; a path without one is a PNG folder.
    Written beside the target first and moved into place at the end, so an interrupted write leaves nothing
    half-written."""
    path = Path(path)
    kind = output_format(path, fps)
    array = to_uint8(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        part = work / ("frames" if kind == "png" else f"video{path.suffix}")
        if kind == "mp4":
            _write_mp4(array, part, fps, crf)
        elif kind == "png":
            from PIL import Image

            part.mkdir()
            for i, frame in enumerate(array):
                Image.fromarray(frame).save(part / f"frame_{i:04d}.png")
        else:
            from PIL import Image

            images = [Image.fromarray(frame) for frame in array]
            extra = {"lossless": False, "quality": 90} if kind == "webp" else {"disposal": 2}
            images[0].save(part, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                           **extra)
        if kind == "png" and path.is_dir():  # frames into an existing folder, each one whole
            for frame in sorted(part.iterdir()):
                os.replace(frame, path / frame.name)
        else:
            os.replace(part, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _write_mp4(array: np.ndarray, path: Path, fps: float, crf: int) -> None:
    try:
        import av
    except ImportError as e:
        raise InputError("writing mp4 needs PyAV (`pip install av`); or write .webp / .gif / a PNG folder") from e
    from fractions import Fraction

    t, h, w, _ = array.shape
    if h % 2 or w % 2:  # H.264 with 4:2:0 chroma needs even sides
        array = array[:, : h - h % 2, : w - w % 2]
        h, w = h - h % 2, w - w % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in array:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames of a video or animated image (used to check what was written)."""
    path = Path(path)
    if path.suffix.lower() == ".mp4":
        import av

        with av.open(str(path)) as container:
            return torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]))
