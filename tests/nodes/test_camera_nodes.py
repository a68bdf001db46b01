"""Camera Trajectory into I2V Sampler and DynamiCrafter Conditioning on the tiny CamI2V checkpoint (fake host): the
nodes give the core's video for the same seed and path, each context window takes its own frames' poses, and camera
input that cannot work gets a sentence."""
import json
from types import SimpleNamespace

import pytest
import torch

from dynamicrafter_core.pipeline import animate
from dynamicrafter_core.trajectory import preset_path

from ..conftest import write_realcam_split
from .fake_host import FakeHost, hosting
from .helpers import ROOT, comfy_image
from .test_nodes import FAST

CAMI2V = ROOT / "tests" / "fixtures" / "tiny_cami2v"
CAMI2V_FILE = "tiny_cami2v.safetensors"
TRAJECTORY = "DynamiCrafterAnimate_CameraTrajectory"
FRAMES = 8  # the tiny CamI2V Query Transformer's video length


@pytest.fixture(scope="module")
def cami2v_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cami2v")
    (folder / CAMI2V_FILE).symlink_to(CAMI2V / CAMI2V_FILE)
    (folder / "tiny_cami2v.json").write_text((CAMI2V / "tiny_cami2v.config.json").read_text())
    return folder


@pytest.fixture(scope="module")
def cami2v_model(pack, cami2v_folder):
    with hosting(pack, cami2v_folder):
        model, info = pack.nodes.loader.Loader().load(ckpt_name=CAMI2V_FILE, weight_dtype="auto", variant="auto")
    return model, info


@pytest.fixture
def camera_nodes(pack, cami2v_folder, monkeypatch):
    from .fake_host import HOST_FUNCTIONS

    fake = FakeHost(cami2v_folder)
    for name in HOST_FUNCTIONS:
        monkeypatch.setattr(pack.nodes.host, name, getattr(fake, name))
    return {node_id: cls() for node_id, cls in pack.NODE_CLASS_MAPPINGS.items()}


@pytest.fixture(scope="module")
def realcam_folder(tmp_path_factory):
    """models/dynamicrafter with a RealCam-I2V-style file (only the tiny CamI2V's camera weights, with its sidecar)
    and the DynamiCrafter file it loads on (everything else)."""
    folder = tmp_path_factory.mktemp("realcam")
    write_realcam_split(folder / "tiny_realcam.safetensors", folder / "tiny_base.safetensors")
    (folder / "tiny_realcam.json").write_text((CAMI2V / "tiny_cami2v.config.json").read_text())
    return folder


def test_a_realcam_file_loads_on_the_base_chosen_in_the_loader(pack, realcam_folder, cami2v_model):
    loader = pack.nodes.loader.Loader
    with hosting(pack, realcam_folder):
        base_input = loader.INPUT_TYPES()["optional"]["base_ckpt_name"]
        assert base_input[0] == ["none", "tiny_base.safetensors", "tiny_realcam.safetensors"]
        assert base_input[1]["default"] == "none" and "realcam" in base_input[1]["tooltip"]
        with pytest.raises(ValueError, match="tiny_realcam.safetensors holds only RealCam-I2V's camera weights.*"
                                             "choose that checkpoint in base_ckpt_name"):
            loader().load(ckpt_name="tiny_realcam.safetensors", weight_dtype="auto", variant="auto")
        with pytest.raises(FileNotFoundError, match="base_ckpt_name 'gone.ckpt' is not in models/dynamicrafter"):
            loader().load(ckpt_name="tiny_realcam.safetensors", weight_dtype="auto", variant="auto",
                          base_ckpt_name="gone.ckpt")
        model, info = loader().load(ckpt_name="tiny_realcam.safetensors", weight_dtype="auto", variant="auto",
                                    base_ckpt_name="tiny_base.safetensors")
    assert "cami2v_256" in info and info.endswith("tiny_realcam.safetensors on tiny_base.safetensors")
    whole = cami2v_model[0].core.state_dict()
    merged = model.core.state_dict()
    assert merged.keys() == whole.keys()
    assert all(torch.equal(merged[k], whole[k]) for k in whole)  # the same model as the full CamI2V file
    assert model.patchers["pose_encoder"].model is model.core.pose_encoder


def prepare(nodes, model, image):
    guidance, frame = nodes["DynamiCrafterAnimate_VisualDetailGuidance"].encode(
        model=model, image=image, mode="i2v", width=64, height=64, fit="crop", frames=FRAMES)
    (context,) = nodes["DynamiCrafterAnimate_EncodeImageContext"].encode(model=model, image=frame, prompt="a room",
                                                                         negative_prompt="")
    return guidance, context, frame


def test_the_loader_tells_cami2v_and_hands_its_pose_encoder_to_comfyui(cami2v_model):
    model, info = cami2v_model
    assert "cami2v_256" in info and "CamI2V camera keys" in info
    assert model.patchers["pose_encoder"].model is model.core.pose_encoder


def test_i2v_sampler_follows_the_camera_as_the_core_does(camera_nodes, cami2v_model):
    model = cami2v_model[0]
    image = comfy_image((64, 64))
    guidance, context, frame = prepare(camera_nodes, model, image)
    (camera,) = camera_nodes[TRAJECTORY].trajectory(motion="orbit left", speed=4.0, length=12, camera_cfg=1.0)
    frames, latent = camera_nodes["DynamiCrafterAnimate_I2VSampler"].generate(
        model=model, context=context, guidance=guidance, seed=11, camera=camera, **FAST)
    reference = animate(model.core, frame.movedim(-1, 1) * 2 - 1, "a room", frames=FRAMES, seed=11, steps=3, cfg=7.5,
                        camera=preset_path("orbit left", 12, speed=4.0))
    assert torch.equal(frames, reference)
    plain, _ = camera_nodes["DynamiCrafterAnimate_I2VSampler"].generate(
        model=model, context=context, guidance=guidance, seed=11, **FAST)
    assert not torch.equal(plain, frames)


def test_a_pose_file_from_the_input_folder(pack, camera_nodes, tmp_path, monkeypatch):
    poses = tmp_path / "walk.txt"
    poses.write_text("".join(f"{i} 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 {-0.1 * i}\n" for i in range(20)))
    monkeypatch.setattr(pack.nodes.host, "input_directory", lambda: str(tmp_path))
    (camera,) = camera_nodes[TRAJECTORY].trajectory(motion="from pose file", speed=1.0, length=16, camera_cfg=1.0,
                                                    pose_file="walk.txt")
    assert torch.allclose(camera.path.c2w[:, 2, 3], 0.1 * torch.arange(16.0))  # walking forward
    with pytest.raises(ValueError, match="`pose_file` is empty"):
        camera_nodes[TRAJECTORY].trajectory(motion="from pose file", speed=1.0, length=16, camera_cfg=1.0)


def test_camera_input_that_cannot_work_is_refused(camera_nodes, cami2v_model, nodes, loaded):
    model = cami2v_model[0]
    (camera,) = camera_nodes[TRAJECTORY].trajectory(motion="pan left", speed=1.0, length=4, camera_cfg=1.0)
    guidance, context, _ = prepare(camera_nodes, model, comfy_image((64, 64)))
    with pytest.raises(ValueError, match="4 poses but the video has 8 frames"):
        camera_nodes["DynamiCrafterAnimate_I2VSampler"].generate(model=model, context=context, guidance=guidance,
                                                                 seed=1, camera=camera, **FAST)
    plain = loaded["model"]
    g2, c2, _ = prepare(nodes, plain, comfy_image((64, 64)))
    with pytest.raises(ValueError, match="no camera control. Load a CamI2V checkpoint"):
        nodes["DynamiCrafterAnimate_I2VSampler"].generate(model=plain, context=c2, guidance=g2, seed=1,
                                                          camera=camera, **FAST)
    (strong,) = camera_nodes[TRAJECTORY].trajectory(motion="pan left", speed=1.0, length=8, camera_cfg=2.0)
    with pytest.raises(ValueError, match="camera_cfg 2 needs I2V Sampler"):
        camera_nodes["DynamiCrafterAnimate_Conditioning"].condition(model=model, context=context, guidance=guidance,
                                                                    seed=1, fs=0, camera=strong)


def test_each_context_window_takes_its_own_frames_poses(camera_nodes, cami2v_model, pack):
    """The native path's camera: the whole video's poses in one call, a window's frames' own in a windowed one
    (relative to the video's first frame, the image's); a causal window, which prepends another frame, is refused."""
    model = cami2v_model[0]
    guidance, context, _ = prepare(camera_nodes, model, comfy_image((64, 64)))
    (camera,) = camera_nodes[TRAJECTORY].trajectory(motion="zoom in", speed=3.0, length=8, camera_cfg=1.0)
    positive, negative, _ = camera_nodes["DynamiCrafterAnimate_Conditioning"].condition(
        model=model, context=context, guidance=guidance, seed=5, fs=0, camera=camera)
    native = pack.nodes.native
    cond = positive[0][1][native.CAMERA]
    assert negative[0][1][native.CAMERA] is cond  # both branches see the camera, as the original's
    whole = cond.features(2, 8, {}, torch.device("cpu"))
    window = cond.features(2, 4, {"context_window": SimpleNamespace(index_list=[4, 5, 6, 7])}, torch.device("cpu"))
    rel = preset_path("zoom in", 8, speed=3.0).c2w
    direct = model.core.encode_camera(camera.path.intrinsics(64, 64)[None, 4:], rel[None, 4:], 64, 64, cond_frame=None,
                                      generator=torch.Generator().manual_seed(5))
    for got, want in zip(window.features, direct.features):
        assert torch.equal(got, want)
    assert whole.features[0].shape[2] == 8 and window.features[0].shape[2] == 4
    causal = SimpleNamespace(index_list=[4, 5, 6, 7], causal_anchor_index=3)
    with pytest.raises(ValueError, match="causal_window_fix"):
        cond.features(2, 5, {"context_window": causal}, torch.device("cpu"))


def test_the_camera_socket_is_declared_where_it_is_taken(pack):
    camera_type = pack.nodes.camera.CAMERA
    assert pack.NODE_CLASS_MAPPINGS[TRAJECTORY].RETURN_TYPES == (camera_type,)
    for node_id in ("DynamiCrafterAnimate_I2VSampler", "DynamiCrafterAnimate_Conditioning"):
        assert pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()["optional"]["camera"][0] == camera_type
    assert json.dumps(pack.NODE_CLASS_MAPPINGS[TRAJECTORY].INPUT_TYPES())  # the frontend reads it as JSON
