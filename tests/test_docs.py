"""README.md is a front door under 250 lines whose test command is the one CI runs, and every relative
link in README.md and docs/*.md points to a file of the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")   # [text](target) and ![alt](target)
TEST_COMMAND = 'pip install -e ".[test]" && pytest'


def relative_links(text: str) -> list[str]:
  """Link targets of a Markdown text that are paths in the repository (no URL, no in-page anchor)."""
  targets = (match.group(1) for match in LINK.finditer(text))
  return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_relative_links_finds_paths_only():
  text = "[a](docs/x.md) ![c](../results/y.png) [b](https://e.org/z) [d](#anchor) [e](pods.md#run-on-a-pod)"
  assert relative_links(text) == ["docs/x.md", "../results/y.png", "pods.md#run-on-a-pod"]


def test_readme_is_a_front_door():
  lines = (ROOT / "README.md").read_text().splitlines()
  assert len(lines) < 250, f"README.md has {len(lines)} lines; the details belong in docs/"


def test_ci_runs_the_readme_test_command():
  assert TEST_COMMAND in (ROOT / "README.md").read_text()
  assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(page):
  missing = [t for t in relative_links(page.read_text()) if not (page.parent / t.split("#", 1)[0]).exists()]
  assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
