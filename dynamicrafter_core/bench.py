"""Speed and memory of DynamiCrafter on this machine.

  python -m dynamicrafter_core.bench --variant 512 --device cuda --dtype bf16 --steps 50
        the whole image-to-video pipeline at the released size (random weights unless --checkpoint), phase by phase
  python -m dynamicrafter_core.bench --tiny --steps 2
        the parity fixture's tiny-width model at its own size: a quick CPU run (the CI's smoke test); its weights
        when the repository's tests/fixtures/tiny_v07 is there, else random weights of its shape
  python -m dynamicrafter_core.bench --tiny --size 320x512 --frames 16 --unet-step --baseline
        one guided UNet step (both guidance branches) of the tiny-width model at the 512 latent size, interleaved
        with the straightforward implementation, and the largest difference between their outputs
  python -m dynamicrafter_core.bench --variant cami2v --device cuda
        what CamI2V's camera costs on top of DynamiCrafter: one guided UNet step with and without the camera, and
        the camera's preparation (pose encoder, epipolar masks), for the 256 and the 512 model (--tiny: the
        tiny_cami2v fixture's model at the same sizes, frames and masked levels: the real token counts at tiny widths)

--baseline is the straightforward implementation: attention that materialises every score matrix (einsum and
softmax, as the original), one UNet call per guidance branch, the feed-forward over all tokens at once, NCHW (the
temporal convolutions too).
Every number comes from this run, on the device the table names; FLOP/s are the UNet's multiply-adds x 2, counted on
the meta device, over the sampling time. The table is followed by the same numbers as one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .attention import reference_attention
from .compiled import compile_layers
from .config import VARIANT_CONFIGS, ClipConfig, ModelConfig, QueryTransformerConfig, UNetConfig, VAEConfig
from .model import DynamiCrafter
from .noise import generator as seed_generator
from .pipeline import draw_visual_detail_guidance, encode_image_context, sample
from .unet import IMAGE_TOKENS_PER_FRAME, TEXT_TOKENS, TemporalConvBlock, UNet

BENCH_VARIANTS = ("256", "512", "1024", "512_interp", "tooncrafter", "cami2v")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT = "a sailing boat drifting on a calm lake at sunset"
SAME_TOLERANCE = 1e-4  # max |optimised - baseline| / std(baseline) that counts as the same output in float32
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny_v07"
CAMI2V_FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny_cami2v"


def tiny_config() -> ModelConfig:
    """The parity fixture's model (tests/fixtures/tiny_v07): every network a few channels wide."""
    clip = ClipConfig(arch={
        "embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 3}})
    return ModelConfig(
        latent_size=(8, 8),
        unet=UNetConfig(model_channels=32, channel_mult=(1, 1, 2, 2), num_head_channels=16, context_dim=16),
        vae=VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, resolution=64),
        text_encoder=clip, image_encoder=clip,
        query_transformer=QueryTransformerConfig(dim=32, depth=2, dim_head=16, heads=3, embedding_dim=32,
                                                 output_dim=16, ff_mult=2, video_length=4))


# ---------------------------------------------------------------------------------------------------------------
# The model


def random_model(cfg: ModelConfig, variant: str, device: torch.device, dtype: torch.dtype,
                 seed: int = 0) -> DynamiCrafter:
    """The networks of `cfg` with random weights, allocated once on the device in `dtype` (no float32 detour).
    Norms start as identity and other weights with std 0.5 / sqrt(fan-in), so activations stay finite."""
    with torch.device("meta"):
        model = DynamiCrafter(cfg).to(dtype)
    model.variant, model.variant_source, model.source = variant, "bench", "random weights"
    model.eval().requires_grad_(False)
    if device.type == "meta":  # shapes only
        return model
    model = model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            norm = isinstance(module, (nn.GroupNorm, nn.LayerNorm))
            for name, p in module.named_parameters(recurse=False):
                if norm:
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif p.ndim >= 2:
                    p.normal_(0.0, 0.5 * p[0].numel() ** -0.5, generator=generator)
                else:
                    p.zero_()
    return model


def write_checkpoint(path: Path, cfg: ModelConfig, variant: str, device: torch.device, dtype: torch.dtype) -> Path:
    """random_model's weights as a released-layout .safetensors file (the released key prefixes, and the
    dynamic-rescale curve `scale_arr` by which the loader tells the 512 family from 1024): a real-size checkpoint for
    timing a host's loader and nodes without downloading one."""
    from safetensors.torch import save_file

    from .checkpoint import PREFIXES

    model = random_model(cfg, variant, device, dtype)
    tensors = {}
    for prefix, attr in PREFIXES.items():
        try:
            network = model.get_submodule(attr)
        except AttributeError:  # a network this model has not got (the pose encoder outside CamI2V)
            continue
        tensors.update({prefix + key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()})
    if model.schedule.scale_arr is not None:
        tensors["scale_arr"] = model.schedule.scale_arr.float()
    del model
    save_file(tensors, str(path))
    return path


def build_model(args, device: torch.device, dtype: torch.dtype, record: Optional[dict] = None) -> DynamiCrafter:
    """The model to time, with the run's settings applied; with --fp8 / --fp8-matmul, record["fp8_distance"] says how
    far float8 moves one guided step's output from the same weights in --dtype."""
    from .checkpoint import load_model

    if args.checkpoint is not None:
        model = load_model(args.checkpoint, config=args.config, device=device, dtype=dtype)
    elif args.tiny and (FIXTURE / "tiny_v07.safetensors").is_file():
        model = load_model(FIXTURE / "tiny_v07.safetensors", config=FIXTURE / "tiny_v07.config.json", device=device,
                           dtype=dtype)
    elif args.tiny:
        model = random_model(tiny_config(), "512", device, dtype, args.seed)
    else:
        model = random_model(VARIANT_CONFIGS[args.variant], args.variant, device, dtype, args.seed)
    unet = model.unet
    if args.fp8 or args.fp8_matmul:
        inputs = step_inputs(model, args)
        reference = guided_step(model, inputs)
        unet.store_fp8(dtype, matmul=args.fp8_matmul)
        distance = relative_distance(guided_step(model, inputs), reference)
        if record is not None:
            record["fp8_distance"] = distance
    unet.channels_last = args.channels_last
    if args.ff_tokens is not None:
        unet.ff_tokens = args.ff_tokens
    if args.compile:
        compile_layers(unet)
    return model


def unet_flops(cfg: UNetConfig, frames: int, latent_hw: tuple, context_tokens: int) -> int:
    """FLOPs (2 x multiply-adds) of one UNet call on one video, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = latent_hw
    with torch.device("meta"):
        unet = UNet(cfg)
        args = (torch.empty(1, cfg.in_channels, frames, h, w), torch.zeros(1, dtype=torch.long),
                torch.empty(1, context_tokens, cfg.context_dim), torch.zeros(1, dtype=torch.long))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(*args)
    return counter.get_total_flops()


@contextlib.contextmanager
def straightforward(unet: UNet, enabled: bool = True):
    """The UNet as the straightforward implementation runs it (the caller also gives each guidance branch its own
    UNet call): einsum attention with full score matrices, the feed-forward over all tokens at once, NCHW, the
    temporal convolutions on NCDHW."""
    if not enabled:
        # touch nothing: a compiled layer guards on its attributes, and setting one (even to the value it reads
        # from the class) would recompile every layer at the next call; this was what made --compile look 5.8x
        # slower than eager on an H200 (the timed run recompiled the whole UNet)
        yield
        return
    temporal = [m for m in unet.modules() if isinstance(m, TemporalConvBlock)]
    saved = [(m, dict(m.__dict__)) for m in [unet, *temporal]]
    unet.ff_tokens, unet.channels_last = 0, False
    for m in temporal:
        m.channels_last = False
    try:
        with reference_attention(True):
            yield
    finally:
        for m, attributes in saved:
            for name in ("ff_tokens", "channels_last"):
                if name in attributes:
                    setattr(m, name, attributes[name])
                else:
                    m.__dict__.pop(name, None)


# ---------------------------------------------------------------------------------------------------------------
# Clocks and memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the peak-RSS count (VmHWM)


def read_peak(device: torch.device) -> int:
    """Bytes: the CUDA allocator's peak, or the process's peak resident memory (weights included) elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def memory_kind(device: torch.device) -> str:
    return "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak process RSS (weights included)"


@contextlib.contextmanager
def measured(record: dict, name: str, device: torch.device):
    """Seconds (after the device finished) and peak memory of the block, into record[name]."""
    synchronize(device)
    reset_peak(device)
    start = time.perf_counter()
    yield
    synchronize(device)
    record[name] = {"s": time.perf_counter() - start, "peak_bytes": read_peak(device)}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"CPU {name}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------------------------------------------------------
# The runs


def test_image(height: int, width: int) -> torch.Tensor:
    """A (1, 3, H, W) picture in [-1, 1]: a bright square on a colour gradient."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    image = torch.stack([x, y, x * y]) * 0.5
    image[:, height // 3: height // 2, width // 3: width // 2] = 0.9
    return image[None]


def pipeline_run(model: DynamiCrafter, args, device: torch.device, steps: int):
    """One image-to-video run of `steps` steps (interpolation for 512_interp and ToonCrafter, whose decoder also
    takes the keyframes' encoder features), as `animate` does it, timed phase by phase.
    Returns the video and {phase: {"s", "peak_bytes"}}."""
    height, width = args.size
    image = test_image(height, width)
    generator = seed_generator(args.seed)
    record = {}
    with measured(record, "encoders", device):
        if args.low_memory:
            model.place("encode", device)
        cond = encode_image_context(model, image, PROMPT)
        end = model.encode_posterior(-image) if model.supports_interpolation else None
        concat = draw_visual_detail_guidance(model, model.encode_posterior(image), end, args.frames, generator)
        references = model.encode_references(image, -image) if model.config.vae.dual_reference else None
    with measured(record, "sampling", device):
        if args.low_memory:
            model.place("sample", device)
        with straightforward(model.unet, args.baseline):
            latents = sample(model, cond.context, cond.uncond_context, concat, steps=steps, cfg=args.cfg,
                             generator=generator, batch_branches=not (args.baseline or args.low_memory))
    with measured(record, "vae_decode", device):
        video = model.decode_latents(latents, chunk=args.decode_chunk, references=references)
    phases = list(record.values())  # back to back, so together they are the whole run
    record["end_to_end"] = {"s": sum(r["s"] for r in phases), "peak_bytes": max(r["peak_bytes"] for r in phases)}
    record["unet_step"] = {"s": record["sampling"]["s"] / steps, "peak_bytes": record["sampling"]["peak_bytes"]}
    return video, record


def step_inputs(model: DynamiCrafter, args) -> dict:
    """One DDIM step's inputs at the requested size, from --seed: the two contexts, the visual detail guidance, the
    noise, and the guidance scale."""
    (h, w), frames = (args.size[0] // 8, args.size[1] // 8), args.frames
    generator = torch.Generator().manual_seed(args.seed)
    width = model.config.unet.context_dim
    context, uncond = (torch.randn(1, TEXT_TOKENS + IMAGE_TOKENS_PER_FRAME * frames, width, generator=generator)
                       for _ in range(2))
    concat, x_T = (torch.randn(1, 4, frames, h, w, generator=generator) for _ in range(2))
    return {"context": context, "uncond_context": uncond, "concat": concat, "x_T": x_T, "cfg": args.cfg}


def guided_step(model: DynamiCrafter, inputs: dict, baseline: bool = False) -> torch.Tensor:
    """One deterministic (eta 0) DDIM step: one guided UNet evaluation, both branches in one call unless
    `baseline`."""
    return sample(model, steps=1, eta=0.0, batch_branches=not baseline, **inputs)


def relative_distance(output: torch.Tensor, reference: torch.Tensor) -> float:
    """max |output - reference| over the reference's std."""
    output, reference = output.float(), reference.float()
    return ((output - reference).abs().max() / (reference.std() + 1e-12)).item()


def unet_step_runs(model: DynamiCrafter, args, device: torch.device):
    """Closures for one DDIM step (one guided UNet evaluation) at the requested size: the optimised path, and with
    --baseline the straightforward one, on the same inputs (eta 0, so the outputs are comparable)."""
    inputs = step_inputs(model, args)

    def step(baseline: bool):
        def run(warm: bool):
            record = {}
            with measured(record, "unet_step", device), straightforward(model.unet, baseline):
                latents = guided_step(model, inputs, baseline)
            return latents, record
        return run

    runs = {"optimised": step(False)}
    if args.baseline:
        runs["baseline"] = step(True)
    return runs


def timed_repeats(runs: dict, args):
    """Warm-up rounds, then `repeats` rounds in which every run goes once (interleaved, so a busy machine slows all
    alike); run(warm) is told which kind of round it is. Returns {name: [record per repeat]}, each run's last output,
    and the warm-up rounds' seconds (where --compile compiles)."""
    records, outputs, warmup_s = {name: [] for name in runs}, {}, []
    for i in range(args.warmup + args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name], record = run(i < args.warmup)
            if i >= args.warmup:
                records[name].append(record)
            else:
                warmup_s.append(time.perf_counter() - start)
    return records, outputs, warmup_s


# ---------------------------------------------------------------------------------------------------------------
# Report


def summary(records: list) -> dict:
    """Per phase: median, min and max seconds over the repeats, and the largest peak memory."""
    out = {}
    for phase in records[0]:
        seconds = [r[phase]["s"] for r in records]
        out[phase] = {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
                      "peak_bytes": max(r[phase]["peak_bytes"] for r in records)}
    return out


def gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def print_table(result: dict) -> None:
    s = result["settings"]
    flags = "".join(f", {k}" for k in ("fp8_weights", "fp8_matmul", "channels_last", "compile", "low_memory",
                                        "baseline") if s[k])
    print(f"DynamiCrafter bench: {result['model']} ({result['weights']}) on {result['device']}")
    print(f"  {result['mode']}: {s['size'][0]}x{s['size'][1]}, {s['frames']} frames, {s['steps']} steps, "
          f"cfg {s['cfg']}, {s['dtype']}{flags}, {s['repeats']} repeats after {s['warmup']} warm-up")
    print(f"  UNet FLOP per video per step: {result['flop_per_sample_step'] / 1e12:.3f} T "
          f"(x{result['branches']} guidance branches)")
    for name, phases in result["runs"].items():
        print(f"\n  [{name}]  {'phase':<12} {'median s':>10} {'min s':>10} {'max s':>10} {'peak memory':>14}")
        for phase, s in phases.items():
            print(f"  {'':<{len(name) + 2}}  {phase:<12} {s['median_s']:>10.3f} {s['min_s']:>10.3f} "
                  f"{s['max_s']:>10.3f} {gib(s['peak_bytes']):>14}")
        print(f"  achieved: {result['tflops'][name]:.3f} TFLOP/s in the UNet (median step)")
    if result["warmup_s"]:
        print(f"  warm-up runs (--compile compiles there): "
              f"{', '.join(f'{w:.1f} s' for w in result['warmup_s'])}")
    print(f"\n  memory: {result['memory_kind']}")
    if "fp8_distance" in result:
        print(f"  float8: one guided step's output is {result['fp8_distance']:.3f} of its std (largest difference) "
              f"from the same weights in {result['settings']['dtype']}")
    if "comparison" in result:
        c = result["comparison"]
        print(f"  speed-up over the straightforward implementation (median step): {c['speedup_median']:.2f}x "
              f"(best of each: {c['speedup_min']:.2f}x)")
        print(f"  outputs: max |optimised - baseline| = {c['max_abs_diff']:.3e} "
              f"({c['relative_diff']:.2e} of the output's std; same within {SAME_TOLERANCE:g}: {c['same']})")


def settings(args, dtype: torch.dtype) -> dict:
    return {"steps": args.steps, "cfg": args.cfg, "frames": args.frames, "size": list(args.size) if args.size else None,
            "dtype": str(dtype).replace("torch.", ""), "fp8_weights": args.fp8 or args.fp8_matmul,
            "fp8_matmul": args.fp8_matmul, "channels_last": args.channels_last,
            "ff_tokens": args.ff_tokens, "compile": args.compile, "low_memory": args.low_memory,
            "decode_chunk": args.decode_chunk, "repeats": args.repeats, "warmup": args.warmup,
            "baseline": args.baseline, "torch": torch.__version__}


def compare(records: dict, outputs: dict) -> dict:
    fast = statistics.median(r["unet_step"]["s"] for r in records["optimised"])
    slow = statistics.median(r["unet_step"]["s"] for r in records["baseline"])
    best = min(r["unet_step"]["s"] for r in records["baseline"]) / min(
        r["unet_step"]["s"] for r in records["optimised"])
    a, b = outputs["optimised"].float(), outputs["baseline"].float()
    diff = (a - b).abs().max().item()
    relative = relative_distance(a, b)
    return {"speedup_median": slow / fast, "speedup_min": best, "max_abs_diff": diff, "relative_diff": relative,
            "same": relative <= SAME_TOLERANCE}


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_size(text: str) -> tuple:
    h, _, w = text.lower().partition("x")
    try:
        size = (int(h), int(w))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes HEIGHTxWIDTH in pixels, e.g. 320x512; got {text!r}")
    if min(size) < 64 or size[0] % 64 or size[1] % 64:
        raise argparse.ArgumentTypeError(f"height and width must be multiples of 64; got {text!r}")
    return size


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dynamicrafter_core.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=BENCH_VARIANTS, default="512", help="released model size (default 512)")
    ap.add_argument("--tiny", action="store_true", help="the parity fixture's tiny-width model instead")
    ap.add_argument("--checkpoint", type=Path, help="real weights (default: random, which time the same)")
    ap.add_argument("--config", type=Path, help="the checkpoint's original yaml / json")
    ap.add_argument("--device", default="auto", help="cuda, cpu, ... (default: cuda if available)")
    ap.add_argument("--dtype", choices=(*DTYPES, "auto"), default="auto", help="auto: bf16 on CUDA, fp32 elsewhere")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    ap.add_argument("--frames", type=int, help="default 16 (--tiny at its own size: 4, as the fixture)")
    ap.add_argument("--size", type=parse_size, help="HEIGHTxWIDTH in pixels (default: the model's)")
    ap.add_argument("--cfg", type=float, default=7.5, help="guidance scale; 1 runs one branch (default 7.5)")
    ap.add_argument("--unet-step", action="store_true", help="time single guided UNet steps, not the pipeline")
    ap.add_argument("--baseline", action="store_true",
                    help="the straightforward implementation (with --unet-step: as well, interleaved, compared)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; medians are reported (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    ap.add_argument("--warmup-steps", type=int,
                    help="DDIM steps of each warm-up run (default: --steps); --compile compiles in the first step, "
                         "so 2 are enough to warm it")
    ap.add_argument("--fp8", action="store_true", help="UNet weights stored in float8, computed in --dtype")
    ap.add_argument("--fp8-matmul", action="store_true",
                    help="UNet weights stored in float8, and the linear layers multiply in float8 (inputs quantised "
                         "per token; needs --dtype bf16 and float8 tensor cores: Ada, Hopper, or a CPU)")
    ap.add_argument("--channels-last", action="store_true", help="run the UNet's hidden state NHWC")
    ap.add_argument("--ff-tokens", type=int, help="tokens per feed-forward call (0: all at once; default by device)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the UNet layer by layer (compiled.py; compile time is in the warm-up)")
    ap.add_argument("--low-memory", action="store_true",
                    help="only the networks in use on the device, guidance branches one at a time")
    ap.add_argument("--decode-chunk", type=int,
                    help="frames per VAE decode call (default: 1; ToonCrafter: the whole video, as the original)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the JSON result here")
    return ap


def resolve(args):
    """Device, dtype and the defaults that depend on the model; refuses combinations that measure nothing."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if device.type == "cuda"
                                                             else torch.float32)
    cfg = tiny_config() if args.tiny else VARIANT_CONFIGS["cami2v_512" if args.variant == "cami2v" else args.variant]
    if args.frames is None:
        # the fixture's own run: 64x64, 4 frames; the camera's cost at the released models' 16
        args.frames = 4 if args.tiny and args.size is None and args.variant != "cami2v" else 16
    if args.size is None and args.variant != "cami2v":  # cami2v: each model's own size unless --size
        args.size = cfg.resolution
    if args.unet_step:
        args.steps = 1
    problems = [msg for bad, msg in (
        (args.steps < 1 or args.repeats < 1 or args.warmup < 0, "--steps and --repeats must be >= 1, --warmup >= 0"),
        (args.warmup_steps is not None and args.warmup_steps < 1, "--warmup-steps must be >= 1"),
        (args.frames < 2, "--frames must be at least 2"),
        (args.compile and args.baseline, "--compile times the optimised path only; drop --baseline"),
        (args.fp8_matmul and dtype != torch.bfloat16, "--fp8-matmul computes in bf16: add --dtype bf16"),
    ) if bad]
    if problems:
        parser().error("; ".join(problems))
    return device, dtype


def camera_models(args, device: torch.device, dtype: torch.dtype):
    """(label, model, (height, width), masked levels) for --variant cami2v: the released 256 and 512 models with
    random weights, or (--tiny) the tiny_cami2v fixture's model at their sizes and masked levels (--size: only
    there)."""
    from .checkpoint import load_model

    tiny = None
    if args.tiny:
        tiny = load_model(CAMI2V_FIXTURE / "tiny_cami2v.safetensors", config=CAMI2V_FIXTURE / "tiny_cami2v.config.json",
                          device=device, dtype=dtype)
    for variant in ("cami2v_256", "cami2v_512"):
        cfg = VARIANT_CONFIGS[variant]
        model = tiny or random_model(cfg, variant, device, dtype, args.seed)
        if args.ff_tokens is not None:
            model.unet.ff_tokens = args.ff_tokens
        yield variant[len("cami2v_"):], model, args.size or cfg.resolution, cfg.unet.epipolar.masked_ds
        del model


def camera_cost(args) -> dict:
    """One guided UNet step with and without CamI2V's camera (an orbit), interleaved, and the camera's preparation
    (the pose encoder and the fundamental matrices; the masks are built inside the step); medians over the repeats."""
    from .epipolar import LATENT_STRIDE, EpipolarMasks, frames_per_chunk
    from .trajectory import preset_path

    device, dtype = resolve(args)
    out = {}
    for label, model, (height, width), masked in camera_models(args, device, dtype):
        h, w, frames = height // 8, width // 8, args.frames
        generator = torch.Generator().manual_seed(args.seed)
        d = model.config.unet.context_dim
        context, uncond = (torch.randn(1, TEXT_TOKENS + IMAGE_TOKENS_PER_FRAME * frames, d, generator=generator)
                           for _ in range(2))
        concat, x_T = (torch.randn(1, 4, frames, h, w, generator=generator) for _ in range(2))
        path = preset_path("orbit left", frames)
        registers = model.config.unet.epipolar.registers

        def prepare():
            camera = model.encode_camera(path.intrinsics(height, width)[None], path.c2w[None], height, width,
                                         generator=torch.Generator().manual_seed(args.seed), device=device)
            camera.masks = EpipolarMasks(camera.masks.F, tuple(masked), registers)  # the row's model's levels
            return camera

        def mask_chunk_bytes(ds):
            """The bool mask rows one chunk of queries holds at level ds (the camera's batch of 1 is broadcast)."""
            tokens = (height // (LATENT_STRIDE * ds)) * (width // (LATENT_STRIDE * ds))
            keys = registers + frames * tokens
            return min(frames, frames_per_chunk(1, tokens, keys)) * tokens * keys

        def step(camera):
            return sample(model, context, uncond, concat, steps=1, cfg=args.cfg, eta=0.0, x_T=x_T, camera=camera)

        times = {"plain_step": [], "camera_setup": [], "camera_step": []}
        peaks = {k: 0 for k in times}
        for i in range(args.warmup + args.repeats):
            record = {}
            with measured(record, "plain_step", device):
                plain = step(None)
            with measured(record, "camera_setup", device):
                camera = prepare()
            with measured(record, "camera_step", device):
                moved = step(camera)
            del camera
            if i >= args.warmup:
                for k in times:
                    times[k].append(record[k]["s"])
                    peaks[k] = max(peaks[k], record[k]["peak_bytes"])
        median = {k: statistics.median(v) for k, v in times.items()}
        out[label] = {
            "size": [height, width], "frames": frames, "masked_levels": list(masked),
            **{f"{k}_s": v for k, v in median.items()}, **{f"{k}_peak_bytes": v for k, v in peaks.items()},
            "mask_chunk_bytes": max(mask_chunk_bytes(ds) for ds in masked),
            "extra_step_fraction": median["camera_step"] / median["plain_step"] - 1,
            "camera_changes_output": bool((plain - moved).abs().max() > 0)}
    return {"device": describe_device(device), "memory_kind": memory_kind(device),
            "settings": settings(args, dtype), "camera_cost": out}


def print_camera_cost(result: dict) -> None:
    s = result["settings"]
    print(f"CamI2V camera cost on {result['device']}: one guided step (cfg {s['cfg']}, {s['dtype']}), "
          f"median of {s['repeats']} after {s['warmup']} warm-up")
    print(f"  {'model':<6} {'size':>9} {'frames':>6} {'plain s':>9} {'camera s':>9} {'extra':>7} {'setup s':>8} "
          f"{'plain peak':>11} {'camera peak':>12} {'mask chunk':>10}")
    for label, c in result["camera_cost"].items():
        print(f"  {label:<6} {c['size'][0]:>4}x{c['size'][1]:<4} {c['frames']:>6} {c['plain_step_s']:>9.3f} "
              f"{c['camera_step_s']:>9.3f} {c['extra_step_fraction']:>+7.1%} {c['camera_setup_s']:>8.3f} "
              f"{gib(c['plain_step_peak_bytes']):>11} {gib(c['camera_step_peak_bytes']):>12} "
              f"{gib(c['mask_chunk_bytes']):>10}")
    print(f"  memory: {result['memory_kind']}; mask chunk: the most epipolar mask rows held at once (bool; SDPA "
          "adds a float copy of them), built inside each block and dropped after it")


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant == "cami2v":
        return camera_cost(args)
    device, dtype = resolve(args)
    built = {}
    model = build_model(args, device, dtype, built)
    cfg = model.config
    latent_hw = (args.size[0] // 8, args.size[1] // 8)
    if args.unet_step:
        context_tokens = TEXT_TOKENS + IMAGE_TOKENS_PER_FRAME * args.frames
        runs = unet_step_runs(model, args, device)
    else:
        qt = cfg.query_transformer
        context_tokens = TEXT_TOKENS + qt.num_queries * (qt.video_length or 1)
        runs = {"baseline" if args.baseline else "optimised": lambda warm: pipeline_run(
            model, args, device, args.warmup_steps if warm and args.warmup_steps else args.steps)}
    branches = 1 if args.cfg == 1 else 2
    flops = unet_flops(cfg.unet, args.frames, latent_hw, context_tokens)
    records, outputs, warmup_s = timed_repeats(runs, args)
    result = {
        "model": "tiny-width fixture model" if args.tiny else f"DynamiCrafter {model.variant}",
        "weights": model.source, "device": describe_device(device), "memory_kind": memory_kind(device),
        "mode": "unet_step" if args.unet_step else "pipeline", "settings": settings(args, dtype),
        "flop_per_sample_step": flops, "branches": branches,
        "runs": {name: summary(r) for name, r in records.items()}, "warmup_s": warmup_s, **built,
    }
    result["tflops"] = {name: flops * branches / s["unet_step"]["median_s"] / 1e12
                        for name, s in result["runs"].items()}
    if args.unet_step and args.baseline:
        result["comparison"] = compare(records, outputs)
    return result


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    result = run(args)
    (print_camera_cost if "camera_cost" in result else print_table)(result)
    line = json.dumps(result)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
