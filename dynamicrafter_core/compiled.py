"""torch.compile for the UNet, layer by layer (regional compilation).

Each ResBlock, spatial and temporal transformer is compiled on its own, with static shapes and no graph break
allowed inside it. The compiler fuses what eager PyTorch runs as separate passes over memory (GroupNorm with its
float32 casts and SiLU, GEGLU's GELU and product, LayerNorm, the residual sums), while matrix products, convolutions
and attention stay the library kernels eager uses. On an H200 (bf16, one guided 512 step) this took the step from
0.134 s to 0.087 s, and GroupNorm, elementwise and copy kernels from 48 % of the GPU time to 14 %.

Why by layer rather than the whole UNet in one graph: layers of the same kind and shape share one compiled graph (a
512 UNet compiles 23 small graphs, not one of ~8,000 operations), and the whole-UNet graph was slower than eager (on
this project's 2-core CPU, the tiny-width UNet at the 512 latent size: 9x) where each layer alone is faster.

Every compile happens at the first call of each shape, i.e. in the first sampling step (on an H200 about 100 s for
the 512 model; torch's on-disk cache makes a later process's first step about 11 s); the later steps, other seeds
and prompts reuse the graphs. A new batch size (cfg 1 against cfg > 1, image cfg's third branch) or video size
compiles its own graphs once. The fusions reorder the arithmetic, so outputs differ from eager within float rounding
(measured: as far from the float32 model as eager bf16 is); the parity checks run eager.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from .unet import ResBlock, SpatialTransformer, TemporalTransformer

log = logging.getLogger(__name__)

COMPILED_LAYERS = (ResBlock, SpatialTransformer, TemporalTransformer)
# distinct (layer kind, shape) pairs: a released UNet has up to 16 ResBlock shapes and 4 shapes of each transformer
# for one batch size and video size; room for three batch sizes and two video sizes
RECOMPILE_LIMIT = 16 * 3 * 2


def compile_layers(module: torch.nn.Module) -> int:
    """Compile every ResBlock and transformer inside `module` (a UNet, or the sketch ControlNet) in place, no graph
    break allowed; returns how many were not compiled before. Their weights stay where they are: nothing is copied."""
    return use_compiled(module, True)


@contextlib.contextmanager
def compiled_during(module: torch.nn.Module, enabled: bool, who: str):
    """The layers compiled inside the block when `enabled` (graph breaks allowed: a host's layers may cast or fetch
    their weights in Python), eager inside it otherwise, and eager after it either way: other users of the same
    weights run them as written, and the next compiled block reuses the graphs."""
    if use_compiled(module, enabled, fullgraph=False):
        log.info("%s: the UNet is compiled layer by layer during the first step (about 100 s on an H200, minutes on "
                 "a CPU); later steps and runs reuse the graphs", who)
    try:
        yield
    finally:
        use_compiled(module, False)


def use_compiled(module: torch.nn.Module, enabled: bool, fullgraph: bool = True) -> int:
    """Switch the compiled forward of every ResBlock and transformer inside `module` on (each layer compiles at its
    first call, once per process) or off (eager again, the same code as never compiled); returns how many layers were
    newly set up to compile, so 0 when they all had been (their graphs are reused). fullgraph=False lets a layer run
    code the compiler cannot trace (a host's own weight casting or streaming) eagerly between compiled pieces instead
    of refusing it."""
    layers = [m for m in module.modules() if isinstance(m, COMPILED_LAYERS)]
    if enabled:
        raise_recompile_limits()
    new = 0
    for layer in layers:
        if not enabled:
            layer._compiled_call_impl = None  # what nn.Module.compile() sets; None is the module's eager call
        elif getattr(layer, "_compiled_forward", None) is not None:
            layer._compiled_call_impl = layer._compiled_forward  # switched off and on again: the same graphs
        else:
            layer.compile(dynamic=False, fullgraph=fullgraph)
            layer._compiled_forward = layer._compiled_call_impl
            new += 1
    return new


def raise_recompile_limits() -> None:
    """All layers of one kind share one frame (their class's forward), and each of its shapes counts against the
    frame's recompile limit (8 by default), past which torch silently runs the layer eager. (torch < 2.6 names the
    limits cache_size_limit and accumulated_cache_size_limit.)"""
    config = torch._dynamo.config
    for name, value in (("recompile_limit", RECOMPILE_LIMIT), ("accumulated_recompile_limit", 4 * RECOMPILE_LIMIT)):
        if not hasattr(config, name):
            name = name.replace("recompile", "cache_size")
        setattr(config, name, max(getattr(config, name), value))
