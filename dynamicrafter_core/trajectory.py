"""Camera paths for CamI2V: a preset motion or a RealEstate10K pose file, as per-frame camera-to-world poses.

Coordinates are OpenCV's (x right, y down, z forward), as RealEstate10K's and CamI2V's. The first frame's camera is
the identity; CamI2V makes every pose relative to the conditioning frame anyway (camera.relative_poses), so only the
motion matters. Distances are in the scene units of CamI2V's training data (RealEstate10K, scale unknown), so a
preset's `speed` is relative: 1 moves as much per frame as CamI2V's demo paths at its default trace settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .camera import default_intrinsics
from .errors import InputError

# Per-frame steps of the demo's paths (demo/camera_pose_files, 16 frames taken from 160 interpolated ones): "pan" 2
# units over 159 steps, "zoom" 1 unit, "orbit" 90 degrees around a point 3 units ahead.
PAN_STEP = 2.0 / 159
ZOOM_STEP = 1.0 / 159
ORBIT_STEP_DEGREES = 90.0 / 159
ORBIT_RADIUS = 3.0

PRESETS = ("static", "pan left", "pan right", "pan up", "pan down", "zoom in", "zoom out", "orbit left",
           "orbit right")
MAX_SPEED = 20.0


@dataclass
class CameraPath:
    """One camera pose per frame: c2w (T, 4, 4) camera-to-world, float32; K (T, 3, 3) intrinsics in pixels of a
    `size` = (height, width) video, or None for CamI2V's own (fx = fy = max(H, W)/2, centred: the original ignores a
    pose file's intrinsics too)."""
    c2w: torch.Tensor
    K: Optional[torch.Tensor] = None
    size: Optional[tuple] = None
    name: str = ""

    @property
    def frames(self) -> int:
        return self.c2w.shape[0]

    def intrinsics(self, height: int, width: int) -> torch.Tensor:
        """(T, 3, 3) for a height x width video: K scaled from its own size, or CamI2V's default."""
        if self.K is None:
            return default_intrinsics(height, width, self.frames)[0]
        h0, w0 = self.size
        scale = torch.tensor([[width / w0, 0, width / w0], [0, height / h0, height / h0], [0, 0, 1]])
        return self.K * scale

    def window(self, indices) -> "CameraPath":
        """The poses of some frames (a context window's)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return CameraPath(self.c2w[index], None if self.K is None else self.K[index], self.size, self.name)

    def fitted(self, frames: int) -> "CameraPath":
        """Exactly `frames` poses, or a clear refusal."""
        if self.frames == frames:
            return self
        if self.frames > frames:
            return self.window(range(frames))
        raise InputError(f"the camera path {self.name!r} has {self.frames} poses but the video has {frames} frames; "
                         f"make the path at least {frames} frames long (its `length`), or make fewer frames")


def _rotation_y(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]],
                        dtype=torch.float64)


def preset_path(preset: str, frames: int, speed: float = 1.0) -> CameraPath:
    """A preset camera motion over `frames` frames. pan: the camera slides sideways or vertically, looking ahead;
    zoom: it moves forward (in) or back (out); orbit: it circles a point ahead of it, turning to keep it in view."""
    if preset not in PRESETS:
        raise InputError(f"unknown camera preset {preset!r}; use one of {', '.join(PRESETS)}, or a RealEstate10K "
                         "pose file")
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise InputError(f"a camera path needs a whole number of frames of at least 1, got {frames!r}")
    if not isinstance(speed, (int, float)) or not 0 <= speed <= MAX_SPEED:
        raise InputError(f"camera speed {speed!r} is out of range: 0 (still) to {MAX_SPEED:g}; 1 moves as CamI2V's "
                         "demo paths do")
    directions = {"pan left": (-1, 0, 0), "pan right": (1, 0, 0), "pan up": (0, -1, 0), "pan down": (0, 1, 0)}
    poses = []
    for i in range(frames):
        pose = torch.eye(4, dtype=torch.float64)
        if preset in directions:
            pose[:3, 3] = torch.tensor(directions[preset], dtype=torch.float64) * PAN_STEP * speed * i
        elif preset.startswith("zoom"):
            pose[2, 3] = (1 if preset == "zoom in" else -1) * ZOOM_STEP * speed * i
        elif preset.startswith("orbit"):
            # orbit left: the camera moves left around the centre, so it turns right (+yaw about y-down is rightward)
            angle = (1 if preset == "orbit left" else -1) * ORBIT_STEP_DEGREES * speed * i
            rotation = _rotation_y(angle)
            centre = torch.tensor([0.0, 0.0, ORBIT_RADIUS], dtype=torch.float64)
            pose[:3, :3] = rotation
            pose[:3, 3] = centre - rotation @ centre  # the centre stays at the same place in the camera's view
        poses.append(pose)
    return CameraPath(torch.stack(poses).float(), name=preset)


def read_pose_file(path: Union[str, Path], frames: int, speed: float = 1.0) -> CameraPath:
    """A RealEstate10K camera file -> `frames` poses. Each line holds a timestamp, fx fy cx cy (normalised), two
    zeros and a 3x4 world-to-camera matrix, row by row; lines that are not 19 numbers (the first line's video URL)
    are skipped. The video steps through the file `speed` recorded poses per frame (1: the recording's own pace),
    interpolating linearly between poses as CamI2V's demo does (`camera_pose_lerp`). The file's intrinsics are not
    used: CamI2V's are fixed (CameraPath.K None)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"camera file {str(path)!r} does not exist")
    if not isinstance(speed, (int, float)) or not 0 < speed <= MAX_SPEED:
        raise InputError(f"camera speed {speed!r} is out of range for a pose file: above 0 (recorded poses per "
                         f"frame) to {MAX_SPEED:g}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if len(parts) != 19:
            continue
        try:
            rows.append([float(v) for v in parts[7:]])
        except ValueError as e:
            raise InputError(f"{path.name} line {number}: {e}; each pose line is a timestamp, fx fy cx cy, two zeros "
                             "and 12 numbers of a 3x4 world-to-camera matrix") from e
    if not rows:
        raise InputError(f"{path.name} holds no pose lines (a timestamp, fx fy cx cy, two zeros and a 3x4 "
                         "world-to-camera matrix: 19 numbers a line, as RealEstate10K's camera files)")
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(rows), 1, 1)
    w2c[:, :3, :] = torch.tensor(rows, dtype=torch.float64).view(-1, 3, 4)
    try:
        c2w = torch.linalg.inv(w2c)
    except RuntimeError as e:
        raise InputError(f"{path.name} holds a world-to-camera matrix that cannot be inverted; check the file") from e
    position = torch.arange(frames, dtype=torch.float64) * speed
    position = position.clamp(max=len(rows) - 1)  # a file shorter than the video holds its last pose
    left, right = position.floor().long(), position.ceil().long()
    weight = (position - left)[:, None, None]
    return CameraPath(torch.lerp(c2w[left], c2w[right], weight).float(), name=path.name)


def camera_path(source: str, frames: int, speed: float = 1.0) -> CameraPath:
    """A preset name (PRESETS) or the path of a RealEstate10K pose file."""
    if source in PRESETS:
        return preset_path(source, frames, speed)
    if Path(source).suffix.lower() == ".txt" or Path(source).exists():
        return read_pose_file(source, frames, speed)
    raise InputError(f"camera {source!r} is neither a preset ({', '.join(PRESETS)}) nor a RealEstate10K pose file "
                     "(.txt)")
