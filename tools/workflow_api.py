"""Convert a ComfyUI workflow in UI format (what the editor saves: nodes, links,
widgets_values) into the API format that ``POST /prompt`` takes, using the server's own
``/object_info`` for each node's input order. The server has no converter of its own.

Rules the editor follows and this mirrors:
- widget values are stored in input order (required, then optional), skipping socket-only
  inputs; an INT widget with "control after generate" (seeds) stores one extra value, and a
  file combo with an upload button (LoadImage, LoadVideo) stores one extra value;
- a widget input fed by a link takes the link, its stored value is skipped;
- notes, reroutes, muted (mode 2) and bypassed (mode 4) nodes are not sent; a bypassed node
  passes its input of the same type through.
"""
from __future__ import annotations

SOCKET_ONLY = object()
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_KEYS = ("image_upload", "video_upload", "audio_upload", "upload")


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _extra_values(name: str, spec) -> int:
    """Values the editor stores after this widget's own value."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if spec[0] == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
        return 1
    if any(opts.get(k) for k in UPLOAD_KEYS):
        return 1
    return 0


def convert(workflow: dict, object_info: dict) -> dict:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links", [])}  # id, src, src_slot, dst, dst_slot, type

    def source(link_id):
        """(node id, slot) feeding a link, looking through reroutes and bypassed nodes."""
        _, src, slot, _, _, kind = links[link_id]
        node = nodes[src]
        if node["type"] == "Reroute" or node.get("mode") == 4:
            for inp in node.get("inputs", []):
                if inp.get("link") is not None and (node["type"] == "Reroute" or inp["type"] == kind):
                    return source(inp["link"])
            return None
        return str(src), slot

    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL or node.get("mode", 0) in (2, 4):
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node type {node['type']!r} (node {node['id']}) is not installed on this server")
        linked = {inp["name"]: inp["link"] for inp in node.get("inputs", []) if inp.get("link") is not None}
        stored = node.get("widgets_values") or []
        values = list(stored) if isinstance(stored, list) else []
        inputs: dict = {}
        pos = 0
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if _is_widget(spec):
                    if isinstance(stored, dict):  # some packs store widgets by name
                        if name in stored and name not in linked:
                            inputs[name] = stored[name]
                    elif pos < len(values) and name not in linked:
                        inputs[name] = values[pos]
                    pos += 1 + _extra_values(name, spec)
                if name in linked:
                    src = source(linked[name])
                    if src is not None:
                        inputs[name] = [src[0], src[1]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt
