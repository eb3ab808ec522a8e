"""The layering the design rests on (docs/design.md, "Layers"), checked on the source: a model family
is one module behind one interface, so no module of one family imports another family's, shared code
imports no family module for plumbing, and nothing outside the registry compares family names."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("cogvideox", "svd")
# shared modules allowed to import a family module: the registry, null-text inversion (it optimises
# CogVideoX's text embeddings and says so), and the definition of the bundled fixtures (one per family)
ALLOWED = {"vidinv/families.py": FAMILIES, "vidinv/nulltext.py": ("cogvideox",), "vidinv/fixture.py": FAMILIES}


def sources():
    for p in sorted([*ROOT.glob("vidinv/**/*.py"), *ROOT.glob("nodes/*.py")]):
        yield p.relative_to(ROOT).as_posix(), ast.parse(p.read_text())


def family_of_module(path: str) -> str | None:
    """The family a module belongs to by its name (models/svd_attention.py: svd; nodes/svd_nodes.py: svd)."""
    stem = Path(path).stem
    return next((f for f in FAMILIES if stem == f or stem.startswith(f + "_")), None)


def imported(tree) -> set[str]:
    """Module stems this module imports from the pack (relative imports), by name."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            out.update((node.module or "").split("."))
            out.update(a.name for a in node.names)
    return out


def test_no_family_imports_another_and_shared_code_imports_no_family():
    wrong = []
    for path, tree in sources():
        own = family_of_module(path)
        for stem in imported(tree):
            other = family_of_module(stem + ".py")
            if other is None or other == own or other in ALLOWED.get(path, ()):
                continue
            if own is None and path.startswith("nodes/") and path != "nodes/__init__.py":
                wrong.append((path, stem))  # a shared node module reaching for a family
            elif own is not None or path.startswith("vidinv/"):
                wrong.append((path, stem))
    assert not wrong, f"imports across the family interface: {wrong}"


def test_no_family_name_is_compared_outside_the_registry():
    compared = []
    for path, tree in sources():
        if path == "vidinv/families.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if any(n in FAMILIES for n in names):
                    compared.append((path, node.lineno))
    assert not compared, f"family names compared (ask families.of(...) instead): {compared}"


def test_the_checks_see_the_modules_they_guard():
    """The two checks above are not vacuous: the family modules and the registry are where they look."""
    paths = {p for p, _ in sources()}
    assert {"vidinv/models/cogvideox.py", "vidinv/models/svd.py", "vidinv/families.py",
            "nodes/svd_nodes.py", "nodes/pipeline_nodes.py"} <= paths
    assert family_of_module("vidinv/models/svd_attention.py") == "svd"
    assert "cogvideox" in imported(dict(sources())["vidinv/families.py"])
