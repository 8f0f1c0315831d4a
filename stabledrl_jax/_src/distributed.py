"""Collectives that are no-ops when no axis is named.

Every reduction across devices in the library goes through these helpers, so
that a function written for one device gains an ``axis_name=None`` argument
and becomes exact under ``jax.pmap`` / ``jax.shard_map`` without a second code
path.
"""

from typing import Optional, TypeVar

import jax

from stabledrl_jax._src.typing import AxisName

Tree = TypeVar("Tree")


def all_sum(x: Tree, axis_name: Optional[AxisName]) -> Tree:
  """``jax.lax.psum(x, axis_name)``, or ``x`` itself when ``axis_name`` is None.

  Args:
    x: any array (or pytree of arrays).
    axis_name: a mapped axis name, a tuple of names, or None.

  Returns:
    The sum of ``x`` over every device along ``axis_name``.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(all_sum(jnp.float32(2.0), None))
    2.0
  """
  if axis_name is None or axis_name == ():
    return x
  return jax.lax.psum(x, axis_name)


def all_max(x: Tree, axis_name: Optional[AxisName]) -> Tree:
  """``jax.lax.pmax(x, axis_name)``, or ``x`` itself when ``axis_name`` is None.

  Args:
    x: any array (or pytree of arrays).
    axis_name: a mapped axis name, a tuple of names, or None.

  Returns:
    The element-wise maximum of ``x`` over every device along ``axis_name``.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(all_max(jnp.float32(2.0), None))
    2.0
  """
  if axis_name is None or axis_name == ():
    return x
  return jax.lax.pmax(x, axis_name)
