"""The node contract ComfyUI relies on: how the pack imports, what /object_info will show, the model folder."""
import inspect
import sys
import types

import pytest

from .fake_host import HOST_FUNCTIONS
from .helpers import ROOT

DISPLAY_NAMES = {"Load DynamiCrafter", "Encode Image Context", "Visual Detail Guidance", "I2V Sampler",
                 "Frame Interpolate", "Load Sketch Encoder", "Sketch Guidance", "DynamiCrafter Model",
                 "DynamiCrafter Conditioning", "DynamiCrafter Scheduler", "DynamiCrafter DDIM Sampler",
                 "DynamiCrafter Guider", "DynamiCrafter Noise", "DynamiCrafter Guidance Rescale",
                 "DynamiCrafter Decode", "Apply Sketch Guidance", "Continue Video", "Colour Match",
                 "Camera Trajectory"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def test_the_pack_imports_by_file_path_under_a_name_that_is_not_its_folder(pack):
    assert pack.__name__ == str(ROOT) != ROOT.name
    assert pack.nodes.loader.__name__ == f"{ROOT}.nodes.loader"  # relative imports resolved under that name
    assert pack.nodes.loader.load_model.__module__ == f"{ROOT}.dynamicrafter_core.checkpoint"
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS.values()) == DISPLAY_NAMES
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    assert all(node_id.startswith("DynamiCrafterAnimate_") for node_id in pack.NODE_CLASS_MAPPINGS)


def test_no_module_outside_the_host_bridges_imports_comfyui():
    for path in (ROOT / "nodes").glob("*.py"):
        if path.name in ("host.py", "native.py", "comfy_model.py"):  # the modules that touch ComfyUI
            continue
        source = path.read_text()
        for name in ("comfy", "folder_paths", "server", "latent_preview", "execution"):
            assert f"import {name}" not in source and f"from {name}" not in source, f"{path.name} imports {name}"
    core = "\n".join(p.read_text() for p in (ROOT / "dynamicrafter_core").glob("*.py"))
    assert "import comfy" not in core and "folder_paths" not in core


def test_the_fake_host_stands_in_for_every_host_function(pack):
    host = pack.nodes.host
    defined = {name for name, value in vars(host).items()
               if inspect.isfunction(value) and value.__module__ == host.__name__ and not name.startswith("_")}
    comfyui_objects = {"encode_text_with_clip", "encode_image_with_clip_vision"}  # method calls only, run for real
    assert defined - comfyui_objects == set(HOST_FUNCTIONS)


def entries(cls):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            yield section, name, entry


@pytest.mark.parametrize("node_id", ["DynamiCrafterAnimate_Loader", "DynamiCrafterAnimate_EncodeImageContext",
                                     "DynamiCrafterAnimate_VisualDetailGuidance", "DynamiCrafterAnimate_I2VSampler",
                                     "DynamiCrafterAnimate_FrameInterpolate"])
def test_inputs_are_well_formed(pack, host, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    for section, name, (kind, options) in entries(cls):
        assert options.get("tooltip"), f"{name} has no tooltip"
        if isinstance(kind, list):
            assert kind, f"{name}: empty combo"
            assert options.get("default", kind[0]) in kind
        elif kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], name
            if "step" in options and kind == "INT":
                assert (options["default"] - options["min"]) % options["step"] == 0, name
        elif kind in WIDGET_TYPES:
            assert "default" in options, name
        else:
            assert kind.isupper(), f"{name}: socket type {kind!r}"
    seed = cls.INPUT_TYPES()["required"].get("seed")
    if seed:
        assert seed[1]["control_after_generate"] is True and seed[1]["max"] == 0xffffffffffffffff


@pytest.mark.parametrize("node_id", ["DynamiCrafterAnimate_Loader", "DynamiCrafterAnimate_EncodeImageContext",
                                     "DynamiCrafterAnimate_VisualDetailGuidance", "DynamiCrafterAnimate_I2VSampler",
                                     "DynamiCrafterAnimate_FrameInterpolate"])
def test_the_function_takes_the_inputs_as_comfyui_passes_them(pack, host, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    spec = cls.INPUT_TYPES()
    for name in spec["required"]:
        assert name in params and params[name].default is inspect.Parameter.empty, name
    for name in list(spec.get("optional", {})) + list(spec.get("hidden", {})):
        assert name in params and params[name].default is None, f"{name} must default to None (sent only if set)"
    assert set(params) - {"self"} == set(spec["required"]) | set(spec.get("optional", {})) | set(spec.get("hidden", {}))
    assert isinstance(cls.RETURN_TYPES, tuple)
    assert len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert cls.DESCRIPTION and cls.CATEGORY.split("/")[-1] in ("video_models",)


@pytest.fixture
def fake_folder_paths(tmp_path, monkeypatch):
    """ComfyUI's folder_paths as extra_model_paths.yaml leaves it before packs load: a `dynamicrafter:` entry made by
    add_model_folder_path, i.e. with an empty extension set."""
    module = types.ModuleType("folder_paths")
    module.models_dir = str(tmp_path / "models")
    module.supported_pt_extensions = {".ckpt", ".safetensors", ".pt"}
    module.folder_names_and_paths = {"dynamicrafter": (["/yaml/first", "/yaml/second"], set())}
    monkeypatch.setitem(sys.modules, "folder_paths", module)
    return module


def test_the_model_folder_keeps_extra_model_paths_and_gets_a_readme(pack, fake_folder_paths):
    host = pack.nodes.host
    paths_object = fake_folder_paths.folder_names_and_paths["dynamicrafter"][0]
    default = host.register_model_folder(pack.nodes.loader.readme())
    paths, extensions = fake_folder_paths.folder_names_and_paths["dynamicrafter"]
    assert paths == ["/yaml/first", "/yaml/second", default] and paths is paths_object
    assert extensions == {".ckpt", ".safetensors", ".pt"}  # checkpoints only: no README.txt, no sidecar configs
    readme = (fake_folder_paths.models_dir + "/dynamicrafter/README.txt")
    text = open(readme).read()
    from dynamicrafter_core.weights import RELEASED
    for released in RELEASED.values():
        assert released.filename in text and released.url in text
    open(readme, "w").write("edited by the user")
    host.register_model_folder("new text")  # a second start leaves the user's file alone and the paths as they were
    assert open(readme).read() == "edited by the user"
    assert fake_folder_paths.folder_names_and_paths["dynamicrafter"][0] == ["/yaml/first", "/yaml/second", default]


def test_a_fresh_install_gets_the_folder(pack, fake_folder_paths):
    del fake_folder_paths.folder_names_and_paths["dynamicrafter"]
    default = pack.nodes.host.register_model_folder("readme")
    assert fake_folder_paths.folder_names_and_paths["dynamicrafter"] == ([default], {".ckpt", ".safetensors", ".pt"})
    assert default.endswith("models/dynamicrafter")
