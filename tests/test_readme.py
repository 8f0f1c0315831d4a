"""The README's runnable snippets run, and CI runs the README's test command."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def complete_python_blocks():
  """The README's ```python blocks that are whole programs (start with import)."""
  blocks = re.findall(r"```python\n(.*?)```", README, re.S)
  return [b for b in blocks if b.startswith(("import ", "from "))]


def test_readme_has_runnable_blocks():
  assert len(complete_python_blocks()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(complete_python_blocks())))
def test_readme_block_runs(index):
  exec(compile(complete_python_blocks()[index], f"README block {index}",
               "exec"), {})


def test_readme_starts_with_the_two_set_up_commands():
  first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
  commands = first_block.strip().splitlines()
  assert len(commands) == 2
  assert commands[0].endswith("examples/quickstart.py")
  assert commands[1].endswith("-m pytest")
  ci = (ROOT / ".ci" / "run").read_text()
  assert commands[1] in ci


def test_every_public_name_has_a_runnable_example():
  import stabledrl_jax  # pylint: disable=g-import-not-at-top
  missing = [name for name in stabledrl_jax.__all__
             if ">>>" not in (getattr(stabledrl_jax, name).__doc__ or "")]
  assert not missing


def test_readme_is_short_and_links_the_guides():
  assert len(README.splitlines()) <= 200
  for page in ("clipping", "distributed", "adaptive", "objectives", "benchmarks",
               "dllm_study", "api"):
    assert f"(docs/{page}.md)" in README, page
