"""What the distribution tests look at: the files of the repository, and which of them ComfyUI runs."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the code ComfyUI imports when it loads the pack (the root __init__.py pulls in nodes/, which uses the core)
RUNTIME_DIRS = ("dynamicrafter_core", "nodes")
RUNTIME_FILES = ("__init__.py", "prestartup_script.py", "install.py")

# folders ComfyUI serves as the pack's workflow templates (app/custom_node_manager.py, ComfyUI >= 0.3.31)
WORKFLOW_DIRS = ("example_workflows", "example", "examples", "workflow", "workflows")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - requires-python allows 3.10
    import tomli as tomllib


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_lines(path: Path = ROOT / "requirements.txt") -> list[str]:
    """The requirement lines of a requirements file, comments and blank lines left out."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #")[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def runtime_sources() -> list[Path]:
    files = [ROOT / name for name in RUNTIME_FILES if (ROOT / name).is_file()]
    for folder in RUNTIME_DIRS:
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def all_sources() -> list[Path]:
    """Every Python file the registry zip would carry (ignoring virtual environments and caches)."""
    skip = {".venv", "venv", ".git", "__pycache__", "build", "dist", ".ruff_cache", ".pytest_cache"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts))
