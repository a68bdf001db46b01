"""How close Colour Match brings a drifted video to its reference, against the `color-matcher` package's methods when
it is installed (it is not a dependency): mean CIEDE2000 over the frames, for two synthetic drifts.

  python -m tests.bench.colour_methods

- gain: each frame warmer and darker than the one before, an RGB gain and offset (tests/core/test_colour.py's);
- saturation: each frame more saturated and its mid-tones darker (a gamma).
"""
from __future__ import annotations

import numpy as np
import torch

from dynamicrafter_core.colour import METHODS, colour_match
from tests.core.test_colour import drifted, mean_delta_e, reference_frame

COLOR_MATCHER = ("reinhard", "mvgd", "mkl", "hm", "hm-mvgd-hm")


def saturated(reference: torch.Tensor, frames: int = 8) -> torch.Tensor:
    out = []
    for k in range(frames):
        grey = reference.mean(-1, keepdim=True)
        out.append(((grey + (reference - grey) * (1 + 0.08 * k)).clamp(0, 1)) ** (1 + 0.05 * k))
    return torch.stack(out)


def main() -> int:
    reference = reference_frame()
    videos = {"gain": drifted(reference), "saturation": saturated(reference)}
    print(f"{'method':<28}" + "".join(f"{name:>12}" for name in videos))
    print(f"{'(before)':<28}" + "".join(f"{mean_delta_e(v, reference):>12.2f}" for v in videos.values()))
    for method in METHODS:
        row = [mean_delta_e(colour_match(v, reference, method), reference) for v in videos.values()]
        print(f"{'Colour Match ' + method:<28}" + "".join(f"{x:>12.2f}" for x in row))
    try:
        from color_matcher import ColorMatcher
    except ImportError:
        print("(color-matcher is not installed: pip install color-matcher to compare)")
        return 0
    matcher, ref = ColorMatcher(), reference.double().numpy()
    for method in COLOR_MATCHER:
        row = []
        for video in videos.values():
            out = np.stack([matcher.transfer(src=f.double().numpy(), ref=ref, method=method) for f in video])
            row.append(mean_delta_e(torch.from_numpy(out.clip(0, 1)).float(), reference))
        print(f"{'color-matcher ' + method:<28}" + "".join(f"{x:>12.2f}" for x in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
