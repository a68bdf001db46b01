"""The tiny fixture model and one UNet call's inputs, shared by the speed-option tests."""
import pytest
import torch

import dynamicrafter_core as dc
from tests.conftest import CHECKPOINT


@pytest.fixture(scope="module")
def model(tiny_config):
    return dc.load_model(CHECKPOINT, config=tiny_config)


@pytest.fixture(scope="module")
def unet_inputs():
    """Two videos of 4 frames at 16x24 (a 128x192 video), two timesteps and two frame rates."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 8, 4, 16, 24, generator=g), torch.tensor([999, 500]),
            torch.randn(2, 77 + 64, 16, generator=g), torch.tensor([24, 8]))
