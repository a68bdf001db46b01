"""Shared by the node tests: where things are, importing the pack as ComfyUI does, test pictures."""
import importlib.util
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_v07"
TINY = "tiny_v07.safetensors"


def import_pack(root: Path = ROOT):
    """As ComfyUI's load_custom_node: __init__.py by file path, registered under the folder's path with '.' replaced
    (not the folder name, which is not importable)."""
    name = str(root).replace(".", "_x_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, root / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def comfy_image(size=(64, 64), seed=0, batch=1) -> torch.Tensor:
    """An IMAGE batch (B, H, W, 3) in 0..1: a bright square on a gradient, shifted by `seed`."""
    h, w = size
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    images = []
    for b in range(batch):
        img = torch.stack([x, y, (x + y + 0.3 * (seed + b)) % 1], dim=-1) * 0.8
        img[h // 4: h // 2, (seed + b) * 7 % (w // 2): (seed + b) * 7 % (w // 2) + w // 4] = 0.95
        images.append(img)
    return torch.stack(images)


class ScalarReads(TorchDispatchMode):
    """Counts reads of a tensor's value into Python (.item(), float(), bool(), int()): each is a host sync on a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))
