"""Policy-gradient objectives: StableDRL's self-normalized loss and GRPO/PPO.

Shapes: one value per sequence is ``[B]``; one value per token is ``[B, T]``
with a ``mask`` of the same shape (1 for a real token, 0 for padding).

Every function that reduces over the batch takes ``axis_name``: when the
batch is split over that mapped axis (``jax.pmap`` / ``jax.shard_map``), sums
and counts are ``psum``'d and maxima ``pmax``'d, so the result equals the one
computed on the whole batch on one device. The reductions are written once,
in :func:`masked_total`, :func:`segment_total`, :func:`segment_peak` and
:func:`aggregate_loss`, and go through :mod:`stabledrl_jax.distributed`.

References:
  Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
  Models <https://arxiv.org/abs/2603.06743>`_, 2026.
  Shao et al., `DeepSeekMath (GRPO) <https://arxiv.org/abs/2402.03300>`_, 2024.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from stabledrl_jax import validation
from stabledrl_jax.distributed import AxisName
from stabledrl_jax.distributed import all_max
from stabledrl_jax.distributed import all_sum

# Log-ratios are clamped to this range before ``exp`` wherever a ratio value
# (not a weight) is needed, so that ratios stay finite in float32.
LOG_RATIO_LIMIT = 20.0

# ---------------------------------------------------------------------------
# Shared checks and reductions.
# ---------------------------------------------------------------------------


def check_same_shape(name: str, value: Any, ref_name: str, ref: Any) -> None:
  """Raises ``ValueError`` unless ``value`` has the shape of ``ref``."""
  if jnp.shape(value) != jnp.shape(ref):
    raise ValueError(
        f"{name} must have the shape of {ref_name} {jnp.shape(ref)}, got "
        f"shape {jnp.shape(value)}.")


def check_ndim(name: str, value: Any, ndim: int) -> None:
  """Raises ``ValueError`` unless ``value`` has ``ndim`` dimensions."""
  if jnp.ndim(value) != ndim:
    raise ValueError(
        f"{name} must have {ndim} dimension(s), got shape {jnp.shape(value)}.")


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
      raise ValueError(
          "num_segments is only meaningful with segment_ids, got "
          f"num_segments={num_segments!r} and segment_ids=None.")
    return jnp.zeros(jnp.shape(values), jnp.int32), 1
  if num_segments is None:
    raise ValueError(
        "num_segments is required when segment_ids is given (a static int, "
        "the number of segments in the global batch), got None.")
  if (isinstance(num_segments, bool) or not isinstance(num_segments, int)
      or num_segments < 1):
    raise ValueError(
        f"num_segments must be a positive Python int, got {num_segments!r}.")
  check_same_shape("segment_ids", segment_ids, "the values", values)
  return jnp.asarray(segment_ids).astype(jnp.int32), num_segments


# ---------------------------------------------------------------------------
# StableDRL: unconditional ratio cap and self-normalization.
# ---------------------------------------------------------------------------


def self_normalized_weights(
    log_ratio: jax.typing.ArrayLike,
    *,
    max_ratio: Any = 5.0,
    segment_ids: Optional[jax.typing.ArrayLike] = None,
    num_segments: Optional[int] = None,
    mask: Optional[jax.typing.ArrayLike] = None,
    axis_name: Optional[AxisName] = None,
) -> jax.Array:
  """Capped importance ratios, normalized to sum to 1 within each segment.

  ``log_w = min(log_ratio, log(max_ratio))`` — an upper cap applied whatever
  the sign of the advantage — then a softmax of ``log_w`` within each segment
  (e.g. a GRPO group), or over the whole batch when ``segment_ids`` is None.
  The weights carry no gradient. The softmax subtracts each segment's maximum
  before ``exp``, so log-ratios of ±1e4 give finite weights.

  Args:
    log_ratio: ``[B]`` log importance ratios ``log π_θ(y) − log π_old(y)``.
    max_ratio: the cap ``C`` on the ratio; finite and > 0.
    segment_ids: optional ``[B]`` int ids in ``[0, num_segments)``; ids are
      global, so under ``axis_name`` a segment may span devices.
    num_segments: static number of segments in the (global) batch; required
      with ``segment_ids``.
    mask: optional ``[B]``; entries where it is 0 get weight 0 and do not enter
      any normalizer.
    axis_name: mapped axis name(s) the batch is split over; the segment max is
      ``pmax``'d and the segment sum ``psum``'d.

  Returns:
    ``[B]`` weights (float32 or wider), ≥ 0; the weights of each segment with
    at least one valid entry sum to 1; a segment with none is all 0.

  Raises:
    ValueError: ``log_ratio`` is not 1-D; ``max_ratio`` is not finite and
      > 0; ``segment_ids``/``mask`` shapes differ from ``log_ratio``;
      ``num_segments`` missing, not a positive int, or given without
      ``segment_ids``.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = self_normalized_weights(jnp.log(jnp.array([1.0, 1.0, 100.0])))
    >>> [round(float(v), 4) for v in w]  # ratio 100 capped at 5: 1/7, 1/7, 5/7
    [0.1429, 0.1429, 0.7143]
    >>> self_normalized_weights(jnp.zeros(4), segment_ids=jnp.array([0, 0, 1, 1]),
    ...                         num_segments=2, mask=jnp.array([1, 1, 1, 0]))
    Array([0.5, 0.5, 1. , 0. ], dtype=float32)

  References:
    Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
    Models <https://arxiv.org/abs/2603.06743>`_, 2026 (``compute_loss_spg``).
  """
  log_ratio = jnp.asarray(log_ratio)
  check_ndim("log_ratio", log_ratio, 1)
  validation.check_positive("max_ratio", max_ratio)
  segment_ids, num_segments = resolve_segments(
      log_ratio, segment_ids, num_segments)
  valid = valid_mask(mask, log_ratio)
  dtype = float_dtype(log_ratio)

  cap = jnp.log(jnp.asarray(max_ratio, dtype))
  log_w = jnp.minimum(jax.lax.stop_gradient(log_ratio).astype(dtype), cap)
  log_w = jnp.where(valid, log_w, -jnp.inf)
  peak = segment_peak(log_w, segment_ids, num_segments, axis_name)
  # A segment with no valid entry has peak -inf; any finite shift will do.
  peak = jnp.where(jnp.isfinite(peak), peak, 0)
  unnormalized = jnp.where(valid, jnp.exp(log_w - peak[segment_ids]), 0)
  total = segment_total(unnormalized, segment_ids, num_segments, axis_name)
  return safe_divide(unnormalized, total[segment_ids])


def stabledrl_policy_loss(
    seq_logp: jax.typing.ArrayLike,
    old_seq_logp: jax.typing.ArrayLike,
    advantages: jax.typing.ArrayLike,
    *,
    max_ratio: Any = 5.0,
    segment_ids: Optional[jax.typing.ArrayLike] = None,
    num_segments: Optional[int] = None,
    mask: Optional[jax.typing.ArrayLike] = None,
    axis_name: Optional[AxisName] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """StableDRL's policy loss: capped, self-normalized importance weights.

  ``loss = −Σ_i w̄_i A_i seq_logp_i / num_segments`` with ``w̄`` from
  :func:`self_normalized_weights` applied to ``seq_logp − old_seq_logp``. The
  weights carry no gradient, so ``∇loss = −Σ_i w̄_i A_i ∇seq_logp_i / G``:
  within each segment a convex combination of per-sample gradients, whose norm
  is at most ``max_i |A_i| ‖∇seq_logp_i‖`` however noisy the ratios.

  Args:
    seq_logp: ``[B]`` sequence log-likelihoods under the current policy (for a
      diffusion LM, e.g. an ELBO estimate); the gradient flows through these.
    old_seq_logp: ``[B]`` the same under the policy that sampled the batch.
    advantages: ``[B]`` advantages (e.g. from :func:`group_advantages`).
    max_ratio: ratio cap ``C``; finite and > 0 (the reference code uses 5).
    segment_ids: optional ``[B]`` global group ids; weights are normalized
      within each group. None: one segment, the whole (global) batch.
    num_segments: number of groups ``G`` in the global batch; required with
      ``segment_ids``. The loss is divided by it (by 1 when there are no ids).
    mask: optional ``[B]``; masked sequences contribute 0 (even if NaN).
    axis_name: mapped axis name(s) the batch is split over. The loss and the
      metrics are then global (the same on every device).

  Returns:
    ``(loss, metrics)``: scalar loss, and a dict of float32 scalars computed
    over valid sequences of the global batch: ``ratio_mean`` and ``ratio_max``
    (of ``exp(log_ratio)`` with the log-ratio clamped to ±20 so they stay
    finite), ``capped_fraction`` (share of ratios above ``max_ratio``) and
    ``effective_sample_size`` (``1/Σ w̄²`` per segment, averaged over
    non-empty segments).

  Raises:
    ValueError: inputs not all of the same 1-D shape, or any reason listed in
      :func:`self_normalized_weights`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> seq_logp = jnp.array([-3.0, -2.0, -4.0, -1.0])
    >>> old = jnp.array([-3.0, -2.5, -4.0, -9.0])
    >>> adv = jnp.array([1.0, -1.0, 0.5, -0.5])
    >>> loss, metrics = stabledrl_policy_loss(
    ...     seq_logp, old, adv, segment_ids=jnp.array([0, 0, 1, 1]),
    ...     num_segments=2)
    >>> float(metrics["capped_fraction"])
    0.25
    >>> grad = jax.grad(lambda s: stabledrl_policy_loss(
    ...     s, old, adv, segment_ids=jnp.array([0, 0, 1, 1]),
    ...     num_segments=2)[0])(seq_logp)
    >>> grad.shape
    (4,)

  References:
    Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
    Models <https://arxiv.org/abs/2603.06743>`_, 2026.
  """
  seq_logp = jnp.asarray(seq_logp)
  check_ndim("seq_logp", seq_logp, 1)
  check_same_shape("old_seq_logp", old_seq_logp, "seq_logp", seq_logp)
  check_same_shape("advantages", advantages, "seq_logp", seq_logp)
  valid = valid_mask(mask, seq_logp)
  dtype = float_dtype(seq_logp)
  log_ratio = jax.lax.stop_gradient(
      seq_logp.astype(dtype) - jnp.asarray(old_seq_logp).astype(dtype))
  weights = self_normalized_weights(
      log_ratio, max_ratio=max_ratio, segment_ids=segment_ids,
      num_segments=num_segments, mask=valid, axis_name=axis_name)
  segment_ids, num_segments = resolve_segments(
      seq_logp, segment_ids, num_segments)

  # Zero masked inputs before multiplying, so a NaN there cannot reach the
  # gradient through the unselected branch of a where.
  safe_logp = jnp.where(valid, seq_logp.astype(dtype), 0)
  safe_adv = jnp.where(valid, jnp.asarray(advantages).astype(dtype), 0)
  loss = -masked_total(weights * safe_adv * safe_logp, valid, axis_name)
  loss = loss / num_segments

  count = masked_total(1, valid, axis_name)
  clamped = jnp.clip(log_ratio, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
  ratio = jnp.where(valid, jnp.exp(clamped), 0)
  capped = log_ratio > jnp.log(jnp.asarray(max_ratio, dtype))
  square_sums = segment_total(
      weights * weights, segment_ids, num_segments, axis_name)
  ess = safe_divide(jnp.ones_like(square_sums), square_sums)
  nonempty = (square_sums > 0).astype(dtype)
  metrics = {
      "ratio_mean": safe_divide(masked_total(ratio, valid, axis_name), count),
      "ratio_max": all_max(jnp.max(ratio, initial=0), axis_name),
      "capped_fraction": safe_divide(
          masked_total(capped, valid, axis_name), count),
      "effective_sample_size": safe_divide(jnp.sum(ess), jnp.sum(nonempty)),
  }
  return loss, metrics
