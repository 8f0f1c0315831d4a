"""The public surface of stabledrl_jax is exactly its sorted ``__all__``."""

import importlib
import pkgutil

import stabledrl_jax


def test_all_is_sorted_and_unique():
  names = list(stabledrl_jax.__all__)
  assert names == sorted(names)
  assert len(names) == len(set(names))


def test_public_names_are_exactly_all():
  public = {name for name in dir(stabledrl_jax) if not name.startswith("_")}
  assert public == set(stabledrl_jax.__all__)


def test_every_name_in_all_exists():
  for name in stabledrl_jax.__all__:
    assert getattr(stabledrl_jax, name) is not None, name


def test_no_public_submodules():
  submodules = [info.name for info in pkgutil.iter_modules(stabledrl_jax.__path__)]
  assert [name for name in submodules if not name.startswith("_")] == []
  for name in ("clipping", "norms", "adaptive", "objectives"):
    try:
      importlib.import_module(f"stabledrl_jax.{name}")
    except ModuleNotFoundError:
      continue
    raise AssertionError(f"stabledrl_jax.{name} is importable")
