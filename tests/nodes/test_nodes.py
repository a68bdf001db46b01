"""Every node run as ComfyUI runs it (an instance, FUNCTION called with keyword arguments), on the tiny model, against
the core's own pipeline for the same seed; and what ComfyUI was asked for along the way."""
import pytest
import torch

from dynamicrafter_core.pipeline import animate, fit_image

from .fake_host import LOAD_DEVICE, Interrupted
from .helpers import TINY, ScalarReads, comfy_image

LOADER = "DynamiCrafterAnimate_Loader"
CONTEXT = "DynamiCrafterAnimate_EncodeImageContext"
GUIDANCE = "DynamiCrafterAnimate_VisualDetailGuidance"
SAMPLER = "DynamiCrafterAnimate_I2VSampler"
INTERPOLATE = "DynamiCrafterAnimate_FrameInterpolate"

FAST = dict(steps=3, cfg=7.5, image_cfg=0.0, eta=1.0, fs=0, guidance_rescale=-1.0, spacing="auto")
FRAMES = 4  # the tiny Query Transformer's video length


RETURNED = {  # socket type -> what a value of it must be
    "IMAGE": lambda v: isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[-1] == 3,
    "LATENT": lambda v: isinstance(v, dict) and v["samples"].ndim == 4,
    "STRING": lambda v: isinstance(v, str),
    "DYNAMICRAFTER_MODEL": lambda v: type(v).__name__ == "DynamiCrafterModel",
    "DYNAMICRAFTER_CONTEXT": lambda v: type(v).__name__ == "ImageContext",
    "DYNAMICRAFTER_GUIDANCE": lambda v: type(v).__name__ == "Guidance",
}


def call(nodes, node_id, **inputs):
    """As ComfyUI's executor: FUNCTION with keyword arguments, a tuple matching RETURN_TYPES back."""
    node = nodes[node_id]
    outputs = getattr(node, node.FUNCTION)(**inputs)
    assert isinstance(outputs, tuple) and len(outputs) == len(node.RETURN_TYPES)
    for kind, value in zip(node.RETURN_TYPES, outputs):
        assert RETURNED[kind](value), (node_id, kind, type(value))
    return outputs


def to_core(image):
    return image.movedim(-1, 1) * 2 - 1


def run_i2v(nodes, model, image, mode="i2v", end_image=None, prompt="a cat", seed=7, clip=None, clip_vision=None,
            **sampling):
    extra = {} if end_image is None else {"end_image": end_image}
    guidance, frame = call(nodes, GUIDANCE, model=model, image=image, mode=mode, width=64, height=64, fit="crop",
                           frames=FRAMES, **extra)
    encoders = {k: v for k, v in (("clip", clip), ("clip_vision", clip_vision)) if v is not None}
    (context,) = call(nodes, CONTEXT, model=model, image=frame, prompt=prompt, negative_prompt="", **encoders)
    frames, latent = call(nodes, SAMPLER, model=model, context=context, guidance=guidance, seed=seed,
                          **{**FAST, **sampling}, unique_id="5")
    return frames, latent, frame


def check_image(frames, count):
    assert frames.shape == (count, 64, 64, 3) and frames.dtype == torch.float32 and frames.device.type == "cpu"
    assert frames.min() >= 0 and frames.max() <= 1 and frames.is_contiguous()


def test_loader_says_what_it_loaded(nodes, loaded):
    model, info = call(nodes, LOADER, ckpt_name=TINY, weight_dtype="auto", variant="auto")
    assert "DynamiCrafter 512" in info and "scale_arr base 0.70" in info and "tiny_v07.json" in info
    assert set(model.patchers) == {"unet", "vae", "query_transformer", "text_encoder", "image_encoder"}
    assert model.patchers["unet"].model is model.core.unet  # ComfyUI moves the very modules the core runs
    assert "512_interp chosen by override" in loaded["interp"].core.variant_source


def test_loader_names_the_download_for_a_missing_released_file(nodes):
    with pytest.raises(FileNotFoundError, match=r"huggingface.co/Doubiiu/DynamiCrafter_512_Interp.*save it there"):
        call(nodes, LOADER, ckpt_name="dynamicrafter_512_interp_v1.ckpt", weight_dtype="auto", variant="auto")


@pytest.mark.parametrize("mode,seed,sampling", [
    ("i2v", 7, {}), ("i2v", 8, {"image_cfg": 2.0, "eta": 0.0}), ("interpolation", 9, {}),
    ("loop", 10, {"spacing": "uniform", "steps": 4})])
def test_frames_match_the_core_pipeline_for_the_same_seed(nodes, host, loaded, tiny_model, monkeypatch, mode,
                                                          seed, sampling):
    model = loaded["model"] if mode == "i2v" else loaded["interp"]
    image, end = comfy_image((96, 128)), comfy_image((80, 80), seed=3)
    frames, latent, frame = run_i2v(nodes, model, image, mode, end if mode == "interpolation" else None,
                                    seed=seed, **sampling)
    assert torch.allclose(to_core(frame), fit_image(to_core(image), 64, 64, "crop"), atol=1e-6)
    monkeypatch.setattr(tiny_model, "variant", "512" if mode == "i2v" else "512_interp")
    reference = animate(tiny_model, to_core(frame), "a cat", mode=mode,
                        end_image=fit_image(to_core(end), 64, 64, "crop") if mode == "interpolation" else None,
                        frames=FRAMES, seed=seed, image_cfg=sampling.get("image_cfg"),
                        **{"steps": 3, **{k: v for k, v in sampling.items() if k != "image_cfg"}})
    count = FRAMES - 1 if mode == "loop" else FRAMES
    check_image(frames, count)
    assert torch.equal(frames, reference)
    assert latent["samples"].shape == (count, 4, 8, 8)


def test_frame_interpolate_joins_segments_without_repeating_keyframes(nodes, host, loaded, tiny_model, monkeypatch):
    keys = torch.cat([comfy_image((64, 64), seed=s) for s in range(3)])
    frames, latent = call(nodes, INTERPOLATE, model=loaded["interp"], keyframes=keys, prompt="a cat",
                          negative_prompt="", loop=True, width=64, height=64, fit="crop", frames=FRAMES, seed=20,
                          **FAST, unique_id="9")
    monkeypatch.setattr(tiny_model, "variant", "512_interp")
    core_keys = [to_core(keys[i:i + 1]) for i in range(3)]
    segments = [animate(tiny_model, core_keys[i], "a cat", end_image=core_keys[j], mode="interpolation", frames=FRAMES,
                        seed=20 + k, steps=3) for k, (i, j) in enumerate([(0, 1), (1, 2), (2, 0)])]
    expected = torch.cat([segments[0], segments[1][1:], segments[2][1:-1]])
    check_image(frames, 3 * FRAMES - 3)
    assert torch.equal(frames, expected)
    assert latent["samples"].shape[0] == 3 * FRAMES - 3
    steps = [r for r in host.reports if r[2] is not None]
    assert [r[:2] for r in steps] == [(i, 9) for i in range(1, 10)]  # one bar over the three segments


def test_frame_interpolate_loops_a_single_image(nodes, host, loaded, tiny_model, monkeypatch):
    image = comfy_image((64, 64), seed=4)
    frames, _ = call(nodes, INTERPOLATE, model=loaded["interp"], keyframes=image, prompt="", negative_prompt="",
                     loop=True, width=0, height=0, fit="crop", frames=FRAMES, seed=3, **FAST)
    monkeypatch.setattr(tiny_model, "variant", "512_interp")
    assert torch.equal(frames, animate(tiny_model, to_core(image), "", mode="loop", frames=FRAMES, seed=3, steps=3))


def test_progress_preview_and_memory_requests(nodes, host, loaded):
    run_i2v(nodes, loaded["model"], comfy_image())
    stages = [(names, full) for names, _, full in host.loads]
    assert stages == [(["AutoencoderKL"], True), (["TextEncoder", "ImageEncoder", "QueryTransformer"], True),
                      (["UNet"], False), (["AutoencoderKL"], True)]  # only the UNet may be partially loaded
    assert all(memory > 0 for _, memory, _ in host.loads)
    assert [r for r in host.reports] == [(i, 3, (1, 4, FRAMES, 8, 8)) for i in (1, 2, 3)]


def test_each_network_runs_on_its_patchers_load_device(pack, nodes, host, loaded, monkeypatch):
    """Under Dynamic VRAM the weights of large layers stay in host memory, so a node must run each network where
    ComfyUI's patcher says, never where one of its weights happens to be (the fake's load device is `cpu:0`, a name
    no CPU tensor reports)."""
    model, calls = loaded["model"], []
    for name in ("encode_text", "encode_image", "project_image", "encode_posterior", "decode_latents"):
        method = getattr(model.core, name)
        monkeypatch.setattr(model.core, name, lambda *a, _m=method, _n=name, **k: calls.append((_n, k.get("device")))
                            or _m(*a, **k))
    sample = pack.nodes.sampler.sample
    monkeypatch.setattr(pack.nodes.sampler, "sample",
                        lambda *a, **k: calls.append(("sample", k.get("device"))) or sample(*a, **k))
    run_i2v(nodes, model, comfy_image())
    assert {name for name, _ in calls} == {"encode_text", "encode_image", "project_image", "encode_posterior",
                                           "decode_latents", "sample"}
    assert all(device == LOAD_DEVICE for _, device in calls), calls
    assert LOAD_DEVICE != model.core.device  # the weights' device, which the nodes must not use


def test_the_decode_reads_the_device_twice_per_video_not_per_frame(pack, host, loaded, monkeypatch):
    """The CPU waits for the GPU whenever it reads a value back: the decode checks its input and its frames once
    each and copies the video once, rather than three waits per frame (what the H200 profile counted: 49 in a
    16-frame job); Cancel is still checked after every frame."""
    latents = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    checks = []
    monkeypatch.setattr(pack.nodes.host, "check_interrupt", lambda: checks.append(1))
    with ScalarReads() as reads:
        video = pack.nodes.sampler.decode(loaded["model"], latents)
    assert video.shape == (1, 3, 6, 64, 64) and video.device.type == "cpu"
    assert reads.count == 2 and len(checks) == 6
    frame = loaded["model"].core.decode_latents(latents[:, :, 2:3])
    torch.testing.assert_close(video[:, :, 2:3], frame, rtol=0, atol=0)  # still the VAE one frame at a time


def test_the_model_output_tells_comfyui_which_patchers_it_holds(loaded):
    """ComfyUI 0.33's RAM cache and prompt tracker read `patcher` and get_models() of any output (as of its MODEL,
    CLIP and VAE): without them an old DynamiCrafter model looks empty to the cache and its pinned weights are
    evicted first while a prompt is using them."""
    model = loaded["model"]
    assert model.patcher is model.patchers["unet"]
    assert model.get_models() == list(model.patchers.values()) and len(model.get_models()) == 5
    streaming = {stage: p.streaming for stage, p in model.patchers.items()}
    assert streaming == {"unet": True, "vae": True, "query_transformer": True, "text_encoder": False,
                         "image_encoder": False}


def test_cancel_stops_within_a_step_and_the_next_run_is_unaffected(nodes, host, loaded):
    reference, _, _ = run_i2v(nodes, loaded["model"], comfy_image(), seed=11)
    host.reports.clear()
    host.cancel_after_steps = 1
    with pytest.raises(Interrupted):
        run_i2v(nodes, loaded["model"], comfy_image(), seed=11)
    assert len(host.reports) == 1
    again, _, _ = run_i2v(nodes, loaded["model"], comfy_image(), seed=11)
    assert torch.equal(again, reference)


class ComfyCLIP:
    """ComfyUI's CLIP interface (tokenize, encode_from_tokens) over an OpenCLIP text tower; `width` pads the output to
    imitate another model."""

    def __init__(self, core, width=None, chunks=1):
        self.core, self.width, self.chunks = core, width, chunks

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, text):
        tokens = self.core.encode_text([text]).float()
        if self.width:
            tokens = torch.nn.functional.pad(tokens, (0, self.width - tokens.shape[-1]))
        return torch.cat([tokens] * self.chunks, dim=1)  # ComfyUI: one 77-token chunk per 77 tokens of prompt


class ComfyCLIPVision:
    """ComfyUI's CLIP_VISION interface over an OpenCLIP image tower: IMAGE 0..1 in, last_hidden_state out."""

    def __init__(self, core, width=None):
        self.core, self.width = core, width

    def encode_image(self, image, crop=True):
        assert crop is False  # DynamiCrafter squashes, it does not crop
        tokens = self.core.encode_image(image.movedim(-1, 1) * 2 - 1)
        if self.width:
            tokens = torch.nn.functional.pad(tokens, (0, self.width - tokens.shape[-1]))
        return {"last_hidden_state": tokens}


def test_comfyui_clip_and_clip_vision_stand_in_for_the_towers(nodes, host, loaded):
    model = loaded["model"]
    own, _, _ = run_i2v(nodes, model, comfy_image(), seed=5)
    wired, _, _ = run_i2v(nodes, model, comfy_image(), seed=5, clip=ComfyCLIP(model.core, chunks=2),
                          clip_vision=ComfyCLIPVision(model.core))
    assert torch.allclose(wired, own, atol=1e-5)  # only the 0..1 round trip of the CLIP input differs


def pruned(pack, host, tmp_path, full_folder):
    """The tiny checkpoint without its CLIP towers, as a pruned file with its sidecar."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(full_folder / TINY))
    save_file({k: v for k, v in sd.items() if not k.startswith(("cond_stage_model.", "embedder."))},
              str(tmp_path / "tiny_pruned.safetensors"))
    (tmp_path / "tiny_pruned.json").write_text((full_folder / "tiny_v07.json").read_text())
    host.folder = tmp_path
    model, info = pack.nodes.loader.Loader().load(ckpt_name="tiny_pruned.safetensors", weight_dtype="auto",
                                                  variant="auto")
    assert "no CLIP towers (pruned file)" in info and set(model.patchers) == {"unet", "vae", "query_transformer"}
    return model


def test_a_pruned_checkpoint_asks_for_clip_and_works_with_it(pack, nodes, host, loaded, tmp_path, model_folder):
    model = pruned(pack, host, tmp_path, model_folder)
    with pytest.raises(ValueError, match=r"pruned of its CLIP text and vision towers: connect `clip` and `clip_vis"):
        run_i2v(nodes, model, comfy_image())
    full = loaded["model"].core
    frames, _, _ = run_i2v(nodes, model, comfy_image(), seed=5, clip=ComfyCLIP(full),
                           clip_vision=ComfyCLIPVision(full))
    reference, _, _ = run_i2v(nodes, loaded["model"], comfy_image(), seed=5, clip=ComfyCLIP(full),
                              clip_vision=ComfyCLIPVision(full))
    assert torch.equal(frames, reference)


def test_a_wrong_clip_gets_a_message_naming_the_model_needed(nodes, host, loaded):
    model = loaded["model"]
    width = model.core.config.unet.context_dim
    with pytest.raises(ValueError, match=r"`clip` gives 768-wide tokens \(SD1.x's CLIP-L\).*SD2.x OpenCLIP ViT-H/14"):
        run_i2v(nodes, model, comfy_image(), clip=ComfyCLIP(model.core, width=768))
    with pytest.raises(ValueError, match=r"`clip_vision` gives 1024-wide tokens \(CLIP ViT-L/14.*CLIP ViT-H/14"):
        run_i2v(nodes, model, comfy_image(), clip_vision=ComfyCLIPVision(model.core, width=1024))
    assert width != 768


class ModelPatcher:
    """What ComfyUI's Load Checkpoint emits as MODEL."""


@pytest.mark.parametrize("node_id,socket", [(CONTEXT, "model"), (GUIDANCE, "model"), (SAMPLER, "model"),
                                            (INTERPOLATE, "model"), (SAMPLER, "context"), (SAMPLER, "guidance")])
def test_a_wrong_value_in_a_socket_is_named(nodes, host, loaded, node_id, socket):
    model = loaded["model"]
    guidance, frame = call(nodes, GUIDANCE, model=model, image=comfy_image(), mode="i2v", width=64, height=64,
                           fit="crop", frames=FRAMES)
    (context,) = call(nodes, CONTEXT, model=model, image=frame, prompt="", negative_prompt="")
    inputs = {"model": model, "image": comfy_image(), "keyframes": comfy_image(batch=2), "prompt": "",
              "negative_prompt": "", "mode": "i2v", "width": 64, "height": 64, "fit": "crop", "frames": FRAMES,
              "loop": False, "seed": 0, "context": context, "guidance": guidance, **FAST}
    spec = nodes[node_id].INPUT_TYPES()["required"]
    inputs = {k: v for k, v in inputs.items() if k in spec}
    inputs[socket] = ModelPatcher()
    with pytest.raises(ValueError, match=rf"`{socket}` needs .* received a ModelPatcher \(a ComfyUI MODEL"):
        call(nodes, node_id, **inputs)


def test_bad_images_and_mismatched_batches(nodes, host, loaded):
    model, interp = loaded["model"], loaded["interp"]
    guide = dict(mode="i2v", width=64, height=64, fit="crop", frames=FRAMES)
    with pytest.raises(ValueError, match=r"`image` received an empty image batch"):
        call(nodes, GUIDANCE, model=model, image=torch.zeros(0, 64, 64, 3), **guide)
    with pytest.raises(ValueError, match=r"`image` received an empty image batch"):
        call(nodes, CONTEXT, model=model, image=torch.zeros(0, 64, 64, 3), prompt="", negative_prompt="")
    with pytest.raises(ValueError, match=r"`keyframes` holds 1 image; interpolation needs at least 2"):
        call(nodes, INTERPOLATE, model=interp, keyframes=comfy_image(), prompt="", negative_prompt="", loop=False,
             width=64, height=64, fit="crop", frames=FRAMES, seed=0, **FAST)
    # start and end of different sizes are both fitted to the video size
    guidance, frame = call(nodes, GUIDANCE, model=interp, image=comfy_image((96, 128)),
                           end_image=comfy_image((200, 150)), **{**guide, "mode": "interpolation"})
    assert frame.shape == (1, 64, 64, 3) and guidance.end[0].shape == guidance.start[0].shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"2 start images but 3 end images"):
        call(nodes, GUIDANCE, model=interp, image=comfy_image(batch=2), end_image=comfy_image(batch=3),
             **{**guide, "mode": "interpolation"})
    with pytest.raises(ValueError, match=r"mode interpolation needs `end_image`"):
        call(nodes, GUIDANCE, model=interp, image=comfy_image(), **{**guide, "mode": "interpolation"})
    two, _ = call(nodes, GUIDANCE, model=model, image=comfy_image(batch=2), **guide)
    (one,) = call(nodes, CONTEXT, model=model, image=comfy_image(), prompt="", negative_prompt="")
    with pytest.raises(ValueError, match=r"the context holds 1 image\(s\) but the guidance 2"):
        call(nodes, SAMPLER, model=model, context=one, guidance=two, seed=0, **FAST)


def test_interpolation_with_an_i2v_checkpoint_names_the_one_to_load(nodes, host, loaded):
    model = loaded["model"]
    with pytest.raises(ValueError, match=r"mode loop needs a checkpoint trained for interpolation.*"
                                         r"Load dynamicrafter_512_interp_v1.ckpt"):
        call(nodes, GUIDANCE, model=model, image=comfy_image(), mode="loop", width=64, height=64, fit="crop",
             frames=FRAMES)
    with pytest.raises(ValueError, match=r"Frame Interpolate needs a checkpoint trained for interpolation.*"
                                         r"dynamicrafter_512_interp_v1.ckpt"):
        call(nodes, INTERPOLATE, model=model, keyframes=comfy_image(batch=2), prompt="", negative_prompt="",
             loop=False, width=64, height=64, fit="crop", frames=FRAMES, seed=0, **FAST)
    guidance, frame = call(nodes, GUIDANCE, model=loaded["interp"], image=comfy_image(), mode="loop", width=64,
                           height=64, fit="crop", frames=FRAMES)
    (context,) = call(nodes, CONTEXT, model=model, image=frame, prompt="", negative_prompt="")
    with pytest.raises(ValueError, match=r"guidance mode loop needs a checkpoint trained for interpolation"):
        call(nodes, SAMPLER, model=model, context=context, guidance=guidance, seed=0, **FAST)


def test_the_unet_memory_estimate_covers_the_peaks_measured_on_a_gpu(pack):
    """shared/docs/PERF_H200.md section 2: a guided step (2 branches x 16 frames) in bf16 needs 1.0 GiB above the
    weights at 512 (40 x 64 latent) and 3.5 GiB at 1024 (72 x 128). The estimate covers both without asking for much
    more (ComfyUI would evict other models for nothing); a third branch and a ControlNet add their share."""
    memory, gib = pack.nodes.memory, 2 ** 30
    for latent, measured in (((40, 64), 1.0), ((72, 128), 3.5)):
        estimate = memory.unet(1, 2, 16, latent, 320, 2) / gib
        assert measured <= estimate <= 1.25 * measured, (latent, estimate)
    guided = memory.unet(1, 2, 16, (40, 64), 320, 2)
    assert memory.unet(1, 3, 16, (40, 64), 320, 2) == pytest.approx(1.5 * guided, rel=1e-6)
    assert memory.unet(1, 2, 16, (40, 64), 320, 2, controlled=True) > guided
