"""The documents the code points at exist and say what the code says: every "DESIGN fact N"
cited anywhere in the pack is a fact of docs/design.md."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"DESIGN facts? (\d+)(?:\s*[–-]\s*(\d+))?")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".js", ".sh", ".toml", ".txt")) and (ROOT / n).is_file()]


def cited_facts() -> dict[int, list[str]]:
    cited: dict[int, list[str]] = {}
    for path in tracked_text_files():
        for m in CITATION.finditer(path.read_text(encoding="utf-8")):
            first, last = int(m[1]), int(m[2] or m[1])
            for n in range(first, last + 1):
                cited.setdefault(n, []).append(str(path.relative_to(ROOT)))
    return cited


def design_facts() -> dict[int, str]:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    return {int(n): title for n, title in re.findall(r"^### Fact (\d+): (.+)$", text, re.M)}


def test_every_cited_design_fact_exists():
    cited, facts = cited_facts(), design_facts()
    assert {1, 4, 5, 6} <= set(cited), cited  # the citations this test was written against
    missing = {n: where for n, where in cited.items() if n not in facts}
    assert not missing, f"cited but not in docs/design.md: {missing}"


def test_design_facts_are_numbered_once_in_order():
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"^### Fact (\d+):", text, re.M)]
    assert numbers == list(range(1, len(numbers) + 1))


def test_citations_point_at_the_fact_they_mean():
    """A renumbering would keep the numbers resolving while changing their meaning."""
    facts = design_facts()
    assert "naive inversion" in facts[1]
    assert "rotary" in facts[4]
    assert "correctness check" in facts[5]
    assert "ComfyUI" in facts[6]
