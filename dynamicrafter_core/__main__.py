"""Command line: animate an image, interpolate between two, or make a loop.

  python -m dynamicrafter_core animate IMAGE --prompt "..." [--checkpoint PATH] -o out.mp4
  python -m dynamicrafter_core animate IMAGE --frames 64 --prompt "0: a boat on a lake | 16: it sails away" -o long.mp4
  python -m dynamicrafter_core interpolate START END --prompt "..." [--checkpoint PATH] -o out.mp4
  python -m dynamicrafter_core loop IMAGE --prompt "..." [--checkpoint PATH] -o out.gif
  python -m dynamicrafter_core interpolate START END --checkpoint tooncrafter_512_interp_v1.ckpt [--sketch DIR]
  python -m dynamicrafter_core animate IMAGE --checkpoint 512_cami2v_50k.pt --camera "orbit left" -o out.mp4
  python -m dynamicrafter_core download 512

The output's suffix picks the format: .mp4, .webp, .gif, or no suffix for a folder of PNG frames.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Optional

from .colour import METHODS as COLOUR_METHODS
from .config import VARIANTS
from .errors import DynamiCrafterError, InputError, ModelFileNotFoundError
from .sampler import SPACINGS
from .trajectory import PRESETS
from .weights import RELEASED, download, find_checkpoint, missing_message

DTYPES = ("auto", "fp32", "fp16", "bf16")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dynamicrafter_core", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p, default_variant):
        # None, not "": a forgotten --prompt is said (run()), an explicit --prompt "" is not
        p.add_argument("--prompt", help="what should happen in the video (default: empty, which is allowed but "
                                        "rarely wanted: the model is text-conditioned); for a long video, a "
                                        "schedule: \"0: a boat on a lake | 16: the boat sails away\" (output frames)")
        p.add_argument("--negative-prompt", default="", help="what to steer away from (default: nothing)")
        p.add_argument("--checkpoint", type=Path, help="model file; default: look in the usual places")
        p.add_argument("--variant", choices=VARIANTS,
                       help=f"which released model to look for / download (default {default_variant}); with "
                            "--checkpoint, the weights tell it, and this only separates 512 from 512_interp")
        p.add_argument("--config", type=Path, help="the original inference yaml (or json) of a fine-tune; default: "
                                                   "<checkpoint stem>.yaml next to it, else the released one")
        p.add_argument("--download", action="store_true", help="download the released checkpoint if none is found")
        p.add_argument("-o", "--output", type=Path, default=Path("dynamicrafter.mp4"),
                       help=".mp4, .webp, .gif, or a folder for PNG frames (default dynamicrafter.mp4)")
        p.add_argument("--seed", type=int, default=123)
        p.add_argument("--steps", type=int, help="DDIM steps (default 50)")
        p.add_argument("--cfg", type=float, help="text/image guidance scale (default 7.5)")
        p.add_argument("--image-cfg", type=float, help="separate image guidance scale (three-branch guidance)")
        p.add_argument("--eta", type=float, help="DDIM eta: 0 deterministic, 1 the original's default")
        p.add_argument("--fs", type=int, help="motion: FPS for 512/1024/interp (lower = more motion), frame stride "
                                              "for 256 (higher = more motion); default per model")
        p.add_argument("--guidance-rescale", type=float, help="default per model (0.7, or 0 for 256)")
        p.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default per model)")
        p.add_argument("--frames", type=int, default=16,
                       help="frames to generate (the models are trained on 16); image to video longer than "
                            "--segment-frames grows segment by segment (Continue Video), each from the last frame "
                            "of the one before")
        p.add_argument("--segment-frames", type=int, default=16,
                       help="a long video's segment length, its boundary frame included (default 16, as trained)")
        p.add_argument("--overlap", type=int, default=0,
                       help="a long video's frames generated twice at each seam and cross-faded (default 0)")
        p.add_argument("--colour-match", choices=(*COLOUR_METHODS, "off"), default="mean_std",
                       help="a long video's colour correction of every segment to the input image, in CIE Lab, "
                            "before the next starts from it (default mean_std)")
        p.add_argument("--colour-strength", type=float, default=1.0, help="0 to 1 (default 1)")
        p.add_argument("--width", type=int, help="multiple of 64 (default: the model's)")
        p.add_argument("--height", type=int, help="multiple of 64 (default: the model's)")
        p.add_argument("--fit", choices=("crop", "pad", "stretch"), default="crop",
                       help="other aspect ratios: crop the centre (default), pad with black, or stretch")
        p.add_argument("--fps", type=float, default=8.0, help="playback rate of the written video (default 8)")
        p.add_argument("--device", default="auto", help="cuda, cpu, mps... (default: cuda if available)")
        p.add_argument("--sketch", type=Path,
                       help="ToonCrafter: a folder of drawings (dark lines on white), one per frame in name order, "
                            "or fewer named by their frame number (e.g. 08.png)")
        p.add_argument("--sketch-encoder", type=Path,
                       help="ToonCrafter's sketch_encoder.ckpt (default: beside the checkpoint)")
        p.add_argument("--sketch-strength", type=float, default=0.6, help="how strongly the drawings steer (0.6)")
        p.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet layer by layer: on an H200 each step takes 0.087 s instead of "
                            "0.134 s (512, bf16) after a first step that compiles (about 100 s; about 10 s in later "
                            "runs, from torch's cache); pays for itself from a few videos on")
        p.add_argument("--fp8", choices=("weights", "matmul"),
                       help="the UNet's weights in float8: 'weights' stores them in 8 bits (half of bf16's memory) "
                            "and computes in --dtype; 'matmul' also multiplies its linear layers in float8 on the "
                            "tensor cores of Ada / Hopper GPUs (bf16 only). Both move the video further from the "
                            "original's than bf16 does: `python -m dynamicrafter_core.bench --fp8-matmul` prints how far")
        p.add_argument("--dtype", default="auto", choices=DTYPES,
                       help="compute dtype (auto: bf16 on GPUs that have it, else fp16, fp32 on the CPU); the VAE "
                            "never runs in fp16, where it overflows (black frames): it takes fp32 then")

    common(sub.add_parser("animate", help="image to video"), "512")
    sub.choices["animate"].add_argument("image", type=Path)
    sub.choices["animate"].add_argument("--end", type=Path, help="end image: interpolate to it (interp model)")
    sub.choices["animate"].add_argument("--loop", action="store_true", help="loop back to the image (interp model)")
    sub.choices["animate"].add_argument("--keyframe", type=Path, action="append",
                                        help="a long video through keyframes (interp model): one segment from the "
                                             "last frame so far to each --keyframe, in the order given")
    sub.choices["animate"].add_argument(
        "--camera", help="CamI2V checkpoints: the camera's path, a preset (" + ", ".join(PRESETS) + ") or a "
                         "RealEstate10K pose file (.txt: per line a timestamp, fx fy cx cy, 0 0, a 3x4 world-to-camera)")
    sub.choices["animate"].add_argument("--camera-speed", type=float, default=1.0,
                                        help="preset: how fast it moves (1 as CamI2V's demo); file: recorded poses "
                                             "per frame (default 1)")
    sub.choices["animate"].add_argument("--camera-cfg", type=float, default=1.0,
                                        help="follow the camera more strongly (a third guidance pass; 1, the "
                                             "default, leaves it out; CamI2V's demo offers 1 to 4)")
    common(sub.add_parser("interpolate", help="a video from START to END (interp model)"), "512_interp")
    sub.choices["interpolate"].add_argument("image", type=Path)
    sub.choices["interpolate"].add_argument("end", type=Path)
    common(sub.add_parser("loop", help="a seamless loop of IMAGE (interp model)"), "512_interp")
    sub.choices["loop"].add_argument("image", type=Path)
    p = sub.add_parser("download", help="download a released checkpoint from Hugging Face")
    p.add_argument("variant", choices=tuple(RELEASED))
    p.add_argument("--dir", type=Path, help="target folder (default ~/.cache/dynamicrafter)")
    from .batch import add_arguments as batch_arguments

    batch_arguments(sub.add_parser("batch", help="animate a folder of images or a CSV / JSONL manifest, each row a "
                                                 "video, on this machine or on Ray (--ray)"))
    return ap


def _device_and_dtype(device: str, dtype: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:  # no such device, or a torch built without it
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--device {device} cannot be used here ({reason}); use --device cpu, or leave --device "
                         "out to take the GPU when there is one") from e
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            dtype = "fp32"
    return device, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _check_fp8_matmul(device: str, dtype) -> None:
    """--fp8 matmul's needs, before the (slow) model load."""
    import torch

    from .unet import fp8_matmul_unsupported

    if dtype != torch.bfloat16:
        raise InputError(f"--fp8 matmul computes in bf16, not {str(dtype).replace('torch.', '')}: add --dtype bf16 "
                         "(or leave --dtype out)")
    if (why := fp8_matmul_unsupported(torch.device(device))) is not None:
        raise InputError(f"--fp8 matmul cannot run here: {why}. Use --fp8 weights, which any device runs")


def _long(args) -> bool:
    """Image to video past one segment, or through --keyframe images: Continue Video."""
    if args.command != "animate":
        return False
    if args.keyframe:
        if args.end is not None or args.loop:
            raise InputError("--keyframe chains segments through keyframes; it cannot be combined with --end or "
                             "--loop: give the end image as the last --keyframe")
        return True
    return not args.loop and args.end is None and args.frames > args.segment_frames


def _check_settings(args) -> None:
    """Every setting, before the (slow) model load, so a typo costs nothing."""
    from .long_video import plan_segments
    from .pipeline import check_side
    from .schedule import parse_prompt_schedule
    from .settings import (check_cfg, check_eta, check_frames, check_fs, check_guidance_rescale, check_image_cfg,
                           check_number, check_seed, check_steps)
    from .video_io import output_format

    check_seed(args.seed)
    if _long(args):
        if args.colour_match != "off":
            check_number("--colour-strength", args.colour_strength, 0.0, 1.0, "0 leaves the segments' colours as made")
        if not getattr(args, "keyframe", None):
            plan_segments(args.frames, args.segment_frames, args.overlap)
    else:
        check_frames(args.frames)
        if len(parse_prompt_schedule(args.prompt, "--prompt")) > 1:
            raise InputError(f"--prompt is a schedule, but {args.frames} frames are one segment of "
                             f"--segment-frames {args.segment_frames}: ask for more --frames, or give one prompt")
    for check, value in ((check_steps, args.steps), (check_eta, args.eta), (check_fs, args.fs),
                         (check_cfg, args.cfg), (check_image_cfg, args.image_cfg),
                         (check_guidance_rescale, args.guidance_rescale)):
        if value is not None:  # unset: the model's default, known after loading
            check(value)
    for name, value in (("width", args.width), ("height", args.height)):
        if value is not None:
            check_side(name, value)
    output_format(args.output, args.fps)
    if getattr(args, "camera", None) is not None:
        from .trajectory import camera_path

        check_number("--camera-cfg", args.camera_cfg, 1.0, 10.0, "1 leaves camera guidance out")
        camera_path(args.camera, args.frames, args.camera_speed)
    if args.sketch is not None:
        check_number("--sketch-strength", args.sketch_strength, 0.0, 2.0, "0 ignores the drawings, 0.6 the default")
        _sketch_files(args.sketch, args.frames)


def _checkpoint(args, mode: str) -> Path:
    if args.checkpoint is not None:
        return args.checkpoint
    camera = getattr(args, "camera", None) is not None  # a camera path needs CamI2V
    variant = args.variant or ("cami2v_256" if camera else "512" if mode == "i2v" else "512_interp")
    found = find_checkpoint(variant)
    if found is not None:
        return found
    if args.download:
        return download(variant)
    raise ModelFileNotFoundError(missing_message(variant))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SKETCH_ENCODER_URL = "https://huggingface.co/Doubiiu/ToonCrafter/resolve/main/sketch_encoder.ckpt"


def _sketch_files(folder: Path, frames: int) -> tuple[list, Optional[list]]:
    """The drawings in `folder` and the frames they are for (None: one per frame, in name order)."""
    if not folder.is_dir():
        raise InputError(f"--sketch {str(folder)!r} is not a folder of drawings")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--sketch {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) == frames:
        return files, None
    numbers = [re.search(r"(\d+)$", p.stem) for p in files]
    if not all(numbers):
        unnamed = next(p.name for p, n in zip(files, numbers) if not n)
        raise InputError(f"--sketch holds {len(files)} drawings for {frames} frames, so each file must be named by its "
                         f"frame number (counted from 0, e.g. 08.png); {unnamed} is not")
    return files, [int(n.group(1)) for n in numbers]


def _sketch(args, checkpoint: Path, frames: int, height: int, width: int, device, dtype):
    """--sketch: the sketch encoder and the hint (1, 1, frames, height, width)."""
    import numpy as np
    import torch
    from PIL import Image

    from .controlnet import load_controlnet, sketch_hint

    files, at = _sketch_files(args.sketch, frames)
    encoder = args.sketch_encoder or checkpoint.with_name("sketch_encoder.ckpt")
    if not encoder.is_file():
        raise ModelFileNotFoundError(f"no sketch encoder at {encoder}: download {SKETCH_ENCODER_URL} and save it "
                                     "there, or pass --sketch-encoder PATH")
    drawings = []
    for path in files:
        with Image.open(path) as image:
            grey = image.convert("L").resize((width, height), Image.BILINEAR)
        drawings.append(torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0))
    hint = sketch_hint(torch.stack(drawings), frames, height, width, at)
    return load_controlnet(encoder, device=device, dtype=dtype), hint


def run(args) -> Path:
    import torch
    from tqdm import tqdm

    from .checkpoint import load_model
    from .compiled import compile_layers
    from .pipeline import animate, load_image
    from .video_io import write_video

    if args.command == "download":
        path = download(args.variant, args.dir)
        print(path)
        return path
    if args.command == "batch":
        from . import batch

        return batch.main(args)
    mode = {"interpolate": "interpolation", "loop": "loop"}.get(args.command, "i2v")
    end = getattr(args, "end", None)
    if args.command == "animate":
        mode = "loop" if args.loop else ("interpolation" if end is not None or args.keyframe else "i2v")
    if args.prompt is None:
        print("note: no --prompt given, so the prompt is empty; that is allowed, but DynamiCrafter is text-conditioned: "
              "describe the motion you want, e.g. --prompt \"waves rolling in\"", file=sys.stderr)
        args.prompt = ""
    _check_settings(args)
    image = load_image(args.image)
    end_image = load_image(end) if end is not None else None
    matmul = args.fp8 == "matmul"
    device, dtype = _device_and_dtype(args.device, "bf16" if matmul and args.dtype == "auto" else args.dtype)
    if matmul:
        _check_fp8_matmul(device, dtype)
    path = _checkpoint(args, mode)
    # 512 and 512_interp weights look alike: asking for interpolation says which one the file is, unless told
    override = args.variant or (None if mode == "i2v" else "512_interp")
    print(f"loading {path} ...", file=sys.stderr)
    model = load_model(path, config=args.config, device=device, dtype=dtype,
                       variant=override if override in ("512", "512_interp") else None)
    # the loader calls any variant it is given an override; say who chose it: the user, or this command
    chooser = f"--variant {args.variant}" if args.variant else f"this command ({mode} needs the interpolation model)"
    model.variant_source = model.variant_source.replace(f"{model.variant} chosen by override",
                                                        f"{model.variant} chosen by {chooser}")
    if dtype == torch.float16:
        model.vae.float()  # as ComfyUI's nodes: this VAE overflows in fp16 (black frames)
    print(model.describe(), file=sys.stderr)
    if args.fp8:
        model.unet.store_fp8(dtype, matmul=matmul)
        print(f"the UNet's weights are stored in float8{', its linear layers multiply in float8' if matmul else ''}",
              file=sys.stderr)
    if args.compile:
        compile_layers(model.unet)
        print("the UNet is compiled layer by layer: the first step compiles (minutes on a slow CPU), the others run "
              "faster", file=sys.stderr)
    sketching = {}
    if getattr(args, "camera", None) is not None:
        from .trajectory import camera_path

        sketching = {"camera": camera_path(args.camera, args.frames, args.camera_speed),
                     "camera_cfg": args.camera_cfg}
    if args.sketch is not None:
        height, width = args.height or model.config.resolution[0], args.width or model.config.resolution[1]
        control, hint = _sketch(args, path, args.frames, height, width, device, dtype)
        sketching.update(control=control, hint=hint, control_scale=args.sketch_strength)
        if args.compile:
            compile_layers(control)
    steps = args.steps or model.defaults.steps
    if _long(args):
        if sketching:
            raise InputError("--sketch steers one interpolation; a long video through --keyframe takes no drawings")
        frames = _continue(args, model, image, steps)
        out = write_video(frames, args.output, fps=args.fps)
        print(f"wrote {frames.shape[0]} frames to {out}", file=sys.stderr)
        return out
    with tqdm(total=steps, desc="sampling", unit="step") as bar:
        frames = animate(model, image, args.prompt, end_image=end_image, mode=mode,
                         negative_prompt=args.negative_prompt, frames=args.frames, steps=args.steps, cfg=args.cfg,
                         eta=args.eta, fs=args.fs, guidance_rescale=args.guidance_rescale, spacing=args.spacing,
                         seed=args.seed, image_cfg=args.image_cfg, height=args.height, width=args.width,
                         fit=args.fit, callback=lambda info: bar.update(1), **sketching)
    out = write_video(frames, args.output, fps=args.fps)
    print(f"wrote {frames.shape[0]} frames to {out}", file=sys.stderr)
    return out


def _continue(args, model, image, steps: int):
    """Continue Video with a progress bar over every segment's steps."""
    from tqdm import tqdm

    from .long_video import continue_video, keyframe_segments, plan_segments
    from .pipeline import load_image

    keyframes = [load_image(path) for path in args.keyframe] if args.keyframe else None
    plan = (keyframe_segments(len(keyframes), args.segment_frames) if keyframes
            else plan_segments(args.frames, args.segment_frames, args.overlap))
    with tqdm(total=steps * len(plan), desc=f"segment 1/{len(plan)}", unit="step") as bar:
        def step(info: dict) -> None:
            bar.set_description(f"segment {info['segment'] + 1}/{info['segments']}")
            bar.update(1)

        return continue_video(
            model, image, args.prompt, frames=None if keyframes else args.frames, keyframes=keyframes,
            segment_frames=args.segment_frames, overlap=args.overlap,
            colour=None if args.colour_match == "off" else args.colour_match, colour_strength=args.colour_strength,
            negative_prompt=args.negative_prompt, steps=args.steps, cfg=args.cfg, eta=args.eta, fs=args.fs,
            guidance_rescale=args.guidance_rescale, spacing=args.spacing, seed=args.seed, image_cfg=args.image_cfg,
            height=args.height, width=args.width, fit=args.fit, callback=step)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    try:
        outcome = run(args)
    except (DynamiCrafterError, ModelFileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = ("the finished videos are kept, and the same command makes the rest" if args.command == "batch" else
                "nothing was written")
        print(f"\ninterrupted: {kept}", file=sys.stderr)  # on a line of its own, after any progress bar
        return 130  # the shell's status for Ctrl-C
    return 1 if getattr(outcome, "failed", 0) else 0  # a batch with failed rows


if __name__ == "__main__":
    sys.exit(main())
