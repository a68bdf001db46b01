"""The README's "Models" table is the one list users (and these tests) go by: it agrees with the checkpoints the core
knows (dynamicrafter_core.weights.RELEASED), and every model a shipped workflow asks for is in it, under the same
name, link and folder, so ComfyUI's missing-models dialog and the README send users to the same file."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest

from dynamicrafter_core.weights import RELEASED

from .shipped import ROOT, WORKFLOW_DIRS

MODEL_SUFFIXES = (".ckpt", ".safetensors", ".sft", ".pt", ".pth", ".bin")
COLUMNS = {"file": ("file",), "size": ("size",), "resolution": ("resolution",), "purpose": ("purpose",),
           "link": ("link", "download", "url"), "folder": ("folder", "where", "directory")}


@dataclass(frozen=True)
class Row:
    file: str
    size: str
    resolution: str
    purpose: str
    link: str
    folder: str


def _cell_text(cell: str) -> str:
    code = re.search(r"`([^`]+)`", cell)
    return code.group(1).strip() if code else re.sub(r"\*+", "", cell).strip().strip("_").strip()


def _cell_link(cell: str) -> str:
    found = re.search(r"\]\((https?://[^)\s]+)\)", cell) or re.search(r"<?(https?://[^\s>|)]+)", cell)
    return found.group(1) if found else ""


def readme_models() -> dict[str, Row]:
    """file name -> row, from every table in the README section headed "Models"."""
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.fail("README.md is missing: it must have a '## Models' section with a table of model files "
                    "(columns: file, size, resolution, purpose, link, folder)")
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"#{1,6}\s+Models\b", line, re.I)), None)
    if start is None:
        pytest.fail("README.md has no 'Models' section (a heading '## Models' followed by the table of model files)")
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    section = []
    for line in lines[start + 1:]:
        heading = re.match(r"(#{1,6})\s", line)
        if heading and len(heading.group(1)) <= level:
            break
        section.append(line)
    rows: dict[str, Row] = {}
    columns = None
    for line in section:
        if not line.lstrip().startswith("|"):
            columns = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if columns is None:
            header = [c.lower() for c in cells]
            columns = {key: next((i for i, h in enumerate(header) if any(w in h for w in words)), None)
                       for key, words in COLUMNS.items()}
            missing = [key for key, i in columns.items() if i is None]
            assert not missing, f"the Models table's header {cells} lacks columns for {missing}"
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the |---|---| line
        get = {key: cells[i] if i < len(cells) else "" for key, i in columns.items()}
        row = Row(file=_cell_text(get["file"]), size=_cell_text(get["size"]),
                  resolution=_cell_text(get["resolution"]), purpose=_cell_text(get["purpose"]),
                  link=_cell_link(get["link"]), folder=_cell_text(get["folder"]))
        rows[row.file] = row
    if not rows:
        pytest.fail("README.md's Models section has no table rows")
    return rows


def workflow_files() -> list:
    files = []
    for folder in WORKFLOW_DIRS:
        for path in sorted((ROOT / folder).glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("nodes"), list):  # not index.json
                files.append((path, data))
    return files


def all_nodes(workflow: dict) -> list[dict]:
    nodes = list(workflow.get("nodes", []))
    for subgraph in (workflow.get("definitions") or {}).get("subgraphs", []):
        nodes += subgraph.get("nodes", [])
    return nodes


def widget_strings(node: dict) -> list[str]:
    values = node.get("widgets_values") or []
    values = values.values() if isinstance(values, dict) else values
    return [v for v in values if isinstance(v, str)]


def test_the_models_table_lists_every_released_checkpoint():
    rows = readme_models()
    for info in RELEASED.values():
        row = rows.get(info.filename)
        assert row is not None, f"README's Models table has no row for {info.filename}"
        assert row.link == info.url, f"{info.filename}: README links {row.link}, the core downloads {info.url}"
        assert row.size == info.size and row.resolution == info.resolution, (row, info)
        assert row.folder.rstrip("/").endswith("models/dynamicrafter"), row
        assert row.purpose, row


def test_every_workflow_model_is_in_the_readme_table():
    workflows = workflow_files()
    if not workflows:
        pytest.skip(f"no workflow files yet in any of {', '.join(d + '/' for d in WORKFLOW_DIRS)}")
    rows = readme_models()
    problems = []
    for path, workflow in workflows:
        name = path.relative_to(ROOT)
        for node in all_nodes(workflow):
            where = f"{name} node {node.get('id')} ({node.get('type')})"
            models = (node.get("properties") or {}).get("models") or []
            for model in models:
                row = rows.get(model.get("name"))
                if row is None:
                    problems.append(f"{where}: properties.models names {model.get('name')!r}, not in README's table")
                    continue
                if model.get("url") != row.link:
                    problems.append(f"{where}: {row.file} url {model.get('url')!r}, README says {row.link!r}")
                if model.get("directory") != row.folder.rstrip("/").split("/")[-1]:
                    problems.append(f"{where}: {row.file} directory {model.get('directory')!r}, README says "
                                    f"{row.folder!r}")
            # a model file in a widget that properties.models does not describe gets no download offer
            named = {m.get("name") for m in models}
            for value in widget_strings(node):
                if value.lower().endswith(MODEL_SUFFIXES) and value not in named:
                    problems.append(f"{where}: widget value {value!r} has no properties.models entry")
    assert not problems, "\n".join(problems)
