"""Continue Video: a video longer than the models' 16 frames, grown segment by segment.

Raising the frame count of one window (the original's answer: temporal_length 32) degrades the motion: the image
context has a fixed 16 queries per frame and the temporal attention was trained on 16 positions. Here every segment
is an ordinary 16-frame video, so each one is as good as a single run, and the two failure modes of chaining are
handled by design:

- the seam: segment k+1 starts from segment k's last frame (image to video), or, with the interpolation model, runs
  from it to the next keyframe; that boundary frame appears once. With `overlap` O, segment k+1 starts O frames
  before segment k's end instead, and the O frames both segments made are cross-faded (time for smoothness).
- the drift: each segment's frames are colour-matched to the reference (the input image) before the next segment
  starts from them, so colour and exposure errors do not compound (colour.py).

Segment k uses seed + k and the prompt that the schedule (schedule.py) puts on its first new frame. Only one segment
is on the device at a time: a finished segment leaves as decoded frames on the CPU, so the device's peak is that of
one 16-frame video however long the result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .colour import METHODS, colour_match
from .errors import InputError
from .model import DynamiCrafter
from .pipeline import TOONCRAFTER_I2V, animate, as_rgb, fit_image
from .schedule import parse_prompt_schedule, prompt_at
from .settings import SEED_RANGE, check_number, check_seed

MAX_FRAMES = 10_000  # about 20 minutes at 8 fps: a typo guard, not a limit of the method
SegmentCallback = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class Segment:
    """Segment `index` makes output frames first .. first + frames - 1; its frame 0 is the boundary frame it starts
    from (the previous segment's, kept from there), its next `overlap` frames are cross-faded with the previous
    segment's."""
    index: int
    first: int
    frames: int
    overlap: int

    @property
    def first_new(self) -> int:
        """The first output frame that this segment alone decides (where its prompt is read from the schedule)."""
        return 0 if self.index == 0 else self.first + 1


def plan_segments(frames: int, segment_frames: int = 16, overlap: int = 0) -> list:
    """The segments that make `frames` output frames: each `segment_frames` long, each after the first adding
    segment_frames - 1 - overlap new frames (the last one generated whole and cut)."""
    check_number("frames", frames, 2, MAX_FRAMES, "the long video's length in frames", whole=True)
    check_number("segment_frames", segment_frames, 2, 256,
                 "frames per segment, boundary included; the released models were trained on 16", whole=True)
    check_number("overlap", overlap, 0, segment_frames - 2,
                 f"frames generated twice and cross-faded at each seam; below segment_frames - 1 = "
                 f"{segment_frames - 1}, so that each segment adds a frame", whole=True)
    if frames <= segment_frames:
        return [Segment(0, 0, frames, 0)]
    step = segment_frames - 1 - overlap
    count = 1 + math.ceil((frames - segment_frames) / step)
    return [Segment(0, 0, segment_frames, 0)] + [Segment(k, segment_frames - 1 - overlap + (k - 1) * step,
                                                         segment_frames, overlap) for k in range(1, count)]


def keyframe_segments(keys: int, segment_frames: int = 16) -> list:
    """With the interpolation model: one segment per keyframe after the start, each from the previous one's last
    frame to its keyframe."""
    check_number("segment_frames", segment_frames, 2, 256,
                 "frames per segment, boundary included; the released models were trained on 16", whole=True)
    return [Segment(k, k * (segment_frames - 1), segment_frames, 0) for k in range(keys)]


def crossfade(previous: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Two takes (O, H, W, 3) of the same O frames -> one, fading linearly from the previous segment's to the new
    one's (weights 1/(O+1) .. O/(O+1) on the new one, so neither seam end jumps)."""
    o = previous.shape[0]
    weight = torch.arange(1, o + 1, dtype=previous.dtype)[:, None, None, None] / (o + 1)
    return torch.lerp(previous, new, weight)


def frame_to_image(frame: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) in 0..1 -> (1, 3, H, W) in [-1, 1], the layout `animate` takes."""
    return (frame.permute(2, 0, 1)[None] * 2 - 1).contiguous()


def continue_video(model: DynamiCrafter, image: torch.Tensor, prompt: str = "", frames: Optional[int] = 64,
                   keyframes: Optional[Sequence[torch.Tensor]] = None, segment_frames: int = 16, overlap: int = 0,
                   colour: Optional[str] = "mean_std", colour_strength: float = 1.0,
                   reference: Optional[torch.Tensor] = None, seed: int = 123, height: Optional[int] = None,
                   width: Optional[int] = None, fit: str = "crop", callback=None,
                   on_segment: Optional[SegmentCallback] = None, **sampling) -> torch.Tensor:
    """A still image (1, C, H, W) in [-1, 1] -> a long video (frames, H, W, 3) in 0..1.

    prompt: one prompt, or a schedule (`0: a boat on a calm lake | 16: the boat sails toward the sunset`; frames of
    the output). keyframes: with the interpolation model, images the video passes through, one segment to each
    (the length is then segment_frames + (keyframes - 1) * (segment_frames - 1); pass frames=None).
    colour: "mean_std", "histogram", or None: how each segment is matched to `reference` (default: the input image as
    the video shows it) before the next starts from it, with colour_strength.
    callback: each sampling step's dict, with "segment" and "segments" added. on_segment(k, frames): after segment k,
    its colour-matched frames as they enter the video. sampling: animate's settings (steps, cfg, eta, fs, ...)."""
    if model.variant == "tooncrafter" and keyframes is None:
        raise InputError(TOONCRAFTER_I2V + "; for a longer cartoon, chain keyframes (keyframes=[...])")
    if colour is not None and colour not in METHODS:
        raise InputError(f"unknown colour match {colour!r}; use one of {', '.join(METHODS)}, or None for none")
    check_number("colour_strength", colour_strength, 0.0, 1.0, "0 leaves the segments' colours as made")
    if "mode" in sampling or "end_image" in sampling:
        raise InputError("continue_video chooses each segment's mode itself: pass keyframes for interpolation")
    if keyframes is not None:
        if not model.supports_interpolation:
            raise InputError(f"keyframes need an interpolation checkpoint (DynamiCrafter 512_interp or ToonCrafter); "
                             f"the loaded model is {model.variant}. Leave keyframes out for image to video")
        if overlap:
            raise InputError(f"overlap {overlap} with keyframes: each segment must end on its keyframe, which a "
                             "cross-fade would blur; use overlap 0")
        keyframes = list(keyframes)
        if not keyframes:
            raise InputError("keyframes is empty; give at least one image to run to, or None for image to video")
        plan = keyframe_segments(len(keyframes), segment_frames)
        length = plan[-1].first + plan[-1].frames
        if frames is not None and frames != length:
            raise InputError(f"{len(keyframes)} keyframe(s) of {segment_frames} frames each make {length} frames, "
                             f"not {frames}: pass frames=None (or {length}), or change segment_frames")
        frames = length
    else:
        plan = plan_segments(frames, segment_frames, overlap)
    check_seed(seed)
    if seed + len(plan) - 1 >= SEED_RANGE:
        raise InputError(f"seed {seed} + {len(plan) - 1} (one seed per segment) passes the largest seed "
                         f"{SEED_RANGE - 1}; use a smaller seed")
    schedule = parse_prompt_schedule(prompt)
    image = as_rgb(image)
    if image.shape[0] != 1:
        raise InputError(f"continue_video makes one video from one image; got a batch of {image.shape[0]}")
    height, width = height or model.config.resolution[0], width or model.config.resolution[1]
    start = fit_image(image, height, width, fit)
    if reference is None:
        reference = ((start[0] + 1) / 2).permute(1, 2, 0)
    ends = [fit_image(as_rgb(k)[:1], height, width, fit) for k in keyframes] if keyframes is not None else None

    def make(segment: Segment, start: torch.Tensor) -> torch.Tensor:
        def step(info: dict) -> None:
            if callback is not None:
                callback({**info, "segment": segment.index, "segments": len(plan)})

        return animate(model, start, prompt_at(schedule, segment.first_new), frames=segment.frames,
                       seed=seed + segment.index, height=height, width=width, fit=fit, callback=step,
                       mode="i2v" if ends is None else "interpolation",
                       end_image=ends[segment.index] if ends is not None else None, **sampling)

    return grow_video(plan, start, make, frames, reference, colour, colour_strength, on_segment)


def grow_video(plan: Sequence[Segment], start: torch.Tensor, make: Callable[[Segment, torch.Tensor], torch.Tensor],
               frames: int, reference: torch.Tensor, colour: Optional[str] = "mean_std", colour_strength: float = 1.0,
               on_segment: Optional[SegmentCallback] = None) -> torch.Tensor:
    """The segments of `plan` joined into one video (frames, H, W, 3) in 0..1: make(segment, start image) gives a
    segment's frames from its start image (1, 3, H, W) in [-1, 1] (the Python API's animate, or the nodes' sampler);
    this colour-matches them, keeps the boundary once, cross-fades overlaps and picks the next start."""
    video: list = []  # decoded frames on the CPU; nothing of a finished segment stays on the device
    for segment in plan:
        made = make(segment, start)
        if made.shape[0] != segment.frames:
            raise InputError(f"segment {segment.index} came back with {made.shape[0]} frames, not {segment.frames}")
        if colour is not None:
            made = colour_match(made, reference, colour, colour_strength)
        if segment.index == 0:
            video.extend(made)
        else:
            o = segment.overlap
            if o:
                blended = crossfade(torch.stack(video[-o:]), made[1:o + 1])
                video[-o:] = list(blended)
            video.extend(made[o + 1:])
        if on_segment is not None:
            on_segment(segment.index, made)
        # the next segment starts `overlap` frames before this one's end (the plan's overlap is the same for all)
        start = frame_to_image(video[-1 - plan[-1].overlap])
    return torch.stack(video[:frames])
