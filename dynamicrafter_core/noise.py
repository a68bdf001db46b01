"""One seed, one video: the order in which a run draws its random numbers.

Every draw comes from one CPU generator seeded with the run's seed (so a seed gives the same video on every device),
standard normal, float32, in this order:

1. the visual detail guidance's posterior noise: each start image's, then each end image's, one (1, 4, h, w) draw per
   image (`pipeline.draw_visual_detail_guidance`);
2. the initial noise x_T, (B, 4, T, h, w);
3. the noise of each stochastic DDIM step (eta > 0), (B, 4, T, h, w), first step first.

`pipeline.animate`, the bundled ComfyUI samplers and the benchmark run all three in one piece. The native ComfyUI
path splits them over nodes (conditioning, noise, sampler); each node replays the draws before its own.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .settings import SEED_RANGE


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % SEED_RANGE)


def normal(gen: torch.Generator, shape: Sequence[int]) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


def replay(gen: torch.Generator, shapes: Sequence[Sequence[int]]) -> torch.Generator:
    """Draw and drop what the earlier parts of a run drew, so `gen` continues where they left it."""
    for shape in shapes:
        normal(gen, shape)
    return gen


def posterior_shapes(latent_shape: Sequence[int], with_end: bool) -> list[tuple]:
    """The draws of step 1 for posteriors of `latent_shape` (B, 4, h, w): one per image, start then end."""
    b, *rest = latent_shape
    return [(1, *rest)] * (b * (2 if with_end else 1))
