"""Exact video inversion and editing for ComfyUI (CogVideoX, Stable Video Diffusion).

Importable under any folder name: everything below is a relative import."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
