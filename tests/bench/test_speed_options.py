"""Every speed / memory option computes what the plain path computes (fp32 rounding aside), and the fp8 and bf16
paths compute what they should."""
import copy
import types

import pytest
import torch
import torch.nn as nn

import dynamicrafter_core as dc
from dynamicrafter_core.attention import attention, reference_attention
from dynamicrafter_core.config import UNetConfig
from dynamicrafter_core.pipeline import animate
import dynamicrafter_core.unet as unet_module
from dynamicrafter_core.errors import InputError
from dynamicrafter_core.unet import (FP8, FP8_LAYERS, FP8_MATMUL_LINEAR, ResBlock, SpatialTransformer, TemporalConvBlock,
                                     UNet, ff_token_limit)
from tests.conftest import CHECKPOINT

SAME = 1e-4  # max |a - b| / std(b) in float32
# these run float8 products on the CPU, which older torch releases cannot
cpu_fp8 = pytest.mark.skipif(unet_module.fp8_matmul_unsupported(torch.device("cpu")) is not None,
                             reason=f"torch {torch.__version__} does not multiply float8 matrices on the CPU")


def relative(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().std()).item()


@pytest.mark.parametrize("causal", [False, True])
def test_reference_attention_is_sdpa(causal):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 37, 4 * 8, generator=g) for _ in range(3))
    fast = attention(q, k, v, heads=4, is_causal=causal)
    with reference_attention():
        slow = attention(q, k, v, heads=4, is_causal=causal)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ff_tokens", [0, 1, 100, None])
def test_layout_and_token_slices_keep_the_output(model, unet_inputs, channels_last, ff_tokens):
    unet = copy.deepcopy(model.unet)
    with torch.no_grad():
        unet.channels_last, unet.ff_tokens = False, 0
        plain = unet(*unet_inputs)
        unet.channels_last, unet.ff_tokens = channels_last, ff_tokens
        assert relative(unet(*unet_inputs), plain) <= SAME


def test_channels_last_temporal_convolutions_keep_the_output(model, unet_inputs):
    unet = copy.deepcopy(model.unet)
    blocks = [m for m in unet.modules() if isinstance(m, TemporalConvBlock)]
    assert blocks and all(m.channels_last is None for m in blocks)  # the default: channels-last on the CPU
    with torch.no_grad():
        fast = unet(*unet_inputs)
        for m in blocks:
            m.channels_last = False
        assert relative(fast, unet(*unet_inputs)) <= SAME


@pytest.mark.parametrize("channels_last", [False, True])
def test_blocks_keep_the_memory_format(model, channels_last):
    """The transformers hand back the layout they were given (no silent NCHW <-> NHWC round trips)."""
    block = model.unet.input_blocks[1]  # ResBlock, SpatialTransformer, TemporalTransformer
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(8, 32, 16, 24).contiguous(memory_format=fmt)
    emb, context = torch.randn(8, 128), torch.randn(8, 93, 16)
    with torch.no_grad():
        for layer in block:
            x = layer(x, emb, 2) if isinstance(layer, ResBlock) else (
                layer(x, context) if isinstance(layer, SpatialTransformer) else layer(x, 2))
            assert x.is_contiguous(memory_format=fmt), type(layer).__name__


def test_gpu_slices_bound_the_feed_forward():
    tokens = torch.empty(81920, 16, 320, dtype=torch.bfloat16, device="meta")  # not a CPU: the GPU rule
    limit = ff_token_limit(None, tokens)
    assert 16 * 320 * 2 * limit <= 512 << 20 < 16 * 320 * 2 * (limit + 1)
    assert ff_token_limit(0, tokens) == 0


def test_fp8_storage_is_its_bf16_twin(model, unet_inputs):
    stored = copy.deepcopy(model.unet).store_fp8(torch.bfloat16)
    assert list(stored.state_dict()) == list(model.unet.state_dict())  # the released key names
    assert stored.input_blocks[1][0].in_layers[2].weight.dtype == FP8
    assert stored.input_blocks[1][0].in_layers[0].weight.dtype == torch.bfloat16
    twin = copy.deepcopy(model.unet).to(torch.bfloat16)
    for fp8, bf16 in zip(stored.modules(), twin.modules()):
        if hasattr(fp8, "weight_scale"):
            bf16.weight.data = fp8.weight.to(torch.bfloat16) * fp8.weight_scale.to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(stored(*unet_inputs), twin(*unet_inputs), rtol=0, atol=0)


def test_fp8_storage_refuses_host_layers():
    class HostLinear(nn.Linear):
        pass

    ops = types.SimpleNamespace(Linear=HostLinear, Conv1d=nn.Conv1d, Conv2d=nn.Conv2d, Conv3d=nn.Conv3d,
                                GroupNorm=nn.GroupNorm, LayerNorm=nn.LayerNorm)
    cfg = UNetConfig(model_channels=32, channel_mult=(1,), attention_resolutions=(1,), num_head_channels=16,
                     context_dim=4, num_res_blocks=1)
    with pytest.raises(TypeError, match="HostLinear"):
        UNet(cfg, ops=ops).store_fp8()


@cpu_fp8
def test_fp8_matmul_is_the_product_of_the_dequantised_factors():
    """A float8-multiplying linear layer computes (per-token scaled x) times (per-channel scaled W): the same as
    upcasting both float8 factors and multiplying them in float32, but for the bf16 output's rounding."""
    g = torch.Generator().manual_seed(2)
    layer = nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 64, generator=g) * torch.logspace(-3, 1, 48)[:, None])  # channels of all sizes
    store = nn.Sequential(layer)
    unet_module.store_fp8(store, torch.bfloat16, matmul=True)
    assert type(layer) is FP8_MATMUL_LINEAR and layer.weight.dtype == FP8
    x = (torch.randn(2, 5, 64, generator=g) * torch.logspace(-2, 2, 5)[None, :, None]).to(torch.bfloat16)  # tokens of all sizes
    rows = x.reshape(-1, 64).float()
    x_scale = rows.abs().amax(1, keepdim=True) / 448
    x_dequantised = (rows / x_scale).to(FP8).float() * x_scale
    w_dequantised = layer.weight.float() * layer.weight_scale
    want = (x_dequantised @ w_dequantised.T + layer.bias.float()).reshape(2, 5, 48)
    with torch.no_grad():
        got = layer(x)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 5, 48)
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2 * want.abs().amax().item())
    # and it is a float8 product: as far from the exact one as float8's 3-bit mantissa puts it, not bf16's 8
    exact = x.float() @ layer.weight.float().mul(layer.weight_scale).T + layer.bias.float()
    assert (got.float() - exact.reshape(got.shape)).abs().max() > 1e-3 * exact.abs().max()


@cpu_fp8
def test_fp8_matmul_runs_the_unet_linear_layers_on_float8_products(model, unet_inputs):
    stored = copy.deepcopy(model.unet).store_fp8(torch.bfloat16, matmul=True)
    assert list(stored.state_dict()) == list(model.unet.state_dict())
    linears = [m for m in stored.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is FP8_MATMUL_LINEAR for m in linears)  # the fixture's widths are multiples of 16
    convs = [m for m in stored.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is FP8_LAYERS[nn.Conv2d] for m in convs)  # convolutions still upcast
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in linears]

    class Products(torch.utils._python_dispatch.TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._scaled_mm.default:
                Products.count += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Products():
        out = stored(*unet_inputs)
    for hook in hooks:
        hook.remove()
    assert Products.count == len(calls) > 0
    with torch.no_grad():
        bf16 = copy.deepcopy(model.unet).to(torch.bfloat16)(*unet_inputs)
        weights_only = copy.deepcopy(model.unet).store_fp8(torch.bfloat16)(*unet_inputs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # quantising the activations too moves the output little beyond what float8 weights already do (on this tiny
    # random model: 18 % of its mean magnitude on average, against 15 % for float8 weights alone)
    assert (out - bf16).abs().mean() < 1.5 * (weights_only - bf16).abs().mean()


def test_fp8_matmul_leaves_layers_of_other_sizes_upcasting():
    layers = nn.Sequential(nn.Linear(64, 48), nn.Linear(40, 64), nn.Conv2d(16, 16, 3))
    unet_module.store_fp8(layers, torch.bfloat16, matmul=True)
    assert [type(m) for m in layers] == [FP8_MATMUL_LINEAR, FP8_LAYERS[nn.Linear], FP8_LAYERS[nn.Conv2d]]
    unet_module.store_fp8(layers, torch.bfloat16)  # and back to storage only
    assert type(layers[0]) is FP8_LAYERS[nn.Linear]


def test_fp8_matmul_refusals_say_what_to_do(model, monkeypatch):
    with pytest.raises(InputError, match="bfloat16.*float32.*use bf16"):
        copy.deepcopy(model.unet).store_fp8(torch.float32, matmul=True)
    monkeypatch.setattr(unet_module, "fp8_matmul_unsupported", lambda device: "no float8 tensor cores here")
    unet = copy.deepcopy(model.unet)
    with pytest.raises(InputError, match="no float8 tensor cores here.*matmul=False.*--fp8"):
        unet.store_fp8(torch.bfloat16, matmul=True)
    assert unet.input_blocks[1][0].in_layers[2].weight.dtype == torch.float32  # refused before any change


def test_only_gpus_with_float8_tensor_cores_are_taken(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    why = unet_module.fp8_matmul_unsupported(torch.device("cuda"))
    assert "RTX 3090 (compute capability 8.6) has no float8 tensor cores; they start at 8.9" in why
    for capability in ((8, 9), (9, 0), (10, 0)):  # Ada, Hopper, Blackwell
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert unet_module.fp8_matmul_unsupported(torch.device("cuda")) is None


def test_bf16_weights_run_with_float32_group_norms(model, unet_inputs):
    unet = copy.deepcopy(model.unet).to(torch.bfloat16)
    with torch.no_grad():
        out, want = unet(*unet_inputs), model.unet(*unet_inputs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert ((out - want).abs().mean() / want.abs().mean()).item() < 0.1


def test_low_memory_mode_makes_the_same_video(model, image):
    fast = animate(model, image, "a red square", frames=4, steps=2, seed=3)
    lean = animate(model, image, "a red square", frames=4, steps=2, seed=3, low_memory=True)
    torch.testing.assert_close(lean, fast, rtol=0, atol=1e-4)  # batched vs separate guidance branches: rounding


def test_placing_the_encoding_stage_moves_the_towers_not_the_unet(tiny_config):
    model = dc.load_model(CHECKPOINT, config=tiny_config)
    model.place("encode", "meta")
    assert model.text_encoder.token_embedding.weight.is_meta and model.query_transformer.proj_in.weight.is_meta
    assert model.unet.input_blocks[0][0].weight.device.type == "cpu"
    assert model.vae.encoder.conv_in.weight.device.type == "cpu"


@pytest.mark.slow  # Dynamo's tracing alone takes ~20 s on two cores
def test_compiled_unet_is_the_plain_unet(model, unet_inputs):
    """Dynamo traces the UNet as written (the eager backend keeps the kernels, so the result is exact)."""
    unet = copy.deepcopy(model.unet)
    with torch.no_grad():
        plain = unet(*unet_inputs)
        unet.compile(backend="eager")
        torch.testing.assert_close(unet(*unet_inputs), plain, rtol=0, atol=0)
