"""The released checkpoints: where they come from, what to call them, where they are looked for, and an optional
download (never automatic)."""
from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import ModelFileNotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleasedFile:
    variant: str
    filename: str  # the name this project asks users to save it under (ComfyUI: models/dynamicrafter/<filename>)
    repo: str  # Hugging Face repository
    size: str
    resolution: str
    purpose: str
    repo_file: str = "model.ckpt"  # the file in it (DynamiCrafter's repositories each hold a single model.ckpt)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.repo_file}"


RELEASED = {
    "512": ReleasedFile("512", "dynamicrafter_512_v1.ckpt", "Doubiiu/DynamiCrafter_512", "10.4 GB", "512x320",
                        "image to video (recommended start)"),
    "1024": ReleasedFile("1024", "dynamicrafter_1024_v1.ckpt", "Doubiiu/DynamiCrafter_1024", "10.4 GB", "1024x576",
                         "image to video, high resolution"),
    "256": ReleasedFile("256", "dynamicrafter_256_v1.ckpt", "Doubiiu/DynamiCrafter", "10.4 GB", "256x256",
                        "image to video, small and fast"),
    "512_interp": ReleasedFile("512_interp", "dynamicrafter_512_interp_v1.ckpt", "Doubiiu/DynamiCrafter_512_Interp",
                               "10.4 GB", "512x320", "interpolation between two images, and loops"),
    "tooncrafter": ReleasedFile("tooncrafter", "tooncrafter_512_interp_v1.ckpt", "Doubiiu/ToonCrafter", "10.5 GB",
                                "512x320", "cartoon interpolation (loads; decoding not yet supported)"),
    "cami2v_256": ReleasedFile("cami2v_256", "256_cami2v.pt", "MuteApo/CamI2V", "5.7 GB", "256x256",
                               "image to video along a camera path (CamI2V, camera control)", repo_file="256_cami2v.pt"),
}


def search_dirs() -> list[Path]:
    """Where the command line looks for checkpoints, in order."""
    dirs = []
    if os.environ.get("DYNAMICRAFTER_MODELS"):
        dirs.append(Path(os.environ["DYNAMICRAFTER_MODELS"]))
    if os.environ.get("COMFYUI_DIR"):
        dirs.append(Path(os.environ["COMFYUI_DIR"]) / "models" / "dynamicrafter")
    dirs += [Path.cwd() / "models" / "dynamicrafter", Path.cwd() / "checkpoints", default_download_dir()]
    return dirs


def default_download_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dynamicrafter"


def find_checkpoint(variant: str) -> Optional[Path]:
    """The first file of `variant` in the search folders: its project file name (with .ckpt or .safetensors),
    or the original repository's `checkpoints/dynamicrafter_<variant>_v1/model.ckpt`."""
    info = RELEASED[variant]
    stem = Path(info.filename).stem
    for folder in search_dirs():
        for candidate in (folder / info.filename, folder / f"{stem}.safetensors", folder / stem / "model.ckpt"):
            if candidate.is_file():
                return candidate
    return None


def missing_message(variant: str) -> str:
    info = RELEASED[variant]
    places = "\n  ".join(str(d) for d in search_dirs())
    return (f"no DynamiCrafter {variant} checkpoint found. Download {info.url} ({info.size}), save it as "
            f"{info.filename} in one of:\n  {places}\nor pass --checkpoint PATH, or run again with --download.")


def download(variant: str, folder: Optional[Path] = None, progress: bool = True) -> Path:
    """Fetch a released checkpoint from Hugging Face into `folder` (default ~/.cache/dynamicrafter)."""
    info = RELEASED[variant]
    folder = Path(folder or default_download_dir())
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / info.filename
    if target.is_file():
        return target
    partial = target.with_suffix(target.suffix + ".part")
    log.info("downloading %s (%s) to %s", info.url, info.size, target)
    try:
        with urllib.request.urlopen(info.url, timeout=30) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=info.filename)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except (urllib.error.URLError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise ModelFileNotFoundError(
            f"could not download {info.url} ({e}). If this machine is offline, download the file elsewhere and save "
            f"it as {target}.") from e
    shutil.move(str(partial), str(target))
    return target
