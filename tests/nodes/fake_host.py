"""A stand-in for nodes/host.py without ComfyUI: what ComfyUI does when started with --cpu (CPU devices, float32,
plain torch.nn layers), with every request recorded so tests can check what the nodes asked ComfyUI for."""
from __future__ import annotations

from pathlib import Path

import torch

EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".sft")


class Interrupted(Exception):
    """What ComfyUI's InterruptProcessingException is to the nodes: raised by check_interrupt after Cancel."""


class FakePatcher:
    def __init__(self, module, load_device, offload_device):
        self.model, self.load_device, self.offload_device = module, load_device, offload_device


class FakeHost:
    cpu = torch.device("cpu")

    def __init__(self, folder: Path):
        self.folder = folder
        self.loads = []  # (stages loaded, memory_required, full)
        self.reports = []  # (done, total, latents shape or None)
        self.cancel_after_steps = None  # Cancel pressed once this many steps reported

    # -- the functions of nodes/host.py ------------------------------------------------------------------------

    def register_model_folder(self, readme):
        return str(self.folder)

    def checkpoint_names(self):
        return sorted(p.name for p in self.folder.iterdir() if p.suffix in EXTENSIONS)

    def checkpoint_path(self, name):
        path = self.folder / name
        return str(path) if path.is_file() else None

    def checkpoint_folders(self):
        return [str(self.folder)]

    def devices(self):
        return {stage: (self.cpu, self.cpu) for stage in ("unet", "vae", "encoders")}

    def unet_dtype(self, device, parameters):
        return torch.float32

    def compute_dtype(self, weight_dtype, device):
        return torch.float32  # ComfyUI on the CPU computes everything in fp32

    def vae_dtype(self, device):
        return torch.float32

    def text_encoder_dtype(self, device):
        return torch.float16  # ComfyUI's default, even on the CPU

    def is_cpu(self, device):
        return torch.device(device).type == "cpu"

    def intermediate_device(self):
        return self.cpu

    def ops(self):
        return torch.nn

    def model_patcher(self, module, load_device, offload_device):
        return FakePatcher(module, load_device, offload_device)

    def load(self, patchers, memory_required, full=False):
        self.loads.append(([type(p.model).__name__ for p in patchers], memory_required, full))

    def check_interrupt(self):
        steps = sum(1 for r in self.reports if r[2] is not None)
        if self.cancel_after_steps is not None and steps >= self.cancel_after_steps:
            self.cancel_after_steps = None  # ComfyUI clears the flag when it raises
            raise Interrupted()

    def progress(self, total, node_id, device):
        def report(done, latents=None):
            self.reports.append((done, total, None if latents is None else tuple(latents.shape)))

        return report


HOST_FUNCTIONS = [name for name in vars(FakeHost) if not name.startswith("_") and callable(getattr(FakeHost, name))]
