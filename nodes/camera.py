"""Camera Trajectory: CamI2V's camera path (a preset or a RealEstate10K pose file) for I2V Sampler and DynamiCrafter
Conditioning. Its socket carries the per-frame poses (camera-to-world) and intrinsics themselves, not ComfyUI's Wan
camera embedding: CamI2V's epipolar masks are built from the poses and K, which that embedding no longer holds."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..dynamicrafter_core.camera import relative_poses
from ..dynamicrafter_core.errors import InputError
from ..dynamicrafter_core.noise import generator as seed_generator
from ..dynamicrafter_core.trajectory import MAX_SPEED, PRESETS, CameraPath, preset_path, read_pose_file
from . import host
from .sockets import DynamiCrafterModel, expect

log = logging.getLogger(__name__)

CAMERA = "DYNAMICRAFTER_CAMERA"
FROM_FILE = "from pose file"
CAMERA_INPUT = (CAMERA, {"tooltip": "CamI2V checkpoints only: the camera's path, from Camera Trajectory."})


@dataclass(eq=False)  # compared by identity: ComfyUI batches conditionings whose values are equal
class Camera:
    """A camera path and how strongly the sampler follows it (CamI2V's camera guidance: 1 is off). Keeps the pose
    encoder's features and the fundamental matrices per set of frames (a context window's), since they do not change
    between steps; the epipolar masks are built from the matrices inside each step and not kept."""
    path: CameraPath
    camera_cfg: float = 1.0
    _features: dict = field(default_factory=dict, repr=False)

    def features(self, core, frames: list, height: int, width: int, device, seed: int = 0):
        """The camera for the video frames `frames` (all of them, or a context window's) of a height x width video:
        poses relative to the video's first frame, the image's, as CamI2V is trained (the window's own first frame
        is then not the identity). The zero-translation perturbation comes from `seed`, as in the core's animate."""
        key = (tuple(frames), height, width, str(device), seed)
        if key not in self._features:
            path = self.path.fitted(max(frames) + 1)
            rel = relative_poses(path.c2w[None], 0)[0]
            K = path.intrinsics(height, width)
            index = torch.as_tensor(frames)
            self._features[key] = core.encode_camera(K[index][None], rel[index][None], height, width, cond_frame=None,
                                                     generator=seed_generator(seed), device=device)
        return self._features[key]


def check_camera_model(model: DynamiCrafterModel) -> None:
    if not model.core.takes_camera:
        raise InputError(f"`camera` steers CamI2V checkpoints (256_cami2v.pt, 512_cami2v_50k.pt, ... from "
                         f"huggingface.co/MuteApo/CamI2V); {model.name} is DynamiCrafter {model.core.variant}, "
                         "which has no camera control. Load a CamI2V checkpoint, or disconnect `camera`")


def pose_file_path(name: str) -> Path:
    """A pose file named absolutely, or relative to ComfyUI's input folder."""
    path = Path(name.strip().strip('"'))
    return path if path.is_absolute() else Path(host.input_directory()) / path


class CameraTrajectory:
    DESCRIPTION = ("A camera path for CamI2V (camera-controlled DynamiCrafter): a preset motion or a RealEstate10K "
                   "pose file, one pose per video frame. Connect it to I2V Sampler's `camera`, or to DynamiCrafter "
                   "Conditioning's for the native path.")
    CATEGORY = "conditioning/video_models"
    FUNCTION = "trajectory"
    RETURN_TYPES = (CAMERA,)
    RETURN_NAMES = ("camera",)
    OUTPUT_TOOLTIPS = ("The camera pose of every frame (camera-to-world) and the intrinsics.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "motion": ([*PRESETS, FROM_FILE], {
                "default": "pan left",
                "tooltip": "pan: the camera slides sideways or up/down; zoom: it moves forward (in) or back (out); "
                           "orbit: it circles a point ahead, keeping it in view; static: it holds still. "
                           f"'{FROM_FILE}': the poses of `pose_file`."}),
            "speed": ("FLOAT", {"default": 1.0, "min": 0.0, "max": MAX_SPEED, "step": 0.1,
                                "tooltip": "Presets: how far it moves per frame (1: as CamI2V's demo paths). Pose "
                                           "file: recorded poses per frame (1: the recording's own pace)."}),
            "length": ("INT", {"default": 16, "min": 1, "max": 1024,
                               "tooltip": "Frames of the path: at least the video's (Visual Detail Guidance's "
                                          "frames); a longer path is cut to the video."}),
            "camera_cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 10.0, "step": 0.1,
                                     "tooltip": "I2V Sampler: follow the path more strongly than the model would "
                                                "(CamI2V's camera guidance, a third pass per step; its demo offers "
                                                "1 to 4). 1: off, as the original's default."}),
        }, "optional": {
            "pose_file": ("STRING", {"default": "",
                                     "tooltip": "A RealEstate10K camera file (.txt; per line a timestamp, fx fy cx cy, "
                                                "0 0 and a 3x4 world-to-camera matrix), absolute or in ComfyUI's "
                                                "input folder. Used when motion is 'from pose file'."}),
        }}

    def trajectory(self, motion: str, speed: float, length: int, camera_cfg: float, pose_file: str = ""):
        if motion == FROM_FILE:
            if not pose_file.strip():
                raise InputError("`motion` is 'from pose file' but `pose_file` is empty: give the path of a "
                                 "RealEstate10K camera file (.txt), or pick a preset motion")
            file = pose_file_path(pose_file)
            path = read_pose_file(file, length, speed)
            log.info("Camera Trajectory: %d poses from %s", path.frames, file)
        else:
            path = preset_path(motion, length, speed)
        return (Camera(path, camera_cfg),)


def camera_of(model: DynamiCrafterModel, camera, frames: int) -> Optional[Camera]:
    """The camera input checked against the model and the video, or None."""
    if camera is None:
        return None
    camera = expect(camera, Camera, "camera", "Camera Trajectory")
    check_camera_model(model)
    camera.path.fitted(frames)  # a path shorter than the video is refused here, before any work
    return camera
