"""ComfyUI nodes (filled in by the nodes work)."""
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
