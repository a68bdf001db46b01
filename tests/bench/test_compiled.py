"""torch.compile layer by layer (compiled.py): what a user of --compile relies on. Every layer compiles without a
graph break; compiling happens once per shape, in the first step, and never again for later steps, other seeds,
or a benchmark's timed runs; the output is the eager one within float32 rounding. (Whether it is faster is the
benchmark's to print: `bench --compile`.)"""
import copy

import pytest
import torch
from torch._dynamo.utils import counters

from dynamicrafter_core import bench
from dynamicrafter_core.compiled import COMPILED_LAYERS, compile_layers, use_compiled
from dynamicrafter_core.pipeline import sample

pytestmark = pytest.mark.slow  # each test compiles about 20 small graphs: tens of seconds on two cores
SAME = 1e-4  # max |a - b| / std(b) in float32


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def breaks() -> int:
    return sum(counters["graph_break"].values())


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(3)
    frames, h, w = 4, 8, 8
    context = torch.randn(1, 77 + 16 * frames, 16, generator=g)
    return context, torch.randn_like(context), torch.randn(1, 4, frames, h, w, generator=g)


def test_every_layer_compiles_once_per_shape_and_never_again(model, inputs):
    context, uncond, concat = inputs
    compiled = copy.deepcopy(model)
    layers = sum(isinstance(m, COMPILED_LAYERS) for m in compiled.unet.modules())
    assert compile_layers(compiled.unet) == layers > 0

    def run(seed, steps=2, **options):
        return sample(compiled, context, uncond, concat, steps=steps, generator=torch.Generator().manual_seed(seed),
                      **options)

    before, broken = graphs(), breaks()
    run(0)
    first = graphs() - before
    assert first > 0  # the first step compiled
    run(1, steps=3)  # more steps, another seed: nothing new
    assert graphs() - before == first
    run(2, cfg=1.0)  # one guidance branch: a new batch size compiles its own graphs, once
    with_cfg_off = graphs() - before
    assert with_cfg_off > first
    run(3, cfg=1.0)
    run(4)
    assert graphs() - before == with_cfg_off
    assert breaks() == broken  # fullgraph: a break would have raised; nothing broke outside the layers either


def test_compiled_layers_give_the_eager_output(model, unet_inputs):
    unet = copy.deepcopy(model.unet)
    with torch.no_grad():
        eager = unet(*unet_inputs)
        compile_layers(unet)
        fast = unet(*unet_inputs)
    assert ((fast - eager).abs().max() / eager.std()).item() <= SAME


def test_switched_off_the_layers_run_eager_and_switched_on_again_reuse_their_graphs(model, unet_inputs):
    """What I2V Sampler's `compile` does around each run: on for its sampling, off for every other node after it."""
    unet = copy.deepcopy(model.unet)
    with torch.no_grad():
        eager = unet(*unet_inputs)
        assert use_compiled(unet, True) > 0
        fast = unet(*unet_inputs)
        assert use_compiled(unet, False) == 0
        assert torch.equal(unet(*unet_inputs), eager)  # eager again: the very same numbers
        before = graphs()
        assert use_compiled(unet, True) == 0  # nothing new to set up
        again = unet(*unet_inputs)
    assert graphs() == before and torch.equal(again, fast)


def test_timing_the_compiled_unet_does_not_recompile_it():
    """The benchmark's timed runs reuse the warm-up's graphs (it once restored settings on every layer after each
    run, which changed what the compiled layers guard on and recompiled the whole UNet in every timed run)."""
    args = bench.parser().parse_args(["--tiny", "--device", "cpu", "--unet-step", "--compile", "--size", "64x128",
                                      "--frames", "3", "--repeats", "2", "--warmup", "1"])
    device, dtype = bench.resolve(args)
    model = bench.build_model(args, device, dtype)
    run = bench.unet_step_runs(model, args, device)["optimised"]
    before = graphs()
    run(True)  # the warm-up: compiles this size's graphs
    settled = graphs()
    assert settled > before
    for _ in range(args.repeats):
        run(False)
    assert graphs() == settled
