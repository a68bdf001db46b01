"""The Comfy Registry's standards: no eval/exec, no pip at run time, nothing obfuscated.

`comfy node publish` runs `ruff check . --select S102,S307,E702` on the pack (exec, eval, several statements on one
line); the registry also scans every published version. The AST checks below cover what ruff's selection does not.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from .shipped import ROOT, runtime_sources

SELECTION = "S102,S307,E702"
PROCESS_CALLS = {("subprocess", f) for f in ("run", "call", "check_call", "check_output", "Popen", "getoutput",
                                              "getstatusoutput")}
PROCESS_CALLS |= {("os", f) for f in ("system", "popen", "execv", "execvp", "execl", "execlp", "spawnv", "spawnl",
                                      "posix_spawn", "posix_spawnp")}
PIP_WORDS = re.compile(r"(^|[\s/\\])(pip3?|ensurepip|uv|conda)($|[\s.])|pip install|install_requirements")
DYNAMIC_CODE = {"exec", "eval", "compile", "__import__"}
OBFUSCATION_MODULES = {"marshal", "pickletools"}


def ruff(*args, stdin=None) -> subprocess.CompletedProcess:
    try:
        import ruff  # noqa: F401
    except ImportError:
        pytest.fail("ruff is missing from the test environment: pip install -e '.[test]'")
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=300)


def test_ruff_security_selection_is_clean():
    result = ruff("check", ".", "--no-cache", "--select", SELECTION, "--output-format", "concise")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_selection_catches_what_it_should():
    """The same command flags exec, eval and `a; b` (guards against a config that silences them)."""
    bad = "x = 1; y = 2\nexec('x')\neval('y')\n"
    result = ruff("check", "--no-cache", "--select", SELECTION, "--output-format", "concise",
                  "--stdin-filename", "nodes/_probe.py", "-", stdin=bad)
    assert result.returncode == 1
    for code in SELECTION.split(","):
        assert code in result.stdout, result.stdout


def _call_name(func) -> tuple[str, str] | str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id, func.attr
    return None


def _strings(node) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_package_installation_at_run_time():
    findings = []
    for path in runtime_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n.split(".")[0] in ("pip", "ensurepip") for n in names):
                    findings.append(f"{where}: imports pip")
            elif isinstance(node, ast.Call) and _call_name(node.func) in PROCESS_CALLS:
                if any(PIP_WORDS.search(s) for s in _strings(node)):
                    findings.append(f"{where}: runs a package installer")
    assert not findings, findings


def test_nothing_runs_code_built_at_run_time():
    """exec/eval anywhere are ruff's (above); here: no compile(), __import__() or marshal in what ComfyUI runs."""
    findings = []
    for path in runtime_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and _call_name(node.func) in DYNAMIC_CODE:
                findings.append(f"{where}: {_call_name(node.func)}()")
            elif isinstance(node, ast.Call) and _call_name(node.func) in {("builtins", n) for n in DYNAMIC_CODE}:
                findings.append(f"{where}: builtins.{node.func.attr}()")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n.split(".")[0] in OBFUSCATION_MODULES for n in names):
                    findings.append(f"{where}: imports {names}")
    assert not findings, findings
