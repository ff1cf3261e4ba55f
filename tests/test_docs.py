"""The README stays short and every relative link of it and of docs/*.md resolves (anchors too)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 10_000
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def links(text: str) -> list[str]:
    """The targets of the markdown links [text](target) outside code blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return LINK.findall(prose)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def test_the_link_reader_finds_targets_and_anchors(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# A screen (`cxr-screen`, `report.html`)\n[x](b.md#c) `[y](z)`\n```\n[no](q)\n```\n")
    assert links(page.read_text()) == ["b.md#c", "z"]
    assert anchors(page) == {"a-screen-cxr-screen-reporthtml"}


def test_readme_is_at_most_10_kb():
    assert (ROOT / "README.md").stat().st_size <= README_MAX_BYTES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page.read_text()):
        if re.match(r"[a-z]+:", target):          # http:, https:, mailto: are not checked offline
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert broken == [], f"{page.name}: links that do not resolve: {broken}"
