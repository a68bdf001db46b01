"""Continue Video: any length, the boundary frame once, each segment from the previous one's (colour-matched) last
frame with its own seed and prompt, and one segment's memory however long the video."""
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import dynamicrafter_core as dc
import dynamicrafter_core.long_video as long_video
from dynamicrafter_core.colour import colour_match
from dynamicrafter_core.long_video import continue_video, crossfade, frame_to_image, plan_segments

FAST = dict(steps=1)
SHORT = dict(steps=1, segment_frames=4)  # the tiny Query Transformer's video length: cheap segments
# the tiny networks are latency-bound: one thread is several times faster than two on a busy machine
torch.set_num_threads(1)


@pytest.fixture()
def square(image):
    return image[:, :, :64, :64].contiguous()  # the tiny model's own 64x64: no resize, exact frames


@pytest.fixture()
def calls(monkeypatch):
    """Every segment's animate call: its start image, prompt, seed and end image."""
    seen = []
    real = long_video.animate

    def spy(model, image, prompt, **kw):
        seen.append({"image": image.clone(), "prompt": prompt, "seed": kw["seed"], "end": kw.get("end_image"),
                     "frames": kw["frames"]})
        return real(model, image, prompt, **kw)

    monkeypatch.setattr(long_video, "animate", spy)
    return seen


@pytest.mark.parametrize("frames", [16, 17, 31, 64, pytest.param(100, marks=pytest.mark.slow)])
def test_any_length_and_each_boundary_frame_once(tiny_model, square, calls, frames):
    video = continue_video(tiny_model, square, "waves", frames=frames, **FAST)
    assert video.shape == (frames, 64, 64, 3) and 0 <= video.min() and video.max() <= 1
    assert len(calls) == len(plan_segments(frames))
    # every segment after the first starts from a frame of the video, which is in it once
    for call in calls[1:]:
        start = (call["image"][0].permute(1, 2, 0) + 1) / 2
        matches = [i for i in range(frames) if torch.equal(frame_to_image(video[i]), call["image"])]
        assert len(matches) == 1, (start.shape, matches)
    assert all((video[i] - video[i + 1]).abs().max() > 0 for i in range(frames - 1))  # no frame repeated


def test_each_segment_starts_from_the_previous_segments_colour_matched_last_frame(tiny_model, square, calls):
    made = []
    video = continue_video(tiny_model, square, "waves", frames=10, seed=5,
                           on_segment=lambda k, frames: made.append(frames), **SHORT)
    assert [c["seed"] for c in calls] == [5, 6, 7]  # seed + k
    reference = ((square[0] + 1) / 2).permute(1, 2, 0)
    for k in range(1, 3):
        assert torch.equal(calls[k]["image"], frame_to_image(made[k - 1][-1]))
        assert torch.equal(video[3 * k], made[k - 1][-1])  # the boundary, as the video shows it
    # and those frames are the colour-matched ones: segment 0 through colour_match of what animate made
    raw = dc.animate(tiny_model, square, "waves", frames=4, seed=5, **FAST)
    torch.testing.assert_close(made[0], colour_match(raw, reference), rtol=0, atol=0)
    plain = continue_video(tiny_model, square, "waves", frames=10, seed=5, colour=None, **SHORT)
    torch.testing.assert_close(plain[:4], raw, rtol=0, atol=0)


def test_the_same_seed_gives_the_same_video(tiny_model, square):
    a = continue_video(tiny_model, square, "waves", frames=10, seed=3, **SHORT)
    b = continue_video(tiny_model, square, "waves", frames=10, seed=3, **SHORT)
    c = continue_video(tiny_model, square, "waves", frames=10, seed=4, **SHORT)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_each_segment_is_conditioned_on_its_scheduled_prompt(tiny_model, square, monkeypatch):
    texts = []
    real = tiny_model.encode_text
    monkeypatch.setattr(tiny_model, "encode_text", lambda prompts, **kw: texts.append(list(prompts))
                        or real(prompts, **kw))
    continue_video(tiny_model, square, "0: a boat | 4: the boat sails | 10: night", frames=13,
                   negative_prompt="blur", **SHORT)
    # segments start at output frames 0, 3, 6, 9; each reads the prompt on its first new frame (0, 4, 7, 10)
    assert texts == [["a boat", "blur"], ["the boat sails", "blur"], ["the boat sails", "blur"], ["night", "blur"]]


def test_a_cancel_in_segment_3_leaves_nothing_behind(tiny_model, square):
    class Cancelled(Exception):
        pass

    def cancel(step):
        if step["segment"] == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        continue_video(tiny_model, square, "waves", frames=10, seed=9, callback=cancel, **SHORT)
    again = continue_video(tiny_model, square, "waves", frames=10, seed=9, **SHORT)
    fresh = continue_video(tiny_model, square, "waves", frames=10, seed=9, **SHORT)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)


def test_an_overlap_is_generated_twice_and_cross_faded(tiny_model, square, calls):
    made = []
    video = continue_video(tiny_model, square, "waves", frames=38, overlap=4,
                           on_segment=lambda k, frames: made.append(frames), **FAST)
    assert video.shape[0] == 38 and len(calls) == 3  # 16, then 11 new frames a segment
    # segment 1 starts 4 frames before segment 0's end; those 4 frames are made twice and faded
    assert torch.equal(calls[1]["image"], frame_to_image(made[0][-5]))
    torch.testing.assert_close(video[12:16], crossfade(made[0][12:16], made[1][1:5]), rtol=0, atol=0)
    torch.testing.assert_close(video[16:23], made[1][5:12], rtol=0, atol=0)
    fade = crossfade(torch.zeros(4, 1, 1, 3), torch.ones(4, 1, 1, 3))[:, 0, 0, 0]
    torch.testing.assert_close(fade, torch.tensor([0.2, 0.4, 0.6, 0.8]))


def test_keyframes_chain_interpolations_through_them(tiny_config, square, calls):
    from tests.conftest import CHECKPOINT

    interp = dc.load_model(CHECKPOINT, config=tiny_config, variant="512_interp")
    keys = [-square, square.flip(-1)]
    video = continue_video(interp, square, "waves", frames=None, keyframes=keys, **FAST)
    assert video.shape[0] == 31
    assert [torch.equal(c["end"], k) for c, k in zip(calls, keys)] == [True, True]
    assert torch.equal(calls[1]["image"], frame_to_image(video[15]))


def test_refusals_name_the_input(tiny_model, square, monkeypatch):
    with pytest.raises(dc.InputError, match="overlap must be a whole number from 0 to 14"):
        continue_video(tiny_model, square, frames=40, overlap=15)
    with pytest.raises(dc.InputError, match="512_interp"):
        continue_video(tiny_model, square, frames=None, keyframes=[square])
    with pytest.raises(dc.InputError, match="entry 2"):
        continue_video(tiny_model, square, "0: a | b", frames=40)
    with pytest.raises(dc.InputError, match="unknown colour match 'lab'"):
        continue_video(tiny_model, square, frames=40, colour="lab")
    monkeypatch.setattr(tiny_model, "variant", "tooncrafter")
    with pytest.raises(dc.InputError, match="ToonCrafter interpolates between two keyframes.*chain keyframes"):
        continue_video(tiny_model, square, frames=40)


class LiveBytes(TorchDispatchMode):
    """An allocation counter: the bytes of every tensor storage that torch ops made and that is still alive, and
    the most at any point."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen = set()

    def _freed(self, key, size):
        self.live -= size
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if id(storage) not in self.seen:
                    self.seen.add(id(storage))
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, id(storage), storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def test_a_long_video_holds_one_segment_in_memory_plus_its_frames(tiny_model, square):
    with LiveBytes() as counter:
        continue_video(tiny_model, square, "waves", frames=16, **FAST)
    one_segment = counter.peak
    held, beyond_frames = [0], []

    def finished(k, frames):
        beyond_frames.append(counter.peak - held[0])  # this segment's peak, less the frames made before it
        held[0] += frames.untyped_storage().nbytes()
        counter.peak = counter.live

    with LiveBytes() as counter:
        continue_video(tiny_model, square, "waves", frames=64, on_segment=finished, **FAST)
    assert len(beyond_frames) == 5
    start_frame = 64 * 64 * 3 * 4  # the next segment's start image, one frame
    assert beyond_frames[0] == one_segment
    assert beyond_frames[1:] == [one_segment + start_frame] * 4  # no segment leaves anything behind
