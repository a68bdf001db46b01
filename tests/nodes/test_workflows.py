"""The shipped workflows (workflows/*.json, UI format): node types, widget values, links, model downloads,
thumbnails. The real-host tier (test_comfyui_host.py) also runs each one through ComfyUI's frontend."""
import json

import pytest

from dynamicrafter_core.weights import RELEASED

from .helpers import ROOT

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CORE_NODES = {"LoadImage", "ImageBatch", "SaveAnimatedWEBP", "SaveAnimatedPNG", "CreateVideo", "SaveVideo",
              "UpscaleModelLoader", "ImageUpscaleWithModel", "ImageScaleBy", "ImageScale", "MarkdownNote", "Note",
              # the native-MODEL workflows
              "PrimitiveInt", "SamplerCustomAdvanced", "KSampler", "LoraLoaderModelOnly", "FreeU_V2", "LoadVideo",
              "GetVideoComponents", "ImageFromBatch", "Canny", "PreviewImage", "ControlNetLoader",
              "ControlNetApplyAdvanced", "ContextWindowsManual"}
RELEASED_NAMES = {f.filename: f.url for f in RELEASED.values()}


def widget_names(spec: dict) -> list:
    """The widgets_values slots of a node, in order: one per widget input, plus the control value after a seed."""
    names = []
    for section in ("required", "optional"):
        for name, (kind, options) in spec.get(section, {}).items():
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                names.append(name)
                if options.get("control_after_generate"):
                    names.append(f"{name}:control")
    return names


def test_there_are_the_promised_workflows():
    names = {p.stem for p in WORKFLOWS}
    assert {"dynamicrafter_image_to_video", "dynamicrafter_interpolation", "dynamicrafter_loop",
            "dynamicrafter_image_to_video_upscale_2x", "dynamicrafter_keyframes", "dynamicrafter_long_video",
            "tooncrafter_interpolation", "tooncrafter_sketch_interpolation"} <= names
    # ComfyUI lists every *.json in the folder as a template and shows <name>.jpg as its picture
    assert all(p.with_suffix(".jpg").is_file() for p in WORKFLOWS)
    assert {p.stem for p in (ROOT / "workflows").glob("*.jpg")} == names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_consistent(pack, host, path):
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] >= max(nodes)
    ours = pack.NODE_CLASS_MAPPINGS
    for node in wf["nodes"]:
        assert node["type"] in ours or node["type"] in CORE_NODES, node["type"]
        if node["type"] in ours:
            spec = ours[node["type"]].INPUT_TYPES()
            names = widget_names(spec)
            values = node["widgets_values"]
            assert len(values) == len(names), (node["type"], names, values)
            for name, value in zip(names, values):
                if name.endswith(":control"):
                    assert value in ("fixed", "increment", "decrement", "randomize")
                    continue
                kind, options = {**spec["required"], **spec.get("optional", {})}[name]
                if kind == "INT" or kind == "FLOAT":
                    assert options["min"] <= value <= options["max"], (name, value)
                elif isinstance(kind, list) and name not in ("ckpt_name", "sketch_encoder_name"):  # the user's files
                    assert value in kind, (name, value)
    links = {link[0]: link for link in wf["links"]}
    assert len(links) == len(wf["links"]) and wf["last_link_id"] >= max(links)
    for link_id, origin, origin_slot, target, target_slot, kind in wf["links"]:
        output = nodes[origin]["outputs"][origin_slot]
        socket = nodes[target]["inputs"][target_slot]
        assert link_id in output["links"] and socket["link"] == link_id
        assert output["type"] == socket["type"] == kind
        if nodes[target]["type"] in ours:  # our sockets have the type the node declares
            spec = ours[nodes[target]["type"]].INPUT_TYPES()
            assert {**spec["required"], **spec.get("optional", {})}[socket["name"]][0] == kind
    for node in wf["nodes"]:  # no dangling ends
        for socket in node.get("inputs", []):
            assert socket["link"] is None or socket["link"] in links
        for output in node.get("outputs", []):
            assert all(link in links for link in output["links"] or [])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_loaders_name_the_released_files_and_offer_their_download(path):
    wf = json.loads(path.read_text())
    loaders = [n for n in wf["nodes"] if n["type"] == "DynamiCrafterAnimate_Loader"]
    assert len(loaders) == 1
    name = loaders[0]["widgets_values"][0]
    assert name in RELEASED_NAMES
    assert loaders[0]["properties"]["models"] == [{"name": name, "url": RELEASED_NAMES[name],
                                                  "directory": "dynamicrafter"}]
    interpolating = any(n["type"] == "DynamiCrafterAnimate_FrameInterpolate" or
                        n["type"] == "DynamiCrafterAnimate_VisualDetailGuidance" and n["widgets_values"][0] != "i2v"
                        for n in wf["nodes"])
    assert (name in ("dynamicrafter_512_interp_v1.ckpt", "tooncrafter_512_interp_v1.ckpt")) == interpolating
    for node in wf["nodes"]:
        for model in node["properties"].get("models", []):
            assert model["name"] in node["widgets_values"] and model["url"].startswith("https://")
