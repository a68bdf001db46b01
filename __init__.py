"""DynamiCrafter Animate: ComfyUI custom nodes. ComfyUI imports this folder by file path under a name of its own,
so everything here is imported relatively."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
