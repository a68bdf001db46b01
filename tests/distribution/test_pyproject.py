"""pyproject.toml as the Comfy Registry, comfy-cli, ComfyUI and pip read it.

The registry rules are those of docs.comfy.org "registry/specifications" and of comfy-cli's own parser
(comfy_cli/registry/config_parser.py), which only *warns* about most mistakes; these tests make each of them an error.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from urllib.parse import urlparse

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .shipped import ROOT, all_sources, pyproject, requirement_lines

COMFY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
COMFY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                      "GPU :: Apple Metal"}
# comfy-cli's validate_version: [operator]X.Y.Z[-suffix], comma separated
COMFY_VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")
ICON_SUFFIXES = (".svg", ".png", ".jpg", ".jpeg", ".gif")


@pytest.fixture(scope="module")
def project() -> dict:
    return pyproject()["project"]


@pytest.fixture(scope="module")
def comfy() -> dict:
    return pyproject()["tool"]["comfy"]


def requires_comfyui_floor(comfy: dict) -> Version:
    spec = comfy["requires-comfyui"]
    floors = [Version(s.version) for s in SpecifierSet(spec) if s.operator == ">="]
    assert len(floors) == 1, f"requires-comfyui {spec!r} must name one minimum version (>=X.Y.Z)"
    return floors[0]


def test_name_is_a_valid_registry_node_id(project):
    name = project["name"]
    assert len(name) < 100
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", name), (
        f"{name!r}: letters, digits and single - _ . between them; must start with a letter")
    assert "comfyui" not in name.lower(), "the registry asks not to put 'ComfyUI' in the node id"


def test_version_is_semver_and_matches_the_package(project):
    import dynamicrafter_core

    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the registry wants X.Y.Z"
    assert "version" not in project.get("dynamic", []), "comfy-cli publishes project.version; keep it static"
    assert dynamicrafter_core.__version__ == project["version"], (
        "bump dynamicrafter_core.__version__ and pyproject's version together")


def test_license_points_at_the_gpl_licence_file(project):
    assert project["license"] == "GPL-3.0-or-later", "an SPDX expression (PEP 639; comfy-cli reads it as the text)"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")], (
        "setuptools >= 77 rejects License classifiers next to an SPDX license")
    requires = pyproject()["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d)(\.\d+)*", r) for r in requires), (
        f"PEP 639 license fields need setuptools >= 77 in build-system.requires: {requires}")


def test_description_and_repository_url(project):
    assert 20 <= len(project["description"]) <= 300
    repo = project["urls"]["Repository"]
    parsed = urlparse(repo)
    assert parsed.scheme == "https" and parsed.netloc and len(parsed.path.strip("/").split("/")) == 2, repo


def test_classifiers_name_the_os_and_the_gpu_the_registry_knows(project):
    classifiers = project["classifiers"]
    systems = [c[len("Operating System :: "):] for c in classifiers if c.startswith("Operating System :: ")]
    assert systems and all(s.startswith(COMFY_OS_PREFIXES) for s in systems), systems
    accelerators = [c[len("Environment :: "):] for c in classifiers if c.startswith("Environment ::")]
    # one unknown Environment classifier makes comfy-cli and ComfyUI drop them all
    assert accelerators and set(accelerators) <= COMFY_ACCELERATORS, accelerators


def test_dependencies_are_read_from_requirements_txt(project):
    """One list, two readers: pip (pip install -e .) through setuptools, the Manager through requirements.txt."""
    assert "dependencies" not in project, "a static dependency list would drift from requirements.txt"
    assert "dependencies" in project["dynamic"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    expand = pytest.importorskip("setuptools.config.pyprojecttoml")
    resolved = expand.read_configuration(ROOT / "pyproject.toml", expand=True)["project"]
    assert resolved["dependencies"] == requirement_lines()


def test_only_the_core_is_an_installable_package():
    """`pip install -e .` must never install nodes/ as a top-level `nodes`: it would shadow ComfyUI's own nodes.py."""
    setuptools_cfg = pyproject()["tool"]["setuptools"]
    assert setuptools_cfg["packages"] == ["dynamicrafter_core"]
    assert "package-dir" not in setuptools_cfg and "py-modules" not in setuptools_cfg


def test_tool_comfy_has_publisher_display_name_and_icon(comfy, project):
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"]), comfy["PublisherId"]
    assert comfy["DisplayName"].strip()
    icon = comfy["Icon"]
    parsed = urlparse(icon)
    assert parsed.scheme == "https" and parsed.path.lower().endswith(ICON_SUFFIXES), (
        f"Icon must be an https URL of an SVG/PNG/JPG/GIF: {icon!r}")
    owner_repo = urlparse(project["urls"]["Repository"]).path.strip("/")
    raw = f"/{owner_repo}/"
    if parsed.netloc == "raw.githubusercontent.com" and parsed.path.startswith(raw):
        # .../<owner>/<repo>/<branch>/<path>: the file must be in this repository, or the registry shows none
        relative = parsed.path[len(raw):].split("/", 1)[1]
        path = ROOT / relative
        assert path.is_file(), f"Icon points at {relative}, which is not in the repository"
        if path.suffix.lower() != ".svg":
            from PIL import Image

            with Image.open(path) as im:
                assert im.width <= 800 and im.height <= 400, f"registry limit is 800x400; {relative} is {im.size}"


def test_requires_comfyui_is_a_floor_with_its_requirements_as_test_data(comfy):
    spec = comfy["requires-comfyui"]
    assert all(COMFY_VERSION_PART.match(part.strip()) for part in spec.split(",")), (
        f"comfy-cli would drop requires-comfyui {spec!r}")
    floor = requires_comfyui_floor(comfy)
    data = ROOT / "tests" / "data" / "comfyui" / f"requirements-{floor}.txt"
    assert data.is_file(), (f"requires-comfyui names {floor}; the Manager test installs that version's requirements "
                            f"from {data.relative_to(ROOT)}, which is missing")


def test_sources_parse_with_the_oldest_python_allowed(project):
    spec = SpecifierSet(project["requires-python"])
    floors = [Version(s.version) for s in spec if s.operator == ">="]
    assert len(floors) == 1, project["requires-python"]
    feature = (floors[0].major, floors[0].minor)
    assert feature >= (3, 9), "ComfyUI itself needs Python 3.9 or newer"
    for path in all_sources():
        try:
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=feature)
        except SyntaxError as e:
            pytest.fail(f"{path.relative_to(ROOT)} needs a newer Python than requires-python "
                        f"{project['requires-python']}: {e}")


@pytest.mark.comfyui
def test_comfyui_reads_our_pyproject():
    """ComfyUI parses every pack's pyproject.toml at start (nodes.py load_custom_node) and logs 'Unable to parse
    pyproject.toml ...' when it cannot."""
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout (with its requirements installed) to run this")
    pytest.importorskip("pydantic_settings", reason="ComfyUI's requirements are not installed in this environment")
    sys.path.insert(0, comfy_dir)
    try:
        from comfy_config import config_parser
    finally:
        sys.path.remove(comfy_dir)
    config = config_parser.extract_node_configuration(str(ROOT))
    data = pyproject()
    assert config.project.name == data["project"]["name"]
    assert config.project.version == data["project"]["version"]
    assert config.project.supported_comfyui_version == data["tool"]["comfy"]["requires-comfyui"]
    assert config.project.supported_accelerators == ["GPU :: NVIDIA CUDA"]
    assert config.project.supported_os
    assert config.tool_comfy.publisher_id == data["tool"]["comfy"]["PublisherId"]
    assert config.tool_comfy.icon == data["tool"]["comfy"]["Icon"]


@pytest.mark.slow
def test_comfy_node_validate_passes_without_warnings(tmp_path):
    """The registry's own check (`comfy node validate`, comfy-cli from PyPI in a throwaway environment, ~40 s):
    exit 0, no warning about the pyproject, no finding of its ruff security selection."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "cli")], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        pip = subprocess.run([str(tmp_path / "cli" / "bin" / "python"), "-m", "pip", "install", "-q", "comfy-cli",
                              "ruff"], capture_output=True, text=True, env=env, timeout=900)
        assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
        result = subprocess.run([str(tmp_path / "cli" / "bin" / "comfy"), "--skip-prompt", "--no-enable-telemetry",
                                 "node", "validate"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
                                stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(tmp_path / "cli", ignore_errors=True)  # ~0.3 GB
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All validation checks passed" in output, output
    assert "warning" not in output.lower(), output
