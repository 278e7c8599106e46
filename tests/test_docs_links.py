"""Every relative link in the hand-written docs points at a file or folder of the repository.

Checked: README.md, CHANGELOG.md, docs/*.md, docs/notes/**/*.md and the READMEs under docs/results/. The reports that
`chatsae compare` / `sweep` generated and that were copied into docs/results/ are not checked: they link to charts
beside them that a copy may leave out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def markdown_files() -> list[Path]:
    docs = ROOT / "docs"
    files = [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *sorted(docs.glob("*.md")),
        *sorted((docs / "notes").rglob("*.md")),
        *sorted((docs / "results").rglob("README.md")),
    ]
    return [f for f in files if f.is_file()]


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of each relative link outside code blocks and inline code."""
    links: list[tuple[int, str]] = []
    in_fence = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # http(s):, mailto:, in-page anchors
            links.append((n, target))
    return links


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{n}: {target}"
        for n, target in relative_links(path)
        if not (path.parent / target.split("#", 1)[0]).exists()
    ]
    assert not broken, "broken relative links:\n" + "\n".join(broken)
