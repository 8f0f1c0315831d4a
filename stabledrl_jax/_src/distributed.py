"""Collectives that are no-ops when no axis is named.

Every reduction across devices in the library goes through these helpers, so
that a function written for one device gains an ``axis_name=None`` argument
and becomes exact under ``jax.pmap`` / ``jax.shard_map`` without a second code
path.
"""

from collections.abc import Hashable
from typing import Optional, Union

import jax

AxisName = Union[Hashable, tuple[Hashable, ...]]


def all_sum(x: jax.Array, axis_name: Optional[AxisName]) -> jax.Array:
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


def all_max(x: jax.Array, axis_name: Optional[AxisName]) -> jax.Array:
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
