"""The bundled I2V job in a real ComfyUI against the core's animate() with the same weights (issue 16): seconds for
each, their ratio, and a profile of one sampling step of each (host CPU time against device time).

  COMFYUI_DIR=/path/to/ComfyUI python tests/bench/comfy_path_probe.py
        the CPU (ComfyUI started with --cpu): the tiny fixture at its own size, 10 steps; a minute
  COMFYUI_DIR=/path/to/ComfyUI python tests/bench/comfy_path_probe.py --device cuda
        ComfyUI's normal start-up (on 0.33+ it switches Dynamic VRAM on by itself on NVIDIA, and picks the
        cudaMallocAsync allocator as `python main.py` does), the released 512 layout with random bf16 weights written
        to a temporary checkpoint, 320x512, 16 frames, 50 steps, cfg 7.5
  ... --comfy-args="--disable-dynamic-vram"   any ComfyUI command-line flags, e.g. to compare without Dynamic VRAM
  ... --core-only                             the core alone, ComfyUI never imported (the core benchmark's setting)

The bundled job is Encode Image Context -> Visual Detail Guidance -> I2V Sampler on the model Load DynamiCrafter
returned once (a warm server re-runs these); the core's is animate() on the same file (encode, sample, decode). Both
run in this process after ComfyUI's start-up, so what the start-up changes (allocator, Dynamic VRAM's hooks) applies
to both, and only the pack's ComfyUI path differs. Runs alternate (core, bundled, ...) after one warm-up each; the
best of --repeat counts. The step profile covers one whole step between two step callbacks (each comes after the
step's host sync): "host busy" is its wall time less the time the CPU waited in synchronisations; when host busy
reaches the device's kernel time the step waits for Python, not for the GPU.

Needs ComfyUI's requirements and the pack's (pip install -e .) in the Python environment; nothing else. Not a test:
pytest does not collect it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a sailing boat drifting on a calm lake at sunset"
SYNC_EVENTS = ("Synchronize", "cudaMemcpy")  # where the CPU waits for the GPU (a blocking copy syncs its stream)


def start_comfyui(comfy_dir: str, device: str, extra: list[str]) -> dict:
    """ComfyUI's start-up as `python main.py` runs it, without the server: the allocator choice of its __main__ block
    (before torch touches CUDA), then main.py's module-level start-up (arguments, model management, Dynamic VRAM)."""
    sys.path.insert(0, comfy_dir)
    sys.argv = ["main.py", *(["--cpu"] if device == "cpu" else []), *extra]
    import comfy.options

    comfy.options.enable_args_parsing()
    if device != "cpu":
        import cuda_malloc  # noqa: F401  (sets PYTORCH_CUDA_ALLOC_CONF as main.py's __main__ block does)
    importlib.import_module("main")  # before torch, which main.py wants to import itself

    import comfy.model_patcher
    import comfyui_version

    memory = sys.modules.get("comfy.memory_management")
    return {"ComfyUI": comfyui_version.__version__,
            "Dynamic VRAM": bool(getattr(memory, "aimdo_enabled", False)),
            "core patcher": getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher).__name__,
            "allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "torch's default")}


def write_checkpoint(kind: str, folder: Path, device, dtype) -> tuple[Path, Path | None, str]:
    """(checkpoint, sidecar config or None, variant) in `folder`: the tiny fixture, or the released 512 layout with the
    benchmark's random weights in the released key names."""
    if kind == "tiny":
        fixture = ROOT / "tests" / "fixtures" / "tiny_v07"
        (folder / "tiny_v07.safetensors").symlink_to(fixture / "tiny_v07.safetensors")
        shutil.copy(fixture / "tiny_v07.config.json", folder / "tiny_v07.json")
        return folder / "tiny_v07.safetensors", folder / "tiny_v07.json", "512"
    from dynamicrafter_core.bench import write_checkpoint
    from dynamicrafter_core.config import VARIANT_CONFIGS

    path = write_checkpoint(folder / "random_512.safetensors", VARIANT_CONFIGS["512"], "512", device, dtype)
    return path, None, "512"


class Steps:
    """Wall-clock times of the sampler's step callbacks; `hook` runs at each (the profiler's step)."""

    def __init__(self):
        self.times, self.hook = [], None

    def __call__(self, *_):
        self.times.append(time.perf_counter())
        if self.hook is not None:
            self.hook()

    def median_ms(self) -> float:
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        return 1e3 * statistics.median(gaps) if gaps else float("nan")


def profile_step(run, steps: Steps, cuda: bool) -> dict:
    """torch.profiler over one whole sampling step, the second (the first warms the profiler up). One cycle only
    (repeat=1): with the default, recording starts again after it and key_averages() reports the last, partial cycle:
    the run's tail (the VAE decode), not the step."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=1, repeat=1)) as prof:
        steps.times, steps.hook = [], prof.step
        run(3)
        steps.hook = None
    events = prof.key_averages()
    wall = 1e3 * (steps.times[1] - steps.times[0])
    waits = [e for e in events if any(s in e.key for s in SYNC_EVENTS)]
    waited = sum(e.self_cpu_time_total for e in waits) / 1e3
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    device = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in kernels) / 1e3
    launches = sum(e.count for e in events if "LaunchKernel" in e.key)
    return {"wall ms": wall, "host busy ms": wall - waited, "device ms": device if cuda else float("nan"),
            "syncs": sum(e.count for e in waits if "Synchronize" in e.key), "launches": launches,
            "table": events.table(sort_by="self_cpu_time_total", row_limit=10)
            + (events.table(sort_by="self_device_time_total", row_limit=10) if cuda else "")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", choices=["tiny", "512"], help="default: tiny on the CPU, 512 on CUDA")
    parser.add_argument("--steps", type=int, help="default: 10 on the CPU, 50 on CUDA")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                        help="both paths' weights (Load DynamiCrafter's weight_dtype); default: fp32 on the CPU, bf16 "
                             "on CUDA, as the core benchmark's --dtype bf16")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each, after one warm-up each")
    parser.add_argument("--comfy-args", default="", help="extra ComfyUI command-line flags, space-separated")
    parser.add_argument("--core-only", action="store_true", help="time the core alone; ComfyUI is not imported")
    parser.add_argument("--table", action="store_true",
                        help="print the profiled step's top host operations too (and on CUDA its top kernels)")
    args = parser.parse_args()
    kind = args.model or ("tiny" if args.device == "cpu" else "512")
    steps_n = args.steps or (10 if args.device == "cpu" else 50)
    height, width, frames = (64, 64, 4) if kind == "tiny" else (320, 512, 16)

    facts = {}
    if not args.core_only:
        comfy_dir = os.environ.get("COMFYUI_DIR")
        if not comfy_dir or not (Path(comfy_dir) / "main.py").is_file():
            sys.exit("set COMFYUI_DIR to a ComfyUI folder (the one holding main.py), or pass --core-only")
        facts = start_comfyui(comfy_dir, args.device, args.comfy_args.split())
    # only now: before ComfyUI's start-up the pack's folder `nodes` would shadow ComfyUI's nodes.py, and after it
    # ComfyUI's own tests/ folder would shadow ours
    sys.path.insert(0, str(ROOT))
    import torch

    from dynamicrafter_core import load_model
    from dynamicrafter_core.pipeline import animate
    from tests.nodes.helpers import comfy_image, import_pack

    cuda = args.device == "cuda"
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if cuda else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    if not cuda:  # the tiny networks are latency-bound: one thread is steadier than several on a busy machine
        torch.set_num_threads(1)
    if cuda:
        facts["GPU"] = torch.cuda.get_device_name(device)
    folder = Path(tempfile.mkdtemp(prefix="comfy_path_probe_"))
    try:
        path, config, variant = write_checkpoint(kind, folder, device, dtype)
        core = load_model(path, config=config, device=device, dtype=dtype, variant=variant)
        image = comfy_image((height, width))
        steps = Steps()

        def sync():
            if cuda:
                torch.cuda.synchronize(device)

        def core_run(n):
            return animate(core, image.movedim(-1, 1) * 2 - 1, PROMPT, frames=frames, steps=n, cfg=7.5, seed=7,
                           height=height, width=width, callback=steps).cpu()

        runs = {"core": core_run}
        if not args.core_only:
            import folder_paths

            pack = import_pack()
            folder_paths.add_model_folder_path("dynamicrafter", str(folder))
            nodes = {node_id.split("_", 1)[1]: cls() for node_id, cls in pack.NODE_CLASS_MAPPINGS.items()}
            model, info = nodes["Loader"].load(ckpt_name=path.name, weight_dtype=dtype_name,
                                               variant=variant)
            print(f"Load DynamiCrafter: {info}")
            report = pack.nodes.host.progress

            def progress(total, node_id, where):  # the sampler's own progress report, and our clock
                inner = report(total, node_id, where)
                return lambda done, latents=None: (inner(done, latents), steps())
            pack.nodes.host.progress = progress

            def bundled_run(n):
                guidance, frame = nodes["VisualDetailGuidance"].encode(
                    model=model, image=image, mode="i2v", width=width, height=height, fit="crop", frames=frames)
                (context,) = nodes["EncodeImageContext"].encode(model=model, image=frame, prompt=PROMPT,
                                                                negative_prompt="")
                return nodes["I2VSampler"].generate(model=model, context=context, guidance=guidance, seed=7, steps=n,
                                                    cfg=7.5, image_cfg=0.0, eta=1.0, fs=0, guidance_rescale=-1.0,
                                                    spacing="auto", unique_id="probe")[0]
            runs["bundled"] = bundled_run

        seconds, step_ms, outputs = {k: [] for k in runs}, {k: [] for k in runs}, {}
        for k, run in runs.items():  # warm-up: kernels chosen, ComfyUI's loads done
            outputs[k] = run(steps_n)
        for _ in range(args.repeat):
            for k, run in runs.items():
                sync()
                steps.times = []
                start = time.perf_counter()
                run(steps_n)
                sync()
                seconds[k].append(time.perf_counter() - start)
                step_ms[k].append(steps.median_ms())
        profiles = {k: profile_step(run, steps, cuda) for k, run in runs.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(" | ".join(f"{k} {v}" for k, v in facts.items()) or "the core alone (ComfyUI not imported)")
    print(f"job: {kind} ({'random weights' if kind == '512' else 'fixture weights'}), {str(dtype)[6:]}, "
          f"{height}x{width}, {frames} frames, {steps_n} steps, cfg 7.5, torch {torch.__version__}, {device}")
    print(f"{'':8} {'seconds (best)':>15} {'all runs':>24} {'median step ms':>15}")
    for k in runs:
        print(f"{k:8} {min(seconds[k]):15.3f} {' '.join(f'{s:.3f}' for s in seconds[k]):>24} "
              f"{min(step_ms[k]):15.2f}")
    if "bundled" in runs:
        print(f"ratio bundled / core: {min(seconds['bundled']) / min(seconds['core']):.3f}x (job), "
              f"{min(step_ms['bundled']) / min(step_ms['core']):.3f}x (step); largest frame difference "
              f"{(outputs['bundled'] - outputs['core']).abs().max().item():.3g}")
    print(f"one sampling step, profiled: {'':3} {'wall ms':>9} {'host busy':>10} {'device':>9} {'syncs':>6} "
          f"{'launches':>9}")
    for k, p in profiles.items():
        print(f"{k:31} {p['wall ms']:9.2f} {p['host busy ms']:10.2f} {p['device ms']:9.2f} {p['syncs']:6d} "
              f"{p['launches']:9d}")
    if args.table:
        for k, p in profiles.items():
            print(f"\n{k}: the profiled step's top operations\n{p['table']}")


if __name__ == "__main__":
    main()
