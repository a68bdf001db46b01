"""CamI2V's camera on the native MODEL in a real ComfyUI (in-process, CPU): through ComfyUI's SamplerCustomAdvanced it
gives I2V Sampler's latents for the same path and seed, and with Context Windows each window's UNet calls take that
window's own frames' poses; a RealCam-style file loads on the base chosen in Load DynamiCrafter."""
import pytest
import torch

from ..conftest import write_realcam_split
from .helpers import ROOT, comfy_image
from .real_host import comfy, pytestmark, real  # noqa: F401
from .test_native import NORMALISED, context_windows, custom_advanced, error

CAMI2V = ROOT / "tests" / "fixtures" / "tiny_cami2v"
FAST = dict(steps=3, cfg=7.5, image_cfg=0.0, eta=1.0, fs=0, guidance_rescale=-1.0, spacing="auto")


@pytest.fixture(scope="module")
def cami2v(real, comfy, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("cami2v_models")
    (folder / "tiny_cami2v.safetensors").symlink_to(CAMI2V / "tiny_cami2v.safetensors")
    (folder / "tiny_cami2v.json").write_text((CAMI2V / "tiny_cami2v.config.json").read_text())
    comfy["folder_paths"].add_model_folder_path("dynamicrafter", str(folder))
    model, info = real["DynamiCrafterAnimate_Loader"].load(ckpt_name="tiny_cami2v.safetensors", weight_dtype="fp32",
                                                           variant="auto")
    assert "cami2v_256" in info
    return model


def encode(real, model, frames):  # noqa: F811
    guidance, frame = real["DynamiCrafterAnimate_VisualDetailGuidance"].encode(
        model=model, image=comfy_image((64, 64)), mode="i2v", width=64, height=64, fit="crop", frames=frames)
    (context,) = real["DynamiCrafterAnimate_EncodeImageContext"].encode(model=model, image=frame, prompt="a room",
                                                                        negative_prompt="")
    return context, guidance


def native(real, model, context, guidance, camera, seed, steps=3, patch=None):  # noqa: F811
    (unet,) = real["DynamiCrafterAnimate_NativeModel"].convert(model)
    if patch is not None:
        unet = patch(unet)
    positive, negative, latent = real["DynamiCrafterAnimate_Conditioning"].condition(model, context, guidance, seed, 0,
                                                                                     camera=camera)
    (sigmas,) = real["DynamiCrafterAnimate_Scheduler"].sigmas(unet, steps, "auto", "original")
    (sampler,) = real["DynamiCrafterAnimate_DDIMSampler"].sampler(1.0, True)
    (guider,) = real["DynamiCrafterAnimate_Guider"].guider(unet, positive, negative, 7.5, 0.0, -1.0)
    (noise,) = real["DynamiCrafterAnimate_Noise"].noise(seed)
    return custom_advanced(noise, guider, sampler, sigmas, latent)


def test_the_native_path_follows_the_camera_as_i2v_sampler_does(real, cami2v):  # noqa: F811
    context, guidance = encode(real, cami2v, 8)
    (camera,) = real["DynamiCrafterAnimate_CameraTrajectory"].trajectory(motion="orbit right", speed=4.0, length=8,
                                                                         camera_cfg=1.0)
    _, expected = real["DynamiCrafterAnimate_I2VSampler"].generate(model=cami2v, context=context, guidance=guidance,
                                                                   seed=3, camera=camera, **FAST)
    latent = native(real, cami2v, context, guidance, camera, 3)["samples"]
    assert error(latent, expected["samples"]) < NORMALISED
    assert torch.equal(latent, expected["samples"])
    _, plain = real["DynamiCrafterAnimate_I2VSampler"].generate(model=cami2v, context=context, guidance=guidance,
                                                                seed=3, **FAST)
    assert error(plain["samples"], expected["samples"]) > 100 * NORMALISED  # the camera made a difference


def test_context_windows_give_each_window_its_frames_poses(real, cami2v, pack):  # noqa: F811
    context, guidance = encode(real, cami2v, 24)
    (camera,) = real["DynamiCrafterAnimate_CameraTrajectory"].trajectory(motion="pan right", speed=3.0, length=24,
                                                                         camera_cfg=1.0)
    with pytest.raises(ValueError, match="at most 16 frames"):  # without windows: more frames than CamI2V takes
        native(real, cami2v, context, guidance, camera, 1, steps=1)
    seen = []

    def spy(unet):
        windowed = context_windows(unet)
        run = type(windowed.model)._diffusion

        def record(self, xc, *args, camera=None, **kwargs):
            seen.append(camera)
            return run(self, xc, *args, camera=camera, **kwargs)

        windowed.model._diffusion = record.__get__(windowed.model)
        return windowed

    try:
        latent = native(real, cami2v, context, guidance, camera, 1, steps=2, patch=spy)["samples"]
    finally:
        cami2v.patcher.model.__dict__.pop("_diffusion", None)
    assert latent.shape == (24, 4, 8, 8) and torch.isfinite(latent).all()
    assert seen and all(c is not None and c.features[0].shape[2] == 16 for c in seen)
    last = pack.nodes.camera.Camera.features(camera, cami2v.core, list(range(8, 24)), 64, 64, torch.device("cpu"), 1)
    assert any(torch.equal(c.features[0], last.features[0]) for c in seen)  # the last window's own poses
    assert not torch.equal(seen[0].features[0], last.features[0])


def test_a_realcam_file_on_its_base_animates_as_the_whole_cami2v_file(real, comfy, cami2v, tmp_path):  # noqa: F811
    """Load DynamiCrafter's base_ckpt_name in a real ComfyUI: the list holds the folder's files, a RealCam-style file
    (only the camera weights) without a base gets the sentence, and with its base it gives the whole file's video."""
    write_realcam_split(tmp_path / "tiny_realcam.safetensors", tmp_path / "tiny_realcam_base.safetensors")
    (tmp_path / "tiny_realcam.json").write_text((CAMI2V / "tiny_cami2v.config.json").read_text())
    comfy["folder_paths"].add_model_folder_path("dynamicrafter", str(tmp_path))
    loader = real["DynamiCrafterAnimate_Loader"]
    choices = type(loader).INPUT_TYPES()["optional"]["base_ckpt_name"][0]
    assert choices[0] == "none" and {"tiny_realcam_base.safetensors", "tiny_cami2v.safetensors"} <= set(choices)
    with pytest.raises(ValueError, match="holds only RealCam-I2V's camera weights.*choose that checkpoint in "
                                         "base_ckpt_name"):
        loader.load(ckpt_name="tiny_realcam.safetensors", weight_dtype="fp32", variant="auto")
    realcam, info = loader.load(ckpt_name="tiny_realcam.safetensors", weight_dtype="fp32", variant="auto",
                                base_ckpt_name="tiny_realcam_base.safetensors")
    assert "cami2v_256" in info
    (camera,) = real["DynamiCrafterAnimate_CameraTrajectory"].trajectory(motion="orbit left", speed=4.0, length=8,
                                                                         camera_cfg=1.0)
    videos = []
    for model in (cami2v, realcam):
        context, guidance = encode(real, model, 8)
        _, latent = real["DynamiCrafterAnimate_I2VSampler"].generate(model=model, context=context, guidance=guidance,
                                                                     seed=5, camera=camera, **FAST)
        videos.append(latent["samples"])
    assert torch.equal(videos[0], videos[1])
