"""The product docs stand alone: no notes a user does not have, no tracker numbers; README lists every preset."""

from __future__ import annotations

import re
from pathlib import Path

from polycom.models.presets import PRESETS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = sorted((ROOT / "src" / "polycom").rglob("*.py"))
# Notes outside the product, and "issue N" of this project's tracker (public upstream issues name their repo).
FORBIDDEN = re.compile(r"polycom-paper\.md|anchor-measurements\.md|\.\./shared|\bissue \d+\b|(?<!\w)#\d+\b")
UPSTREAM = re.compile(r"[\w.-]+/[\w.-]+ issue \d+")


def _offences(path: Path) -> list[str]:
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        cleaned = UPSTREAM.sub("", line)
        if FORBIDDEN.search(cleaned):
            found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_docs_and_sources_name_no_private_notes_or_tracker_numbers():
    offences = [o for path in [*DOCS, *SOURCES] for o in _offences(path)]
    assert not offences, "\n".join(offences)


def test_the_checker_catches_what_it_guards(tmp_path):
    bad = tmp_path / "x.md"
    bad.write_text("see anchor-measurements.md\nfixed in issue 12\nas in #7\nupstream: triton-lang/triton issue 9171\n")
    bad_lines = [o.split(":")[1] for o in _offences_at(bad, tmp_path)]
    assert bad_lines == ["1", "2", "3"]


def _offences_at(path: Path, root: Path) -> list[str]:
    global ROOT
    saved, ROOT = ROOT, root
    try:
        return _offences(path)
    finally:
        ROOT = saved


def test_readme_lists_every_preset():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in PRESETS if f"`{name}`" not in readme]
    assert not missing, f"README.md preset list misses {missing}"
