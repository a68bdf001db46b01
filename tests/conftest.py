"""Shared test fixtures: the tiny DynamiCrafter checkpoint in the released layout (tests/fixtures/tiny_v07, made by
the original implementation along with its reference outputs)."""
import json
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
FIXTURE = TESTS / "fixtures" / "tiny_v07"
CHECKPOINT = FIXTURE / "tiny_v07.safetensors"
CONFIG_FILE = FIXTURE / "tiny_v07.config.json"


CAMI2V_CHECKPOINT = TESTS / "fixtures" / "tiny_cami2v" / "tiny_cami2v.safetensors"


def write_realcam_split(camera_file: Path, base_file: Path) -> None:
    """The tiny CamI2V checkpoint split as RealCam-I2V ships its weights: `camera_file` gets only the camera weights
    (pose encoder, Plücker projections, epipolar attention), `base_file` the DynamiCrafter rest they load on."""
    from safetensors.torch import load_file, save_file

    full = load_file(str(CAMI2V_CHECKPOINT))
    camera = {k for k in full if k.startswith("pose_encoder.") or ".pluker_projection." in k or ".epipolar." in k}
    save_file({k: full[k] for k in camera}, str(camera_file))
    save_file({k: v for k, v in full.items() if k not in camera}, str(base_file))


def pytest_report_header(config):
    # pyproject's addopts leave the slow tier out; say so at the top, so that "N deselected" is not a mystery
    if config.getoption("markexpr") == "not slow":
        return ("default tier: the slow tests are left out (`python -m pytest -m slow` runs them, `-m \"\"` runs "
                "everything; CI runs both tiers)")
    return None


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    return json.loads(CONFIG_FILE.read_text())["model"]


@pytest.fixture(scope="session")
def tiny_state_dict() -> dict:
    from safetensors.torch import load_file

    return load_file(str(CHECKPOINT))


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    import dynamicrafter_core as dc

    return dc.load_model(CHECKPOINT, config=tiny_config)


@pytest.fixture()
def image() -> torch.Tensor:
    """A 96x128 RGB test picture in [-1, 1]: a bright square on a gradient."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 128), indexing="ij")
    img = torch.stack([x, y, x * y]) * 0.5
    img[:, 30:60, 40:80] = 0.9
    return img[None]
