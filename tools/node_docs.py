"""Write each node's help page, js/docs/<node id>.md, from the node's own definition.

    python tools/node_docs.py          # -> js/docs/*.md

ComfyUI's frontend shows a custom node's help in the node library by fetching
/extensions/<pack folder>/docs/<node id>.md (or docs/<node id>/<locale>.md first) from the pack's
WEB_DIRECTORY (./js here). A page is made of the node's DESCRIPTION, its inputs with their
tooltips, defaults and ranges, and its outputs with OUTPUT_TOOLTIPS: edit those in nodes/, then
rerun this. tests/unit/test_docs.py fails when a committed page differs from what this writes.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.build_workflows import load_pack  # noqa: E402

DOCS = ROOT / "js" / "docs"


def cell(text) -> str:
    """One markdown table cell: no line breaks; pipes and angle brackets escaped (a tooltip's
    `<name>` is text, not an HTML tag)."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")


def describe_input(kind, opts: dict) -> tuple[str, str]:
    """(type, default) as the page shows them. A choice without a default is a list found when
    ComfyUI lists the node (model folders, trajectory files): the page names it, not its items."""
    if isinstance(kind, list):
        if "default" not in opts:
            return "choice (listed from your folders)", ""
        return "one of " + ", ".join(f"`{o}`" for o in kind), f"`{opts['default']}`"
    bounds = [f"{k} {opts[k]}" for k in ("min", "max", "step") if k in opts]
    kind = kind + (f" ({', '.join(bounds)})" if bounds else "")
    default = opts.get("default")
    return kind, "" if default is None else f"`{default}`" if default != "" else "(empty)"


def render(node_id: str, cls, display_name: str) -> str:
    lines = [f"# {display_name}", "", f"Node id `{node_id}`, category `{cls.CATEGORY}`.", "",
             cell(cls.DESCRIPTION), "", "## Inputs", "", "| input | type | default | what it does |",
             "|---|---|---|---|"]
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, (kind, *rest) in spec.get(section, {}).items():
            opts = rest[0] if rest else {}
            shown, default = describe_input(kind, opts)
            label = f"`{name}`" + (" (optional)" if section == "optional" else "")
            lines.append(f"| {label} | {cell(shown)} | {default} | {cell(opts.get('tooltip', ''))} |")
    lines += ["", "## Outputs", ""]
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    if cls.RETURN_TYPES:
        tips = getattr(cls, "OUTPUT_TOOLTIPS", None) or [""] * len(names)
        lines += ["| output | type | what it is |", "|---|---|---|"]
        lines += [f"| `{n}` | {t} | {cell(tip)} |" for n, t, tip in zip(names, cls.RETURN_TYPES, tips)]
    else:
        lines.append("None: an output node, it writes its result to disk and shows it on the node.")
    lines += ["", "*Generated from the node's definition by tools/node_docs.py.*", ""]
    return "\n".join(lines)


def pages(pack) -> dict[str, str]:
    names = pack.NODE_DISPLAY_NAME_MAPPINGS
    return {f"{key}.md": render(key, cls, names[key]) for key, cls in pack.NODE_CLASS_MAPPINGS.items()}


def main() -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    wanted = pages(load_pack())
    for stale in {p.name for p in DOCS.glob("*.md")} - set(wanted):
        (DOCS / stale).unlink()
    for name, text in wanted.items():
        (DOCS / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(wanted)} pages to {DOCS.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
