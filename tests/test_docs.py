"""The docs site: API reference complete, links and figures resolve, examples run.

Cheap checks on the Markdown sources; the Sphinx build itself (warnings as
errors) runs in CI (`.ci/run`), not here.
"""

import pathlib
import re

import pytest

import stabledrl_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
# Markdown links and images: [text](target) / ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def api_entries():
  """The names listed in docs/api.md's autosummary tables."""
  text = (DOCS / "api.md").read_text()
  names = []
  for block in re.findall(r"\.\. autosummary::\n(.*?)```", text, re.S):
    for line in block.splitlines():
      line = line.strip()
      if line and not line.startswith(":"):
        names.append(line)
  return names


def test_api_reference_lists_every_public_name_once():
  entries = api_entries()
  assert sorted(entries) == sorted(stabledrl_jax.__all__)
  assert len(entries) == len(set(entries))


def test_every_page_starts_with_a_title():
  for page in PAGES:
    assert page.read_text().startswith("# "), page.name


def local_targets(page):
  for target in LINK.findall(page.read_text()):
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
      continue  # a URL or an anchor on the same page
    yield target.split("#")[0]


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_relative_links_and_images_resolve(page):
  missing = [t for t in local_targets(page) if not (page.parent / t).exists()]
  assert not missing


def test_every_committed_figure_is_shown_on_a_docs_page():
  shown = {(page.parent / t).resolve() for page in PAGES for t in local_targets(page)}
  figures = [p for d in ("benchmarks", "examples") for p in (ROOT / d).rglob("*.png")]
  assert figures
  assert not [str(f.relative_to(ROOT)) for f in figures if f.resolve() not in shown]


def python_programs():
  """The ```python blocks of the docs pages that are whole programs, less
  those the README repeats (tests/test_readme.py runs them)."""
  readme = (ROOT / "README.md").read_text()
  programs = []
  for page in PAGES:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    for i, block in enumerate(blocks):
      if block.startswith(("import ", "from ")) and block not in readme:
        programs.append(pytest.param(block, id=f"{page.stem}-{i}"))
  return programs


def test_docs_hold_programs():
  assert python_programs(), "no complete python block found in docs/"


@pytest.mark.slow
@pytest.mark.parametrize("program", python_programs())
def test_docs_program_runs(program):
  try:
    exec(compile(program, "docs block", "exec"), {})  # pylint: disable=exec-used
  except ModuleNotFoundError as e:
    if e.name and e.name.split(".")[0] in ("stabledrl_jax", "jax", "optax", "numpy"):
      raise
    pytest.skip(f"needs {e.name}, not installed here")
