"""The native MODEL path in a real ComfyUI (in-process, CPU): DynamiCrafter through ComfyUI's own samplers, guiders,
context windows and model patches, with the original's numbers where our scheduler, sampler, guider and noise are
used."""
import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from dynamicrafter_core.pipeline import sample

from .helpers import FIXTURE, ScalarReads, comfy_image
from .real_host import (comfy, context_windows, context_windows_fail_for_frames_in_batch, dynamic_vram, load,  # noqa: F401
                        pytestmark, real)

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
           end="original", patch=None, compile=None):  # noqa: A002 (DynamiCrafter Model's input)
    """Our nodes on ComfyUI's SamplerCustomAdvanced: DynamiCrafter Model, Conditioning, Noise, Guider, DDIM Sampler,
    Scheduler. `patch`: a function MODEL -> MODEL (ComfyUI nodes between DynamiCrafter Model and the guider)."""
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model, compile=compile)
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
    assert error(latent["samples"], expected) < NORMALISED  # the requirement
    assert torch.equal(latent["samples"], expected)  # what the README says the tests show (CPU, float32 weights)
    (decoded,) = real["DynamiCrafterAnimate_Decode"].decode(model, latent)
    assert (decoded - frames).abs().max() < 1e-3


def test_dynamicrafter_models_compile_option_keeps_the_latents_and_leaves_other_runs_eager(real, model):
    """DynamiCrafter Model's `compile`: its runs give the eager latents within float rounding and reuse their graphs;
    a MODEL without it and I2V Sampler, on the same weights, run eagerly after it (the same latents, exactly)."""
    from torch._dynamo.utils import counters

    context, guidance = encode(real, model)
    eager = native(real, model, context, guidance, 5)["samples"]
    compiled = native(real, model, context, guidance, 5, compile=True)["samples"]
    # the compiled UNet is the eager one within 1e-4 of its std (tests/bench/test_compiled.py); the guidance scales
    # that by up to cfg (7.5): 7.4e-4 here
    assert 0 < error(compiled, eager) < 1e-3
    graphs = counters["stats"]["unique_graphs"]
    assert torch.equal(native(real, model, context, guidance, 5, compile=True)["samples"], compiled)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled again
    assert torch.equal(native(real, model, context, guidance, 5)["samples"], eager)
    assert torch.equal(bundled(real, model, context, guidance, 5)[1], eager)


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
    assert torch.equal(latent, expected)


def test_interpolation_and_loop_on_the_native_path(real, interp_model):
    for mode in ("interpolation", "loop"):
        context, guidance = encode(real, interp_model, mode=mode)
        frames, expected = bundled(real, interp_model, context, guidance, 5)
        latent = native(real, interp_model, context, guidance, 5)
        (decoded,) = real["DynamiCrafterAnimate_Decode"].decode(interp_model, latent)
        assert decoded.shape == frames.shape  # a loop's repeated last frame dropped by both
        assert error(latent["samples"][:expected.shape[0]], expected) < NORMALISED
        assert torch.equal(latent["samples"][:expected.shape[0]], expected)


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
    assert error(got, core) < NORMALISED  # the concat went through / and x scale_factor: rounding differs
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


def test_stock_ksampler_with_euler_is_the_originals_ddim_eta_0(real, model, pack):
    """KSampler's euler + simple (20 steps, where 1000 / steps is whole) with DynamiCrafter Guidance Rescale, from
    DynamiCrafter Noise's x_T: DDIM eta 0 with the rescale exact at every step (the DDIM Sampler without the original's
    last-step quirk, ending clean), to the rounding of a whole run (ComfyUI batches the branches in its own order)."""
    import comfy.sample

    context, guidance = encode(real, model)
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    (patched,) = real["DynamiCrafterAnimate_GuidanceRescale"].patch(unet, 0.7)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 3, 0)
    (noise,) = real["DynamiCrafterAnimate_Noise"].noise(3)
    stock = comfy.sample.sample(patched, noise.generate_noise(latent), 20, 7.5, "euler", "simple", positive, negative,
                                latent["samples"], seed=3)
    (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(unet, 20, "uniform_trailing", "clean")
    (guider,) = real["DynamiCrafterAnimate_Guider"].guider(unet, positive, negative, 7.5, 0.0, 0.7)
    ddim = custom_advanced(noise, guider, pack.nodes.native.ddim_sampler(0.0, False), sigmas, latent)["samples"]
    assert error(stock, ddim) < CHAIN_TOL


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


def unet_calls(model, run) -> int:
    """How many times the core UNet ran during run()."""
    calls = []
    hook = model.core.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        run()
    finally:
        hook.remove()
    return len(calls)


def test_freeu_and_easycache_run_on_the_native_model(real, model):
    """Core patches that act on the denoiser: FreeU (the UNet's output-block patch, on the tiny UNet's 64-channel
    blocks) changes the video; EasyCache (a wrapper around the diffusion model) engages: it skips UNet calls and
    reuses its cached outputs."""
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
        return EasyCacheNode.execute(unet, 1.5, 0.15, 0.95, False).result[0]  # the tiny model's output moves fast

    steps = 12
    runs = {}
    try:
        counts = {name: unet_calls(model, lambda name=name, patch=patch: runs.__setitem__(
            name, native(real, model, context, guidance, 2, steps=steps, patch=patch)["samples"]))
            for name, patch in (("plain", None), ("cached", easycache))}
    except RuntimeError as e:
        if "must match the size of tensor" not in str(e):
            raise
        pytest.xfail("this ComfyUI's EasyCache keeps one cached row per conditioning: when it skips a step it fails "
                     "for a model with its frames in the batch (ComfyUI 0.3.64; 0.33.0 skips steps)")
    assert counts["plain"] == steps and 0 < counts["cached"] < steps, counts  # one batched call per step
    assert torch.isfinite(runs["cached"]).all() and not torch.equal(runs["cached"], runs["plain"])


def rescale_cfg_formula(args: dict, multiplier: float) -> torch.Tensor:
    """ComfyUI's RescaleCFG (comfy_extras/nodes_model_advanced.py), written out: guidance on the v of a plain VP
    schedule (x / (sigma^2 + 1)), rescaled per frame (std over dims 1-3)."""
    x_orig, sigma = args["input"], args["sigma"].view(-1, 1, 1, 1)
    x = x_orig / (sigma ** 2 + 1.0)
    cond, uncond = ((x - branch) * (sigma ** 2 + 1.0) ** 0.5 / sigma
                    for branch in (args["cond_denoised"], args["uncond_denoised"]))
    x_cfg = uncond + args["cond_scale"] * (cond - uncond)
    rescaled = x_cfg * cond.std(dim=(1, 2, 3), keepdim=True) / x_cfg.std(dim=(1, 2, 3), keepdim=True)
    final = multiplier * rescaled + (1.0 - multiplier) * x_cfg
    return x_orig - (x - final * sigma / (sigma ** 2 + 1.0) ** 0.5)


def test_rescalecfg_acts_with_ksampler_as_its_formula_and_our_guider_says_it_ignores_it(real, model, caplog):
    """ComfyUI's RescaleCFG is not the original's rescale (README), but with KSampler it does what it says: on every
    step its output is its formula of the branches DynamiCrafter's MODEL gave (per frame, a plain schedule's v), and
    it changes the video. DynamiCrafter Guider does not use it, and says so."""
    import comfy.sample
    from comfy_extras.nodes_model_advanced import RescaleCFG

    context, guidance = encode(real, model)
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    patched = (RescaleCFG().patch(unet, 0.7) if hasattr(RescaleCFG, "patch") else
               RescaleCFG.execute(unet, 0.7).result)[0]
    rescale, seen = patched.model_options["sampler_cfg_function"], []

    def recorded(args):
        out = rescale(args)
        seen.append((rescale_cfg_formula(args, 0.7), out))
        return out

    patched.set_model_sampler_cfg_function(recorded)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 3, 0)
    noise = comfy.sample.prepare_noise(latent["samples"], 3)

    def run(model):
        return comfy.sample.sample(model, noise, 3, 7.5, "euler", "simple", positive, negative, latent["samples"],
                                   seed=3)

    out = run(patched)
    assert len(seen) == 3 and all(torch.allclose(got, formula, rtol=1e-5, atol=1e-5) for formula, got in seen)
    assert not torch.equal(out, run(unet))
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
    assert torch.equal(out["samples"], expected)
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


# -- what the native path assumes, held ------------------------------------------------------------------------


def test_a_sampler_giving_frames_different_sigmas_is_refused_with_what_it_gave(real, model, pack):
    """The UNet takes one timestep per video: a sampler stepping frames at their own noise levels is refused, not
    flattened to the first frame's."""
    import comfy.samplers

    def per_frame_levels(model, x, sigmas, extra_args=None, callback=None, disable=None):
        levels = torch.linspace(float(sigmas[0]), float(sigmas[1]), x.shape[0])
        return model(x, levels, **(extra_args or {}))

    context, guidance = encode(real, model)
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 1, 0)
    (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(unet, 3, "auto", "original")
    (guider,) = real["DynamiCrafterAnimate_Guider"].guider(unet, positive, negative, 7.5, 0.0, -1.0)
    first = f"{float(sigmas[0]):.6g}"
    with pytest.raises(pack.dynamicrafter_core.errors.InputError, match=rf"different sigmas \({first}, .*one noise level"):
        custom_advanced(real["DynamiCrafterAnimate_Noise"].noise(1)[0], guider,
                        comfy.samplers.KSAMPLER(per_frame_levels), sigmas, latent)


def test_a_conditioning_with_a_context_per_frame_is_refused(real, model, pack):
    context, guidance = encode(real, model)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 1, 0)
    (cond, extra), = positive
    frames = latent["samples"].shape[0]
    per_frame = cond.repeat(frames, 1, 1) + torch.arange(frames).view(-1, 1, 1) * 0.01
    with pytest.raises(pack.dynamicrafter_core.errors.InputError, match="different conditioning"):
        native_with(real, model, [[per_frame, extra]], negative, latent)


def native_with(real, model, positive, negative, latent, steps=2):
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(unet, steps, "auto", "original")
    (guider,) = real["DynamiCrafterAnimate_Guider"].guider(unet, positive, negative, 7.5, 0.0, -1.0)
    return custom_advanced(real["DynamiCrafterAnimate_Noise"].noise(1)[0], guider,
                           real["DynamiCrafterAnimate_DDIMSampler"].sampler(1.0, True)[0], sigmas, latent)


def test_the_schedule_conversions_never_read_back_to_the_host(real, model, pack):
    """On the meta device a tensor has no data, so any read back to the host (.cpu(), .item(), float(), bool())
    raises: the model sampling's conversions, which run for every branch of every step, make none. The schedule's
    tables are copied to a device once, not per call."""
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    ms = unet.get_model_object("model_sampling")
    meta = torch.device("meta")
    sigma = ms.sigmas[[999, 600, 0]].to(meta)
    x = torch.empty(3, 4, 8, 8, device=meta)
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        z = ms.calculate_input(sigma, xd)
        denoised = ms.calculate_denoised(sigma, torch.empty_like(x), xd)
        prediction, state = ms.prediction(sigma, denoised, xd)
        assert z.device == denoised.device == prediction.device == ms.denoised(prediction, state).device == meta
    assert ms.noise_scaling(sigma, x, x, max_denoise=True).device == meta
    assert ms.timestep(sigma).device == meta
    tables = ms.tables(meta)
    ms.calculate_input(sigma, x)
    assert ms.tables(meta) is tables
    checks = pack.nodes.native.FrameChecks()
    checks.record(sigma, torch.empty(3, 77, 16, device=meta), 3, windowed=False)  # recorded on the device, read once per run


def test_a_guided_step_reads_no_value_back_to_the_host(real, model, pack, monkeypatch):
    """Everything a step of DynamiCrafter Guider runs (ComfyUI's batching of the branches, the conversions, the
    UNet, the guidance and its rescale) reads no tensor value into Python: 0 host syncs per step."""
    guider_class = pack.nodes.comfy_model.Guider
    predict = guider_class.predict_noise
    reads, steps = ScalarReads(), []

    def counted(self, *args, **kwargs):
        steps.append(1)
        with reads:
            return predict(self, *args, **kwargs)

    monkeypatch.setattr(guider_class, "predict_noise", counted)
    context, guidance = encode(real, model)
    native(real, model, context, guidance, 1, steps=3, image_cfg=2.0)
    assert len(steps) == 3 and reads.count == 0


def test_model_hooks_our_guider_skips_are_named_once(real, model, caplog):
    """DynamiCrafter Guider runs the branches and the guidance itself: each model hook on ComfyUI's own guidance
    that it does not run is named once when the guider is made; attention patches, which this UNet does not run
    under any sampler, are named once per run (not per step)."""
    context, guidance = encode(real, model)
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    patched = unet.clone()
    patched.set_model_sampler_pre_cfg_function(lambda args: args["conds_out"])
    patched.set_model_sampler_calc_cond_batch_function(lambda args: None)
    patched.set_model_sampler_cfg_function(lambda args: args["cond"])
    positive, negative, _ = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, 1, 0)
    with caplog.at_level("WARNING"):
        real["DynamiCrafterAnimate_Guider"].guider(patched, positive, negative, 7.5, 0.0, -1.0)
    for hook in ("sampler_pre_cfg_function", "sampler_calc_cond_batch_function", "sampler_cfg_function"):
        assert caplog.text.count(f"model's {hook} ") == 1, hook
    caplog.clear()

    def attention(unet):
        patched = unet.clone()
        patched.set_model_attn1_patch(lambda q, k, v, extra_options: (q, k, v))
        patched.set_model_attn2_replace(lambda q, k, v, extra_options: q, "middle", 0)
        return patched

    with caplog.at_level("WARNING"):
        native(real, model, context, guidance, 1, steps=3, patch=attention)
    assert caplog.text.count("patches['attn1_patch'], patches_replace['attn2']") == 1


def test_context_windows_on_a_comfyui_that_cannot_run_them_get_a_sentence(real, model, pack):
    """ComfyUI 0.3.64's context windows compare every frame's timestep with the sigmas: there the run is refused with
    the version and the fix, not ComfyUI's tensor-size error. (Where they work, test_context_windows_* run them.)"""
    pytest.importorskip("comfy.context_windows")
    if not context_windows_fail_for_frames_in_batch():
        pytest.skip("this ComfyUI's context windows run models with frames in the batch")
    import comfy.context_windows as windows
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    context, guidance = encode(real, model, frames=24)

    def windowed(unet):
        return ContextWindowsManualNode.execute(unet, context_length=16, context_overlap=4, context_stride=1,
                                                closed_loop=False, dim=0, fuse_method=windows.ContextFuseMethods.PYRAMID,
                                                context_schedule=windows.ContextSchedules.STATIC_STANDARD).result[0]

    with pytest.raises(pack.dynamicrafter_core.errors.InputError,
                       match=r"Context Windows cannot run DynamiCrafter's MODEL on ComfyUI 0\.3\.64.*Update ComfyUI"):
        native(real, model, context, guidance, 1, steps=2, patch=windowed)


def test_the_ddim_sampler_takes_the_schedulers_sigmas_at_every_step_count(real, model, pack):
    """Uniform trailing at 667 steps and more visits timestep 0, where end "original" also lands: the DDIM sampler
    takes the Scheduler's sigmas for every step count it offers, as the original steps."""
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    ms = unet.get_model_object("model_sampling")
    for steps in (1, 50, 666, 667, 1000):
        for end in ("original", "clean"):
            (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(unet, steps, "uniform_trailing", end)
            visited, landing = pack.nodes.native.ddim_plan(ms, sigmas)
            assert len(visited) == steps and landing == (0 if end == "original" else None)
    with pytest.raises(pack.dynamicrafter_core.errors.InputError, match="the sigmas must decrease"):
        pack.nodes.native.ddim_plan(ms, sigmas.flip(0))


def test_an_eps_model_with_zero_terminal_snr_is_refused(real, model, pack):
    """x0 from eps divides by sqrt(ᾱ), 0 at the last timestep of a zero-SNR schedule: refused when the MODEL is made."""
    schedule = model.core.schedule
    assert schedule.alphas_cumprod[-1] == 0  # the tiny model's schedule is zero-SNR, as the 512 and 1024 models'
    eps = type(schedule)(schedule.alphas_cumprod, "eps", schedule.scale_arr)
    with pytest.raises(pack.dynamicrafter_core.errors.InputError, match="predicts eps .* zero terminal SNR"):
        pack.nodes.comfy_model.ModelSamplingDynamiCrafter(eps, model.core.defaults)


def test_the_internals_the_native_model_relies_on_are_checked_when_it_is_made(real, model, pack, monkeypatch):
    """This ComfyUI has them all; one whose BaseModel._apply_model takes other arguments gets a sentence naming the
    version and what changed, from DynamiCrafter Model, instead of a MODEL that runs wrong."""
    import comfy.model_base

    comfy_model = pack.nodes.comfy_model
    assert comfy_model.changed_internals() == ()
    comfy_model.changed_internals.cache_clear()

    def changed(self, x, sigma, concat=None, **kwargs):
        raise AssertionError("not called")

    monkeypatch.setattr(comfy.model_base.BaseModel, "_apply_model", changed)
    try:
        with pytest.raises(pack.dynamicrafter_core.errors.InputError,
                           match=r"ComfyUI internals that ComfyUI \S+ changed: BaseModel\._apply_model\(x, t, c_concat"):
            real["DynamiCrafterAnimate_NativeModel"].convert(model)
    finally:
        comfy_model.changed_internals.cache_clear()


def test_comfyuis_memory_estimate_counts_image_cfgs_third_branch(real, model, pack, monkeypatch):
    """Before sampling ComfyUI asks the MODEL for two branches' working memory; with image cfg the guider runs three,
    and the estimate it gets is three branches' (memory.unet, the pack's one UNet estimate)."""
    base = pack.nodes.comfy_model.DynamiCrafterBase
    asked = []
    required = base.memory_required

    def spy(self, input_shape, cond_shapes={}):
        asked.append((list(input_shape), required(self, input_shape, cond_shapes)))
        return asked[-1][1]

    monkeypatch.setattr(base, "memory_required", spy)
    context, guidance = encode(real, model)
    native(real, model, context, guidance, 1, steps=1, image_cfg=2.0)
    unet = model.core.unet
    frames, latent = 4, (8, 8)
    three = pack.nodes.memory.unet(1, 3, frames, latent, unet.cfg.model_channels, unet.dtype.itemsize)
    (shape, estimate), *_ = asked
    assert shape[0] == 2 * frames and estimate == three
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


class Float64Latents(TorchDispatchMode):
    """Records ops that produce a float64 tensor with at least `size` elements (a latent, not a schedule value)."""

    def __init__(self, size):
        super().__init__()
        self.size, self.seen = size, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.numel() >= self.size:
            self.seen.append(str(func))
        return out


def test_the_ddim_sampler_hands_the_unet_its_latent_without_a_float64_round_trip(real, model):
    """The sampler's z reaches the UNet as it is: no latent-sized float64 tensor exists in a run, so the latents equal
    I2V Sampler's (the test above) by construction, on any device, not by a round trip's rounding."""
    context, guidance = encode(real, model)
    with Float64Latents(4 * 4 * 8 * 8) as watch:
        native(real, model, context, guidance, 11)
    assert watch.seen == []
