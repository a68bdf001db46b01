"""UNet details the parity fixture does not reach: the 256 model's learnable image gate, and the rule that decides
whether the image context is split per frame."""
import math

import pytest
import torch

from dynamicrafter_core.config import UNetConfig
from dynamicrafter_core.unet import CrossAttention, UNet


def reference_dual_attention(x, ctx, attn, gate):
    """softmax(Q K^T / sqrt(d)) V + gate * softmax(Q K_ip^T / sqrt(d)) V_ip, one head, written out."""
    q = x @ attn.to_q.weight.T
    text, image = ctx[:, :77], ctx[:, 77:]

    def head(k_layer, v_layer, c):
        k, v = c @ k_layer.weight.T, c @ v_layer.weight.T
        return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1) @ v

    return head(attn.to_k, attn.to_v, text) + gate * head(attn.to_k_ip, attn.to_v_ip, image)


@pytest.mark.parametrize("alpha", [0.0, 0.4, -2.0])
def test_learnable_image_gate_is_tanh_alpha_plus_one(alpha):
    torch.manual_seed(0)
    attn = CrossAttention(8, heads=1, dim_head=8, context_dim=6, image_context=True, learnable_gate=True)
    with torch.no_grad():
        attn.alpha.fill_(alpha)
        attn.to_out[0].weight.copy_(torch.eye(8))
        attn.to_out[0].bias.zero_()
    x, ctx = torch.randn(2, 5, 8), torch.randn(2, 77 + 16, 6)
    expected = reference_dual_attention(x, ctx, attn, math.tanh(alpha) + 1)
    torch.testing.assert_close(attn(x, ctx), expected, rtol=1e-5, atol=1e-5)


def test_fixed_gate_of_the_512_models_is_one():
    torch.manual_seed(1)
    attn = CrossAttention(8, heads=1, dim_head=8, context_dim=6, image_context=True, learnable_gate=False)
    assert not hasattr(attn, "alpha")
    with torch.no_grad():
        attn.to_out[0].weight.copy_(torch.eye(8))
        attn.to_out[0].bias.zero_()
    x, ctx = torch.randn(1, 3, 8), torch.randn(1, 77 + 4, 6)
    torch.testing.assert_close(attn(x, ctx), reference_dual_attention(x, ctx, attn, 1.0), rtol=1e-5, atol=1e-5)


def test_image_context_is_split_per_frame_only_with_16_tokens_per_frame():
    unet = UNet(UNetConfig(model_channels=32, channel_mult=(1,), attention_resolutions=(1,), num_head_channels=16,
                           context_dim=4, num_res_blocks=1))
    frames = 3
    text = torch.randn(1, 77, 4)
    per_frame = torch.arange(frames * 16, dtype=torch.float32)[None, :, None].expand(1, -1, 4)
    split = unet.frame_context(torch.cat([text, per_frame], 1), frames)
    assert split.shape == (frames, 77 + 16, 4)
    for i in range(frames):  # frame i sees image tokens [16 i, 16 i + 16) and the whole prompt
        assert torch.equal(split[i, 77:, 0], torch.arange(16 * i, 16 * i + 16, dtype=torch.float32))
        assert torch.equal(split[i, :77], text[0])
    whole = unet.frame_context(torch.cat([text, per_frame[:, :8]], 1), frames)  # not 16 per frame: all to all
    assert whole.shape == (frames, 77 + 8, 4) and all(torch.equal(whole[i], whole[0]) for i in range(frames))
