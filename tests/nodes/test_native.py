"""The native MODEL path in a real ComfyUI (in-process, CPU): DynamiCrafter through ComfyUI's own samplers, guiders,
context windows and model patches, with the original's numbers where our scheduler, sampler, guider and noise are
used."""
import json

import pytest
import torch
from safetensors.torch import load_file

from dynamicrafter_core.pipeline import sample

from .helpers import FIXTURE, comfy_image
from .real_host import (comfy, context_windows_fail_for_frames_in_batch, dynamic_vram, load, pytestmark,  # noqa: F401
                        real)

NORMALISED = 1e-4  # native vs bundled sampler, the same noise: only float rounding differs
CHAIN_TOL = 1e-2  # vs the original's latents (tests/acceptance/parity_check.py's tolerance for whole runs)


def error(got, want):
    return ((got - want).abs().max() / want.std()).item()


@pytest.fixture(scope="module")
def model(real):
    return load(real, weight_dtype="fp32")[0]


@pytest.fixture(scope="module")
def interp_model(real):
    return load(real, weight_dtype="fp32", variant="512_interp")[0]


def encode(real, model, mode="i2v", frames=4, image_cfg=False):
    """Visual Detail Guidance + Encode Image Context, as a workflow wires them."""
    extra = {"end_image": comfy_image((64, 64), seed=2)} if mode == "interpolation" else {}
    guidance, frame = real["DynamiCrafterAnimate_VisualDetailGuidance"].encode(
        model=model, image=comfy_image((96, 128)), mode=mode, width=64, height=64, fit="crop", frames=frames, **extra)
    (context,) = real["DynamiCrafterAnimate_EncodeImageContext"].encode(model=model, image=frame, prompt="a cat",
                                                                        negative_prompt="blurry")
    return context, guidance


def bundled(real, model, context, guidance, seed, **options):
    settings = dict(steps=3, cfg=7.5, image_cfg=0.0, eta=1.0, fs=0, guidance_rescale=-1.0, spacing="auto")
    settings.update(options)
    frames, latent = real["DynamiCrafterAnimate_I2VSampler"].generate(model=model, context=context, guidance=guidance,
                                                                      seed=seed, **settings)
    return frames, latent["samples"]


def custom_advanced(noise, guider, sampler, sigmas, latent):
    """Core SamplerCustomAdvanced, as the node runs it."""
    import comfy_extras.nodes_custom_sampler as custom

    node = custom.SamplerCustomAdvanced
    out = node.execute(noise, guider, sampler, sigmas, latent) if hasattr(node, "execute") \
        else node().sample(noise, guider, sampler, sigmas, latent)
    return (out.result if hasattr(out, "result") else out)[0]


def native(real, model, context, guidance, seed, steps=3, cfg=7.5, image_cfg=0.0, eta=1.0, guidance_rescale=-1.0,
           end="original", patch=None):
    """Our nodes on ComfyUI's SamplerCustomAdvanced: DynamiCrafter Model, Conditioning, Noise, Guider, DDIM Sampler,
    Scheduler. `patch`: a function MODEL -> MODEL (ComfyUI nodes between DynamiCrafter Model and the guider)."""
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    if patch is not None:
        unet = patch(unet)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, seed, 0)
    (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(unet, steps, "auto", end)
    (sampler,) = real["DynamiCrafterAnimate_DDIMSampler"].sampler(eta, True)
    (guider,) = real["DynamiCrafterAnimate_Guider"].guider(unet, positive, negative, cfg, image_cfg, guidance_rescale)
    (noise,) = real["DynamiCrafterAnimate_Noise"].noise(seed)
    return custom_advanced(noise, guider, sampler, sigmas, latent)


@pytest.mark.parametrize("settings", [dict(eta=0.0), dict(eta=1.0), dict(eta=1.0, image_cfg=2.0),
                                      dict(eta=0.0, cfg=1.0), dict(eta=1.0, guidance_rescale=0.0, steps=5)],
                         ids=["i2v_eta0", "i2v_eta1", "image_cfg", "no_cfg", "no_rescale"])
def test_our_pieces_on_samplercustomadvanced_give_the_bundled_samplers_latents(real, model, settings):
    context, guidance = encode(real, model)
    frames, expected = bundled(real, model, context, guidance, 11, **settings)
    latent = native(real, model, context, guidance, 11, **settings)
    assert latent["samples"].shape == expected.shape == (4, 4, 8, 8)
    assert error(latent["samples"], expected) < NORMALISED
    (decoded,) = real["DynamiCrafterAnimate_Decode"].decode(model, latent)
    assert (decoded - frames).abs().max() < 1e-3


def test_the_native_path_gives_the_same_latents_under_dynamic_vram(real, request):
    """ComfyUI 0.33's Dynamic VRAM (weightless comfy.ops layers until loaded, the streaming patcher) on the MODEL."""
    model = load(real, weight_dtype="fp32")[0]
    context, guidance = encode(real, model)
    expected = native(real, model, context, guidance, 4)["samples"]
    request.getfixturevalue("dynamic_vram")
    streamed = load(real, weight_dtype="fp32")[0]
    assert torch.equal(native(real, streamed, context, guidance, 4)["samples"], expected)


@pytest.mark.parametrize("weight_dtype", ["bf16", "fp8_e4m3fn"])
def test_the_native_path_matches_the_bundled_sampler_in_narrow_weight_dtypes(real, weight_dtype):
    dc = load(real, weight_dtype=weight_dtype)[0]
    context, guidance = encode(real, dc)
    _, expected = bundled(real, dc, context, guidance, 6)
    latent = native(real, dc, context, guidance, 6)["samples"]
    assert torch.isfinite(latent).all() and error(latent, expected) < NORMALISED


def test_interpolation_and_loop_on_the_native_path(real, interp_model):
    for mode in ("interpolation", "loop"):
        context, guidance = encode(real, interp_model, mode=mode)
        frames, expected = bundled(real, interp_model, context, guidance, 5)
        latent = native(real, interp_model, context, guidance, 5)
        (decoded,) = real["DynamiCrafterAnimate_Decode"].decode(interp_model, latent)
        assert decoded.shape == frames.shape  # a loop's repeated last frame dropped by both
        assert error(latent["samples"][:expected.shape[0]], expected) < NORMALISED


class FixedNoise:
    """A NOISE giving the original's x_T (as tests/acceptance/parity_check.py feeds it)."""

    def __init__(self, x_T):
        self.seed, self.x_T = 0, x_T

    def generate_noise(self, latent):
        return self.x_T[0].transpose(0, 1).contiguous()  # (1, 4, T, h, w) -> frames in the batch


@pytest.mark.parametrize("tag", ["i2v_eta0", "i2v_eta1", "interp_eta1", "nocfg_eta0"])
def test_the_native_path_matches_the_originals_latents(real, model, tag, pack):
    """The fixture's reference runs (the original implementation's outputs): the same contexts, guidance latents,
    x_T and step noise through our guider, DDIM sampler and scheduler on ComfyUI's SamplerCustomAdvanced."""
    native_mod = pack.nodes.native
    run = json.loads((FIXTURE / "tiny_v07.config.json").read_text())["runs"][tag]
    ref = load_file(str(FIXTURE / "tiny_v07.reference.safetensors"))
    text, ctx, ctx_u = ref["text.embedding"], ref["image.context"], ref["image.context_uncond"]
    cond, uncond = torch.cat([text[:1], ctx], 1), torch.cat([text[1:], ctx_u], 1)
    concat = ref[f"{tag}.concat"]
    scale = model.core.config.scale_factor
    rows = (concat[0].transpose(0, 1) / scale).contiguous()
    extra = {native_mod.CONCAT: rows, native_mod.FS: run["fs"]}
    positive, negative = [[cond, dict(extra)]], [[uncond, dict(extra)]]
    latent = {"samples": torch.zeros_like(rows)}
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(unet, run["steps"], run["spacing"], "original")
    step_noise = ref[f"{tag}.step_noise"][:, 0].transpose(1, 2)  # (steps, T, 4, h, w)
    sampler = native_mod.ddim_sampler(run["eta"], True, step_noise=step_noise)
    (guider,) = real["DynamiCrafterAnimate_Guider"].guider(unet, positive, negative, run["cfg"], 0.0,
                                                           run["guidance_rescale"])
    out = custom_advanced(FixedNoise(ref[f"{tag}.x_T"]), guider, sampler, sigmas, latent)["samples"]
    got = (out * scale).transpose(0, 1)[None]
    core = sample(model.core, cond, uncond if run["cfg"] != 1 else None, concat, steps=run["steps"], cfg=run["cfg"],
                  eta=run["eta"], guidance_rescale=run["guidance_rescale"], spacing=run["spacing"],
                  fs=torch.tensor([run["fs"]]), x_T=ref[f"{tag}.x_T"], step_noise=ref[f"{tag}.step_noise"])
    assert error(got, core) < NORMALISED
    assert error(got, ref[f"{tag}.latents"]) < CHAIN_TOL


# -- ComfyUI's own samplers --------------------------------------------------------------------------------------


def test_the_sigma_table_makes_comfyuis_euler_a_ddim_step(real, model, pack):
    """The dynamic rescale folded into the sigmas (sigma_eff = sigma / s): one step of stock euler between two of
    the table's sigmas is the original's DDIM step (eta 0, the rescale applied exactly), from the same latent."""
    import comfy.samplers

    context, guidance = encode(real, model)
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 3, 0)
    ms = unet.get_model_object("model_sampling")
    for t, t_next in ((599, 399), (379, 179), (150, 0)):
        sigmas = ms.sigmas[[t, t_next]].clone()
        (guider,) = real["DynamiCrafterAnimate_Guider"].guider(unet, positive, negative, 7.5, 0.0, 0.7)
        (noise,) = real["DynamiCrafterAnimate_Noise"].noise(3)
        ddim = custom_advanced(noise, guider, pack.nodes.native.ddim_sampler(0.0, False), sigmas, latent)["samples"]
        euler = custom_advanced(noise, guider, comfy.samplers.sampler_object("euler"), sigmas, latent)["samples"]
        z = euler * ms.z_factor(sigmas[-1:])  # euler ends in ComfyUI's x; the DDIM sampler in the model's latent
        assert error(z, ddim) < NORMALISED, (t, t_next)


def test_stock_ksampler_makes_a_sensible_video(real, model):
    """KSampler's euler_ancestral + simple with DynamiCrafter Guidance Rescale: another draw of the same process as
    the original's DDIM (eta 1): finite, with the same spread."""
    import comfy.sample

    context, guidance = encode(real, model)
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    (patched,) = real["DynamiCrafterAnimate_GuidanceRescale"].patch(unet, 0.7)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 3, 0)
    noise = comfy.sample.prepare_noise(latent["samples"], 3)
    stock = comfy.sample.sample(patched, noise, 20, 7.5, "euler_ancestral", "simple", positive, negative,
                                latent["samples"], seed=3)
    ours = native(real, model, context, guidance, 3, steps=20, end="clean")["samples"]
    assert torch.isfinite(stock).all()
    assert 0.75 < stock.std() / ours.std() < 1.33


def test_the_guidance_rescale_patch_on_comfyuis_guider_is_the_originals(real, model, pack):
    """Stock CFGGuider + DynamiCrafter Guidance Rescale = DynamiCrafter Guider (cfg and the rescale over the video)."""
    import comfy.samplers

    context, guidance = encode(real, model)
    expected = native(real, model, context, guidance, 9)["samples"]
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    (patched,) = real["DynamiCrafterAnimate_GuidanceRescale"].patch(unet, 0.7)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 9, 0)
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_cfg(7.5)
    (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(unet, 3, "auto", "original")
    (noise,) = real["DynamiCrafterAnimate_Noise"].noise(9)
    got = custom_advanced(noise, guider, pack.nodes.native.ddim_sampler(1.0), sigmas, latent)["samples"]
    assert error(got, expected) < CHAIN_TOL  # ComfyUI batches the branches in its own order: rounding differs


# -- context windows ---------------------------------------------------------------------------------------------


def context_windows(unet, length=16, overlap=4):
    """Core Context Windows (Manual) on the frames (dim 0), with ComfyUI 0.33's causal anchor off as the README
    advises (it would show every window one frame more than it was trained on)."""
    import inspect

    try:
        import comfy.context_windows as windows
        from comfy_extras.nodes_context_windows import ContextWindowsManualNode
    except ImportError:
        pytest.skip("this ComfyUI has no context windows")
    if context_windows_fail_for_frames_in_batch():
        pytest.skip("this ComfyUI's context windows fail for any model with frames in the batch (its set_step "
                    "compares every frame's timestep with the sigmas; fixed in later releases)")
    options = dict(context_length=length, context_overlap=overlap, context_stride=1, closed_loop=False, dim=0,
                   context_schedule=windows.ContextSchedules.STATIC_STANDARD,
                   fuse_method=windows.ContextFuseMethods.PYRAMID)
    accepted = inspect.signature(ContextWindowsManualNode.execute).parameters
    options.update({k: False for k in ("freenoise", "causal_window_fix") if k in accepted})
    return ContextWindowsManualNode.execute(unet, **options).result[0]


@pytest.mark.parametrize("mode", ["i2v", "interpolation"])
def test_context_windows_make_a_longer_video_with_the_end_frame_at_the_end(real, model, interp_model, mode):
    dc = model if mode == "i2v" else interp_model
    context, guidance = encode(real, dc, mode=mode, frames=24)
    seen = []

    def spy(unet):
        windowed = context_windows(unet)
        base = type(windowed.model)
        run = base._diffusion

        def record(self, xc, *args, **kwargs):  # which frames carry visual detail guidance, per UNet call
            seen.append(xc[:, 4:].flatten(1).abs().sum(1) > 0)
            return run(self, xc, *args, **kwargs)

        windowed.model._diffusion = record.__get__(windowed.model)
        return windowed

    try:
        latent = native(real, dc, context, guidance, 1, steps=2, patch=spy)
    finally:
        dc.patcher.model.__dict__.pop("_diffusion", None)
    frames = latent["samples"]
    assert frames.shape == (24, 4, 8, 8) and torch.isfinite(frames).all()
    assert seen and all(call.shape[0] == 2 * 16 for call in seen)  # both branches, 16-frame windows
    if mode == "i2v":
        assert all(call.all() for call in seen)  # the start latent on every frame of every window
    else:  # the start latent only on the first window's first frame, the end latent only on the last one's last
        first, last = seen[0].view(2, 16), seen[1].view(2, 16)
        assert first[:, 0].all() and not first[:, 1:].any()
        assert last[:, -1].all() and not last[:, :-1].any()


# -- model patches -----------------------------------------------------------------------------------------------


def test_freeu_and_easycache_run_on_the_native_model(real, model):
    """Core patches that act on the denoiser: FreeU (the UNet's output-block patch, on the tiny UNet's 64-channel
    blocks) changes the video; EasyCache (a wrapper around the diffusion model) runs."""
    context, guidance = encode(real, model)
    plain = native(real, model, context, guidance, 2, steps=4)["samples"]
    try:
        from comfy_extras.nodes_freelunch import FreeU
    except ImportError:
        pytest.skip("no FreeU in this ComfyUI")

    def freeu(unet):
        out = FreeU().patch(unet, 1.3, 1.4, 0.9, 0.2) if hasattr(FreeU, "patch") else \
            FreeU.execute(unet, 1.3, 1.4, 0.9, 0.2).result
        return out[0]

    freed = native(real, model, context, guidance, 2, steps=4, patch=freeu)["samples"]
    assert torch.isfinite(freed).all() and not torch.equal(freed, plain)
    try:
        from comfy_extras.nodes_easycache import EasyCacheNode
    except ImportError:
        return

    def easycache(unet):
        return EasyCacheNode.execute(unet, 0.2, 0.15, 0.95, False).result[0]

    cached = native(real, model, context, guidance, 2, steps=4, patch=easycache)["samples"]
    assert torch.isfinite(cached).all()


def test_rescalecfg_runs_with_ksampler_and_our_guider_says_it_ignores_it(real, model, caplog):
    """ComfyUI's RescaleCFG is not the original's rescale (README), but it must not break anything."""
    import comfy.sample
    from comfy_extras.nodes_model_advanced import RescaleCFG

    context, guidance = encode(real, model)
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    patched = (RescaleCFG().patch(unet, 0.7) if hasattr(RescaleCFG, "patch") else
               RescaleCFG.execute(unet, 0.7).result)[0]
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 3, 0)
    out = comfy.sample.sample(patched, comfy.sample.prepare_noise(latent["samples"], 3), 3, 7.5, "euler", "simple",
                              positive, negative, latent["samples"], seed=3)
    assert torch.isfinite(out).all()
    with caplog.at_level("WARNING"):
        real["DynamiCrafterAnimate_Guider"].guider(patched, positive, negative, 7.5, 0.0, -1.0)
    assert "is not used" in caplog.text


# -- what a user gets wrong --------------------------------------------------------------------------------------


def test_plain_text_conditioning_gets_a_sentence(real, model, pack):
    import comfy.sample

    InputError = pack.dynamicrafter_core.errors.InputError

    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    text = [[torch.zeros(1, 77, 16), {}]]  # what CLIPTextEncode gives
    latent = torch.zeros(4, 4, 8, 8)
    with pytest.raises(InputError, match="DynamiCrafter Conditioning"):
        comfy.sample.sample(unet, torch.randn_like(latent), 2, 7.5, "euler", "simple", text, text, latent, seed=0)


def test_a_model_sampling_patch_is_refused_by_our_nodes(real, model, pack):
    InputError = pack.dynamicrafter_core.errors.InputError

    context, guidance = encode(real, model)

    def discrete(unet):
        import comfy.model_sampling

        patched = unet.clone()

        class Plain(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
            pass

        patched.add_object_patch("model_sampling", Plain())  # what the ModelSamplingDiscrete node does
        return patched

    with pytest.raises(InputError, match="ModelSamplingDiscrete"):
        native(real, model, context, guidance, 1, patch=discrete)


def test_interpolation_guidance_on_an_image_to_video_model_is_refused(real, model, interp_model, pack):
    """Guidance made with the interpolation model, conditioning with the 512 one: what I2V Sampler says for it."""
    context, guidance = encode(real, interp_model, mode="interpolation")
    with pytest.raises(pack.dynamicrafter_core.errors.InputError, match="512_interp"):
        real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 0, 0)


# -- ToonCrafter ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toon(real, comfy, tmp_path_factory):
    """The tiny ToonCrafter and its sketch encoder through Load DynamiCrafter and Load Sketch Encoder."""
    import shutil

    folder = tmp_path_factory.mktemp("toon")
    fixture = FIXTURE.parent / "tiny_toon"
    config = json.loads((fixture / "tiny_toon.config.json").read_text())
    shutil.copy(fixture / "tiny_toon.safetensors", folder / "tiny_toon.safetensors")
    (folder / "tiny_toon.json").write_text(json.dumps(config["model"]))
    shutil.copy(fixture / "tiny_toon_sketch.safetensors", folder / "tiny_sketch.safetensors")
    (folder / "tiny_sketch.json").write_text(json.dumps(config["controlnet"]["config"]))
    comfy["folder_paths"].add_model_folder_path("dynamicrafter", str(folder))
    comfy["folder_paths"].add_model_folder_path("controlnet", str(folder))
    model, _ = real["DynamiCrafterAnimate_Loader"].load(ckpt_name="tiny_toon.safetensors", weight_dtype="fp32",
                                                        variant="auto")
    (encoder,) = real["DynamiCrafterAnimate_SketchEncoderLoader"].load("tiny_sketch.safetensors")
    return model, encoder


@pytest.mark.parametrize("strength", [0.6, 0.0])
def test_tooncrafter_with_sketches_on_the_native_path_gives_i2v_samplers_video(real, toon, strength):
    """Apply Sketch Guidance on DynamiCrafter Conditioning: the same latents and frames (keyframe decoder) as I2V
    Sampler's sketch input for the seed; strength 0 leaves the video without sketches."""
    model, encoder = toon
    context, guidance = encode(real, model, mode="interpolation", frames=8)
    drawing = comfy_image((64, 64), seed=5)
    (sketch,) = real["DynamiCrafterAnimate_SketchGuidance"].encode(encoder, drawing, strength, True, "3")
    frames, expected = bundled(real, model, context, guidance, 8, sketch=sketch)
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 8, 0)
    positive, negative = real["DynamiCrafterAnimate_ApplySketch"].apply(model, positive, negative, sketch, guidance,
                                                                        0.0, 1.0)
    (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(unet, 3, "auto", "original")
    (sampler,) = real["DynamiCrafterAnimate_DDIMSampler"].sampler(1.0, True)
    (guider,) = real["DynamiCrafterAnimate_Guider"].guider(unet, positive, negative, 7.5, 0.0, -1.0)
    (noise,) = real["DynamiCrafterAnimate_Noise"].noise(8)
    out = custom_advanced(noise, guider, sampler, sigmas, latent)
    assert error(out["samples"], expected) < NORMALISED
    (decoded,) = real["DynamiCrafterAnimate_Decode"].decode(model, out)
    assert (decoded - frames).abs().max() < 1e-3
    _, plain = bundled(real, model, context, guidance, 8)
    assert torch.equal(out["samples"], plain) == (strength == 0)


def test_sketches_with_context_windows_get_a_sentence(real, toon, pack):
    model, encoder = toon
    context, guidance = encode(real, model, mode="interpolation", frames=24)
    (sketch,) = real["DynamiCrafterAnimate_SketchGuidance"].encode(encoder, comfy_image((64, 64)), 0.6, True, "12")
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    windowed = context_windows(unet)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 1, 0)
    positive, negative = real["DynamiCrafterAnimate_ApplySketch"].apply(model, positive, negative, sketch, guidance,
                                                                        0.0, 1.0)
    (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(windowed, 2, "auto", "original")
    (guider,) = real["DynamiCrafterAnimate_Guider"].guider(windowed, positive, negative, 7.5, 0.0, -1.0)
    with pytest.raises(pack.dynamicrafter_core.errors.InputError, match="do not work with context windows"):
        custom_advanced(real["DynamiCrafterAnimate_Noise"].noise(1)[0], guider,
                        real["DynamiCrafterAnimate_DDIMSampler"].sampler(1.0, True)[0], sigmas, latent)


# -- prompt schedule ---------------------------------------------------------------------------------------------


def test_a_prompt_schedule_gives_each_context_window_its_prompt(real, model):
    guidance, frame = real["DynamiCrafterAnimate_VisualDetailGuidance"].encode(
        model=model, image=comfy_image((64, 64)), mode="i2v", width=64, height=64, fit="crop", frames=24)
    (context,) = real["DynamiCrafterAnimate_EncodeImageContext"].encode(
        model=model, image=frame, prompt="0: a cat | 8: a dog", negative_prompt="blurry")
    texts = {p: model.core.encode_text([p])[0] for p in ("a cat", "a dog", "blurry")}
    seen = []

    def spy(unet):
        windowed = context_windows(unet)  # windows of 16 overlapping by 4: frames 0-15 and 8-23
        run = type(windowed.model)._diffusion

        def record(self, xc, timesteps, context, *args, **kwargs):  # each video's prompt in this UNet call
            heads = context[::kwargs["num_video_frames"], :77]
            seen.append({next(p for p, t in texts.items() if torch.allclose(h, t, atol=1e-5)) for h in heads})
            return run(self, xc, timesteps, context, *args, **kwargs)

        windowed.model._diffusion = record.__get__(windowed.model)
        return windowed

    try:
        latent = native(real, model, context, guidance, 1, steps=1, patch=spy)
    finally:
        model.patcher.model.__dict__.pop("_diffusion", None)
    assert latent["samples"].shape == (24, 4, 8, 8)
    assert seen == [{"a cat", "blurry"}, {"a dog", "blurry"}]  # window 1 from frame 0, window 2 from frame 8
    with pytest.raises(ValueError, match="prompt schedule.*Context Windows"):
        native(real, model, context, guidance, 1, steps=1)  # one pass over the whole video: one prompt only
    with pytest.raises(ValueError, match="prompt schedule of 2 prompts.*Continue Video"):
        bundled(real, model, context, guidance, 1)
