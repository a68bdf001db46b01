"""CamI2V camera control: the geometry behaves as a camera does, camera paths move the way their names say, the
camera reaches the video (and leaves DynamiCrafter alone when absent), RealCam's partial files load on a base, and bad
camera input is refused clearly. Numerical fidelity to the original is tests/acceptance/cami2v_parity_check.py's."""
import json
import math

import pytest
import torch

import dynamicrafter_core as dc
from dynamicrafter_core import camera, epipolar
from dynamicrafter_core.epipolar import EpipolarMasks
from dynamicrafter_core.errors import CheckpointError, InputError
from dynamicrafter_core.sampler import cfg_denoiser
from dynamicrafter_core.trajectory import PRESETS, CameraPath, camera_path, preset_path, read_pose_file

from ..conftest import CAMI2V_CHECKPOINT as CAMI2V_FILE
from ..conftest import write_realcam_split

CAMI2V = CAMI2V_FILE.parent


@pytest.fixture(scope="module")
def cami2v_config():
    return json.loads((CAMI2V / "tiny_cami2v.config.json").read_text())["model"]


@pytest.fixture(scope="module")
def cami2v(cami2v_config):
    return dc.load_model(CAMI2V_FILE, config=cami2v_config)


def project(K, c2w, point):
    """The pixel where a world point appears."""
    p = torch.linalg.inv(c2w.double())[:3, :3] @ point.double() + torch.linalg.inv(c2w.double())[:3, 3]
    uvw = K.double() @ p
    return uvw[:2] / uvw[2]


# -- geometry ---------------------------------------------------------------------------------------------------


def test_relative_poses_put_the_conditioning_camera_at_the_origin():
    path = preset_path("orbit left", 5)
    moved = torch.eye(4).clone()
    moved[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    rel = camera.relative_poses((moved @ path.c2w)[None], cond_frame=2)
    assert torch.allclose(rel[0, 2], torch.eye(4), atol=1e-6)
    pairs = camera.pose_pairs(rel)
    assert torch.allclose(pairs[0, 1, 3], torch.linalg.inv(rel[0, 3]) @ rel[0, 1], atol=1e-6)


def test_the_plucker_ray_of_the_principal_point_looks_straight_ahead():
    K = camera.default_intrinsics(64, 96, 1)
    rays = camera.plucker_rays(K, torch.eye(4)[None, None], 64, 96)
    assert rays.shape == (1, 6, 1, 64, 96)
    centre = rays[0, :, 0, 32, 48]  # the pixel whose centre is (48.5, 32.5), half a pixel off the principal point
    f = 48.0  # max(64, 96) / 2
    direction = torch.tensor([0.5 / f, 0.5 / f, 1.0])
    assert torch.allclose(centre[3:], direction / direction.norm())
    assert torch.equal(centre[:3], torch.zeros(3))  # the moment o x d of a ray through the origin
    assert torch.allclose(rays[0, 3:].norm(dim=0), torch.ones(1, 64, 96), atol=1e-6)  # unit directions


def test_a_sideways_move_keeps_epipolar_lines_on_the_same_row():
    """A camera sliding along x sees each point move along its row: the mask of frame 0's pixel in frame 1 is that
    pixel's row, wherever it is."""
    c2w = preset_path("pan right", 2).c2w[None]
    K = camera.default_intrinsics(64, 64, 2)
    pairs = camera.pose_pairs(camera.relative_poses(c2w))
    t = camera.perturb_zero_translations(pairs[..., :3, 3:4], torch.Generator().manual_seed(0))
    F = camera.fundamental_matrices(K, pairs[..., :3, :3], t)
    mask = camera.epipolar_mask(F, 8, 8, 8, registers=4)
    assert mask.shape == (1, 2 * 64, 4 + 2 * 64) and mask[..., :4].all()
    for row in range(8):
        for col in (0, 5):
            seen = mask[0, row * 8 + col, 4 + 64:].view(8, 8)  # frame 0's pixel -> frame 1
            expected = torch.zeros(8, 8, dtype=torch.bool)
            expected[row] = True
            assert torch.equal(seen, expected)


def test_a_level_mask_is_the_same_built_whole_or_a_few_frames_at_a_time(monkeypatch):
    F = torch.randn(1, 3, 3, 3, 3)
    masks = EpipolarMasks(F, masked_ds=(2, 4), registers=4)
    assert masks.level(1, 8, 8) is None and masks(1, 8, 8) is None  # a level the model leaves unmasked
    level = masks.level(2, 4, 4)
    whole = camera.epipolar_mask(F, 4, 4, 16, registers=4)
    assert whole.shape == (1, 3 * 16, 4 + 3 * 16) and whole[..., :4].all()
    assert 0.05 < whole[..., 4:].float().mean() < 0.95
    assert torch.equal(level.whole(), whole) and torch.equal(masks(2, 4, 4), whole)
    assert torch.equal(torch.cat([level.rows(0, 2), level.rows(2, 3)], dim=1), whole)  # by query frames
    monkeypatch.setattr(camera, "DISTANCE_ENTRIES", 1)  # the distances one target frame at a time
    assert torch.equal(camera.epipolar_mask(F, 4, 4, 16, registers=4), whole)


def largest_bool_tensor(fn):
    """Run fn; return its result and the most entries any bool tensor it made had."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.bool:
                    Watch.largest = max(Watch.largest, t.numel())
            return out

    with Watch():
        result = fn()
    return result, Watch.largest


def test_epipolar_attention_builds_its_mask_by_query_frames_and_answers_as_with_the_whole_mask(monkeypatch):
    """The chunked path never holds a level's whole (T h w)² mask, and every query attends as it would with it."""
    torch.manual_seed(0)
    frames, h, w, registers, dim = 4, 4, 6, 4, 32
    block = epipolar.Epipolar(dim, heads=2, registers=registers)
    torch.nn.init.normal_(block.epipolar_attn.register_tokens)
    K = camera.default_intrinsics(8 * h, 8 * w, frames)
    pairs = camera.pose_pairs(camera.relative_poses(preset_path("orbit left", frames, speed=4).c2w[None]))
    F = camera.fundamental_matrices(K, pairs[..., :3, :3],
                                    camera.perturb_zero_translations(pairs[..., :3, 3:4], torch.Generator()))
    level = EpipolarMasks(F, masked_ds=(1,), registers=registers).level(1, h, w)
    whole = level.whole()
    assert 0.05 < whole[..., registers:].float().mean() < 0.95  # a mask that does mask
    tokens = torch.randn(2 * h * w, frames, dim)  # two guidance branches sharing the camera
    with torch.no_grad():
        reference = block(tokens, 2, h, w, whole)  # one chunk: the whole mask at once
        unmasked = block(tokens, 2, h, w, None)
        monkeypatch.setattr(epipolar, "MASK_CHUNK_ENTRIES", 1)  # one query frame per chunk
        chunked, largest = largest_bool_tensor(lambda: block(tokens, 2, h, w, level))
    frame_rows = h * w * (registers + frames * h * w)
    assert largest == frame_rows < whole.numel()  # a query frame's rows of the mask, never all of it
    torch.testing.assert_close(chunked, reference, rtol=0, atol=1e-6)
    assert (reference - unmasked).abs().max() > 1e-3  # the mask is applied in the reference


def test_the_unet_with_the_camera_is_the_same_whatever_the_mask_chunk(cami2v, monkeypatch):
    torch.manual_seed(0)
    x, ctx = torch.randn(1, 8, 4, 8, 8), torch.randn(1, 77 + 64, 16)
    cam = cami2v.encode_camera(camera.default_intrinsics(64, 64, 4), preset_path("orbit left", 4, speed=8).c2w[None],
                               64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = cami2v.unet(x, torch.tensor([500]), ctx, camera=cam)
        monkeypatch.setattr(epipolar, "MASK_CHUNK_ENTRIES", 1)
        by_frame = cami2v.unet(x, torch.tensor([500]), ctx, camera=cam)
    # float32 rounding only (outputs reach 1.6): SDPA's kernels block a shorter run of queries differently, as they
    # do for another thread count (3e-5 here)
    torch.testing.assert_close(by_frame, whole, rtol=0, atol=1e-5)


# -- camera paths ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset,axis,sign", [("pan left", 0, -1), ("pan right", 0, 1), ("pan up", 1, -1),
                                              ("pan down", 1, 1), ("zoom in", 2, 1), ("zoom out", 2, -1)])
def test_presets_move_the_camera_the_way_their_name_says(preset, axis, sign):
    path = preset_path(preset, 16)
    centres = path.c2w[:, :3, 3]
    assert torch.equal(path.c2w[0], torch.eye(4))
    assert (sign * centres[1:, axis].diff() > 0).all()  # steadily, one way
    assert torch.allclose(preset_path(preset, 16, speed=2.0).c2w[:, :3, 3], 2 * centres)


@pytest.mark.parametrize("preset,direction", [("orbit left", -1), ("orbit right", 1)])
def test_an_orbit_circles_a_point_it_keeps_in_the_middle_of_the_picture(preset, direction):
    path = preset_path(preset, 16)
    K = camera.default_intrinsics(64, 64, 1)[0, 0]
    centre = torch.tensor([0.0, 0.0, 3.0])
    for pose in path.c2w:
        assert torch.allclose(project(K, pose, centre), torch.tensor([32.0, 32.0], dtype=torch.float64), atol=1e-4)
    assert direction * path.c2w[-1, 0, 3] > 0.2  # it went round sideways


def test_static_holds_still_and_every_preset_has_one_pose_per_frame():
    assert torch.equal(preset_path("static", 4).c2w, torch.eye(4).expand(4, 4, 4))
    for preset in PRESETS:
        assert camera_path(preset, 7).c2w.shape == (7, 4, 4)


def test_a_realestate10k_file_is_read_as_camera_to_world_poses(tmp_path):
    lines = ["https://www.youtube.com/watch?v=example"]
    for i in range(3):  # the camera moves +x by 0.5 per line: its world-to-camera translation is -0.5 i
        lines.append(f"{i * 33366} 0.5 0.9 0.5 0.5 0 0 1 0 0 {-0.5 * i} 0 1 0 0 0 0 1 0")
    path_file = tmp_path / "cam.txt"
    path_file.write_text("\n".join(lines) + "\n")
    path = read_pose_file(path_file, frames=5, speed=0.5)
    assert path.K is None  # the file's intrinsics are not CamI2V's: they are left out
    assert torch.allclose(path.c2w[:, 0, 3], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.allclose(read_pose_file(path_file, frames=4).c2w[:, 0, 3], torch.tensor([0.0, 0.5, 1.0, 1.0]))


@pytest.mark.parametrize("make,message", [
    (lambda tmp: camera_path("spin", 4), "neither a preset"),
    (lambda tmp: preset_path("spin", 4), "unknown camera preset"),
    (lambda tmp: preset_path("pan left", 4, speed=-1), "camera speed"),
    (lambda tmp: read_pose_file(tmp / "none.txt", 4), "does not exist"),
    (lambda tmp: (tmp / "e.txt").write_text("hello\n") and read_pose_file(tmp / "e.txt", 4), "no pose lines"),
    (lambda tmp: preset_path("pan left", 4).fitted(8), "4 poses but the video has 8 frames"),
])
def test_bad_camera_input_is_refused_clearly(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        make(tmp_path)


def test_given_intrinsics_scale_with_the_video_and_missing_ones_are_cami2vs():
    K = camera.default_intrinsics(64, 64, 2)[0]
    path = CameraPath(torch.eye(4).expand(2, 4, 4), K=K, size=(64, 64))
    assert torch.allclose(path.intrinsics(128, 64)[0], torch.tensor([[32.0, 0, 32], [0, 64, 64], [0, 0, 1]]))
    assert torch.equal(CameraPath(torch.eye(4).expand(2, 4, 4)).intrinsics(64, 96),
                       camera.default_intrinsics(64, 96, 2)[0])


# -- the model ------------------------------------------------------------------------------------------------------


def test_the_variant_is_told_from_the_keys(cami2v):
    assert cami2v.variant == "cami2v_256" and cami2v.takes_camera
    names = [n for n, m in cami2v.unet.named_modules() if hasattr(m, "pluker_projection")]
    assert "init_attn.0.transformer_blocks.0" not in names and len(names) == 16


def test_the_camera_changes_the_video_and_its_absence_leaves_dynamicrafter(cami2v):
    torch.manual_seed(0)
    x, ctx = torch.randn(1, 8, 4, 8, 8), torch.randn(1, 77 + 64, 16)
    K = camera.default_intrinsics(64, 64, 4)
    still = cami2v.encode_camera(K, preset_path("static", 4).c2w[None], 64, 64,
                                 generator=torch.Generator().manual_seed(1))
    moving = cami2v.encode_camera(K, preset_path("orbit left", 4, speed=8).c2w[None], 64, 64,
                                  generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = cami2v.unet(x, torch.tensor([500]), ctx)
        out_still = cami2v.unet(x, torch.tensor([500]), ctx, camera=still)
        out_moving = cami2v.unet(x, torch.tensor([500]), ctx, camera=moving)
    assert (out_moving - out_still).abs().max() > 1e-3 * out_still.std()
    assert (out_still - plain).abs().max() > 1e-3 * plain.std()


def test_a_camera_that_does_not_fit_is_refused(cami2v, tiny_model):
    K = camera.default_intrinsics(64, 64, 4)
    cam = cami2v.encode_camera(K, preset_path("pan left", 4).c2w[None], 64, 64)
    x, ctx = torch.randn(1, 8, 6, 8, 8), torch.randn(1, 77 + 96, 16)
    with pytest.raises(InputError, match="made for another video size or frame count"):
        cami2v.unet(x, torch.tensor([1]), ctx, camera=cam)
    with pytest.raises(InputError, match="without camera control"):
        tiny_model.encode_camera(K, preset_path("pan left", 4).c2w[None], 64, 64)
    with pytest.raises(InputError, match="at most 16 frames"):
        cami2v.encode_camera(camera.default_intrinsics(64, 64, 17), preset_path("pan left", 17).c2w[None], 64, 64)


def test_realcam_partial_files_load_on_a_base_file(tmp_path, cami2v_config, cami2v):
    partial, base = tmp_path / "realcam.safetensors", tmp_path / "base.safetensors"
    write_realcam_split(partial, base)
    with pytest.raises(CheckpointError, match="only camera weights.*base"):
        dc.load_model(partial, config=cami2v_config)
    merged = dc.load_model(partial, config=cami2v_config, base=base)
    assert merged.variant == "cami2v_256"
    for (name, a), b in zip(merged.state_dict().items(), cami2v.state_dict().values()):
        assert torch.equal(a, b), name


def test_loading_a_realcam_file_warns_once_that_translations_are_not_metric_scaled(tmp_path, cami2v_config,
                                                                                   monkeypatch, caplog):
    from dynamicrafter_core import checkpoint
    partial, base = tmp_path / "realcam.safetensors", tmp_path / "base.safetensors"
    write_realcam_split(partial, base)
    monkeypatch.setattr(checkpoint, "_realcam_depth_warned", False)
    with caplog.at_level("WARNING", logger=checkpoint.log.name):
        dc.load_model(CAMI2V_FILE, config=cami2v_config)  # a full CamI2V file: nothing to say
        assert not [r for r in caplog.records if "metric" in r.getMessage()]
        dc.load_model(partial, config=cami2v_config, base=base)
        dc.load_model(partial, config=cami2v_config, base=base)
    said = [r.getMessage() for r in caplog.records if "metric" in r.getMessage()]
    assert len(said) == 1 and "realcam.safetensors" in said[0] and "used as given" in said[0]


def test_camera_guidance_adds_the_difference_the_camera_makes():
    """m = m_u + cfg (m_c - m_u) + (camera_cfg - 1) w (m_c - m_c without camera), w cosine over t."""
    def model_fn(x, t, ctx):  # the branches run as one batch: each row its own context
        return x * ctx.flatten(1).sum(1, keepdim=True) + 1.0

    nocam = lambda x, t, ctx: x * 0.5  # noqa: E731
    x, c, u = torch.ones(1, 2), torch.full((1, 1, 1), 2.0), torch.zeros(1, 1, 1)
    guided = cfg_denoiser(model_fn, c, u, 3.0, camera_cfg=2.5, camera_cfg_schedule="cosine", nocam_fn=nocam)
    m_c, m_u = 3.0, 1.0
    w = math.cos((1 - 400 / 999) * math.pi / 2)
    assert torch.allclose(guided(x, 400), torch.full((1, 2), m_u + 3 * (m_c - m_u) + 1.5 * w * (m_c - 0.5)))
    with pytest.raises(InputError, match="camera_cfg_schedule"):
        cfg_denoiser(model_fn, c, u, 3.0, camera_cfg=2.0, camera_cfg_schedule="linear", nocam_fn=nocam)


def test_animate_follows_a_camera_path(cami2v, tiny_model):
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    kwargs = dict(prompt="a room", frames=4, steps=2, seed=3, height=64, width=64)
    left = dc.animate(cami2v, image, camera=preset_path("pan left", 4, speed=8), **kwargs)
    right = dc.animate(cami2v, image, camera=preset_path("pan right", 4, speed=8), **kwargs)
    assert left.shape == (4, 64, 64, 3)
    assert (left - right).abs().max() > 1e-3
    again = dc.animate(cami2v, image, camera=preset_path("pan left", 4, speed=8), **kwargs)
    assert torch.equal(again, left)  # the seed decides everything, the zero-translation noise included
    with pytest.raises(InputError, match="without camera control"):
        dc.animate(tiny_model, image, camera=preset_path("pan left", 4), **kwargs)


# -- the command line -------------------------------------------------------------------------------------------


def test_the_command_line_follows_a_preset_or_a_pose_file(tmp_path):
    from PIL import Image

    from dynamicrafter_core.__main__ import main
    from dynamicrafter_core.video_io import read_video

    photo = tmp_path / "room.png"
    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(photo)
    poses = tmp_path / "path.txt"
    poses.write_text("".join(f"{i} 0.5 0.9 0.5 0.5 0 0 1 0 0 {-0.1 * i} 0 1 0 0 0 0 1 0\n" for i in range(6)))
    tiny = ["--checkpoint", str(CAMI2V_FILE), "--config", str(CAMI2V / "tiny_cami2v.config.json"), "--steps", "2",
            "--frames", "4", "--width", "64", "--height", "64", "--prompt", "a room"]
    for camera_arg in ("zoom in", str(poses)):
        out = tmp_path / f"{len(camera_arg)}.mp4"
        assert main(["animate", str(photo), *tiny, "--camera", camera_arg, "-o", str(out)]) == 0
        assert read_video(out).shape == (4, 64, 64, 3)


@pytest.mark.parametrize("args,message", [
    (["--camera", "spin"], "neither a preset"),
    (["--camera", "pan left", "--camera-cfg", "0.5"], "--camera-cfg"),
    (["--camera", "pan left", "--camera-speed", "99"], "camera speed"),
])
def test_bad_camera_options_are_refused_before_loading(tmp_path, args, message, capsys):
    from dynamicrafter_core.__main__ import main

    status = main(["animate", str(tmp_path / "missing.png"), "--checkpoint", str(tmp_path / "none.pt"), *args])
    assert status == 2
    assert message in capsys.readouterr().err


def test_the_released_512_layout_makes_every_temporal_block_but_init_attn_camera_aware(cami2v_config):
    from dynamicrafter_core.checkpoint import detect_variant
    from dynamicrafter_core.config import VARIANT_CONFIGS
    from dynamicrafter_core.model import DynamiCrafter

    with torch.device("meta"):
        model = DynamiCrafter(VARIANT_CONFIGS["cami2v_512"], with_text_encoder=False, with_image_encoder=False)
    names = sorted(n for n, m in model.unet.named_modules() if hasattr(m, "pluker_projection"))
    assert names == sorted(json.loads((CAMI2V / "tiny_cami2v.config.json").read_text())["camera_blocks"])
    assert [f.shape[0] for f in (model.pose_encoder.encoder_conv_in.weight,)] == [320]
    keys = ["pose_encoder.encoder_conv_in.weight", "model.diffusion_model.input_blocks.1.0.temopral_conv.conv1.2.weight"]
    assert detect_variant(keys)[0] == "cami2v_512"
    assert detect_variant(keys + ["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.alpha"])[0] == \
        "cami2v_256"


@pytest.mark.parametrize("change,message", [
    (lambda p: p.update(add_type="add_into_temporal_attn"), "add_type"),
    (lambda p: p["epipolar_config"].update(is_3d_full_attn=True), "is_3d_full_attn"),
    (lambda p: p["pose_encoder_config"]["params"].update(sk=False), "`sk: False`"),
])
def test_cami2v_options_the_released_models_do_not_use_are_refused(cami2v_config, change, message):
    import copy

    from dynamicrafter_core.errors import ConfigError

    section = copy.deepcopy(cami2v_config)
    change(section["params"])
    with pytest.raises(ConfigError, match=message):
        dc.from_original(section)
