"""The pack imported the way ComfyUI imports it, a fake host in place of ComfyUI, and the tiny checkpoint in a model
folder with its sidecar config."""
import json

import pytest
import torch

from .fake_host import HOST_FUNCTIONS, FakeHost, hosting
from .helpers import FIXTURE, TINY, import_pack

# the tiny networks are latency-bound: one thread is several times faster than two on a busy machine
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    """models/dynamicrafter with the tiny checkpoint and its sidecar (the original yaml's model section as json)."""
    folder = tmp_path_factory.mktemp("dynamicrafter")
    (folder / TINY).symlink_to(FIXTURE / TINY)
    config = json.loads((FIXTURE / "tiny_v07.config.json").read_text())["model"]
    (folder / "tiny_v07.json").write_text(json.dumps({"model": config}))
    return folder


@pytest.fixture
def host(pack, model_folder, monkeypatch):
    fake = FakeHost(model_folder)
    for name in HOST_FUNCTIONS:
        monkeypatch.setattr(pack.nodes.host, name, getattr(fake, name))
    return fake


@pytest.fixture
def nodes(pack, host):
    """node id -> a fresh instance, as ComfyUI creates one per graph node."""
    return {node_id: cls() for node_id, cls in pack.NODE_CLASS_MAPPINGS.items()}


@pytest.fixture(scope="session")
def loaded(pack, model_folder):
    """The tiny model through Load DynamiCrafter (loaded once: it takes seconds)."""
    with hosting(pack, model_folder):
        model, info = pack.nodes.loader.Loader().load(ckpt_name=TINY, weight_dtype="auto", variant="auto")
        interp, _ = pack.nodes.loader.Loader().load(ckpt_name=TINY, weight_dtype="auto", variant="512_interp")
    return {"model": model, "info": info, "interp": interp}

