"""The benchmark runs end to end (the CI's smoke run: nothing about speed is asserted), counts the FLOPs the issue
quotes, and its baseline computes what the optimised path computes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dynamicrafter_core as dc
from dynamicrafter_core import bench
from dynamicrafter_core.config import VARIANT_CONFIGS, from_original
from dynamicrafter_core.unet import fp8_matmul_unsupported

ROOT = Path(__file__).parents[2]


@pytest.mark.slow  # a whole pipeline run in a new process (~20 s on two cores)
def test_tiny_pipeline_bench_prints_a_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "dynamicrafter_core.bench", "--tiny", "--device", "cpu", "--steps", "2",
         "--repeats", "1", "--warmup", "0", "--json", str(out)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert "encoders" in result.stdout and "vae_decode" in result.stdout
    record = json.loads(lines[-1])
    assert record == json.loads(out.read_text())
    assert record["device"].startswith("CPU") and record["mode"] == "pipeline"
    phases = record["runs"]["optimised"]
    assert set(phases) == {"encoders", "sampling", "vae_decode", "end_to_end", "unet_step"}
    assert all(p["median_s"] > 0 and p["peak_bytes"] > 0 for p in phases.values())
    assert record["flop_per_sample_step"] > 0 and record["tflops"]["optimised"] > 0


def test_unet_step_baseline_gives_the_same_output():
    args = bench.parser().parse_args(["--tiny", "--device", "cpu", "--unet-step", "--baseline", "--size", "64x128",
                                      "--frames", "4", "--repeats", "1", "--warmup", "0"])
    result = bench.run(args)
    assert set(result["runs"]) == {"optimised", "baseline"}
    assert result["comparison"]["same"], result["comparison"]


@pytest.mark.skipif(fp8_matmul_unsupported(torch.device("cpu")) is not None,
                    reason=f"torch {torch.__version__} does not multiply float8 matrices on the CPU")
def test_fp8_matmul_bench_says_how_far_float8_moves_the_output(capsys):
    args = bench.parser().parse_args(["--tiny", "--device", "cpu", "--dtype", "bf16", "--fp8-matmul", "--unet-step",
                                      "--size", "64x128", "--frames", "4", "--repeats", "1", "--warmup", "0"])
    result = bench.run(args)
    assert result["settings"]["fp8_matmul"] and result["settings"]["fp8_weights"]
    assert 0 < result["fp8_distance"] < 10  # moved, and by float8's rounding rather than a broken product
    bench.print_table(result)
    assert "float8: one guided step's output is" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.run(bench.parser().parse_args(["--tiny", "--device", "cpu", "--dtype", "fp32", "--fp8-matmul"]))
    assert "--fp8-matmul computes in bf16: add --dtype bf16" in capsys.readouterr().err


def test_a_written_random_checkpoint_loads_as_the_model_it_was_written_from(tmp_path):
    """The GPU check's ComfyUI job and the ComfyUI path probe load this file: every network of the model, in the
    released key names (a model without a pose encoder too: CamI2V's prefix once broke it)."""
    path = bench.write_checkpoint(tmp_path / "random.safetensors", bench.tiny_config(), "512", torch.device("cpu"),
                                  torch.float32)
    loaded = dc.load_model(path, config=bench.tiny_config())
    written = bench.random_model(bench.tiny_config(), "512", torch.device("cpu"), torch.float32)
    for name in ("unet", "vae", "query_transformer", "text_encoder", "image_encoder"):
        ours, theirs = getattr(loaded, name).state_dict(), getattr(written, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_tiny_config_is_the_parity_fixture(tiny_config):
    assert bench.tiny_config() == from_original(tiny_config)


@pytest.mark.parametrize("variant,latent,tflop", [("256", (32, 32), 4.9), ("512", (40, 64), 12.6),
                                                   ("1024", (72, 128), 52.3)])
def test_flop_count_is_the_issue_s(variant, latent, tflop):
    flops = bench.unet_flops(VARIANT_CONFIGS[variant].unet, 16, latent, 77 + 16 * 16)
    assert round(flops / 1e12, 1) == tflop


def test_random_real_size_model_builds_on_meta():
    model = bench.random_model(VARIANT_CONFIGS["256"], "256", torch.device("meta"), torch.bfloat16)
    assert model.variant == "256" and model.unet.dtype == torch.bfloat16
    assert sum(p.numel() for p in model.unet.parameters()) == 1_438_854_996


@pytest.mark.slow  # as above, with ToonCrafter's decoder (~30 s)
def test_the_tooncrafter_pipeline_benchmarks_with_its_keyframe_decoder(tmp_path):
    """The ToonCrafter row: interpolation whose decode takes the keyframes' encoder features (tiny model here)."""
    out = tmp_path / "toon.json"
    result = subprocess.run(
        [sys.executable, "-m", "dynamicrafter_core.bench", "--checkpoint",
         str(ROOT / "tests" / "fixtures" / "tiny_toon" / "tiny_toon.safetensors"), "--variant", "tooncrafter",
         "--device", "cpu", "--steps", "2", "--size", "64x64", "--frames", "8", "--repeats", "1", "--warmup", "0",
         "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["model"] == "DynamiCrafter tooncrafter"
    assert report["runs"]["optimised"]["vae_decode"]["median_s"] > 0


@pytest.mark.slow  # four guided steps of the tiny CamI2V model (~25 s on two cores)
def test_camera_cost_times_both_steps_and_sizes_the_mask_chunks():
    """--variant cami2v: one guided step with and without the camera at each released model's masked levels."""
    args = bench.parser().parse_args(["--variant", "cami2v", "--tiny", "--device", "cpu", "--size", "64x128",
                                      "--frames", "4", "--repeats", "1", "--warmup", "0"])
    result = bench.run(args)
    rows = result["camera_cost"]
    assert set(rows) == {"256", "512"}
    assert rows["256"]["masked_levels"] == [8, 4, 2, 1] and rows["512"]["masked_levels"] == [8, 4, 2]
    tokens = {ds: 4 * (64 // (8 * ds)) * (128 // (8 * ds)) for ds in (1, 2, 4, 8)}  # T h w per level
    # so small a level fits one chunk: its whole mask, one bool per query and key, and no level is kept with another
    assert rows["256"]["mask_chunk_bytes"] == tokens[1] * (tokens[1] + 4)
    assert rows["512"]["mask_chunk_bytes"] == tokens[2] * (tokens[2] + 4)
    for row in rows.values():
        assert row["camera_changes_output"] and row["plain_step_s"] > 0 and row["camera_step_s"] > 0
