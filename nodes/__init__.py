"""DynamiCrafter Animate's ComfyUI nodes. Node ids are prefixed and never renamed (saved workflows refer to them);
display names may change."""
from . import host
from .camera import CameraTrajectory
from .context import EncodeImageContext
from .guidance import VisualDetailGuidance
from .loader import Loader, readme
from .long_video import ColourMatch, ContinueVideo
from .native_nodes import (ApplySketch, Conditioning, DDIMSampler, Decode, GuidanceRescale, Guider, NativeModel, Noise,
                           Scheduler)
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
    "DynamiCrafterAnimate_NativeModel": (NativeModel, "DynamiCrafter Model"),
    "DynamiCrafterAnimate_Conditioning": (Conditioning, "DynamiCrafter Conditioning"),
    "DynamiCrafterAnimate_Scheduler": (Scheduler, "DynamiCrafter Scheduler"),
    "DynamiCrafterAnimate_DDIMSampler": (DDIMSampler, "DynamiCrafter DDIM Sampler"),
    "DynamiCrafterAnimate_Guider": (Guider, "DynamiCrafter Guider"),
    "DynamiCrafterAnimate_Noise": (Noise, "DynamiCrafter Noise"),
    "DynamiCrafterAnimate_GuidanceRescale": (GuidanceRescale, "DynamiCrafter Guidance Rescale"),
    "DynamiCrafterAnimate_Decode": (Decode, "DynamiCrafter Decode"),
    "DynamiCrafterAnimate_ApplySketch": (ApplySketch, "Apply Sketch Guidance"),
    "DynamiCrafterAnimate_ContinueVideo": (ContinueVideo, "Continue Video"),
    "DynamiCrafterAnimate_ColourMatch": (ColourMatch, "Colour Match"),
    "DynamiCrafterAnimate_CameraTrajectory": (CameraTrajectory, "Camera Trajectory"),
}
NODE_CLASS_MAPPINGS = {node_id: cls for node_id, (cls, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, (_, name) in NODES.items()}

host.register_model_folder(readme())
