"""The project's acceptance checks (copies of ../shared/tools, unmodified) on the copied fixture and manifests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parents[1]
ROOT = TESTS.parent


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(TESTS / "acceptance" / script), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_parity_with_the_original_implementation():
    result = _run("parity_check.py", str(TESTS / "fixtures" / "tiny_v07"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "parity tiny_v07: all checks within tolerance"


@pytest.mark.parametrize("manifest,variant", [
    ("dynamicrafter_256.tsv", "256"),
    ("dynamicrafter_512_and_512_interp.tsv", None),
    ("dynamicrafter_1024.tsv", None),
    ("tooncrafter_512.tsv", "tooncrafter"),
])
def test_released_layout_loads(manifest, variant):
    result = _run("layout_check.py", str(TESTS / "data" / "keys" / manifest), *([variant] if variant else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith("all checks hold")
