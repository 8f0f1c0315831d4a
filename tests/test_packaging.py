"""The package depends on what it imports, and CI tests the declared minimums."""

import ast
import pathlib
import re
import sys

import pytest

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10
  import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = {"jax", "jaxlib", "optax", "numpy"}


# Distributions whose import name differs from their name.
IMPORT_NAMES = {"orbax-checkpoint": "orbax", "google-tunix": "tunix"}


def requirement(spec):
  """("jax", ">=", "0.6.1") from "jax>=0.6.1" (extras and markers dropped)."""
  match = re.fullmatch(
      r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(>=|==)\s*([^\s;]+)\s*(?:;.*)?", spec)
  assert match, spec
  name, op, version = match.groups()
  return name.lower(), op, version


def test_runtime_dependencies_are_jax_jaxlib_optax_numpy():
  deps = [requirement(d) for d in PYPROJECT["project"]["dependencies"]]
  assert {name for name, _, _ in deps} == RUNTIME
  assert all(op == ">=" for _, op, _ in deps)


def third_party_imports(folder):
  """Top-level names of the modules imported anywhere in ``folder``'s files,
  less the standard library, the package and the folder's own modules."""
  imported = set()
  for path in folder.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported.update(alias.name.split(".")[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        imported.add(node.module.split(".")[0])
  # The repository's own scripts and folders (tests import examples and
  # benchmark helpers from the checkout).
  local = {p.stem for d in ("examples", "benchmarks", "tests") for p in (ROOT / d).iterdir()}
  local |= {"examples", "benchmarks"}
  return imported - set(sys.stdlib_module_names) - {"stabledrl_jax"} - local


def extra(*names):
  extras = PYPROJECT["project"]["optional-dependencies"]
  dists = {requirement(d)[0] for name in names for d in extras[name]}
  return {IMPORT_NAMES.get(dist, dist) for dist in dists}


def test_the_package_imports_only_its_runtime_dependencies():
  # jaxlib is jax's backend: a dependency without being imported by name.
  assert third_party_imports(ROOT / "stabledrl_jax") == RUNTIME - {"jaxlib"}


# The tunix example and its integration test run in the tunix extra's venv.
@pytest.mark.parametrize("folder, extra_names", [
    ("examples", ("examples", "tunix")), ("benchmarks", ("examples",)),
    ("tests", ("test", "tunix"))])
@pytest.mark.slow
def test_scripts_import_only_what_their_extra_installs(folder, extra_names):
  assert third_party_imports(ROOT / folder) <= RUNTIME | extra(*extra_names)


def test_ci_installs_the_declared_minimum_versions():
  pins = {}
  for line in (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
      name, op, version = requirement(line)
      assert op == "=="
      pins[name] = version
  for spec in PYPROJECT["project"]["dependencies"]:
    name, _, minimum = requirement(spec)
    assert pins.get(name) == minimum, name
  assert "minimum-versions.txt" in (ROOT / ".ci" / "run").read_text()


def test_docs_and_lint_extras():
  assert {"sphinx", "myst-parser"} <= extra("docs")
  assert {"ruff", "mypy"} <= extra("lint")
