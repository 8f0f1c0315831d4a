"""Masked and per-segment reductions, exact when the batch is split over devices.

Sums and counts go through :func:`stabledrl_jax._src.distributed.all_sum` and
maxima through :func:`~stabledrl_jax._src.distributed.all_max`, so with an
``axis_name`` each result is the one of the whole (global) batch. Used by the
objectives, the advantages and the running statistics.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from stabledrl_jax._src.distributed import all_max
from stabledrl_jax._src.distributed import all_sum
from stabledrl_jax._src.typing import AxisName
from stabledrl_jax._src.validation import check_int
from stabledrl_jax._src.validation import check_same_shape
from stabledrl_jax._src.validation import check_selection_mask
from stabledrl_jax._src.validation import concrete_array


def float_dtype(x: jax.Array) -> jnp.dtype:
  """The dtype reductions use: ``x``'s float dtype, at least float32."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def valid_mask(mask: Optional[jax.typing.ArrayLike], like: jax.typing.ArrayLike,
               name: str = "mask") -> jax.Array:
  """``mask`` as booleans (all True when None), checked against ``like``.

  Masks select (non-zero or True: use the entry); a concrete negative or NaN
  value raises ``ValueError``.
  """
  if mask is None:
    return jnp.ones(jnp.shape(like), bool)
  check_same_shape(name, mask, "the values", like)
  check_selection_mask(name, mask)
  return jnp.asarray(mask) != 0


def masked_total(x: jax.typing.ArrayLike, mask: jax.Array,
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


class Segments(NamedTuple):
  """Resolved grouping of a ``[B]`` batch.

  Attributes:
    ids: ``[B]`` int32 segment of each local entry, in ``[0, num)``.
    num: static number of segments in the global batch.
    in_range: ``[B]`` bool, False where a (traced) id was outside
      ``[0, num)``; such entries belong to no segment and must be masked.
  """
  ids: jax.Array
  num: int
  in_range: jax.Array


def resolve_segments(values: jax.Array,
                     segment_ids: Optional[jax.typing.ArrayLike] = None,
                     num_segments: Optional[int] = None, *,
                     group_size: Optional[int] = None,
                     axis_name: Optional[AxisName] = None) -> Segments:
  """Checks grouping arguments and returns the segment of every entry.

  Exactly one way of grouping, or none: ``group_size`` (contiguous runs of the
  global batch, which under ``axis_name`` is split over devices in order),
  ``segment_ids`` with ``num_segments``, or neither (one segment).
  """
  shape = jnp.shape(values)
  if group_size is not None:
    if segment_ids is not None:
      raise ValueError(
          "Give group_size or segment_ids, not both; got group_size="
          f"{group_size!r} and segment_ids.")
    check_int("group_size", group_size)
    local = shape[0]
    if axis_name is None or axis_name == ():
      devices, first_row = 1, jnp.int32(0)
    else:
      devices = jax.lax.axis_size(axis_name)
      first_row = jax.lax.axis_index(axis_name) * local
    if (local * devices) % group_size:
      raise ValueError(
          f"group_size must divide the global batch size {local * devices}, "
          f"got group_size={group_size}.")
    num = local * devices // int(group_size)
    if num_segments is not None and num_segments != num:
      raise ValueError(
          f"num_segments={num_segments!r} contradicts group_size={group_size} "
          f"(the global batch of {local * devices} holds {num} groups); give "
          "one of them.")
    ids = (first_row + jnp.arange(local)) // int(group_size)
    ids = ids.astype(jnp.int32)
    return Segments(ids, num, jnp.ones(shape, bool))
  if segment_ids is None:
    if num_segments is not None:
      check_int("num_segments", num_segments)
      if num_segments != 1:
        raise ValueError(
            "Without segment_ids or group_size the batch is one segment: "
            f"num_segments must be None or 1, got num_segments="
            f"{num_segments!r}.")
    return Segments(jnp.zeros(shape, jnp.int32), 1, jnp.ones(shape, bool))
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
  host_ids = concrete_array(segment_ids)
  # Ids known on this host are checked; traced ones cannot be, and an id
  # outside [0, num_segments) then marks its entry as belonging nowhere.
  if host_ids is not None and host_ids.size and (
      host_ids.min() < 0 or host_ids.max() >= num_segments):
    raise ValueError(
        f"segment_ids must lie in [0, num_segments={num_segments}), got "
        f"values from {host_ids.min()} to {host_ids.max()}.")
  ids = jnp.asarray(segment_ids).astype(jnp.int32)
  in_range = (ids >= 0) & (ids < num_segments)
  return Segments(jnp.where(in_range, ids, 0), int(num_segments), in_range)
