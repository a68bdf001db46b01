"""Batch: animate a folder of images, or a CSV / JSONL manifest of them, into a folder of videos.

The work is a list of rows, each a whole `animate()` call with its own seed, so a row gives the same frames wherever
it runs. This module reads and checks the rows (every one, before any model is loaded), names each output from its
row, skips the outputs that exist (a re-run resumes), hands the rest to workers that each load the model once, and
writes one report line per row. The workers are embedded (one per local GPU, or the CPU, in this process) or Ray
actors (`batch_ray`, imported only for `--ray`); both run `Worker.run` on a row and are fed by `drive`, which gives a
row to whichever worker is free.

    python -m dynamicrafter_core batch photos/ -o videos/ --prompt "waves rolling in"
    python -m dynamicrafter_core batch manifest.csv -o videos/ --ray
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

from .errors import DynamiCrafterError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FORMAT_SUFFIXES = {"mp4": ".mp4", "webp": ".webp", "gif": ".gif", "png": ""}  # png: a folder of frames
REPORT = "report.jsonl"
# a row's columns: the image and its prompt, and the per-row sampling settings (each also a command-line default)
COLUMNS = ("image", "prompt", "end_image", "mode", "seed", "frames", "negative_prompt", "fs", "steps", "cfg", "output")
WHOLE = ("seed", "frames", "fs", "steps")
MAX_LISTED = 20  # bad rows listed in one error; the rest are counted


@dataclass(frozen=True)
class Settings:
    """What every row shares, and the defaults of the per-row columns (None: the model's default)."""
    prompt: str = ""
    negative_prompt: str = ""
    mode: str = "i2v"
    seed: int = 123
    frames: int = 16
    steps: Optional[int] = None
    cfg: Optional[float] = None
    fs: Optional[int] = None
    eta: Optional[float] = None
    guidance_rescale: Optional[float] = None
    spacing: Optional[str] = None
    image_cfg: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    fit: str = "crop"
    fps: float = 8.0
    format: str = "mp4"


@dataclass(frozen=True)
class Row:
    """One video: where it was read (`where`: "line 3" or the image's name), its inputs, settings and output."""
    where: str
    image: Path
    prompt: str
    output: Path
    end_image: Optional[Path] = None
    mode: str = "i2v"
    seed: int = 123
    frames: int = 16
    negative_prompt: str = ""
    fs: Optional[int] = None
    steps: Optional[int] = None
    cfg: Optional[float] = None
    attempt: int = 0  # how many times it was given to a worker before (a worker that died is retried elsewhere)
    tried: tuple = ()  # the workers (indices) it failed on


# ---------------------------------------------------------------------------------------------------------------
# Reading and checking the rows


def read_rows(source, outdir, settings: Settings = Settings()) -> list[Row]:
    """The rows of `source` (a folder of images, a .csv or a .jsonl manifest), each checked; a bad row is refused
    with its line number, all of them in one InputError, before anything is loaded."""
    source, outdir = Path(source), Path(outdir).resolve()  # absolute: workers may start in another folder
    _check_settings(settings)
    if source.is_dir():
        raw = _folder(source, settings)
    elif source.is_file() and source.suffix.lower() in (".csv", ".jsonl"):
        raw = _manifest(source)
    elif not source.exists():
        raise InputError(f"batch input {str(source)!r} does not exist; give a folder of images or a .csv / .jsonl "
                         "manifest")
    else:
        raise InputError(f"batch input {source.name!r} is neither a folder of images nor a .csv / .jsonl manifest")
    rows, errors = [], []
    for where, values in raw:
        try:
            rows.append(_row(where, values, source if source.is_dir() else source.parent, outdir, settings))
        except InputError as e:
            errors.append(f"{where}: {e}")
    outputs: dict = {}
    for row in rows:  # two rows into one file: one would overwrite the other, or be skipped as done
        if row.output in outputs:
            errors.append(f"{row.where}: its output {row.output.name} is also {outputs[row.output]}'s; give each row "
                          "its own `output`, or let the name come from the row")
        outputs.setdefault(row.output, row.where)
    if errors:
        listed = "\n  ".join(errors[:MAX_LISTED])
        more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        raise InputError(f"{source.name}: {len(errors)} bad row(s), nothing was started; fix them and run again:\n  "
                         f"{listed}{more}")
    if not rows:
        raise InputError(f"{source.name} holds no rows (images: {', '.join(IMAGE_SUFFIXES)})")
    return rows


def _check_settings(s: Settings) -> None:
    from .pipeline import FITS, check_side
    from .sampler import SPACINGS
    from .settings import (
        check_cfg,
        check_eta,
        check_fs,
        check_guidance_rescale,
        check_image_cfg,
        check_steps,
    )
    from .video_io import output_format

    _check_row_values(s.mode, s.seed, s.frames, s.steps, s.cfg, s.fs)
    for check, value in ((check_eta, s.eta), (check_guidance_rescale, s.guidance_rescale),
                         (check_image_cfg, s.image_cfg), (check_steps, s.steps), (check_cfg, s.cfg),
                         (check_fs, s.fs)):
        if value is not None:
            check(value)
    for name, value in (("width", s.width), ("height", s.height)):
        if value is not None:
            check_side(name, value)
    if s.spacing is not None and s.spacing not in SPACINGS:
        raise InputError(f"unknown timestep spacing {s.spacing!r}; use one of {', '.join(SPACINGS)}")
    if s.fit not in FITS:
        raise InputError(f"unknown fit {s.fit!r}; use one of {', '.join(FITS)}")
    if s.format not in FORMAT_SUFFIXES:
        raise InputError(f"unknown format {s.format!r}; use one of {', '.join(FORMAT_SUFFIXES)}")
    output_format(Path("x" + FORMAT_SUFFIXES[s.format]), s.fps)


def _check_row_values(mode, seed, frames, steps, cfg, fs) -> None:
    from .pipeline import MODES
    from .settings import check_cfg, check_frames, check_fs, check_seed, check_steps

    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    check_seed(seed)
    check_frames(frames)
    for check, value in ((check_steps, steps), (check_cfg, cfg), (check_fs, fs)):
        if value is not None:
            check(value)


def _folder(folder: Path, settings: Settings):
    """A folder of images: each one a row, its prompt from a sidecar <stem>.txt, else the shared prompt."""
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        sidecar = path.with_suffix(".txt")
        prompt = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else settings.prompt
        yield path.name, {"image": path.name, "prompt": prompt}


def _manifest(path: Path):
    """(where, {column: value}) per row of a CSV (a header line, then one row a line) or JSONL (one object a line)."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            unknown = [c for c in reader.fieldnames or () if c not in COLUMNS]
            if unknown or "image" not in (reader.fieldnames or ()):
                raise InputError(_header_message(path, unknown, reader.fieldnames))
            for values in reader:
                if None in values:  # more cells than the header has columns
                    yield f"line {reader.line_num}", {None: values[None]}
                    continue
                yield f"line {reader.line_num}", {k: v for k, v in values.items() if v not in (None, "")}
        return
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as e:
            yield f"line {number}", {None: f"not JSON ({e.msg})"}
            continue
        yield f"line {number}", values if isinstance(values, dict) else {None: "not a JSON object"}


def _header_message(path: Path, unknown, header) -> str:
    if header is None:
        return f"{path.name} is empty; its first line names the columns ({', '.join(COLUMNS)})"
    if unknown:
        return (f"{path.name} line 1: unknown column(s) {', '.join(map(repr, unknown))}; the columns are "
                f"{', '.join(COLUMNS)} (only image is required)")
    return f"{path.name} line 1: no `image` column; the columns are {', '.join(COLUMNS)} (only image is required)"


def _row(where: str, values: dict, base: Path, outdir: Path, s: Settings) -> Row:
    if None in values:
        cells = values[None]
        raise InputError(cells if isinstance(cells, str) else f"{len(cells)} more cell(s) than the header has columns")
    unknown = [k for k in values if k not in COLUMNS]
    if unknown:
        raise InputError(f"unknown column(s) {', '.join(map(repr, unknown))}; the columns are {', '.join(COLUMNS)}")
    if "image" not in values:
        raise InputError("no image; every row names one")
    v = {k: _typed(k, x) for k, x in values.items()}
    image = _existing(base, v["image"], "image")
    end = _existing(base, v["end_image"], "end_image") if "end_image" in v else None
    mode = v.get("mode", "interpolation" if end is not None else s.mode)
    seed, frames = v.get("seed", s.seed), v.get("frames", s.frames)
    steps, cfg, fs = v.get("steps", s.steps), v.get("cfg", s.cfg), v.get("fs", s.fs)
    _check_row_values(mode, seed, frames, steps, cfg, fs)
    if mode == "interpolation" and end is None:
        raise InputError("mode interpolation needs an end_image")
    for name in ("prompt", "negative_prompt"):
        if name in v and not isinstance(v[name], str):
            raise InputError(f"{name} must be text; got {v[name]!r}")
    row = Row(where=where, image=image, prompt=v.get("prompt", s.prompt), output=outdir, end_image=end, mode=mode,
              seed=seed, frames=frames, negative_prompt=v.get("negative_prompt", s.negative_prompt), fs=fs,
              steps=steps, cfg=cfg)
    return replace(row, output=outdir / (_given_output(v["output"], s) if "output" in v else _named(row, s)))


def _typed(column: str, value):
    """A cell as its column's type: CSV cells are text, JSON values already typed (a float seed is refused later)."""
    if column in WHOLE and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise InputError(f"{column} must be a whole number; got {value!r}") from None
    if column == "cfg" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise InputError(f"cfg must be a number; got {value!r}") from None
    if column in ("image", "end_image", "output", "mode") and not isinstance(value, str):
        raise InputError(f"{column} must be text; got {value!r}")
    return value


def _existing(base: Path, name: str, column: str) -> Path:
    path = (base / name).resolve()  # absolute: the workers (Ray actors too) may run elsewhere
    if not path.is_file():
        raise InputError(f"{column} {name!r} does not exist (looked for {path})")
    return path


def _given_output(name: str, s: Settings) -> str:
    from .video_io import output_format

    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.name:
        raise InputError(f"output {name!r} must be a file name inside the output folder (no '..', not absolute)")
    output_format(path, s.fps)
    return name


def _named(row: Row, s: Settings) -> str:
    """<image stem>-<hash of the inputs and every setting that changes the file>: a changed prompt, seed or setting
    is another video, the same ones are the same file (and are skipped when it exists)."""
    inputs = {"image": _digest(row.image), "end_image": _digest(row.end_image) if row.end_image else None,
              **{k: getattr(row, k) for k in ("prompt", "negative_prompt", "mode", "seed", "frames", "fs", "steps",
                                              "cfg")},
              **{k: getattr(s, k) for k in ("eta", "guidance_rescale", "spacing", "image_cfg", "width", "height",
                                            "fit", "fps")}}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return f"{row.image.stem}-{key}{FORMAT_SUFFIXES[s.format]}"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The workers


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: the checkpoint (a path every worker can read), its config and the dtype asked for."""
    checkpoint: Path
    config: Optional[Path] = None
    variant: Optional[str] = None
    dtype: str = "auto"


@dataclass
class Result:
    """One report line."""
    where: str
    image: str
    output: str
    seed: int
    status: str  # done, failed or skipped
    seconds: float = 0.0
    worker: str = ""
    error: Optional[str] = None
    attempts: int = 1


class Worker:
    """One model on one device; `run` animates a row and writes its video. A row's own fault (an unreadable image,
    NaN) is returned as a failed Result; anything else (out of memory, a dying device) is raised, so that the row is
    given to another worker."""

    def __init__(self, spec: ModelSpec, settings: Settings, device: str = "cpu", name: Optional[str] = None):
        from .__main__ import _device_and_dtype
        from .checkpoint import load_model

        device, dtype = _device_and_dtype(device, spec.dtype)
        self.model = load_model(spec.checkpoint, config=spec.config, device=device, dtype=dtype,
                                variant=spec.variant)
        if str(dtype) == "torch.float16":
            self.model.vae.float()  # as the command line: this VAE overflows in fp16 (black frames)
        self.settings = settings
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # a Ray actor's GPU is its cuda:0: name the real one
        where = f"{device} (GPU {visible})" if visible and str(device).startswith("cuda") else device
        self.name = name or f"{socket.gethostname()}/{os.getpid()}/{where}"

    def ready(self) -> str:
        return self.name

    def run(self, row: Row) -> Result:
        import torch

        from .pipeline import animate, load_image
        from .video_io import write_video

        s, start = self.settings, time.perf_counter()
        try:
            frames = animate(self.model, load_image(row.image), row.prompt, mode=row.mode, frames=row.frames,
                             end_image=load_image(row.end_image) if row.end_image is not None else None,
                             negative_prompt=row.negative_prompt, steps=row.steps, cfg=row.cfg, fs=row.fs,
                             seed=row.seed, eta=s.eta, guidance_rescale=s.guidance_rescale, spacing=s.spacing,
                             image_cfg=s.image_cfg, height=s.height, width=s.width, fit=s.fit)
            write_video(frames, row.output, fps=s.fps)
            status, error = "done", None
        except DynamiCrafterError as e:
            status, error = "failed", str(e)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # the cache the failed row filled: the next row starts from the model alone
            raise
        return result(row, status, time.perf_counter() - start, self.name, error)


def result(row: Row, status: str, seconds: float = 0.0, worker: str = "", error: Optional[str] = None) -> Result:
    return Result(where=row.where, image=str(row.image), output=str(row.output), seed=row.seed, status=status,
                  seconds=round(seconds, 3), worker=worker, error=error, attempts=row.attempt + 1)


class EmbeddedPool:
    """Workers in this process, each with a thread of its own (a model is only used by its thread)."""

    def __init__(self, make_worker: Callable[[int, str], Worker], devices: list):
        import torch

        # models sharing the CPU share its threads, as Ray's CPU actors do: one worker's frames do not depend on
        # how it ran (a float sum rounds by how it is split over threads)
        self.torch_threads = torch.get_num_threads()
        sharing = sum(d == "cpu" for d in devices)
        if sharing > 1:
            torch.set_num_threads(max(1, self.torch_threads // sharing))
        self.threads = [ThreadPoolExecutor(1, thread_name_prefix=f"dynamicrafter-{d}") for d in devices]
        # the models load side by side (one per device), each in the thread that will use it
        self.workers = [f.result() for f in [t.submit(make_worker, i, d)
                                             for i, (t, d) in enumerate(zip(self.threads, devices))]]

    def submit(self, index: int, row: Row):
        return self.threads[index].submit(self.workers[index].run, row)

    @staticmethod
    def wait(pending):
        return next(iter(wait_futures(pending, return_when=FIRST_COMPLETED).done))

    @staticmethod
    def get(future) -> Result:
        return future.result()  # re-raises what killed the row: the driver retries it on another worker

    def close(self) -> None:
        import torch

        for t in self.threads:
            t.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self.torch_threads)


def drive(pool, rows: list, retries: int, on_result: Callable[[Result], None], lost=(Exception,)) -> None:
    """Give each row to the next free worker of `pool` (submit/wait/get), one row per worker at a time, until all are
    done. A row whose worker raised one of `lost` (it died, or ran out of memory) goes back to the front of the line,
    for a worker it has not failed on while there is one, at most `retries` more times; then it is failed."""
    n = len(pool.workers)
    idle, todo, running = deque(range(n)), deque(rows), {}
    while todo or running:
        for worker in list(idle):  # the first row each free worker may take: not one that failed on it, unless
            row = next((r for r in todo if worker not in r.tried or len(set(r.tried)) >= n), None)  # all did
            if row is not None:
                idle.remove(worker)
                todo.remove(row)
                running[pool.submit(worker, row)] = (worker, row)
        done = pool.wait(list(running))
        worker, row = running.pop(done)
        try:
            outcome = pool.get(done)
        except lost as e:
            what = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            if row.attempt < retries:
                todo.appendleft(replace(row, attempt=row.attempt + 1, tried=row.tried + (worker,)))
                idle.append(worker)
                continue
            outcome = result(row, "failed", worker=f"worker {worker}",
                             error=f"its worker failed {row.attempt + 1} time(s), the last with {what}")
        idle.append(worker)
        on_result(outcome)


# ---------------------------------------------------------------------------------------------------------------
# A run: plan, work, report


@dataclass
class Summary:
    done: int
    failed: int
    skipped: int
    seconds: float
    workers: int

    @property
    def videos_per_hour(self) -> float:
        return self.done * 3600 / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.done} done, {self.failed} failed, {self.skipped} skipped (already there) in "
                f"{self.seconds:.1f} s on {self.workers} worker(s): {self.videos_per_hour:.0f} videos per hour")


def plan(rows: list) -> tuple[list, list]:
    """(to make, already made): an output that exists is finished (outputs are moved into place whole)."""
    return [r for r in rows if not r.output.exists()], [r for r in rows if r.output.exists()]


def local_devices(device: str = "auto", workers: Optional[int] = None) -> list:
    """The devices of the embedded workers: every local GPU (auto, cuda), a named one, or the CPU; `workers` caps
    the GPUs used, or on the CPU sets how many models share it."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return gpus[:workers] if workers else gpus
    if device in ("auto", "cpu"):
        return ["cpu"] * (workers or 1)
    return [device] * (workers or 1)


def run_batch(source, outdir, spec: ModelSpec, settings: Settings = Settings(), device: str = "auto",
              workers: Optional[int] = None, ray_address: Optional[str] = None, use_ray: bool = False,
              retries: int = 2, progress: bool = True, on_result: Optional[Callable[[Result], None]] = None,
              rows: Optional[list] = None) -> Summary:
    """Animate every row of `source` into `outdir` (see the module's docstring) and return the summary. Each row's
    result is appended to `outdir/report.jsonl` as it comes; `on_result` sees it too. `rows`: read_rows(source,
    outdir, settings) when the caller has them already."""
    from tqdm import tqdm

    rows = read_rows(source, outdir, settings) if rows is None else rows
    todo, made = plan(rows)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    spec = _resolved(spec, rows)
    start = time.perf_counter()
    counts = {"done": 0, "failed": 0, "skipped": len(made)}
    with (outdir / REPORT).open("a", encoding="utf-8") as report:
        def record(outcome: Result) -> None:
            report.write(json.dumps(asdict(outcome)) + "\n")
            report.flush()  # a stopped run keeps every line it wrote
            if outcome.status != "skipped":
                counts[outcome.status] += 1
                bar.update(1)
                bar.set_postfix(done=counts["done"], failed=counts["failed"])
                if outcome.status == "failed":
                    named = "" if outcome.where == Path(outcome.image).name else f" ({Path(outcome.image).name})"
                    bar.write(f"{outcome.where}{named} failed: {outcome.error}",
                              file=sys.stderr)
            if on_result is not None:
                on_result(outcome)

        with tqdm(total=len(todo), desc="videos", unit="video", disable=not progress, file=sys.stderr) as bar:
            for row in made:
                record(result(row, "skipped"))
            n = 0
            if todo:
                if use_ray:
                    from .batch_ray import RayPool, lost_worker_errors

                    pool = RayPool(spec, settings, ray_address, workers)
                    lost = lost_worker_errors()
                else:
                    devices = local_devices(device, workers)
                    pool = EmbeddedPool(lambda i, d: Worker(spec, settings, d,
                                                            name=f"{socket.gethostname()}/{os.getpid()}/{d}/{i}"),
                                        devices)
                    lost = (Exception,)
                n = len(pool.workers)
                try:
                    drive(pool, todo, retries, record, lost)
                finally:
                    pool.close()
    return Summary(counts["done"], counts["failed"], counts["skipped"], time.perf_counter() - start, n)


def _resolved(spec: ModelSpec, rows: list) -> ModelSpec:
    """An absolute checkpoint path (workers may start elsewhere); rows that interpolate say which of the look-alike
    512 files this is, as the command line does."""
    variant = spec.variant or ("512_interp" if any(r.mode != "i2v" for r in rows) else None)
    config = Path(spec.config).resolve() if spec.config is not None else None
    return replace(spec, checkpoint=Path(spec.checkpoint).resolve(), config=config, variant=variant)


# ---------------------------------------------------------------------------------------------------------------
# The command line (`python -m dynamicrafter_core batch`)


def add_arguments(p) -> None:
    from .config import VARIANTS
    from .pipeline import FITS
    from .sampler import SPACINGS

    p.add_argument("input", type=Path, help="a folder of images (prompt from <stem>.txt beside each, else --prompt), "
                                            f"or a .csv / .jsonl manifest with the columns {', '.join(COLUMNS)}")
    p.add_argument("-o", "--output", type=Path, required=True, help="the folder the videos and report.jsonl go to")
    p.add_argument("--checkpoint", type=Path, help="model file; default: look in the usual places (as animate)")
    p.add_argument("--variant", choices=VARIANTS, help="which released model to look for (as animate)")
    p.add_argument("--config", type=Path, help="the original inference yaml (or json) of a fine-tune")
    p.add_argument("--dry-run", action="store_true", help="check every row and print the plan; load nothing")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray, one actor per GPU: alone, a local Ray (or the cluster of $RAY_ADDRESS, or the one "
                        "`ray job submit` runs in); or ray://host:10001. Needs "
                        "`pip install \"dynamicrafter-animate[ray]\"`")
    p.add_argument("--workers", type=int, help="how many models: default one per GPU (all local GPUs, or all of the "
                                               "Ray cluster's), else 1 on the CPU")
    p.add_argument("--retries", type=int, default=2,
                   help="how many more workers a row is given to when its worker dies or runs out of memory (2)")
    p.add_argument("--device", default="auto", help="embedded: cuda (every GPU), cuda:1, cpu (default: the GPUs "
                                                    "if any)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--format", default="mp4", choices=tuple(FORMAT_SUFFIXES),
                   help="the videos named from their rows: mp4 (default), webp, gif, or png (a folder of frames)")
    p.add_argument("--prompt", default="", help="the prompt of rows that give none")
    p.add_argument("--negative-prompt", default="", help="of rows that give none")
    p.add_argument("--mode", default="i2v", help="of rows that give none (i2v; rows with an end_image interpolate)")
    p.add_argument("--seed", type=int, default=123, help="of rows that give none (123)")
    p.add_argument("--frames", type=int, default=16, help="of rows that give none (16)")
    p.add_argument("--steps", type=int, help="of rows that give none (default: the model's, 50)")
    p.add_argument("--cfg", type=float, help="of rows that give none (default: the model's, 7.5)")
    p.add_argument("--fs", type=int, help="of rows that give none (default: the model's)")
    p.add_argument("--eta", type=float, help="DDIM eta (default 1.0)")
    p.add_argument("--guidance-rescale", type=float, help="default per model")
    p.add_argument("--image-cfg", type=float, help="separate image guidance scale (three-branch guidance)")
    p.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default per model)")
    p.add_argument("--width", type=int, help="multiple of 64 (default: the model's)")
    p.add_argument("--height", type=int, help="multiple of 64 (default: the model's)")
    p.add_argument("--fit", choices=FITS, default="crop")
    p.add_argument("--fps", type=float, default=8.0, help="playback rate of the written videos (8)")


def settings_from(args) -> Settings:
    return Settings(prompt=args.prompt, negative_prompt=args.negative_prompt, mode=args.mode, seed=args.seed,
                    frames=args.frames, steps=args.steps, cfg=args.cfg, fs=args.fs, eta=args.eta,
                    guidance_rescale=args.guidance_rescale, spacing=args.spacing, image_cfg=args.image_cfg,
                    width=args.width, height=args.height, fit=args.fit, fps=args.fps, format=args.format)


def main(args) -> Summary:
    """`python -m dynamicrafter_core batch`: check every row, then (unless --dry-run) run them."""
    settings = settings_from(args)
    if args.retries < 0:
        raise InputError(f"--retries must be 0 or more; got {args.retries}")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be 1 or more; got {args.workers}")
    rows = read_rows(args.input, args.output, settings)
    todo, made = plan(rows)
    if args.dry_run:
        for row in rows:
            state = "done, skipped" if row in made else "to make"
            print(f"{row.where}: {row.image.name} -> {row.output.name} ({row.mode}, seed {row.seed}, {state}): "
                  f"{row.prompt!r}")
        print(f"{len(rows)} rows: {len(todo)} to make, {len(made)} already made; nothing was run (--dry-run)")
        return Summary(0, 0, len(made), 0.0, 0)
    if args.ray is not None:
        from .batch_ray import require_ray

        require_ray()  # before the checkpoint search: a missing Ray is said first
    from .__main__ import _checkpoint

    mode = "i2v" if all(r.mode == "i2v" for r in rows) else "interpolation"
    lookup = SimpleNamespace(checkpoint=args.checkpoint, variant=args.variant, download=False)
    spec = ModelSpec(_checkpoint(lookup, mode), args.config, args.variant, args.dtype)
    summary = run_batch(args.input, args.output, spec, settings, device=args.device, workers=args.workers,
                        ray_address=args.ray or None, use_ray=args.ray is not None, retries=args.retries, rows=rows)
    print(summary, file=sys.stderr)
    print(f"report: {Path(args.output) / REPORT}", file=sys.stderr)
    return summary

