"""Masked and per-segment reductions, exact when the batch is split over devices.

Sums and counts go through :func:`stabledrl_jax._src.distributed.all_sum` and
maxima through :func:`~stabledrl_jax._src.distributed.all_max`, so with an
``axis_name`` each result is the one of the whole (global) batch. Used by the
objectives, the advantages and the running statistics.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from stabledrl_jax._src.distributed import AxisName
from stabledrl_jax._src.distributed import all_max
from stabledrl_jax._src.distributed import all_sum
from stabledrl_jax._src.validation import check_int
from stabledrl_jax._src.validation import check_same_shape


def float_dtype(x: jax.Array) -> jnp.dtype:
  """The dtype reductions use: ``x``'s float dtype, at least float32."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def valid_mask(mask: Any, like: jax.Array) -> jax.Array:
  """``mask`` as booleans (all True when None), checked against ``like``."""
  if mask is None:
    return jnp.ones(jnp.shape(like), bool)
  check_same_shape("mask", mask, "the values", like)
  return jnp.asarray(mask) != 0


def masked_total(x: Any, mask: jax.Array,
                 axis_name: Optional[AxisName] = None) -> jax.Array:
  """Sum of ``x`` over the entries where ``mask`` holds, over all devices.

  Masked entries contribute exactly 0, even when they hold NaN or inf.
  """
  x = jnp.broadcast_to(jnp.asarray(x), mask.shape)
  x = x.astype(float_dtype(x))
  return all_sum(jnp.sum(jnp.where(mask, x, 0)), axis_name)


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """``numerator / denominator``, and 0 where the denominator is 0."""
  nonzero = denominator != 0
  return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), 0)


def segment_total(x: jax.Array, segment_ids: jax.Array, num_segments: int,
                  axis_name: Optional[AxisName] = None) -> jax.Array:
  """``[num_segments]`` sums of ``x`` per segment id, over all devices."""
  return all_sum(jax.ops.segment_sum(x, segment_ids, num_segments), axis_name)


def segment_peak(x: jax.Array, segment_ids: jax.Array, num_segments: int,
                 axis_name: Optional[AxisName] = None) -> jax.Array:
  """``[num_segments]`` maxima of ``x`` per segment id (-inf when empty)."""
  return all_max(jax.ops.segment_max(x, segment_ids, num_segments), axis_name)


def resolve_segments(values: jax.Array, segment_ids: Any,
                     num_segments: Any) -> tuple[jax.Array, int]:
  """Checks segment arguments; no ``segment_ids`` means one segment."""
  if segment_ids is None:
    if num_segments is not None:
      check_int("num_segments", num_segments)
      if num_segments != 1:
        raise ValueError(
            "Without segment_ids the batch is one segment: num_segments must "
            f"be None or 1, got num_segments={num_segments!r}.")
    return jnp.zeros(jnp.shape(values), jnp.int32), 1
  if num_segments is None:
    raise ValueError(
        "num_segments is required when segment_ids is given (a static int, "
        "the number of segments in the global batch), got None.")
  check_int("num_segments", num_segments)
  check_same_shape("segment_ids", segment_ids, "the values", values)
  if not jnp.issubdtype(jnp.result_type(segment_ids), jnp.integer):
    raise ValueError(
        "segment_ids must be integers, got dtype "
        f"{jnp.result_type(segment_ids)}.")
  if (not isinstance(segment_ids, jax.core.Tracer)
      and getattr(segment_ids, "is_fully_addressable", True)):
    # Ids known on this host are checked (traced ones cannot be): an id
    # outside [0, num_segments) would silently drop its entry from every sum.
    ids = np.asarray(segment_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= num_segments):
      raise ValueError(
          f"segment_ids must lie in [0, num_segments={num_segments}), got "
          f"values from {ids.min()} to {ids.max()}.")
  return jnp.asarray(segment_ids).astype(jnp.int32), int(num_segments)
