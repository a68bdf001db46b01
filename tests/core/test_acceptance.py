"""The project's acceptance checks (copies of ../shared/tools, unmodified, and the project's own
cami2v_parity_check.py) on the copied fixtures and manifests, run as scripts (in this process, to spare an interpreter
start each)."""
import runpy
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parents[1]


def run_script(script: str, *args: str, capsys) -> tuple[int, str]:
    argv = sys.argv
    sys.argv = [script, *args]
    try:
        runpy.run_path(str(TESTS / "acceptance" / script), run_name="__main__")
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return status, capsys.readouterr().out


def test_parity_with_the_original_implementation(capsys):
    status, out = run_script("parity_check.py", str(TESTS / "fixtures" / "tiny_v07"), capsys=capsys)
    assert status == 0, out
    assert out.strip().splitlines()[-1] == "parity tiny_v07: all checks within tolerance"


def test_tooncrafter_parity_with_the_original_implementation(capsys):
    """The dual-reference decoder, the keyframe features, the sketch ControlNet and two sampling runs."""
    status, out = run_script("toon_parity_check.py", str(TESTS / "fixtures" / "tiny_toon"), capsys=capsys)
    assert status == 0, out
    assert out.strip().splitlines()[-1] == "toon parity tiny_toon: all checks within tolerance"
    assert "skip " not in out  # every reference in the fixture was checked


def test_cami2v_parity_with_the_original_implementation(capsys):
    """Camera maths, epipolar masks, the pose encoder, the camera-aware UNet and a 2-step DDIM run with the camera,
    against the original CamI2V code's tensors (tests/fixtures/tiny_cami2v, a copy of ../shared/fixtures)."""
    status, out = run_script("cami2v_parity_check.py", str(TESTS / "fixtures" / "tiny_cami2v"), capsys=capsys)
    assert status == 0, out
    assert out.strip().splitlines()[-1] == "cami2v parity tiny_cami2v: all checks within tolerance"
    assert "skip " not in out  # every reference in the fixture was checked


@pytest.mark.parametrize("manifest,variant", [
    ("dynamicrafter_256.tsv", "256"),
    ("dynamicrafter_512_and_512_interp.tsv", None),
    ("dynamicrafter_1024.tsv", None),
    ("tooncrafter_512.tsv", "tooncrafter"),
])
def test_released_layout_loads(manifest, variant, capsys):
    status, out = run_script("layout_check.py", str(TESTS / "data" / "keys" / manifest),
                             *([variant] if variant else []), capsys=capsys)
    assert status == 0, out
    assert out.strip().splitlines()[-1].endswith("all checks hold")
