"""The GPU table in one command: every benchmark row, where a step's GPU time goes, and optionally the same job
through a ComfyUI server and one guided step of the original implementation, side by side.

  python -m dynamicrafter_core.gpu_check [--original DIR] [--comfyui DIR] [--json FILE]
        on a CUDA machine: about 6 minutes on an H200 (more with --comfyui: a 5 GB checkpoint is written first)
  python -m dynamicrafter_core.gpu_check --parts options [--comfyui DIR]
        the 512 model compiled with each option that is not on by default (float8 products, channels-last), with
        float8's distance from bf16: about 2 minutes per option on an H200; with --comfyui, the ComfyUI job again
        with I2V Sampler's compile option (first compiling, then reusing the graphs)
  python -m dynamicrafter_core.gpu_check --device cpu --tiny
        the same parts on the tiny-width model on the CPU: a dry run of this command, in a few minutes

--original DIR: a checkout of the original implementation (github.com/Doubiiu/DynamiCrafter: its lvdm/, utils/ and
configs/ are used; nothing of it is kept). Its UNetModel is built from configs/inference_<size>_v1.0.yaml, given the
same random weights as ours, and run as its inference script runs it: fp32 weights under CUDA autocast (fp16), one
call per guidance branch; once with its own einsum attention (what a user without xformers gets) and once with
xformers' memory_efficient_attention stood in for by PyTorch's SDPA (a proxy for a user who installed xformers).
--comfyui DIR: a ComfyUI folder whose Python packages are importable; this pack is linked into its custom_nodes, a
random-weight 512 checkpoint is written to a temporary models folder, the server is started, and the bundled
image-to-video job (Load DynamiCrafter, Encode Image Context, Visual Detail Guidance, I2V Sampler, Save Image) is
queued twice (cold, then warm with another seed); the times are ComfyUI's own "Prompt executed in".

Every part runs in its own process (a failure or a hung part costs that row only) and prints as it goes; the table
comes last, and --json writes every number. Timings use random weights of the released sizes: the values do not
change the time.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--repeats", "1", "--warmup", "1", "--warmup-steps", "2"]


# options not on by default, each compiled at 512 (the `options` part, not in the default run: each row compiles anew,
# about 2 minutes on an H200): float8 products in the linear layers, and the hidden state channels-last (NHWC), which
# would spare cuDNN its layout conversions around every convolution
OPTION_ROWS = [("fp8 matmul", ["--fp8-matmul"]), ("channels-last", ["--channels-last"])]


def bench_rows(tiny: bool, options: bool = False) -> list:
    """(row name, bench arguments). The compiled rows compile the UNet layer by layer (compiled.py); their first step,
    where it compiles, is in the warm-up run and reported apart. options: the OPTION_ROWS instead."""
    if tiny:
        tiny = ["--tiny", "--steps", "3"] + COMMON  # at the fixture's own size (64x64, 4 frames): quick
        if options:
            return [(f"tiny, compiled, {name}", tiny + ["--dtype", "bf16", "--compile", *flags])
                    for name, flags in OPTION_ROWS]
        return [("tiny, eager", tiny), ("tiny, compiled", tiny + ["--compile"])]
    rows = []
    for size in ("512",) if options else ("512", "1024"):
        row = ["--variant", size, "--dtype", "bf16", "--steps", "50"] + COMMON
        if options:
            rows += [(f"{size} bf16, compiled, {name}", row + ["--compile", *flags]) for name, flags in OPTION_ROWS]
        else:
            rows += [(f"{size} bf16", row), (f"{size} bf16, compiled", row + ["--compile"])]
    return rows


def plain(row: dict) -> bool:
    """A row without the OPTION_ROWS' settings: the one the original and ComfyUI are compared with."""
    return "error" not in row and not row["settings"]["fp8_weights"] and not row["settings"]["channels_last"]


def run_part(args: list, timeout: float) -> dict:
    """One part in its own Python process; returns its last JSON line, or {"error": ...}."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    result = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------------------------
# Parts that run in their own process (python -m dynamicrafter_core.gpu_check --part ...)

KINDS = [("compiled fusions", ("triton_",)),  # what --compile generates: norms, activations, sums fused together
         ("attention", ("flash", "fmha", "attention", "sdpa", "efficient")),
         ("copy/layout", ("copy", "transpose", "permute", "cat", "contiguous", "nchwtonhwc", "nhwctonchw")),
         ("matrix", ("gemm", "sm90", "cutlass", "cublas", "xmma", "nvjet", "matmul")),
         ("convolution", ("conv", "implicit", "winograd", "cudnn")),
         ("norm", ("norm", "welford", "moments")),
         ("elementwise", ("elementwise", "vectorized", "silu", "gelu", "add", "mul", "unrolled"))]


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, keys in KINDS if any(k in name for k in keys)), "other")


def guided_step_inputs(variant: str, context_dim: int, dev):
    """(x, t, context, fs) of one guided UNet step, both branches in one batch: 16 frames at the variant's latent
    size, or 4 frames of 8x8 for the tiny model; the same values in every process."""
    import torch

    from .config import VARIANT_CONFIGS
    from .unet import IMAGE_TOKENS_PER_FRAME, TEXT_TOKENS

    if variant == "tiny":
        (h, w), frames = (8, 8), 4
    else:
        (h, w), frames = (side // 8 for side in VARIANT_CONFIGS[variant].resolution), 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, frames, h, w, generator=g).to(dev)
    context = torch.randn(2, TEXT_TOKENS + IMAGE_TOKENS_PER_FRAME * frames, context_dim, generator=g).to(dev)
    return x, torch.tensor([500, 500], device=dev), context, torch.tensor([24, 24], device=dev)


def part_profile(variant: str, device: str, compile_layers_: bool) -> dict:
    """GPU time of one guided UNet step (both branches in one call) by kind of kernel, and the top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from .bench import random_model, tiny_config
    from .compiled import compile_layers
    from .config import VARIANT_CONFIGS

    dev = torch.device(device)
    cfg = tiny_config() if variant == "tiny" else VARIANT_CONFIGS[variant]
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    unet = random_model(cfg, variant if variant != "tiny" else "512", dev, dtype).unet
    if compile_layers_:
        compile_layers(unet)
    x, t, ctx, fs = guided_step_inputs(variant, cfg.unet.context_dim, dev)
    cuda = dev.type == "cuda"
    with torch.no_grad():
        for _ in range(2):
            unet(x, t, ctx, fs)
        if cuda:
            torch.cuda.synchronize()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            unet(x, t, ctx, fs)
            if cuda:
                torch.cuda.synchronize()
    kinds, kernels, count = collections.Counter(), collections.Counter(), 0
    for event in prof.events():
        if cuda and event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if not cuda and (event.cpu_parent is not None or not event.name.startswith("aten::")):
            continue  # on the CPU: top-level operators only
        spent = event.self_device_time_total if cuda else event.self_cpu_time_total
        kinds[kind_of(event.name)] += spent
        kernels[event.name[:100]] += spent
        count += 1
    total = sum(kinds.values()) or 1
    return {"variant": variant, "compiled": compile_layers_, "device_ms": total / 1e3, "kernels": count,
            "by_kind": {k: v / total for k, v in kinds.most_common()},
            "top": [[name, v / total] for name, v in kernels.most_common(12)]}


def part_original(original: str, variant: str, device: str, attention: str) -> dict:
    """One guided step of the original's UNetModel with our random weights, as its inference script runs it."""
    import types

    import torch
    import torch.nn.functional as F
    import yaml

    from .bench import random_model, synchronize, tiny_config
    from .config import VARIANT_CONFIGS

    if attention == "sdpa":  # before lvdm is imported: it picks its xformers path at import when xformers is there
        def memory_efficient_attention(q, k, v, attn_bias=None, op=None):
            return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        xformers = types.ModuleType("xformers")
        xformers.ops = types.ModuleType("xformers.ops")
        xformers.ops.memory_efficient_attention = memory_efficient_attention
        sys.modules["xformers"], sys.modules["xformers.ops"] = xformers, xformers.ops
    sys.path.insert(0, original)
    try:
        from lvdm.modules.networks.openaimodel3d import UNetModel
    except ImportError as e:
        raise SystemExit(f"--original {original}: its UNet (lvdm/modules/networks/openaimodel3d.py) does not import "
                         f"({e}); give a checkout of github.com/Doubiiu/DynamiCrafter, whose requirements (einops, "
                         "opencv-python) are installed") from e

    dev = torch.device(device)
    if variant == "tiny":
        cfg = tiny_config()
        fixture = json.loads((ROOT / "tests/fixtures/tiny_v07/tiny_v07.config.json").read_text())
        params = fixture["model"]["params"]["unet_config"]["params"]
    else:
        cfg = VARIANT_CONFIGS[variant]
        yaml_cfg = yaml.safe_load((Path(original) / f"configs/inference_{variant}_v1.0.yaml").read_text())
        params = yaml_cfg["model"]["params"]["unet_config"]["params"]
    ours = random_model(cfg, "512" if variant == "tiny" else variant, dev, torch.float32).unet
    theirs = UNetModel(**params).to(dev).eval().requires_grad_(False)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    del ours
    x, t, ctx, fs = guided_step_inputs(variant, params["context_dim"], dev)

    def step():  # the original's DDIM: the conditional and the unconditional branch as two calls
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16):
            for i in range(2):
                theirs(x[i:i + 1], t[i:i + 1], context=ctx[i:i + 1], fs=fs[i:i + 1])

    step()
    times = []
    for _ in range(3):
        synchronize(dev)
        start = time.perf_counter()
        step()
        synchronize(dev)
        times.append(time.perf_counter() - start)
    return {"variant": variant, "attention": attention, "step_s": sorted(times)[1], "min_s": min(times)}


# ---------------------------------------------------------------------------------------------------------------
# A ComfyUI server job


def api_prompt(ckpt: str, seed: int, steps: int, size: tuple, compile: bool = False) -> dict:
    """The bundled image-to-video job as ComfyUI's API format (the node ids are this pack's); `compile`: I2V
    Sampler's compile option on."""
    height, width = size
    p = "DynamiCrafterAnimate_"
    return {
        "1": {"class_type": p + "Loader", "inputs": {"ckpt_name": ckpt, "weight_dtype": "auto", "variant": "auto"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                      "color": 0x7799CC}},
        "3": {"class_type": p + "VisualDetailGuidance",
              "inputs": {"model": ["1", 0], "image": ["2", 0], "mode": "i2v", "width": width, "height": height,
                         "fit": "crop", "frames": 16}},
        "4": {"class_type": p + "EncodeImageContext",
              "inputs": {"model": ["1", 0], "image": ["3", 1], "prompt": "a sailing boat on a calm lake",
                         "negative_prompt": ""}},
        "5": {"class_type": p + "I2VSampler",
              "inputs": {"model": ["1", 0], "context": ["4", 0], "guidance": ["3", 0], "seed": seed, "steps": steps,
                         "cfg": 7.5, "image_cfg": 0.0, "eta": 1.0, "fs": 0, "guidance_rescale": -1.0,
                         "spacing": "auto", **({"compile": True} if compile else {})}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "gpu_check"}},
    }


def part_comfyui(comfy_dir: str, device: str, tiny: bool, steps: int, compiled: bool = False) -> dict:
    """Write a checkpoint, start ComfyUI with this pack, queue the job twice, read ComfyUI's times. `compiled`: then
    twice more with I2V Sampler's compile option (the first compiles the UNet's layers, the second reuses them)."""
    import re
    import urllib.request

    import torch

    from .bench import tiny_config, write_checkpoint
    from .config import VARIANT_CONFIGS

    work = Path(tempfile.mkdtemp(prefix="dc_gpu_check_"))
    models = work / "models" / "dynamicrafter"
    models.mkdir(parents=True)
    (work / "custom_nodes").mkdir()
    (work / "custom_nodes" / "dynamicrafter-animate").symlink_to(ROOT)
    dev = torch.device(device)
    cfg = tiny_config() if tiny else VARIANT_CONFIGS["512"]
    name = "random_512.safetensors"
    write_checkpoint(models / name, cfg, "512", dev, torch.float16 if dev.type == "cuda" else torch.float32)
    if tiny:
        fixture = ROOT / "tests/fixtures/tiny_v07/tiny_v07.config.json"
        (models / "random_512.json").write_text(fixture.read_text())
    (work / "frontend").mkdir()  # no web frontend is needed to take API prompts
    port = 8190
    log_path = work / "comfyui.log"
    command = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-api-nodes",
               "--base-directory", str(work), "--front-end-root", str(work / "frontend")]
    if dev.type == "cpu":
        command.append("--cpu")
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=comfy_dir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/system_stats", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited: {log_path.read_text()[-600:]}")
                time.sleep(1)
        times = []
        size = (64, 64) if tiny else (320, 512)
        for seed, compile in ((1, False), (2, False), *(((3, True), (4, True)) if compiled else ())):
            body = json.dumps({"prompt": api_prompt(name, seed, steps, size, compile)}).encode()
            request = urllib.request.Request(url + "/prompt", body, {"Content-Type": "application/json"})
            prompt_id = json.loads(urllib.request.urlopen(request, timeout=30).read())["prompt_id"]
            while True:
                history = json.loads(urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=30).read())
                if prompt_id in history:
                    status = history[prompt_id].get("status", {})
                    if status.get("status_str") == "error":
                        raise RuntimeError(f"the job failed: {json.dumps(status)[-600:]}")
                    break
                time.sleep(0.5)
            found = re.findall(r"Prompt executed in ([0-9.:]+) seconds", log_path.read_text())
            times.append(found[-1] if found else None)
        text = log_path.read_text()
        seconds = [_seconds(t) for t in times]
        return {"cold_s": seconds[0], "warm_s": seconds[1], "steps": steps,
                **({"compiled_first_s": seconds[2], "compiled_warm_s": seconds[3]} if compiled else {}),
                "dynamic_vram": "DynamicVRAM support detected and enabled" in text,
                "log_tail": text[-1500:]}
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def _seconds(text) -> float | None:
    """ComfyUI prints "12.34" or, past a minute, "1:02.34"."""
    if text is None:
        return None
    minutes, _, seconds = text.rpartition(":")
    return float(seconds) + 60 * float(minutes or 0)


# ---------------------------------------------------------------------------------------------------------------
# The whole check


def check(args) -> dict:
    """Every part asked for, in the order that puts the rarest measurement first (the ComfyUI job), each reported
    as it finishes."""
    device = ["--device", args.device]
    result = {"started": time.strftime("%Y-%m-%d %H:%M"), "commit": _commit(), "rows": {}, "profiles": [],
              "original": [], "comfyui": None}
    me = ["-m", "dynamicrafter_core.gpu_check", *device]
    if args.comfyui and {"comfyui", "options"} & set(args.parts):
        compiled = "options" in args.parts  # I2V Sampler's compile option: is it worth it under Dynamic VRAM?
        print(f"[gpu_check] ComfyUI server job{', eager and compiled' if compiled else ''} ...", flush=True)
        part = me + ["--part", "comfyui", "--comfyui", args.comfyui, "--steps", str(3 if args.tiny else 50)]
        part += (["--tiny"] if args.tiny else []) + (["--compiled"] if compiled else [])
        result["comfyui"] = run_part(part, args.part_timeout * (2 if compiled else 1))
        _say("ComfyUI job", result["comfyui"], "cold {cold_s} s, warm {warm_s} s"
             + (", compiled: first {compiled_first_s} s, warm {compiled_warm_s} s" if compiled else ""))
    rows = [*(bench_rows(args.tiny) if "rows" in args.parts else []),
            *(bench_rows(args.tiny, options=True) if "options" in args.parts else [])]
    for name, row in rows:
        print(f"[gpu_check] {name} ...", flush=True)
        r = result["rows"][name] = run_part(["-m", "dynamicrafter_core.bench", *row, *device], args.part_timeout)
        if "error" not in r:
            phases = r["runs"]["optimised"]
            r["summary"] = (f"step {phases['unet_step']['median_s']:.4f} s, end to end "
                            f"{phases['end_to_end']['median_s']:.2f} s, peak "
                            f"{phases['end_to_end']['peak_bytes'] / 2 ** 30:.2f} GiB, warm-up {r['warmup_s']}"
                            + (f", float8 distance {r['fp8_distance']:.3f}" if "fp8_distance" in r else ""))
        _say(name, r, "{summary}")
    variant = "tiny" if args.tiny else "512"
    if "profile" in args.parts:
        for compiled in (False, True):
            print(f"[gpu_check] profile {variant}{', compiled' if compiled else ''} ...", flush=True)
            part = me + ["--part", "profile", "--variant", variant] + (["--compiled"] if compiled else [])
            result["profiles"].append(run_part(part, args.part_timeout))
            _say("profile", result["profiles"][-1], "{device_ms:.1f} ms of GPU time, {kernels} kernels")
    if args.original and "original" in args.parts:
        for size in (["tiny"] if args.tiny else args.sizes):
            for attention in ("einsum", "sdpa"):
                print(f"[gpu_check] original {size} {attention} ...", flush=True)
                part = me + ["--part", "original", "--original", args.original, "--variant", size, "--attention",
                             attention]
                result["original"].append(run_part(part, args.part_timeout))
                _say("original", result["original"][-1], "{step_s:.4f} s per guided step")
    return result


def _say(name: str, part: dict, numbers: str) -> None:
    """One line as a part finishes, so that a run cut short still shows what it measured."""
    if "error" in part:
        print(f"[gpu_check]   {name}: {part['error']}", flush=True)
    else:
        print(f"[gpu_check]   {name}: {numbers.format(**part)} ({part['wall_s']:.0f} s)", flush=True)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def table(result: dict) -> str:
    lines = [f"DynamiCrafter GPU check, {result['started']}, commit {result['commit']}"]
    device = next((r["device"] for r in result["rows"].values() if "device" in r), "?")
    lines.append(f"device: {device}")
    lines.append("\n| run | UNet step | sampling | VAE decode | end to end | peak | UNet TFLOP/s | warm-up |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in result["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:120]} | | | | | | |")
            continue
        phases = r["runs"]["optimised"]
        steps = r["settings"]["steps"]
        if "fp8_distance" in r:  # how far float8 moves one guided step's output from bf16, in its std
            name += f", {r['fp8_distance']:.2f} std from bf16"
        lines.append(
            f"| {name} ({steps} steps) | {phases['unet_step']['median_s']:.3f} s | {phases['sampling']['median_s']:.2f} s"
            f" | {phases['vae_decode']['median_s']:.2f} s | {phases['end_to_end']['median_s']:.2f} s"
            f" | {phases['end_to_end']['peak_bytes'] / 2 ** 30:.2f} GiB | {r['tflops']['optimised']:.0f}"
            f" | {', '.join(f'{w:.0f} s' for w in r['warmup_s'])} |")
    for p in result["profiles"]:
        if "error" in p:
            lines.append(f"\nprofile: failed: {p['error'][:200]}")
            continue
        kinds = ", ".join(f"{k} {100 * v:.0f} %" for k, v in p["by_kind"].items())
        lines.append(f"\nprofile of one guided {p['variant']} step{' (compiled layers)' if p['compiled'] else ''}: "
                     f"{p['device_ms']:.1f} ms, {p['kernels']} kernels: {kinds}")
        lines += [f"  {100 * share:5.1f} %  {name}" for name, share in p["top"][:8]]
    ours = {r["settings"]["size"][1]: r["runs"]["optimised"]["unet_step"]["median_s"]
            for r in result["rows"].values() if plain(r) and not r["settings"]["compile"]}
    fast = {r["settings"]["size"][1]: r["runs"]["optimised"]["unet_step"]["median_s"]
            for r in result["rows"].values() if plain(r) and r["settings"]["compile"]}
    for o in result["original"]:
        if "error" in o:
            lines.append(f"\noriginal: failed: {o['error'][:200]}")
            continue
        width = {"512": 512, "1024": 1024, "tiny": 64}[o["variant"]]
        line = f"\noriginal {o['variant']} ({o['attention']} attention): {o['step_s']:.3f} s per guided step"
        if width in ours:
            line += f"; ours eager {o['step_s'] / ours[width]:.2f}x faster"
        if width in fast:
            line += f", compiled {o['step_s'] / fast[width]:.2f}x"
        lines.append(line)
    c = result["comfyui"]
    if c:
        if "error" in c:
            lines.append(f"\nComfyUI job: failed: {c['error'][:300]}")
        else:
            core = next((r["runs"]["optimised"]["end_to_end"]["median_s"] for name, r in result["rows"].items()
                         if plain(r) and name.startswith(("512 bf16", "tiny")) and not r["settings"]["compile"]),
                        None)
            ratio = f" = {c['warm_s'] / core:.2f}x the core's end to end" if core and c["warm_s"] else ""
            lines.append(f"\nComfyUI job ({c['steps']} steps; Dynamic VRAM {'on' if c['dynamic_vram'] else 'off'}): "
                         f"cold {c['cold_s']} s, warm {c['warm_s']} s{ratio}")
            if "compiled_warm_s" in c:
                lines.append(f"  with I2V Sampler's compile: first {c['compiled_first_s']} s (compiles), then "
                             f"{c['compiled_warm_s']} s")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dynamicrafter_core.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu with --tiny for a dry run")
    ap.add_argument("--tiny", action="store_true", help="the tiny-width model: a dry run of every part")
    ap.add_argument("--original", help="a checkout of github.com/Doubiiu/DynamiCrafter, for the side-by-side")
    ap.add_argument("--sizes", nargs="+", default=["512"], choices=("512", "1024"),
                    help="sizes of the side-by-side (default 512)")
    ap.add_argument("--comfyui", help="a ComfyUI folder whose requirements are installed, for the server job")
    ap.add_argument("--parts", nargs="+", default=["comfyui", "rows", "profile", "original"],
                    choices=("comfyui", "rows", "profile", "original", "options"),
                    help="what to run (default: all but options; comfyui and original only with their folder); "
                         "options: 512 compiled with each option not on by default (float8 products, "
                         "channels-last), about 2 minutes each on an H200, and with --comfyui the job again with I2V "
                         "Sampler's compile")
    ap.add_argument("--part-timeout", type=float, default=300, help="seconds one part may take (default 300)")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--part", choices=("profile", "original", "comfyui"), help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="512", help=argparse.SUPPRESS)
    ap.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--attention", default="einsum", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=50, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.part == "profile":
        print(json.dumps(part_profile(args.variant, args.device, args.compiled)))
        return 0
    if args.part == "original":
        print(json.dumps(part_original(args.original, args.variant, args.device, args.attention)))
        return 0
    if args.part == "comfyui":
        print(json.dumps(part_comfyui(args.comfyui, args.device, args.tiny, args.steps, args.compiled)))
        return 0
    if args.device.startswith("cuda") and args.tiny is False:
        import torch
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; for a dry run use --device cpu --tiny", file=sys.stderr)
            return 2
    result = check(args)
    print("\n" + table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all("error" not in r for r in result["rows"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
