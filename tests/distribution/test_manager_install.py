"""What ComfyUI-Manager (or `comfy node install`) does to a user's existing ComfyUI environment, reproduced.

A user has ComfyUI installed: torch, torchvision (and torchaudio) first, then ComfyUI's requirements.txt. The Manager
clones this pack and runs `pip install -r requirements.txt` in that environment; it never installs the torch family
(torch, torchvision, torchaudio, torchsde) for a custom node. We build that environment in a new virtual environment:

* the torch family is *borrowed* from the test environment, not installed (a CUDA torch is ~5.5 GB): a folder of
  symbolic links to torch, torchvision, torchaudio if present, and everything they depend on (resolved from their
  metadata, extras included), put on the new environment's path by a .pth file. pip sees those packages as installed,
  exactly as in a user's environment. The folder lies outside the new environment, so pip can never remove or
  rewrite anything of the test environment through it.
* ComfyUI's requirements.txt of the oldest version we support (tests/data/comfyui/, see its README) is installed
  with pip, without its torch, torchvision and torchaudio lines (they are the borrowed ones; torchaudio is not
  borrowed when the test environment lacks it: nothing of ours uses it and the install report below would show it
  if any of our dependencies wanted it). torchsde IS installed: it is pure Python, tiny, and part of every ComfyUI
  environment.

Then, as the Manager does, our requirements.txt: first `pip install --dry-run --report` (nothing already present may
change version, nothing of the torch family may be installed), then for real, then `pip check` (problems that were
there before, from ComfyUI's own pins, are told apart from problems we add), then the core is imported and run on
the tiny fixture inside that environment (tests/distribution/smoke_in_host_env.py). The plugin root itself is not
imported here: ComfyUI's way of importing it is tested with the nodes.

Needs the package index (PyPI); about two minutes per ComfyUI version on the 2-core CI machine, most of it pip
installing ComfyUI's requirements.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .shipped import ROOT, requirement_lines

HERE = Path(__file__).parent
COMFY_REQUIREMENTS = sorted((ROOT / "tests" / "data" / "comfyui").glob("requirements-*.txt"))
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchsde"}  # what the Manager never installs for a node
BORROWED = ("torch", "torchvision", "torchaudio")  # from the test environment, with all they depend on

pytestmark = pytest.mark.slow


def dependency_closure(roots) -> dict[str, md.Distribution]:
    """The installed distributions `roots` need, transitively, extras included (torch asks for cuda-toolkit[...])."""
    installed = {}
    for dist in md.distributions():
        installed.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    todo = [(canonicalize_name(r), "") for r in roots if canonicalize_name(r) in installed]
    seen = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for line in installed[name].requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            dep = canonicalize_name(req.name)
            if dep in installed:
                todo += [(dep, "")] + [(dep, e) for e in req.extras]
    return {name: installed[name] for name, _ in seen}


def borrow(dists: dict[str, md.Distribution], folder: Path) -> None:
    """Symbolic links to the top-level files and folders of `dists` (package folders, modules, .dist-info)."""
    folder.mkdir()
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            if not (folder / top).exists():
                (folder / top).symlink_to(base / top)


class Env:
    """A virtual environment driven through its own pip."""

    def __init__(self, path: Path):
        self.path = path
        self.python = path / "bin" / "python"
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1",
                        PYTHONNOUSERSITE="1")
        self.timings: dict[str, float] = {}

    def run(self, *args, check=True, timeout=900, label=None) -> subprocess.CompletedProcess:
        start = time.monotonic()
        result = subprocess.run([str(self.python), *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if label:
            self.timings[label] = self.timings.get(label, 0.0) + time.monotonic() - start
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def pip(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.run("-m", "pip", *args, **kw)

    def versions(self) -> dict[str, str]:
        listing = json.loads(self.pip("list", "--format", "json").stdout)
        return {canonicalize_name(d["name"]): d["version"] for d in listing}

    def problems(self) -> set[str]:
        """`pip check`'s complaints (empty when it is clean)."""
        result = self.pip("check", check=False)
        return set() if result.returncode == 0 else {line for line in result.stdout.splitlines() if line.strip()}


def make_comfyui_env(tmp: Path, comfy_requirements: Path) -> Env:
    """A fresh environment holding what a user of that ComfyUI version has before installing this pack."""
    start = time.monotonic()
    borrowed = dependency_closure(BORROWED)
    assert "torch" in borrowed, "the test environment has no torch to lend"
    borrow(borrowed, tmp / "torch-family")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    env = Env(tmp / "venv")
    site = Path(env.run("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "torch_family_from_the_test_environment.pth").write_text(f"{tmp / 'torch-family'}\n")
    # venv's own setuptools (3.11: 65.x) would shadow the borrowed one that torch requires (>=77)
    own = {canonicalize_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    clashing = sorted((own & set(borrowed)) - {"pip"})
    if clashing:
        env.pip("uninstall", "-y", *clashing)
    env.timings["create venv, borrow torch"] = time.monotonic() - start

    lines = [line for line in requirement_lines(comfy_requirements)
             if canonicalize_name(Requirement(line).name) not in BORROWED]
    (tmp / "comfyui-requirements.txt").write_text("\n".join(lines) + "\n")
    env.pip("install", "-r", str(tmp / "comfyui-requirements.txt"), label="install ComfyUI's requirements")
    return env


@pytest.fixture(scope="module", params=COMFY_REQUIREMENTS, ids=lambda p: p.stem.replace("requirements-", "comfyui-"))
def manager_install(request, tmp_path_factory):
    """A ComfyUI environment into which our requirements.txt was installed as the Manager does, with the record."""
    tmp = tmp_path_factory.mktemp("manager")
    env = make_comfyui_env(tmp, request.param)
    record = {"env": env, "tmp": tmp, "comfyui": request.param.name}
    record["before"] = env.versions()
    record["problems_before"] = env.problems()
    report = tmp / "report.json"
    env.pip("install", "--dry-run", "--report", str(report), "-r", str(ROOT / "requirements.txt"),
            label="dry run")
    record["would_install"] = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                               for item in json.loads(report.read_text())["install"]}
    env.pip("install", "-r", str(ROOT / "requirements.txt"), label="install requirements.txt")
    record["after"] = env.versions()
    record["problems_after"] = env.problems()
    yield record
    print(f"\n{record['comfyui']}: " + ", ".join(f"{k} {v:.0f} s" for k, v in env.timings.items()))
    shutil.rmtree(env.path, ignore_errors=True)  # ~0.7 GB; the symlinked torch family stays untouched


def test_installing_our_requirements_changes_no_installed_package(manager_install):
    before, would = manager_install["before"], manager_install["would_install"]
    changed = {name: f"{before[name]} -> {version}" for name, version in would.items() if name in before}
    assert not changed, (f"pip install -r requirements.txt would change packages of the ComfyUI environment "
                         f"({manager_install['comfyui']}): {changed}")
    torch_family = sorted(set(would) & TORCH_FAMILY)
    assert not torch_family, f"requirements.txt pulls in {torch_family}, which the Manager never installs"
    after = manager_install["after"]
    moved = {name: f"{version} -> {after.get(name, 'removed')}" for name, version in before.items()
             if after.get(name) != version}
    assert not moved, f"the real install changed packages of the ComfyUI environment: {moved}"
    added = sorted(set(after) - set(before))
    assert added == sorted(would), f"installed {added}, but the dry run announced {sorted(would)}"


def test_pip_check_finds_no_problem_we_caused(manager_install):
    new = manager_install["problems_after"] - manager_install["problems_before"]
    assert not new, ("after installing requirements.txt, pip check reports new problems:\n  " + "\n  ".join(sorted(new))
                     + "\n(already there from ComfyUI's own requirements: "
                     + f"{sorted(manager_install['problems_before']) or 'none'})")


def test_the_core_imports_and_runs_in_the_comfyui_environment(manager_install):
    env, tmp = manager_install["env"], manager_install["tmp"]
    work = tmp / "smoke"
    work.mkdir(exist_ok=True)
    result = env.run(str(HERE / "smoke_in_host_env.py"), str(ROOT), str(work), check=False, label="smoke run")
    assert result.returncode == 0 and result.stdout.strip().endswith("host-env smoke: ok"), (
        result.stdout[-4000:] + result.stderr[-4000:])
    # the dependencies must come from what the Manager installed, not from the test environment
    for module in ("open_clip", "kornia", "safetensors", "av"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"import {module} "))
        assert str(env.path) in line, line


def test_the_lowest_versions_requirements_txt_allows_still_work(manager_install):
    """Our lower bounds are claims: install exactly those versions (without their dependencies, which belong to the
    host) and run the same smoke test. Runs last: it leaves the environment at the lower bounds."""
    env, tmp = manager_install["env"], manager_install["tmp"]
    lowest = []
    for line in requirement_lines(ROOT / "requirements.txt"):
        req = Requirement(line)
        floors = [s.version for s in req.specifier if s.operator == ">="]
        if floors:
            lowest.append(f"{req.name}=={floors[0]}")
    assert lowest, "requirements.txt states no lower bound"
    env.pip("install", "--no-deps", *lowest, label="install lower bounds")
    work = tmp / "smoke-lowest"
    work.mkdir(exist_ok=True)
    result = env.run(str(HERE / "smoke_in_host_env.py"), str(ROOT), str(work), check=False, label="smoke run")
    assert result.returncode == 0 and result.stdout.strip().endswith("host-env smoke: ok"), (
        f"with {lowest}:\n" + result.stdout[-4000:] + result.stderr[-4000:])
