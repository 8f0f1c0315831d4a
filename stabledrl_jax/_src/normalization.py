"""Running reward statistics (parallel Welford merge) and reward normalization.

:class:`RunningStats` holds the count, mean and population variance of every
value seen so far. :func:`update_running_stats` folds a batch in with the
parallel merge of Chan et al.: with the batch's count ``n_b``, mean ``μ_b`` and
variance ``σ²_b``, ``δ = μ_b − μ_a``, ``n = n_a + n_b``,
``μ = μ_a + δ n_b / n`` and
``σ² = (σ²_a n_a + σ²_b n_b + δ² n_a n_b / n) / n``. Under ``axis_name`` the
batch moments are ``psum``'d first, so every replica holds the same state,
equal to the state of one device that saw the whole batch.

References:
  Chan, Golub, LeVeque, `Updating Formulae and a Pairwise Algorithm for
  Computing Sample Variances <https://doi.org/10.1007/978-3-642-51461-6_3>`_,
  1982.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from stabledrl_jax._src import validation
from stabledrl_jax._src.distributed import all_sum
from stabledrl_jax._src.reductions import safe_divide
from stabledrl_jax._src.reductions import valid_mask
from stabledrl_jax._src.typing import AxisName
from stabledrl_jax._src.typing import Scalar


class RunningStats(NamedTuple):
  """Moments of every value seen so far, per feature.

  Attributes:
    count: float32 scalar, the number of values merged (exact up to 2**24).
    mean: float32 ``shape`` array, their mean.
    var: float32 ``shape`` array, their population variance (1 while
      ``count`` is 0, so normalizing before any update is the identity).

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import init_running_stats, update_running_stats
    >>> stats = update_running_stats(init_running_stats(),
    ...                              jnp.array([1.0, 2.0, 3.0]))
    >>> float(stats.count), float(stats.mean), round(float(stats.var), 4)
    (3.0, 2.0, 0.6667)
  """
  count: jax.Array  # type: ignore[assignment]  # field shadows tuple.count
  mean: jax.Array
  var: jax.Array


def init_running_stats(shape: tuple[int, ...] = ()) -> RunningStats:
  """Fresh statistics: count 0, mean 0, variance 1.

  Args:
    shape: the shape of one value (``()`` for scalar rewards).

  Returns:
    A :class:`RunningStats`.

  Examples:
    >>> from stabledrl_jax import init_running_stats
    >>> s = init_running_stats()
    >>> float(s.count), float(s.mean), float(s.var)
    (0.0, 0.0, 1.0)
    >>> init_running_stats((3,)).mean.shape
    (3,)
  """
  return RunningStats(
      count=jnp.zeros((), jnp.float32),
      mean=jnp.zeros(shape, jnp.float32),
      var=jnp.ones(shape, jnp.float32),
  )


def update_running_stats(
    stats: RunningStats,
    x: jax.typing.ArrayLike,
    *,
    mask: Optional[jax.typing.ArrayLike] = None,
    axis_name: Optional[AxisName] = None,
) -> RunningStats:
  """Merges a batch of values into ``stats`` (parallel Welford / Chan).

  Args:
    stats: the current :class:`RunningStats`, with ``mean.shape == S``.
    x: ``[*batch, *S]`` new values; the leading axes are the batch.
    mask: optional ``batch``-shaped 0/1 (or bool) selection: a value is kept
      where the mask is non-zero and dropped where it is 0 (a selection, not
      a weight, as in the losses). A value with any non-finite feature is
      dropped too.
    axis_name: mapped axis name(s) the batch is split over; the batch count,
      sum and centered sum of squares are ``psum``'d (two collectives), so
      every replica ends with the same state.

  Returns:
    The updated :class:`RunningStats`; unchanged when the batch is empty.

  Raises:
    ValueError: ``x``'s trailing shape is not ``stats.mean.shape``,
      ``mask``'s shape is not ``x``'s batch shape, or a concrete ``mask``
      holds a negative or NaN value.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import init_running_stats, update_running_stats
    >>> s = update_running_stats(init_running_stats(), jnp.array([1.0, 3.0]))
    >>> s = update_running_stats(s, jnp.array([5.0, jnp.nan]))
    >>> float(s.count), float(s.mean), round(float(s.var), 4)  # of 1, 3, 5
    (3.0, 3.0, 2.6667)
  """
  x = jnp.asarray(x)
  feature_shape = jnp.shape(stats.mean)
  batch_ndim = x.ndim - len(feature_shape)
  if batch_ndim < 0 or x.shape[batch_ndim:] != feature_shape:
    raise ValueError(
        f"x must have shape [*batch, *{feature_shape}], got shape {x.shape}.")
  batch_shape = x.shape[:batch_ndim]
  feature_axes = tuple(range(batch_ndim, x.ndim))
  keep = jnp.ones(batch_shape, bool)
  if mask is not None:
    if jnp.shape(mask) != batch_shape:
      raise ValueError(
          f"mask must have the batch shape {batch_shape} of x, got shape "
          f"{jnp.shape(mask)}.")
    keep = valid_mask(mask, keep)
  # A value with any non-finite feature is dropped as a whole, so one scalar
  # count describes every feature.
  keep = keep & jnp.all(jnp.isfinite(x), axis=feature_axes)
  keep = keep.reshape(batch_shape + (1,) * len(feature_shape))
  x = jnp.where(keep, x.astype(jnp.float32), 0)

  batch_axes = tuple(range(batch_ndim))
  count_b, sum_b = all_sum(
      (jnp.sum(keep, dtype=jnp.float32), jnp.sum(x, batch_axes)), axis_name)
  mean_b = safe_divide(sum_b, count_b)
  m2_b = all_sum(
      jnp.sum(jnp.where(keep, jnp.square(x - mean_b), 0), batch_axes),
      axis_name)

  count_a = stats.count
  count = count_a + count_b
  delta = mean_b - stats.mean
  mean = stats.mean + safe_divide(delta * count_b, count)
  m2 = (stats.var * count_a + m2_b
        + safe_divide(jnp.square(delta) * count_a * count_b, count))
  var = jnp.where(count > 0, safe_divide(m2, count), stats.var)
  return RunningStats(
      count=count.astype(jnp.float32),
      mean=mean.astype(jnp.float32),
      var=var.astype(jnp.float32),
  )


def normalize_rewards(
    rewards: jax.typing.ArrayLike,
    stats: RunningStats,
    *,
    eps: Scalar = 1e-8,
    clip: Optional[Scalar] = None,
) -> jax.Array:
  """Standardizes rewards with running statistics: ``(r − μ) / sqrt(σ² + eps)``.

  Args:
    rewards: ``[*batch, *S]`` rewards.
    stats: :class:`RunningStats` with ``mean.shape == S``.
    eps: > 0, added to the variance.
    clip: None, or ``c > 0`` to clip the result to ``[−c, c]``.

  Returns:
    Normalized rewards of ``rewards``' shape (float32 or wider).

  Raises:
    ValueError: ``eps`` or ``clip`` not finite and > 0; trailing shape of
      ``rewards`` is not ``stats.mean.shape``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import (init_running_stats, normalize_rewards,
    ...                            update_running_stats)
    >>> s = update_running_stats(init_running_stats(), jnp.array([1.0, 3.0]))
    >>> normalize_rewards(jnp.array([2.0, 4.0, 100.0]), s, clip=5.0)  # μ 2, σ 1
    Array([0., 2., 5.], dtype=float32)
  """
  validation.check_positive("eps", eps)
  if clip is not None:
    validation.check_positive("clip", clip)
  rewards = jnp.asarray(rewards)
  feature_shape = jnp.shape(stats.mean)
  if (rewards.ndim < len(feature_shape)
      or rewards.shape[rewards.ndim - len(feature_shape):] != feature_shape):
    raise ValueError(
        f"rewards must have shape [*batch, *{feature_shape}], got shape "
        f"{rewards.shape}.")
  dtype = jnp.promote_types(rewards.dtype, jnp.float32)
  out = (rewards.astype(dtype) - stats.mean) / jnp.sqrt(stats.var + eps)
  if clip is not None:
    out = jnp.clip(out, -clip, clip)
  return out
