"""What a longer video costs, on this machine: Continue Video at several lengths on the tiny fixture model, the cost of
each extra second of video (8 fps) against the first 16 frames, beside one window stretched to the same length and a
keyframe chain; and Colour Match on a 64-frame video at the 512 model's size.

  python -m tests.bench.long_video_cost [--steps 50] [--frames 16 32 64] [--repeats 3]

Numbers are medians of --repeats runs, in seconds of wall time; they are printed, never asserted.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

FPS = 8


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    import dynamicrafter_core as dc
    from dynamicrafter_core.long_video import continue_video, plan_segments
    from tests.conftest import CHECKPOINT, CONFIG_FILE

    ap = argparse.ArgumentParser(prog="python -m tests.bench.long_video_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the tiny model is latency-bound)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import json

    config = json.loads(CONFIG_FILE.read_text())["model"]
    model = dc.load_model(CHECKPOINT, config=config)
    interp = dc.load_model(CHECKPOINT, config=config, variant="512_interp")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    print(f"tiny fixture model, 64x64, {args.steps} steps, CPU ({torch.get_num_threads()} thread(s)); "
          f"median of {args.repeats}")
    print(f"{'frames':>6} {'segments':>8} {'continue s':>10} {'one window s':>12} {'keyframes s':>11}")
    continue_video(model, image, "waves", frames=16, steps=1)  # warm-up: first-call allocations, lazy imports
    rows = {}
    for frames in args.frames:
        segments = len(plan_segments(frames))
        cont = timed(lambda: continue_video(model, image, "waves", frames=frames, steps=args.steps), args.repeats)
        window = timed(lambda: dc.animate(model, image, "waves", frames=frames, steps=args.steps), args.repeats) \
            if frames <= 256 else float("nan")
        keys = [image.flip(-1 - k % 2) for k in range(segments)]
        chain = timed(lambda: continue_video(interp, image, "waves", frames=None, keyframes=keys, steps=args.steps),
                      args.repeats)
        rows[frames] = cont
        print(f"{frames:>6} {segments:>8} {cont:>10.2f} {window:>12.2f} {chain:>11.2f}")
    first, last = min(rows), max(rows)
    if last > first:
        per_second = (rows[last] - rows[first]) / ((last - first) / FPS)
        print(f"Continue Video: {per_second:.2f} s per extra second of video ({FPS} fps), {first} -> {last} frames")
    video = torch.rand(64, 320, 512, 3, generator=torch.Generator().manual_seed(1))
    for method in ("mean_std", "histogram"):
        cost = timed(lambda: dc.colour_match(video, video[0], method), args.repeats)
        print(f"Colour Match {method}: {cost:.2f} s for 64 frames of 512x320")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
