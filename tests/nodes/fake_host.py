"""A stand-in for nodes/host.py without ComfyUI, behaving as ComfyUI 0.33 does on the CPU, with every request
recorded so tests can check what the nodes asked ComfyUI for:
- float32 on CPU devices; the load device is `cpu:0`, a name of the CPU that no weight ever reports, so a node that
  takes a network's device from its weights instead of its patcher is told apart (Dynamic VRAM streams weights from
  host memory: there the weights' device is not where the network runs);
- layers as comfy.ops builds them under Dynamic VRAM: Linear layers without weights until a state dict assigns them;
- Cancel as ComfyUI's InterruptProcessingException, a BaseException, raised by check_interrupt (ComfyUI throttles
  progress updates, so the nodes cannot count on its progress hook to deliver Cancel).
What it cannot stand in for (weights streamed per layer call, Cancel raised from inside a layer, the RAM cache) the
real-host tier checks in ComfyUI itself (test_comfyui_host.py)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".sft")
LOAD_DEVICE = torch.device("cpu", 0)


class Interrupted(BaseException):
    """What ComfyUI's InterruptProcessingException is to the nodes: raised by check_interrupt after Cancel."""


class WeightlessLinear(torch.nn.Linear):
    """comfy.ops' Linear under Dynamic VRAM: built without weight and bias, which loading the state dict assigns."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        self.weight = self.bias = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for key, value in state_dict.items():  # torch hands a leaf module only its own keys
            name = key[len(prefix):]
            if name == "weight" or (name == "bias" and self.has_bias):
                setattr(self, name, torch.nn.Parameter(value, requires_grad=False))
            else:
                unexpected_keys.append(key)
        missing_keys.extend(prefix + name for name, wanted in (("weight", True), ("bias", self.has_bias))
                            if wanted and getattr(self, name) is None)


class DynamicVramOps:
    """torch.nn's layer classes, Linear as comfy.ops makes it under Dynamic VRAM."""
    Linear = WeightlessLinear

    def __getattr__(self, name):
        return getattr(torch.nn, name)


class FakePatcher:
    def __init__(self, module, load_device, offload_device, streaming):
        self.model, self.load_device, self.offload_device = module, load_device, offload_device
        self.streaming = streaming


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

    def controlnet_names(self):
        return self.checkpoint_names()  # one folder stands for both

    def controlnet_path(self, name):
        return self.checkpoint_path(name)

    def checkpoint_folders(self):
        return [str(self.folder)]

    def input_directory(self):
        return str(self.folder)

    def devices(self):
        return {stage: (LOAD_DEVICE, self.cpu) for stage in ("unet", "vae", "encoders")}

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

    def ops(self, weight_dtype, compute_dtype):
        return DynamicVramOps()

    def model_patcher(self, module, load_device, offload_device, streaming):
        return FakePatcher(module, load_device, offload_device, streaming)

    def diffusion_model(self, core):
        return core.unet  # the native MODEL is ComfyUI's BaseModel: the real-host tier tests it

    def load(self, patchers, memory_required, full=False):
        self.loads.append(([type(p.model).__name__ for p in patchers], memory_required, full))

    free_bytes = 1 << 40  # a tests sets it lower to stand for a small GPU

    def free_memory(self, device):
        return self.free_bytes

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


@contextlib.contextmanager
def hosting(pack, folder: Path):
    """The pack's host functions replaced by a FakeHost over `folder` for the block (for fixtures wider than one test,
    which monkeypatch cannot serve)."""
    fake = FakeHost(folder)
    saved = {name: getattr(pack.nodes.host, name) for name in HOST_FUNCTIONS}
    for name in HOST_FUNCTIONS:
        setattr(pack.nodes.host, name, getattr(fake, name))
    try:
        yield fake
    finally:
        for name, value in saved.items():
            setattr(pack.nodes.host, name, value)
