"""The README's first two commands are what a new user runs: the standalone install + tests, and the demo. CI runs the
first one exactly (.ci/run), and its runs of pytest, taken together, select every test once: the README's command
runs the default tier (pyproject's addopts leave the `slow` tier out) and .ci/run adds `-m slow`."""
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CI = ROOT / ".ci" / "run"


def readme_commands() -> list:
    """The command lines of the README's first code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```(\w*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert block is not None, "README.md has no code block"
    assert block.group(1) in ("bash", "sh"), f"the README's first code block is {block.group(1)!r}, not the commands"
    return [line for line in block.group(2).splitlines() if line.strip()]


def ci_lines() -> list:
    return [line.strip() for line in CI.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def pytest_runs(line: str) -> list:
    """The arguments of each `python -m pytest` in a shell line (commands split at &&, || and ;)."""
    tokens = shlex.split(line, comments=True)
    runs, command = [], []
    for token in tokens + ["&&"]:
        if token in ("&&", "||", ";"):
            if command[:3] == ["python", "-m", "pytest"]:
                runs.append(command[3:])
            command = []
        else:
            command.append(token)
    return runs


@cache  # each collection is a new process (~2 s)
def _collect(args: tuple) -> frozenset:
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode in (0, 5), result.stdout[-3000:] + result.stderr[-3000:]  # 5: nothing selected
    return frozenset(line for line in result.stdout.splitlines() if "::" in line)


def collect(args) -> frozenset:
    return _collect(tuple(args))


def test_the_readme_opens_with_the_install_and_test_command_then_the_demo():
    first, second = readme_commands()[:2]
    assert first.startswith('python -m pip install -e ".[test]" && ') and pytest_runs(first), first
    assert second.startswith("python -m dynamicrafter_core animate "), second


def test_ci_runs_the_readmes_test_command_exactly():
    first = readme_commands()[0]
    # `|| exit` may follow it: it only stops the script when the command fails
    assert any(line == first or line == first + " || exit" for line in ci_lines()), (
        f".ci/run must run the README's first command line as it is: {first}")


def test_ci_runs_every_test_once():
    runs = [args for line in ci_lines() for args in pytest_runs(line)]
    assert runs, ".ci/run runs no pytest"
    everything = collect(["-m", ""])
    counts = Counter(test for args in runs for test in collect(args))
    missing = sorted(everything - set(counts))
    assert not missing, f".ci/run never runs {len(missing)} tests, e.g. {missing[:3]}"
    assert all(n == 1 for n in counts.values()), "some tests run twice in CI: " + ", ".join(
        t for t, n in counts.items() if n > 1)


def test_the_default_tier_leaves_out_only_the_slow_tier():
    assert collect([]) == collect(["-m", ""]) - collect(["-m", "slow"])


def demo_output(command: str) -> str:
    args = shlex.split(command)
    return args[args.index("-o") + 1]


def test_the_demos_video_is_ignored_by_git():
    """Running the README's demo in the checkout leaves `git status` clean."""
    git = shutil.which("git")
    if git is None or subprocess.run([git, "rev-parse"], cwd=ROOT, capture_output=True, check=False).returncode != 0:
        pytest.skip("not a git checkout")
    output = demo_output(readme_commands()[1])
    assert subprocess.run([git, "check-ignore", "-q", output], cwd=ROOT, check=False).returncode == 0, (
        f"the README's demo writes {output}, which .gitignore does not ignore")


@pytest.mark.slow  # the demo itself: 16 frames, 50 steps (~15-30 s on two cores)
def test_the_readmes_demo_writes_a_playable_16_frame_video(tmp_path):
    from dynamicrafter_core.video_io import read_video

    args = shlex.split(readme_commands()[1])
    args[args.index("-o") + 1] = str(tmp_path / "demo.mp4")  # as written, but not into the checkout
    assert args[:3] == ["python", "-m", "dynamicrafter_core"]
    result = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_video(tmp_path / "demo.mp4").shape[0] == 16
