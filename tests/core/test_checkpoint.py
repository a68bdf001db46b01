"""Loading the files users have: formats, wrappers, legacy names, pruned files, variants, and clear refusals."""
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import dynamicrafter_core as dc
from dynamicrafter_core.checkpoint import detect_variant

from ..conftest import CHECKPOINT, CONFIG_FILE


def unet_output(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 8, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77 + 64, 16, generator=g)
    return model.unet(x, torch.tensor([500]), ctx, torch.tensor([24]))


@pytest.fixture(scope="module")
def reference_output(tiny_model):
    return unet_output(tiny_model)


def test_ckpt_with_state_dict_wrapper_loads_the_same_weights(tmp_path, tiny_state_dict, tiny_config,
                                                             reference_output):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tiny_state_dict, "epoch": 3, "global_step": 1000}, path)
    model = dc.load_model(path, config=tiny_config)
    torch.testing.assert_close(unet_output(model), reference_output)


def test_deepspeed_module_wrapper_loads(tmp_path, tiny_state_dict, tiny_config, reference_output):
    path = tmp_path / "ds.ckpt"
    torch.save({"module": {f"_forward_module.{k}": v for k, v in tiny_state_dict.items()}}, path)
    torch.testing.assert_close(unet_output(dc.load_model(path, config=tiny_config)), reference_output)


def test_legacy_framestride_names_of_the_256_file_load(tmp_path, tiny_state_dict, tiny_config, reference_output):
    legacy = {k.replace("fps_embedding", "framestride_embed"): v for k, v in tiny_state_dict.items()}
    assert any("framestride_embed" in k for k in legacy)
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": legacy}, path)
    torch.testing.assert_close(unet_output(dc.load_model(path, config=tiny_config)), reference_output)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_ckpt_whose_pickle_would_run_code_is_refused(tmp_path, tiny_config):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": torch.zeros(1)}, "payload": _Exploit(marker)}, f)
    with pytest.raises(dc.CheckpointError, match="arbitrary code"):
        dc.load_model(path, config=tiny_config)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["notes.safetensors", "notes.ckpt", "notes.bin"])
def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_text("these are my holiday notes, not a model\n" * 10)
    with pytest.raises(dc.CheckpointError, match=name):
        dc.load_model(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_truncated_download_is_refused_with_advice(tmp_path, tiny_state_dict, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": tiny_state_dict}, full)
    else:
        shutil.copy(CHECKPOINT, full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(dc.CheckpointError, match="download it again"):
        dc.load_model(cut)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dc.load_model(tmp_path / "nothing.safetensors")


def test_a_stable_diffusion_checkpoint_is_named_as_such(tmp_path):
    sd = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, 768),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
    }
    path = tmp_path / "v1-5-pruned.safetensors"
    save_file(sd, str(path))
    with pytest.raises(dc.CheckpointError, match="Stable Diffusion 1.x"):
        dc.load_model(path)


def test_a_config_of_another_size_names_the_mismatching_key(tiny_state_dict):
    # no config: the released 512 configuration is assumed, and the tiny weights do not fit it
    with pytest.raises(dc.CheckpointError, match=r"model\.diffusion_model\.\S+ .*shape|missing"):
        dc.load_model(tiny_state_dict)


def test_pruned_file_loads_and_asks_for_external_encoders(tiny_state_dict, tiny_config):
    pruned = {k: v for k, v in tiny_state_dict.items()
              if k.startswith(("model.diffusion_model.", "first_stage_model.", "image_proj_model."))}
    model = dc.load_model(pruned, config=tiny_config)
    assert model.text_encoder is None and model.image_encoder is None
    with pytest.raises(dc.MissingEncoderError, match="clip"):
        model.encode_text(["a cat"])
    with pytest.raises(dc.MissingEncoderError, match="clip_vision"):
        model.encode_image(torch.zeros(1, 3, 64, 64))
    assert "pruned" in model.describe()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_in_the_requested_dtype(tiny_state_dict, tiny_config, dtype, reference_output):
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tiny_state_dict.items()}
    kept = dc.load_model(sd, config=tiny_config, dtype=None)
    assert kept.unet.time_embed[0].weight.dtype == dtype
    upcast = dc.load_model(sd, config=tiny_config, dtype=torch.float32)
    assert upcast.unet.time_embed[0].weight.dtype == torch.float32
    if dtype == torch.float16:  # the fixture is stored in fp16: same weights, same output
        torch.testing.assert_close(unet_output(upcast), reference_output)


def test_sidecar_json_next_to_the_checkpoint_is_used(tmp_path, reference_output):
    shutil.copy(CHECKPOINT, tmp_path / "my_finetune.safetensors")
    (tmp_path / "my_finetune.json").write_text(json.dumps(json.loads(CONFIG_FILE.read_text())["model"]))
    model = dc.load_model(tmp_path / "my_finetune.safetensors")
    assert "my_finetune.json" in model.variant_source
    torch.testing.assert_close(unet_output(model), reference_output)


def test_meta_device_builds_shapes_only(tiny_state_dict, tiny_config):
    model = dc.load_model({k: v.to("meta") for k, v in tiny_state_dict.items()}, config=tiny_config, device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_variant_is_told_from_the_weights_not_the_name():
    keys = ["model.diffusion_model.input_blocks.1.0.temopral_conv.conv1.2.weight"]
    base_03 = torch.cat([torch.linspace(1, 0.3, 400), torch.full((1000,), 0.3)])
    base_07 = torch.cat([torch.linspace(1, 0.7, 400), torch.full((1000,), 0.7)])
    assert detect_variant(keys, base_03, name_hint="dynamicrafter_512.ckpt")[0] == "1024"
    assert detect_variant(keys, base_07, name_hint="dc_1024.ckpt")[0] == "512"
    assert detect_variant(keys + ["model.diffusion_model.x.attn2.alpha"], None)[0] == "256"
    assert detect_variant(keys + ["first_stage_model.decoder.attn_refinement.0.conv.weight"], None)[0] == "tooncrafter"
    # 512 and 512_interp have identical tensors: the name, or an explicit choice, decides
    assert detect_variant(keys, base_07, name_hint="dynamicrafter_512_interp_v1.ckpt")[0] == "512_interp"
    assert detect_variant(keys, base_07, name_hint="model.ckpt", override="512_interp")[0] == "512_interp"
    variant, how = detect_variant(keys, base_07, name_hint="x_interp.ckpt", override="512")
    assert variant == "512" and "override" in how
    with pytest.raises(dc.ConfigError, match="unknown variant"):
        detect_variant(keys, base_07, override="2048")


# -- nothing a file does may crash the process or silently corrupt the model -----------------------------------------

AFTER_LOADING = """
import torch
import dynamicrafter_core as dc
def unet_output(model):
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 8, 4, 8, 8, generator=g), torch.randn(1, 77 + 64, 16, generator=g)
    return model.unet(x.to(model.unet.dtype), torch.tensor([500]), ctx.to(model.unet.dtype), torch.tensor([24]))
path, config, dtype = {path!r}, {config!r}, {dtype}
model = dc.load_model(path, config=config, dtype=dtype)
before = unet_output(model)
size = len(open(path, "rb").read())
with open(path, "r+b") as f:  # overwritten in place, then cut short: a re-download over the same name
    f.write(bytes(size))
    f.truncate(size // 3)
after = unet_output(model)
print("same" if torch.equal(before, after) else "changed")
"""


# each case is a new process (~25 s on two cores): the default tier keeps the riskiest, a memory-mappable
# safetensors file loaded in its own dtype; the slow tier has the other three
@pytest.mark.parametrize("suffix,dtype", [
    (".safetensors", "None"),
    pytest.param(".safetensors", "torch.float32", marks=pytest.mark.slow),
    pytest.param(".ckpt", "torch.float32", marks=pytest.mark.slow),
    pytest.param(".ckpt", "None", marks=pytest.mark.slow)])
def test_the_model_does_not_depend_on_the_file_after_loading(tmp_path, tiny_state_dict, tiny_config, suffix, dtype):
    """Weights left memory-mapped (the file's dtype asked for) die with SIGBUS when the file is truncated, and turn
    to zeros or NaN when it is overwritten in place; so the check runs in a process of its own."""
    import subprocess
    import sys

    path = tmp_path / f"model{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": tiny_state_dict}, path)
    else:
        shutil.copy(CHECKPOINT, path)
    script = AFTER_LOADING.format(path=str(path), config=tiny_config, dtype=dtype)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[2])
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.strip() == "same"


def test_a_pipe_in_place_of_the_checkpoint_is_refused_without_waiting(tmp_path):
    import subprocess
    import sys

    fifo = tmp_path / "model.ckpt"
    os.mkfifo(fifo)
    script = f"import dynamicrafter_core as dc\ntry:\n    dc.load_model({str(fifo)!r})\nexcept Exception as e:\n    print(e)"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[2])  # opening the pipe would block forever
    assert "is not a regular file (a pipe, a socket or a device)" in run.stdout, run.stdout + run.stderr


def test_random_bytes_are_called_no_checkpoint_without_torchs_unsafe_advice(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(dc.CheckpointError) as refused:
        dc.load_model(path)
    message = str(refused.value)
    assert "model.ckpt cannot be read as a PyTorch checkpoint: its first bytes are neither" in message
    assert "weights_only" not in message


@pytest.mark.parametrize("written,named", [("safetensors", "model.ckpt"), ("ckpt", "model.safetensors")])
def test_the_format_is_told_from_the_bytes_not_the_suffix(tmp_path, tiny_state_dict, tiny_config, reference_output,
                                                          written, named):
    path = tmp_path / named
    if written == "safetensors":
        shutil.copy(CHECKPOINT, path)
    else:
        torch.save({"state_dict": tiny_state_dict}, path)
    torch.testing.assert_close(unet_output(dc.load_model(path, config=tiny_config)), reference_output)


def test_integer_tensors_are_refused_in_one_line_naming_the_key(tiny_state_dict, tiny_config):
    quantised = {k: (v * 100).to(torch.int8) if k.endswith("weight") else v for k, v in tiny_state_dict.items()}
    with pytest.raises(dc.CheckpointError) as refused:
        dc.load_model(quantised, config=tiny_config)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 500
    assert re.search(r"`[\w.]+\.weight` holds int8 values, but DynamiCrafter's weights are floating point", message)


def test_float8_files_load_and_run_without_a_dtype(tiny_state_dict, tiny_config, reference_output):
    """dtype=None keeps what the file stores, which for float8 weights no kernel computes in ("silu_cpu" not
    implemented for Float8, at the first step)."""
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() and v.ndim > 1 else v
           for k, v in tiny_state_dict.items()}
    model = dc.load_model(fp8, config=tiny_config, dtype=None)
    assert model.unet.dtype == torch.float32
    output = unet_output(model)
    assert torch.isfinite(output).all() and 0 < (output - reference_output).abs().mean() < reference_output.std()


def test_a_huge_stride_0_scale_arr_costs_nothing(tiny_state_dict, tiny_config):
    """A file may declare any size for a tensor it stores once (a stride-0 view): 1e12 values here, 4 TB as float32
    if the loader materialised it (3e9 took 12 GB)."""
    base = torch.tensor([0.3], dtype=torch.float64)  # any dtype but float32, which .float() would not copy
    huge = {**tiny_state_dict, "scale_arr": base.expand(10 ** 12)}
    model = dc.load_model(huge, config=tiny_config)
    assert model.variant == "1024"


@pytest.mark.parametrize("timesteps", [100_000_000, 1e8, 0])
def test_a_configuration_cannot_ask_for_a_huge_noise_schedule(tiny_state_dict, tiny_config, timesteps):
    """The schedule's arrays have `timesteps` entries: 1e8 of them took 4.5 GB before anything was checked."""
    config = json.loads(json.dumps(tiny_config))
    config["params"]["timesteps"] = timesteps
    with pytest.raises(dc.ConfigError, match=rf"timesteps {timesteps!r} is out of range: .* 1 to 10000 steps"):
        dc.load_model(tiny_state_dict, config=config)


def test_a_configuration_asking_for_zero_embed_is_refused_by_name(tiny_state_dict, tiny_config):
    """Its unconditional branch would differ from what this implementation samples: refused, not ignored."""
    config = json.loads(json.dumps(tiny_config))
    config["params"]["uncond_type"] = "zero_embed"
    with pytest.raises(dc.ConfigError, match=r"uncond_type 'zero_embed' is not supported"):
        dc.load_model(tiny_state_dict, config=config)


@pytest.mark.parametrize("key, value", [("transformer_depth", 2), ("image_cross_attention", False),
                                        ("use_relative_position", True)])
def test_a_unet_option_this_implementation_does_not_build_is_refused_by_name(tiny_state_dict, tiny_config, key,
                                                                             value):
    """A fine-tune's yaml that changes the architecture: refused, not ignored (the weights would not match)."""
    config = json.loads(json.dumps(tiny_config))
    config["params"]["unet_config"]["params"][key] = value
    with pytest.raises(dc.ConfigError, match=rf"unet_config `{key}: {value!r}` is not supported"):
        dc.load_model(tiny_state_dict, config=config)
