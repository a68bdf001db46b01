"""The GPU check's ComfyUI server job (dynamicrafter_core/gpu_check.py) against the nodes it queues."""
from dynamicrafter_core import gpu_check


def test_the_comfyui_job_is_a_prompt_the_pack_accepts(pack, host):
    """Every node of the API prompt gets exactly the required inputs its INPUT_TYPES declares, and every link joins
    an output to an input of the same type: a renamed widget or socket would otherwise fail only on a GPU machine."""
    prompt = gpu_check.api_prompt("model.safetensors", seed=1, steps=50, size=(320, 512))
    ours = {node["class_type"] for node in prompt.values()} & set(pack.NODE_CLASS_MAPPINGS)
    assert ours == {f"DynamiCrafterAnimate_{n}" for n in
                    ("Loader", "VisualDetailGuidance", "EncodeImageContext", "I2VSampler")}
    outputs = {"EmptyImage": ("IMAGE",)}  # ComfyUI's own node
    for node in prompt.values():
        if node["class_type"] in ours:
            cls = pack.NODE_CLASS_MAPPINGS[node["class_type"]]
            outputs[node["class_type"]] = cls.RETURN_TYPES
            declared = cls.INPUT_TYPES()["required"]
            assert set(node["inputs"]) == set(declared), node["class_type"]
    for node in prompt.values():
        declared = (pack.NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES()["required"]
                    if node["class_type"] in ours else {"images": ("IMAGE",)} if node["class_type"] == "SaveImage"
                    else {})
        for name, value in node["inputs"].items():
            if isinstance(value, list):  # a link: [source node id, output index]
                source = prompt[value[0]]["class_type"]
                assert outputs[source][value[1]] == declared[name][0], f"{node['class_type']}.{name}"


def test_the_compiled_comfyui_job_turns_on_i2v_sampler_s_compile_option(pack, host):
    """gpu_check --parts options --comfyui queues the job again with I2V Sampler's compile option: an input the node
    declares, of the type given."""
    prompt = gpu_check.api_prompt("model.safetensors", seed=3, steps=50, size=(320, 512), compile=True)
    sampler = next(node for node in prompt.values() if node["class_type"] == "DynamiCrafterAnimate_I2VSampler")
    declared = pack.NODE_CLASS_MAPPINGS["DynamiCrafterAnimate_I2VSampler"].INPUT_TYPES()
    assert sampler["inputs"]["compile"] is True and declared["optional"]["compile"][0] == "BOOLEAN"
    eager = gpu_check.api_prompt("model.safetensors", seed=3, steps=50, size=(320, 512))
    assert "compile" not in next(node for node in eager.values()
                                 if node["class_type"] == "DynamiCrafterAnimate_I2VSampler")["inputs"]
