"""The repository explains itself: code and docs cite only documents that ship with it.

Pure Python (no TensorFlow import), so it runs in well under a second. It walks the repository's
own text files (*.py, *.md, *.toml, Makefile), skipping virtual environments, build output, run
directories and VCS data, and checks that
  * nothing points at notes that are not part of the repository (the private paper spec, design
    sketch, data notes or TFX research notes that earlier docstrings cited);
  * every relative ``docs/<name>.md`` path that is mentioned exists;
  * every cited heading, written as ``docs/<name>.md, "Heading"`` (several headings may follow,
    separated by commas or "and"), is a heading of that document.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SKIP_DIRS = {".venv", "venv", ".git", "runs", "build", "dist", "artifacts", "__pycache__",
             ".pytest_cache", ".cache", "node_modules"}
SUFFIXES = {".py", ".md", ".toml"}
NAMES = {"Makefile"}

# Built from pieces so that this file does not match itself.
_SECTION = "\u00a7"
FORBIDDEN = re.compile("|".join([
    r"papers\.md",
    r"design\.md",
    r"docs/data\.md",
    r"tfx-1\.16 notes",
    r"notes " + _SECTION,
]))
DOC_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*?\.md\b")
# `docs/<name>.md, "A"`, then optionally `, "B"` or `and "B"` (possibly wrapped over lines).
CITATION = re.compile(r'(?<![\w./-])(docs/[\w./-]*?\.md)`?,((?:\s*(?:,|and)?\s*(?:#\s*)?"[^"]+")+)')
QUOTED = re.compile(r'"([^"]+)"')
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _skip_dir(name: str) -> bool:
    if name in SKIP_DIRS or name.endswith(".egg-info"):
        return True
    return name.startswith(".") and name not in {".ci", ".github"}


def _repo_files():
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not _skip_dir(d))
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix in SUFFIXES or name in NAMES:
                yield path


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _normalise(text: str) -> str:
    """Joins a heading that a docstring or a `#` comment wrapped over several lines."""
    return " ".join(re.sub(r"\n\s*#?", " ", text).split())


def _headings(doc: Path):
    return {_normalise(h).strip("`") for h in HEADING.findall(_text(doc))}


FILES = list(_repo_files())


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_walk_finds_the_repository():
    names = {_rel(p) for p in FILES}
    assert "README.md" in names and "docs/models.md" in names
    assert not any(n.startswith(".venv") for n in names)


def test_no_reference_to_documents_outside_the_repository():
    hits = []
    for path in FILES:
        for lineno, line in enumerate(_text(path).splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{_rel(path)}:{lineno}: {line.strip()}")
    assert not hits, ("cite docs/models.md, docs/protocol.md, docs/tfx-notes.md or a public URL "
                      "instead:\n" + "\n".join(hits))


def test_every_mentioned_docs_path_exists():
    missing = []
    for path in FILES:
        for lineno, line in enumerate(_text(path).splitlines(), 1):
            for ref in DOC_PATH.findall(line):
                if not (REPO / ref).is_file():
                    missing.append(f"{_rel(path)}:{lineno}: {ref}")
    assert not missing, "missing documents:\n" + "\n".join(missing)


def test_every_cited_heading_exists():
    cache = {}
    bad = []
    for path in FILES:
        text = _text(path)
        for match in CITATION.finditer(text):
            doc = REPO / match.group(1)
            if not doc.is_file():
                continue  # reported by test_every_mentioned_docs_path_exists
            if doc not in cache:
                cache[doc] = _headings(doc)
            lineno = text.count("\n", 0, match.start()) + 1
            for heading in QUOTED.findall(match.group(2)):
                if _normalise(heading) not in cache[doc]:
                    bad.append(f"{_rel(path)}:{lineno}: {match.group(1)} has no heading {heading!r}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("snippet, expected", [
    ('see docs/models.md, "Weighted loss".', [("docs/models.md", ["Weighted loss"])]),
    ('(docs/models.md, "PinnerFormer", "TransAct ranker" and "Deviations")',
     [("docs/models.md", ["PinnerFormer", "TransAct ranker", "Deviations"])]),
    ('# x (docs/models.md,\n    # "Random time window").', [("docs/models.md", ["Random time window"])]),
])
def test_citation_pattern(snippet, expected):
    found = [(m.group(1), QUOTED.findall(m.group(2))) for m in CITATION.finditer(snippet)]
    assert found == expected


def test_forbidden_pattern_catches_old_citations():
    for old in ("papers" + ".md", "design" + ".md", "docs/data" + ".md", "tfx-1" + ".16 notes",
                "notes " + _SECTION + "4.1"):
        assert FORBIDDEN.search(f"(see {old})"), old
    assert not FORBIDDEN.search("docs/models.md, docs/protocol.md, docs/tfx-notes.md")
