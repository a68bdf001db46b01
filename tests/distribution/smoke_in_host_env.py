"""Run inside the simulated ComfyUI environment (not by pytest): does the core work with what the Manager installed?

  python smoke_in_host_env.py REPO_ROOT WORK_DIR

Imports every third-party module the core uses (several only inside functions, so a bare `import dynamicrafter_core`
would not notice a missing one), then exercises them for real on the tiny fixture checkpoint: safetensors reading,
the open_clip towers, the kornia resize of the image encoder, a yaml configuration, two DDIM steps, and an mp4
written with PyAV and read back. Prints one line per check and "host-env smoke: ok" at the end.
"""
import importlib
import json
import sys
from pathlib import Path

root, work = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(root))  # ComfyUI puts the pack folder on no path; the core is imported from the checkout

for module in ("torch", "numpy", "PIL", "safetensors", "open_clip", "kornia", "av", "yaml", "tqdm"):
    mod = importlib.import_module(module)
    print(f"import {module} {getattr(mod, '__version__', '')} from {Path(mod.__file__).parent}")

import torch  # noqa: E402
import yaml  # noqa: E402

import dynamicrafter_core as dc  # noqa: E402
from dynamicrafter_core.pipeline import animate  # noqa: E402
from dynamicrafter_core.video_io import read_video, write_video  # noqa: E402

print(f"import dynamicrafter_core {dc.__version__} from {Path(dc.__file__).parent}")
assert Path(dc.__file__).resolve().parent == (root / "dynamicrafter_core").resolve(), dc.__file__

fixture = root / "tests" / "fixtures" / "tiny_v07"
config = work / "tiny_v07.yaml"  # the original configs are yaml: read one through PyYAML
config.write_text(yaml.safe_dump(json.loads((fixture / "tiny_v07.config.json").read_text())))
model = dc.load_model(fixture / "tiny_v07.safetensors", config=config)
assert model.text_encoder is not None and model.image_encoder is not None, "the fixture has both CLIP towers"
print(f"loaded {model.describe()}")

y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
image = torch.stack([x, y, x * y])[None] * 0.5
frames = animate(model, image, prompt="a test", frames=4, steps=2, seed=1)
assert frames.shape[0] == 4 and frames.shape[-1] == 3 and torch.isfinite(frames).all(), frames.shape
print(f"animated {tuple(frames.shape)}")

video = write_video(frames, work / "smoke.mp4", fps=8)
back = read_video(video)
assert back.shape[0] == 4, back.shape
print(f"wrote and read back {video.name}: {tuple(back.shape)}")
print("host-env smoke: ok")
