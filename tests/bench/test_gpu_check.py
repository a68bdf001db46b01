"""The GPU check command: its dry run on the CPU prints the table and writes the JSON, kernels are sorted into the
kinds its profile names, and ComfyUI's printed times are read as ComfyUI writes them (its ComfyUI job is checked
against the nodes in tests/nodes/test_gpu_check_job.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynamicrafter_core import gpu_check

ROOT = Path(__file__).parents[2]


@pytest.mark.slow  # four new processes, one of which compiles: a minute or two on two cores
def test_dry_run_prints_the_table_and_writes_every_number(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run([sys.executable, "-m", "dynamicrafter_core.gpu_check", "--device", "cpu", "--tiny",
                             "--parts", "rows", "profile", "--json", str(out)],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert set(record["rows"]) == {"tiny, eager", "tiny, compiled"}
    assert all("error" not in r and r["runs"]["optimised"]["unet_step"]["median_s"] > 0
               for r in record["rows"].values())
    assert record["rows"]["tiny, compiled"]["settings"]["compile"]
    assert [p["compiled"] for p in record["profiles"]] == [False, True]
    assert all(p["kernels"] > 0 and abs(sum(p["by_kind"].values()) - 1) < 1e-6 for p in record["profiles"])
    table = result.stdout[result.stdout.index("DynamiCrafter GPU check"):]
    assert "| tiny, eager (3 steps) |" in table and "| tiny, compiled (3 steps) |" in table
    assert "profile of one guided tiny step" in table


@pytest.mark.parametrize("printed,seconds", [("12.34", 12.34), ("1:02.50", 62.5), (None, None)])
def test_comfyui_times_are_read_as_comfyui_prints_them(printed, seconds):
    assert gpu_check._seconds(printed) == seconds


def test_kernels_are_sorted_into_the_kinds_the_table_names():
    assert gpu_check.kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma") == "attention"
    assert gpu_check.kind_of("void at::native::RowwiseMomentsCUDAKernel<c10::BFloat16>") == "norm"
    assert gpu_check.kind_of("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT") == "matrix"
    assert gpu_check.kind_of("triton_poi_fused_convolution_native_group_norm_silu_1") == "compiled fusions"
    assert gpu_check.kind_of("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>") == "copy/layout"


def test_option_rows_are_opt_in_and_kept_out_of_the_comparisons():
    """The options part (float8 products, channels-last) is not in the default run, its rows say how far float8
    moves the output, and the original side by side and the ComfyUI ratio use the plain rows only."""
    assert "options" not in gpu_check.parser().parse_args([]).parts
    options = dict(gpu_check.bench_rows(False, options=True))
    assert set(options) == {"512 bf16, compiled, fp8 matmul", "512 bf16, compiled, channels-last"}
    assert all("--compile" in row and "bf16" in row for row in options.values())
    assert "--fp8-matmul" in options["512 bf16, compiled, fp8 matmul"]

    def row(step, compile=False, fp8=False, channels_last=False):
        phase = {"median_s": step, "peak_bytes": 2 ** 30}
        return {"device": "GPU", "warmup_s": [1.0], "tflops": {"optimised": 100.0},
                "runs": {"optimised": {k: phase for k in ("unet_step", "sampling", "vae_decode", "end_to_end")}},
                "settings": {"steps": 50, "size": [320, 512], "compile": compile, "fp8_weights": fp8,
                             "fp8_matmul": fp8, "channels_last": channels_last},
                **({"fp8_distance": 0.8} if fp8 else {})}

    result = {"started": "now", "commit": "abc", "profiles": [],
              "rows": {"512 bf16": row(0.2), "512 bf16, compiled": row(0.1, compile=True),
                       "512 bf16, compiled, fp8 matmul": row(0.05, compile=True, fp8=True),
                       "512 bf16, compiled, channels-last": row(0.04, compile=True, channels_last=True)},
              "original": [{"variant": "512", "attention": "einsum", "step_s": 0.4}],
              "comfyui": {"steps": 50, "dynamic_vram": True, "cold_s": 20.0, "warm_s": 0.3, "compiled_first_s": 120.0,
                          "compiled_warm_s": 0.25}}
    table = gpu_check.table(result)
    assert "| 512 bf16, compiled, fp8 matmul, 0.80 std from bf16 (50 steps) |" in table
    assert "ours eager 2.00x faster, compiled 4.00x" in table
    assert "warm 0.3 s = 1.50x the core's end to end" in table  # the eager row's 0.2 s
    assert "with I2V Sampler's compile: first 120.0 s (compiles), then 0.25 s" in table
