"""The documentation cannot drift from the tree.

* Every section cited with ``§`` anywhere in the repository (``design §4.8``, ``§3.1–3.3``, ``§8.1 quirk 11``,
  ``§6.3 steps 3–7``) is a heading of ``docs/design.md``, and a cited item or step is a numbered line of it.
* Every path in the README's "Where things live" tree exists, every file its descriptions name exists in that
  folder, every backticked path of the section exists, and every top-level folder and every member of
  ``lightning_modules/`` is listed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"
README = REPO / "README.md"
SKIPPED_DIRS = {"runs", "outputs", "multirun", "__pycache__"}
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".cfg", ".ini"}

SECTION = r"\d+(?:\.\d+)?[a-z]?"
CITATION = re.compile(rf"§\s?({SECTION})(?:\s?[–-]\s?(\d+\.\d+))?(?:\s(quirks?|steps?)\s(\d+)(?:[–-](\d+))?)?")
HEADING = re.compile(rf"^#{{2,4}} ({SECTION}) \S")
NUMBERED_ITEM = re.compile(r"^\s*(\d+)\. ")
TREE_LINE = re.compile(r"^( *)(\S+)(?: {2,}(.*))?$")
NAMED_FILE = re.compile(r"(?<![\w./-])([\w/-]+\.(?:py|yaml|md))\b")
BACKTICKED_PATH = re.compile(r"`([\w.-]+(?:/[\w.-]*)+|[\w-]+\.(?:py|yaml|md|toml))`")


def source_files() -> Iterator[Path]:
    """Text files of the repository, without hidden folders, caches and run outputs."""
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(root) / name
            if path.suffix in TEXT_SUFFIXES or name == "Makefile":
                yield path


def design_sections() -> dict[str, list[str]]:
    """Section number -> the lines under its heading, up to the next heading of any level."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in DESIGN.read_text(encoding="utf-8").splitlines():
        match = HEADING.match(line)
        if match:
            current = sections.setdefault(match.group(1), [])
        elif line.startswith("#"):
            current = None
        elif current is not None:
            current.append(line)
    return sections


def cited_sections(text: str) -> Iterator[tuple[str, str | None, list[int]]]:
    """``(section, item kind, item numbers)`` for every citation; a range ``§3.1–3.3`` yields each section."""
    for match in CITATION.finditer(text):
        first, last, kind, item_from, item_to = match.groups()
        items = list(range(int(item_from), int(item_to or item_from) + 1)) if item_from else []
        if last is None:
            yield first, kind, items
            continue
        major, low = first.split(".")
        last_major, high = last.split(".")
        if major != last_major or int(high) < int(low):
            yield f"{first}–{last}", None, []  # an unreadable range fails below
            continue
        for minor in range(int(low), int(high) + 1):
            yield f"{major}.{minor}", None, []


def test_design_document_has_numbered_sections() -> None:
    sections = design_sections()
    assert {"1", "2", "3", "4", "5", "6", "7", "8"} <= set(sections)
    assert DESIGN.read_text(encoding="utf-8").count("`design §N.M`") >= 1, "the top line says how code cites it"


def test_every_cited_design_section_exists() -> None:
    sections = design_sections()
    problems: list[str] = []
    count = 0
    for path in source_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for section, kind, items in cited_sections(line):
                count += 1
                where = f"{path.relative_to(REPO)}:{number}"
                if section not in sections:
                    problems.append(f"{where}: §{section} is not a heading of docs/design.md")
                    continue
                listed = {int(m.group(1)) for m in map(NUMBERED_ITEM.match, sections[section]) if m}
                missing = [i for i in items if i not in listed]
                if missing:
                    problems.append(f"{where}: §{section} has no numbered {kind} {missing}")
    assert count > 50, f"only {count} citations found: is the scan looking in the right place?"
    assert not problems, "\n".join(problems)


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def tree_entries() -> list[tuple[Path, str]]:
    """``(path, description)`` per line of the section's code block; two spaces of indent per level."""
    block = re.search(r"^```\n(.*?)^```", readme_section("Where things live"), flags=re.M | re.S)
    assert block, "'Where things live' has no code block"
    entries: list[tuple[Path, str]] = []
    parents: list[str] = []
    for line in block.group(1).splitlines():
        match = TREE_LINE.match(line)
        assert match and len(match.group(1)) % 2 == 0, f"not a tree line (indent, path, description): {line!r}"
        depth, name = len(match.group(1)) // 2, match.group(2)
        assert depth <= len(parents), f"{name} is indented below a file or too deep"
        parents = parents[:depth]
        entries.append((REPO.joinpath(*parents, name), match.group(3) or ""))
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
    return entries


def test_where_things_live_names_only_existing_paths() -> None:
    missing = []
    for path, description in tree_entries():
        if not path.exists():
            missing.append(str(path.relative_to(REPO)))
        elif path.is_dir():
            missing += [
                f"{path.relative_to(REPO)}/{f}" for f in NAMED_FILE.findall(description) if not (path / f).exists()
            ]
    for name in BACKTICKED_PATH.findall(readme_section("Where things live")):
        if not (REPO / name).exists():
            missing.append(name)
    assert not missing, f"README 'Where things live' names paths that do not exist: {missing}"


@pytest.mark.parametrize("folder", [".", "lightning_modules"])
def test_where_things_live_lists_every_folder_and_library_member(folder: str) -> None:
    listed = {path.resolve() for path, _ in tree_entries()}
    base = REPO / folder
    members = [p for p in base.iterdir() if not p.name.startswith((".", "_")) and p.name not in SKIPPED_DIRS]
    if folder == ".":  # source folders; a user's checkpoints/ or data/ folder holds no text sources
        sources = list(source_files())
        wanted = [p for p in members if p.is_dir() and any(f.is_relative_to(p) for f in sources)]
    else:
        wanted = [p for p in members if p.suffix == ".py" or p.is_dir()]
    unlisted = sorted(str(p.relative_to(REPO)) for p in wanted if p.resolve() not in listed)
    assert not unlisted, f"README 'Where things live' does not list {unlisted}"
