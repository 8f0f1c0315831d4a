"""Advantage estimators: group baselines (GRPO, RLOO) and GAE.

Group estimators take ``[B]`` rewards laid out as contiguous groups of
``group_size`` completions of the same prompt, or grouped by ``segment_ids``
as the losses accept. Under ``axis_name`` the batch is split over devices in
order (device ``d`` holds rows ``d·B … (d+1)·B − 1`` of the global batch, as
with ``shard_map`` and ``P(axis_name)``); groups may then span devices and
the statistics stay exact, since every group sum is ``psum``'d. A non-finite
reward (a failed reward call) gets advantage 0 and is left out of every mean
and standard deviation.

References:
  Shao et al., `DeepSeekMath (GRPO) <https://arxiv.org/abs/2402.03300>`_, 2024.
  Kool et al., `Buy 4 REINFORCE Samples, Get a Baseline for Free!
  <https://openreview.net/forum?id=r1lgTGL5DE>`_, 2019.
  Schulman et al., `High-Dimensional Continuous Control Using Generalized
  Advantage Estimation <https://arxiv.org/abs/1506.02438>`_, 2015.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from stabledrl_jax._src import validation
from stabledrl_jax._src.reductions import float_dtype
from stabledrl_jax._src.reductions import masked_total
from stabledrl_jax._src.reductions import resolve_segments
from stabledrl_jax._src.reductions import safe_divide
from stabledrl_jax._src.reductions import segment_total
from stabledrl_jax._src.typing import AdvantageScale
from stabledrl_jax._src.typing import AxisName
from stabledrl_jax._src.typing import Scalar
from stabledrl_jax._src.validation import check_ndim
from stabledrl_jax._src.validation import check_same_shape

ADVANTAGE_SCALES = ("group", "batch", "none")


class _Groups:
  """Group ids of the local rows, and per-group counts, sums and means."""

  def __init__(self, rewards: jax.Array, group_size: Optional[int],
               segment_ids: Optional[jax.typing.ArrayLike],
               num_segments: Optional[int], axis_name: Optional[AxisName]):
    check_ndim("rewards", rewards, 1)
    if group_size is None and segment_ids is None:
      raise ValueError(
          "Give group_size (contiguous groups) or segment_ids with "
          "num_segments; got neither.")
    segments = resolve_segments(rewards, segment_ids, num_segments,
                                group_size=group_size, axis_name=axis_name)
    self.num_groups = segments.num
    self.ids = segments.ids
    self.axis_name = axis_name
    # A reward outside every group (a traced out-of-range id) is treated as
    # missing, like a non-finite one.
    self.finite = jnp.isfinite(rewards) & segments.in_range
    self.rewards = jnp.where(self.finite, rewards.astype(float_dtype(rewards)),
                             0)
    self.count = self.total(self.finite.astype(self.rewards.dtype))
    self.mean = safe_divide(self.total(self.rewards), self.count)

  def total(self, x: jax.Array) -> jax.Array:
    """Per-group sums of ``x`` over the global batch, ``[num_groups]``."""
    return segment_total(x, self.ids, self.num_groups, self.axis_name)

  def centered(self) -> jax.Array:
    """``r − group mean``; 0 for non-finite rewards."""
    return jnp.where(self.finite, self.rewards - self.mean[self.ids], 0)


def _sample_std(sum_squares: jax.Array, count: jax.Array) -> jax.Array:
  """Unbiased standard deviation ``sqrt(Σ(x − x̄)² / (n − 1))``; 0 if n < 2."""
  return jnp.sqrt(safe_divide(sum_squares, jnp.maximum(count - 1, 0)))


def group_advantages(
    rewards: jax.typing.ArrayLike,
    *,
    group_size: Optional[int] = None,
    segment_ids: Optional[jax.typing.ArrayLike] = None,
    num_segments: Optional[int] = None,
    scale: AdvantageScale = "group",
    eps: Scalar = 1e-6,
    axis_name: Optional[AxisName] = None,
) -> jax.Array:
  """GRPO advantages: reward minus its group's mean, optionally scaled.

  ``A_i = (r_i − mean_g) / (std + eps)`` where ``std`` is

  * ``"group"``: the sample standard deviation (``n − 1`` divisor, as
    ``torch.std`` in common GRPO code) of the rewards of ``i``'s group;
  * ``"batch"``: the sample standard deviation of all (finite) rewards of the
    global batch (group-mean centering, batch-std scaling);
  * ``"none"``: no division — ``A_i = r_i − mean_g`` (the StableDRL reference
    and Dr. GRPO).

  A group (or batch) of fewer than two finite rewards has std 0; its
  advantages are then 0 (a single reward equals its own mean).

  Args:
    rewards: ``[B]`` local rewards, contiguous groups of ``group_size``.
    group_size: completions per prompt; must divide the global batch size.
    segment_ids: instead of ``group_size``, ``[B]`` global group ids in
      ``[0, num_segments)`` (any layout). Concrete ids outside that range
      raise; traced ones make their reward count as missing (advantage 0).
    num_segments: static number of groups; required with ``segment_ids``.
    scale: ``"group"``, ``"batch"`` or ``"none"``.
    eps: > 0, added to the standard deviation.
    axis_name: mapped axis name(s) the batch is split over, in order.

  Returns:
    ``[B]`` advantages (float32 or wider), 0 where the reward is not finite.

  Raises:
    ValueError: ``rewards`` not 1-D, ``group_size`` not a positive int or not
      dividing the global batch, both or neither of ``group_size`` and
      ``segment_ids``, bad ``segment_ids``/``num_segments`` (see
      :func:`self_normalized_weights`), unknown ``scale``, ``eps`` not finite
      > 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import group_advantages
    >>> r = jnp.array([1.0, 0.0, 0.0, 0.0, jnp.nan, 1.0])
    >>> a = group_advantages(r, group_size=3, scale="none")
    >>> [round(float(x), 3) for x in a]  # the NaN reward is left out
    [0.667, -0.333, -0.333, -0.5, 0.0, 0.5]
  """
  validation.check_choice("scale", scale, ADVANTAGE_SCALES)
  validation.check_positive("eps", eps)
  groups = _Groups(jnp.asarray(rewards), group_size, segment_ids,
                   num_segments, axis_name)
  centered = groups.centered()
  if scale == "none":
    return centered
  if scale == "group":
    std = _sample_std(groups.total(centered * centered), groups.count)
    std = std[groups.ids]
  else:
    finite, r = groups.finite, groups.rewards
    count = masked_total(1, finite, axis_name)
    mean = safe_divide(masked_total(r, finite, axis_name), count)
    std = _sample_std(masked_total((r - mean) ** 2, finite, axis_name), count)
  return centered / (std + eps)


def rloo_advantages(
    rewards: jax.typing.ArrayLike,
    *,
    group_size: Optional[int] = None,
    segment_ids: Optional[jax.typing.ArrayLike] = None,
    num_segments: Optional[int] = None,
    axis_name: Optional[AxisName] = None,
) -> jax.Array:
  """REINFORCE leave-one-out advantages within each group.

  ``A_i = r_i − mean_{j ≠ i} r_j`` over the finite rewards of ``i``'s group,
  which equals ``n/(n − 1) · (r_i − mean_g)``. A reward alone in its group (or
  non-finite) gets 0.

  Args:
    rewards: ``[B]`` local rewards, contiguous groups of ``group_size``.
    group_size: completions per prompt; must divide the global batch size.
    segment_ids: instead of ``group_size``, ``[B]`` global group ids in
      ``[0, num_segments)`` (any layout). Concrete ids outside that range
      raise; traced ones make their reward count as missing (advantage 0).
    num_segments: static number of groups; required with ``segment_ids``.
    axis_name: mapped axis name(s) the batch is split over, in order.

  Returns:
    ``[B]`` advantages.

  Raises:
    ValueError: ``rewards`` not 1-D, ``group_size`` not a positive int or not
      dividing the global batch, both or neither of ``group_size`` and
      ``segment_ids``, bad ``segment_ids``/``num_segments``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import rloo_advantages
    >>> a = rloo_advantages(jnp.array([1.0, 0.0, 0.0, 2.0]), group_size=4)
    >>> [round(float(x), 3) for x in a]  # e.g. 1 - (0 + 0 + 2) / 3
    [0.333, -1.0, -1.0, 1.667]
  """
  groups = _Groups(jnp.asarray(rewards), group_size, segment_ids,
                   num_segments, axis_name)
  count = groups.count[groups.ids]
  return groups.centered() * safe_divide(count, count - 1)


def gae_advantages(
    rewards: jax.typing.ArrayLike,
    values: jax.typing.ArrayLike,
    discounts: jax.typing.ArrayLike,
    *,
    gamma: Scalar,
    lam: Scalar,
) -> jax.Array:
  """Generalized advantage estimation, a reverse ``lax.scan`` over time.

  ``δ_t = r_t + γ d_t V_{t+1} − V_t`` and ``A_t = δ_t + γ λ d_t A_{t+1}``,
  where ``d_t`` is 0 at an episode end (no bootstrapping across it). Returns
  ``A``; the value targets are ``A + V[..., :T]``. No gradient flows through
  the result.

  Args:
    rewards: ``[..., T]`` rewards (time last; e.g. ``[B, T]`` per token).
    values: ``[..., T + 1]`` value estimates including the bootstrap value
      after the last step, or ``[..., T]`` to bootstrap from 0.
    discounts: ``[..., T]``, 1 to continue after step ``t`` and 0 to stop.
    gamma: discount in ``[0, 1]``.
    lam: GAE λ in ``[0, 1]``.

  Returns:
    ``[..., T]`` advantages.

  Raises:
    ValueError: shapes do not match, ``gamma`` or ``lam`` outside ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import gae_advantages
    >>> gae_advantages(jnp.array([0.0, 1.0]), jnp.zeros(2), jnp.ones(2),
    ...                gamma=0.5, lam=1.0)  # discounted returns: 0.5, 1
    Array([0.5, 1. ], dtype=float32)
  """
  for name, value in (("gamma", gamma), ("lam", lam)):
    number = validation.concrete_scalar(name, value)
    if number is not None and not 0 <= number <= 1:
      raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
  rewards = jnp.asarray(rewards)
  if rewards.ndim < 1:
    raise ValueError(f"rewards must have a time axis, got shape {()}.")
  check_same_shape("discounts", discounts, "rewards", rewards)
  dtype = float_dtype(rewards)
  values = jnp.asarray(values).astype(dtype)
  if values.shape == rewards.shape:
    values = jnp.concatenate([values, jnp.zeros_like(values[..., :1])], -1)
  elif values.shape != rewards.shape[:-1] + (rewards.shape[-1] + 1,):
    raise ValueError(
        f"values must have shape {rewards.shape} or "
        f"{rewards.shape[:-1] + (rewards.shape[-1] + 1,)}, got shape "
        f"{values.shape}.")
  discounts = gamma * jnp.asarray(discounts).astype(dtype)
  deltas = rewards.astype(dtype) + discounts * values[..., 1:] - values[..., :-1]

  def step(next_advantage, inputs):
    delta, discount = inputs
    advantage = delta + discount * lam * next_advantage
    return advantage, advantage

  time_major = (jnp.moveaxis(deltas, -1, 0), jnp.moveaxis(discounts, -1, 0))
  _, advantages = jax.lax.scan(
      step, jnp.zeros(rewards.shape[:-1], dtype), time_major, reverse=True)
  return jax.lax.stop_gradient(jnp.moveaxis(advantages, 0, -1))
