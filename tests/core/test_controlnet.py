"""ToonCrafter's sketch ControlNet on the tiny_toon fixture (tests/fixtures/tiny_toon): what a user relies on beyond
the parity check: strength 0 is exactly the video without the sketch, the residuals fit the UNet, a file that does
not fit is refused naming the key, and a hint that does not fit the video is refused naming what differs."""
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dynamicrafter_core as dc
from dynamicrafter_core.errors import CheckpointError, ConfigError, InputError

FIXTURE = Path(__file__).parent.parent / "fixtures" / "tiny_toon"
CONFIG = json.loads((FIXTURE / "tiny_toon.config.json").read_text())
SKETCH = FIXTURE / CONFIG["controlnet"]["file"]
SECTION = CONFIG["controlnet"]["config"]


@pytest.fixture(scope="module")
def ref():
    return load_file(str(FIXTURE / "tiny_toon.reference.safetensors"))


@pytest.fixture(scope="module")
def model():
    return dc.load_model(FIXTURE / CONFIG["checkpoint_file"], config=CONFIG["model"])


@pytest.fixture(scope="module")
def control():
    return dc.load_controlnet(SKETCH, config=SECTION)


@pytest.fixture(scope="module")
def sketch_file():
    return load_file(str(SKETCH))


def contexts(ref):
    text = ref["text.embedding"]
    return (torch.cat([text[:1], ref["image.context"]], 1), torch.cat([text[1:], ref["image.context_uncond"]], 1))


def run(model, ref, steps=2, **kw):
    cond, uncond = contexts(ref)
    tag = "sketch_eta1"
    return dc.sample(model, context=cond, uncond_context=uncond, concat=ref[f"{tag}.concat"], steps=steps, cfg=7.5,
                     eta=1.0, guidance_rescale=0.7, spacing="uniform_trailing", fs=10, x_T=ref[f"{tag}.x_T"],
                     step_noise=ref[f"{tag}.step_noise"], **kw)


# --- the network -------------------------------------------------------------------------------------------------


def test_thirteen_residuals_one_per_skip_and_the_middle(control, model, ref):
    x = ref["control.x"][:, :4]
    out = control(x, ref["control.hint"], ref["control.t"], ref["control.context"])
    assert len(out) == 13 == len(model.unet.skip_channels) + 1
    sizes = [8] * 3 + [4] * 3 + [2] * 3 + [1] * 4  # per level: (a downsample or conv_in) and 2 res blocks; middle
    for k, r in enumerate(out):
        assert tuple(r.shape) == (1, control.cfg.residual_channels[k], 8, sizes[k], sizes[k]), k
    assert list(control.cfg.residual_channels[:12]) == list(model.unet.skip_channels)


def test_every_frame_sees_the_image_tokens_too(control, ref):
    """The fork's ControlNet attends to the whole context (kijai's wrapper would drop everything after token 77)."""
    x, hint, t, ctx = ref["control.x"][:, :4], ref["control.hint"], ref["control.t"], ref["control.context"]
    other = ctx.clone()
    other[:, 77:] = torch.randn_like(other[:, 77:])
    a, b = control(x, hint, t, ctx), control(x, hint, t, other)
    assert not torch.allclose(a[1], b[1])


def test_unet_strength_zero_and_no_control_agree_exactly(model, ref):
    x, t, ctx, fs = ref["control.x"], ref["control.t"], ref["control.context"], ref["control.fs"]
    residuals = [ref[f"control.residual.{k}"] for k in range(13)]
    plain = model.unet(x, t, ctx, fs)
    assert torch.equal(model.unet(x, t, ctx, fs, control=residuals, control_scale=0.0), plain)
    assert not torch.allclose(model.unet(x, t, ctx, fs, control=residuals, control_scale=0.6), plain)


def test_unet_refuses_residuals_that_do_not_fit(model, ref):
    x, t, ctx, fs = ref["control.x"], ref["control.t"], ref["control.context"], ref["control.fs"]
    residuals = [ref[f"control.residual.{k}"] for k in range(13)]
    with pytest.raises(InputError, match="13 ControlNet residuals.*got 12"):
        model.unet(x, t, ctx, fs, control=residuals[:12])
    with pytest.raises(InputError, match="residual 3 has 32 channels of 8x8, where the UNet has 32 of 4x4"):
        model.unet(x, t, ctx, fs, control=residuals[3:4] + residuals[1:3] + residuals[:1] + residuals[4:])


# --- sampling ----------------------------------------------------------------------------------------------------


def test_strength_zero_gives_exactly_the_video_without_the_sketch(model, control, ref):
    plain = run(model, ref)
    assert torch.equal(run(model, ref, control=control, hint=ref["control.hint"], control_scale=0.0), plain)
    assert not torch.allclose(run(model, ref, control=control, hint=ref["control.hint"], control_scale=0.6), plain)


@pytest.mark.parametrize("batch_branches", [True, False])
def test_every_guidance_branch_runs_the_controlnet_on_x_t_with_its_own_context(model, control, ref, batch_branches,
                                                                               monkeypatch):
    seen = []
    forward = control.forward

    def record(x, hint, t, context):
        seen.append((x.shape[1], hint.shape[0], context.clone()))
        return forward(x, hint, t, context)

    monkeypatch.setattr(control, "forward", record)
    cond, uncond = contexts(ref)
    text_uncond = torch.cat([ref["text.embedding"][1:], ref["image.context"]], 1)
    run(model, ref, steps=1, control=control, hint=ref["control.hint"], image_cfg=2.0,
        text_uncond_context=text_uncond, batch_branches=batch_branches)
    got = torch.cat([c for _, _, c in seen])
    assert all(channels == 4 for channels, _, _ in seen)  # x_t, not the 8-channel UNet input
    assert sum(b for _, b, _ in seen) == 3  # the hint goes to all three branches
    assert torch.equal(got, torch.cat([cond, uncond, text_uncond]))


@pytest.mark.parametrize("change, message", [
    (lambda h: h[:, :, :7], "the sketch hint has 7 frames but the video has 8"),
    (lambda h: h[..., :60], "frames are 60x64 pixels .* but the video is 64x64"),
    (lambda h: h.expand(-1, 3, -1, -1, -1), "has 3 channels but this ControlNet takes 1"),
    (lambda h: h[:, :, 0], r"must be \(batch, 1, frames, height, width\); got shape \(1, 1, 64, 64\)"),
    (lambda h: h.expand(2, -1, -1, -1, -1), "hint has batch 2 but there are 1 videos"),
    (lambda h: h * 2 - 1, r"range from -1 to 1, but \[0, 1\] is expected"),
    (lambda h: (h * 255).to(torch.uint8), "divide 0..255 values by 255"),
    (lambda h: h.clone().fill_(float("nan")), "NaN"),
])
def test_a_hint_that_does_not_fit_the_video_is_refused(model, control, ref, change, message):
    with pytest.raises(InputError, match=message):
        run(model, ref, steps=1, control=control, hint=change(ref["control.hint"]))


def test_missing_partners_and_scale_range(model, control, ref):
    hint = ref["control.hint"]
    with pytest.raises(InputError, match="hint was given without a ControlNet"):
        run(model, ref, steps=1, hint=hint)
    with pytest.raises(InputError, match="ControlNet was given without a sketch hint"):
        run(model, ref, steps=1, control=control)
    for scale in (-0.1, 2.5, float("nan")):
        with pytest.raises(InputError, match="control_scale must be a number from 0.0 to 2.0"):
            run(model, ref, steps=1, control=control, hint=hint, control_scale=scale)
    with pytest.raises(InputError, match="control must be a ControlNet"):
        run(model, ref, steps=1, control=object(), hint=hint)


def test_the_controlnet_call_checks_its_hint_shape(control, ref):
    x = ref["control.x"][:, :4]
    with pytest.raises(InputError, match="frames are 32x32 pixels"):
        control(x, ref["control.hint"][..., :32, :32], ref["control.t"], ref["control.context"])
    with pytest.raises(InputError, match="takes the noisy latents"):
        control(ref["control.x"], ref["control.hint"], ref["control.t"], ref["control.context"])


# --- loading -----------------------------------------------------------------------------------------------------


def test_a_file_of_another_width_is_refused_saying_what_it_looks_like():
    with pytest.raises(CheckpointError, match=r"`input_blocks.0.0.weight` has shape \[32, 4, 3, 3\].*model_channels "
                                              r"32, 1 hint channel and context width 4.*builds model_channels 320"):
        dc.load_controlnet(SKETCH)  # the released sketch_encoder's configuration


def test_missing_extra_and_misshapen_keys_are_named(sketch_file):
    missing = {k: v for k, v in sketch_file.items() if k != "zero_convs.5.0.weight"}
    with pytest.raises(CheckpointError, match="missing `zero_convs.5.0.weight`"):
        dc.load_controlnet(missing, config=SECTION)
    with pytest.raises(CheckpointError, match="has `label_emb.0.weight`, which the configuration does not have"):
        dc.load_controlnet({**sketch_file, "label_emb.0.weight": torch.zeros(2)}, config=SECTION)
    bad = dict(sketch_file, **{"middle_block_out.0.weight": torch.zeros(16, 32, 1, 1)})
    with pytest.raises(CheckpointError, match=r"`middle_block_out.0.weight` has shape \[16, 32, 1, 1\]"):
        dc.load_controlnet(bad, config=SECTION)


def test_a_model_checkpoint_is_not_a_controlnet():
    with pytest.raises(CheckpointError, match="not a ControlNet.*looks like a ToonCrafter checkpoint"):
        dc.load_controlnet(FIXTURE / CONFIG["checkpoint_file"], config=SECTION)


def test_released_ckpt_format_loads_and_every_tensor_is_a_copy(tmp_path, sketch_file, ref):
    """sketch_encoder.ckpt is a bare OrderedDict of tensors; nothing loaded may share memory with the source."""
    source = OrderedDict((k, v.float().clone()) for k, v in sketch_file.items())
    path = tmp_path / "sketch_encoder.ckpt"
    torch.save(source, path)
    from_ckpt = dc.load_controlnet(path, config=SECTION)
    from_dict = dc.load_controlnet(source, config=SECTION, dtype=None)
    for tensor in source.values():
        tensor.zero_()  # the loaded networks must not notice
    x, hint, t, ctx = ref["control.x"][:, :4], ref["control.hint"], ref["control.t"], ref["control.context"]
    want = dc.load_controlnet(SKETCH, config=SECTION)(x, hint, t, ctx)
    for net in (from_ckpt, from_dict):
        assert all(torch.equal(a, b) for a, b in zip(net(x, hint, t, ctx), want))


def test_dtype_none_keeps_the_files_precision(sketch_file):
    net = dc.load_controlnet(SKETCH, config=SECTION, dtype=None)
    assert net.dtype == torch.float16 and not any(p.requires_grad for p in net.parameters())


# --- configuration ------------------------------------------------------------------------------------------------


def test_the_released_configuration_is_the_default():
    cfg = dc.controlnet_config({"target": "cldm.cldm.ControlNet", "params": {
        "image_size": 32, "in_channels": 4, "hint_channels": 1, "model_channels": 320,
        "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
        "num_head_channels": 64, "use_spatial_transformer": True, "use_linear_in_transformer": True,
        "transformer_depth": 1, "context_dim": 1024, "use_checkpoint": True, "legacy": False}})
    assert cfg == dc.ControlNetConfig()
    assert cfg.residual_channels == (320,) * 4 + (640,) * 3 + (1280,) * 6


@pytest.mark.parametrize("change, message", [
    ({"use_linear_in_transformer": False}, "`use_linear_in_transformer: False` is not supported"),
    ({"use_spatial_transformer": None}, "leaves `use_spatial_transformer` out, which the original reads as False"),
    ({"transformer_depth": 2}, "`transformer_depth: 2` is not supported"),
    ({"resblock_updown": True}, "`resblock_updown: True` is not supported"),
    ({"num_head_channels": None}, "must set num_head_channels"),
    ({"context_dim": None}, "must set `context_dim`"),
    ({"only_mid_control": True}, "has `only_mid_control`, which the original ControlNet does not take"),
    ({"num_head_channels": 7}, "cannot divide evenly"),
])
def test_unsupported_configurations_are_named(change, message):
    params = {k: v for k, v in {**SECTION["params"], **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        dc.controlnet_config({"target": SECTION["target"], "params": params})
