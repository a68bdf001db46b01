"""DynamiCrafter Animate's ComfyUI nodes. Node ids are prefixed and never renamed (saved workflows refer to them);
display names may change."""
from . import host
from .context import EncodeImageContext
from .guidance import VisualDetailGuidance
from .loader import Loader, readme
from .sampler import FrameInterpolate, I2VSampler
from .sketch import SketchEncoderLoader, SketchGuidance

NODES = {
    "DynamiCrafterAnimate_Loader": (Loader, "Load DynamiCrafter"),
    "DynamiCrafterAnimate_EncodeImageContext": (EncodeImageContext, "Encode Image Context"),
    "DynamiCrafterAnimate_VisualDetailGuidance": (VisualDetailGuidance, "Visual Detail Guidance"),
    "DynamiCrafterAnimate_I2VSampler": (I2VSampler, "I2V Sampler"),
    "DynamiCrafterAnimate_FrameInterpolate": (FrameInterpolate, "Frame Interpolate"),
    "DynamiCrafterAnimate_SketchEncoderLoader": (SketchEncoderLoader, "Load Sketch Encoder"),
    "DynamiCrafterAnimate_SketchGuidance": (SketchGuidance, "Sketch Guidance"),
}
NODE_CLASS_MAPPINGS = {node_id: cls for node_id, (cls, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, (_, name) in NODES.items()}

host.register_model_folder(readme())
