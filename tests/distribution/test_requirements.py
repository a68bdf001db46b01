"""requirements.txt: what the Manager pip-installs into a user's ComfyUI environment.

Loose lower bounds, nothing of the torch family, nothing the code does not import, and everything it does import.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import sys

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .shipped import ROOT, pyproject, requirement_lines, runtime_sources

TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchsde"}
# heavy packages peers pulled in that the core has no use for (COMFYUI_HOST.md §6.2)
NEVER = {"pytorch-lightning", "lightning", "omegaconf", "xformers", "accelerate", "einops", "transformers",
         "diffusers", "timm", "flash-attn", "triton", "opencv-python", "decord", "imageio", "moviepy"}
# modules the host provides: ComfyUI's own (importable inside ComfyUI) and the torch family
HOST_MODULES = {"comfy", "comfy_extras", "comfy_api", "comfy_api_nodes", "comfy_execution", "comfy_config",
                "folder_paths", "latent_preview", "server", "nodes", "node_helpers", "execution", "comfyui_version",
                "torch", "torchvision", "torchaudio", "torchsde"}
OWN_PACKAGES = {"dynamicrafter_core"}


def requirements() -> list[Requirement]:
    reqs = []
    for line in requirement_lines():
        assert not line.startswith("-"), f"{line!r}: pip options break the Manager's line-by-line install"
        try:
            reqs.append(Requirement(line))
        except InvalidRequirement as e:
            pytest.fail(f"{line!r} is not a PEP 508 requirement: {e}")
    return reqs


def comfyui_floor_requirements() -> dict[str, Requirement]:
    floor = pyproject()["tool"]["comfy"]["requires-comfyui"].split(">=")[1].split(",")[0].strip()
    path = ROOT / "tests" / "data" / "comfyui" / f"requirements-{floor}.txt"
    return {canonicalize_name(r.name): r for r in map(Requirement, requirement_lines(path))}


def test_requirements_are_plain_named_packages():
    for req in requirements():
        assert req.url is None, f"{req}: a URL requirement (git+, https) cannot come from the package index"
        assert not req.extras, f"{req}: extras pull in more than the core uses"
        assert req.marker is None, f"{req}: the Manager installs each line as it is; keep requirements unconditional"


def test_no_torch_family_and_no_heavy_extras():
    names = {canonicalize_name(r.name) for r in requirements()}
    assert not names & TORCH_FAMILY, "torch/torchvision/torchaudio/torchsde belong to the ComfyUI environment"
    assert not names & NEVER, f"{sorted(names & NEVER)}: the core does not use them"


def test_only_lower_bounds():
    for req in requirements():
        operators = {s.operator for s in req.specifier}
        assert operators <= {">="}, f"{req}: only '>=' bounds (a pin or a cap fights the user's ComfyUI environment)"
        assert len(req.specifier) <= 1, str(req)


def test_no_lower_bound_is_above_comfyuis_own():
    """For a package ComfyUI also requires, asking for more than ComfyUI does would upgrade it in an older ComfyUI
    environment (the fresh environment of the Manager test cannot show that: it has the newest versions)."""
    comfy = comfyui_floor_requirements()
    for req in requirements():
        theirs = comfy.get(canonicalize_name(req.name))
        if theirs is None:
            continue
        ours = [Version(s.version) for s in req.specifier]
        their_floor = [Version(s.version) for s in theirs.specifier if s.operator in (">=", "==", "~=")]
        if ours:
            assert their_floor and ours[0] <= their_floor[0], (
                f"{req}: ComfyUI only guarantees {theirs}; a higher floor would change the user's {req.name}")


def _imports(path) -> list[tuple[str, bool]]:
    """(top-level module, optional) for every absolute import; optional = inside a try that catches ImportError."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []

    def visit(node, optional):
        if isinstance(node, ast.Try):
            caught = set()
            for handler in node.handlers:
                for t in ([handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts):
                    caught.add(getattr(t, "id", None) if t is not None else "BaseException")
            guarded = optional or bool(caught & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
            for child in node.body:
                visit(child, guarded)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, optional)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], optional))
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(tree, False)
    return found


def _distribution_modules() -> dict[str, set[str]]:
    """Requirement (canonical name) -> the top-level modules its installed distribution provides."""
    by_dist: dict[str, set[str]] = {}
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(canonicalize_name(dist), set()).add(module)
    modules = {}
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in by_dist, f"{req.name} is not installed in the test environment: pip install -e '.[test]'"
        modules[name] = by_dist[name]
    return modules


def test_every_import_of_the_runtime_code_is_provided():
    """A third-party import missing from requirements.txt is an IMPORT FAILED (or a failed run) for every user."""
    provided = set().union(*_distribution_modules().values())
    missing, own = [], []
    for path in runtime_sources():
        for module, optional in _imports(path):
            where = f"{path.relative_to(ROOT)}: import {module}"
            if module in OWN_PACKAGES:
                own.append(where)
            elif not optional and module not in sys.stdlib_module_names and module not in HOST_MODULES | provided:
                missing.append(where)
    assert not own, ("ComfyUI imports the pack under a name of its own; import the core relatively "
                     f"(from ..dynamicrafter_core import ...): {own}")
    assert not missing, f"imported but not in requirements.txt: {missing}"


def test_every_requirement_is_imported_by_the_runtime_code():
    imported = {module for path in runtime_sources() for module, _ in _imports(path)}
    unused = sorted(name for name, modules in _distribution_modules().items() if not modules & imported)
    assert not unused, f"requirements.txt lists {unused}, which no runtime code imports"
