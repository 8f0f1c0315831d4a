"""Policy-gradient objectives: StableDRL's self-normalized loss and GRPO/PPO.

Shapes: one value per sequence is ``[B]``; one value per token is ``[B, T]``
with a ``mask`` of the same shape (1 for a real token, 0 for padding).

Every function that reduces over the batch takes ``axis_name``: when the
batch is split over that mapped axis (``jax.pmap`` / ``jax.shard_map``), sums
and counts are ``psum``'d and maxima ``pmax``'d, so the result equals the one
computed on the whole batch on one device. The reductions are written once,
in :mod:`stabledrl_jax._src.reductions` and :func:`aggregate_loss`.

References:
  Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
  Models <https://arxiv.org/abs/2603.06743>`_, 2026.
  Shao et al., `DeepSeekMath (GRPO) <https://arxiv.org/abs/2402.03300>`_, 2024.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from stabledrl_jax._src import validation
from stabledrl_jax._src.distributed import all_max
from stabledrl_jax._src.distributed import all_sum
from stabledrl_jax._src.reductions import float_dtype
from stabledrl_jax._src.reductions import masked_total
from stabledrl_jax._src.reductions import resolve_segments
from stabledrl_jax._src.reductions import safe_divide
from stabledrl_jax._src.reductions import segment_peak
from stabledrl_jax._src.reductions import segment_total
from stabledrl_jax._src.reductions import valid_mask
from stabledrl_jax._src.typing import AxisName
from stabledrl_jax._src.typing import KLKind
from stabledrl_jax._src.typing import LossAggregation
from stabledrl_jax._src.typing import RatioLevel
from stabledrl_jax._src.typing import Scalar
from stabledrl_jax._src.validation import check_ndim
from stabledrl_jax._src.validation import check_same_shape

# Log-ratios are clamped to this range before ``exp`` wherever a ratio value
# (not a weight) is needed, so that ratios stay finite in float32.
LOG_RATIO_LIMIT = 20.0

# ---------------------------------------------------------------------------
# StableDRL: unconditional ratio cap and self-normalization.
# ---------------------------------------------------------------------------


def self_normalized_weights(
    log_ratio: jax.typing.ArrayLike,
    *,
    max_ratio: Scalar = 5.0,
    group_size: Optional[int] = None,
    segment_ids: Optional[jax.typing.ArrayLike] = None,
    num_segments: Optional[int] = None,
    mask: Optional[jax.typing.ArrayLike] = None,
    axis_name: Optional[AxisName] = None,
) -> jax.Array:
  """Capped importance ratios, normalized to sum to 1 within each segment.

  ``log_w = min(log_ratio, log(max_ratio))`` — an upper cap applied whatever
  the sign of the advantage — then a softmax of ``log_w`` within each segment
  (e.g. a GRPO group), or over the whole batch when no grouping is given.
  The weights carry no gradient. The softmax subtracts each segment's maximum
  before ``exp``, so log-ratios of ±1e4 give finite weights.

  Group either with ``group_size`` (contiguous runs of the global batch, as
  :func:`group_advantages` lays them out) or with ``segment_ids`` and
  ``num_segments`` (any layout), or not at all.

  Args:
    log_ratio: ``[B]`` log importance ratios ``log π_θ(y) − log π_old(y)``.
    max_ratio: the cap ``C`` on the ratio; finite and > 0.
    group_size: optional static int: rows ``[k·G, (k+1)·G)`` of the global
      batch form segment ``k``; must divide the global batch size. Under
      ``axis_name`` device ``d`` holds the ``d``-th block of rows (as
      ``shard_map`` with ``P(axis_name)`` splits them).
    segment_ids: optional ``[B]`` int ids in ``[0, num_segments)``; ids are
      global, so under ``axis_name`` a segment may span devices. Concrete ids
      outside that range raise; traced ones (under ``jit``) give their entry
      weight 0, and it enters no normalizer.
    num_segments: static number of segments in the (global) batch; required
      with ``segment_ids``; None or 1 without any grouping.
    mask: optional ``[B]`` selection, 0/1 or bool (not a weight): entries where
      it is 0 get weight 0 and do not enter any normalizer; a concrete
      negative value raises.
    axis_name: mapped axis name(s) the batch is split over; the segment max is
      ``pmax``'d and the segment sum ``psum``'d.

  Returns:
    ``[B]`` weights (float32 or wider), ≥ 0; the weights of each segment with
    at least one valid entry with a log-ratio above -inf sum to 1; a segment
    with none is all 0 (where the softmax is 0/0, it adds no gradient).

  Raises:
    ValueError: ``log_ratio`` is not 1-D; ``max_ratio`` is not finite and
      > 0; ``segment_ids``/``mask`` shapes differ from ``log_ratio``;
      ``num_segments`` missing, not a positive int, or other than 1 without
      grouping; ``group_size`` not a positive int dividing the global batch,
      or given with ``segment_ids``; concrete ``segment_ids`` outside
      ``[0, num_segments)``; a concrete negative ``mask`` value.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import self_normalized_weights
    >>> w = self_normalized_weights(jnp.log(jnp.array([1.0, 1.0, 100.0])))
    >>> [round(float(v), 4) for v in w]  # ratio 100 capped at 5: 1/7, 1/7, 5/7
    [0.1429, 0.1429, 0.7143]
    >>> self_normalized_weights(jnp.zeros(4), segment_ids=jnp.array([0, 0, 1, 1]),
    ...                         num_segments=2, mask=jnp.array([1, 1, 1, 0]))
    Array([0.5, 0.5, 1. , 0. ], dtype=float32)
    >>> self_normalized_weights(jnp.zeros(4), group_size=2,
    ...                         mask=jnp.array([1, 1, 1, 0]))
    Array([0.5, 0.5, 1. , 0. ], dtype=float32)

  References:
    Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
    Models <https://arxiv.org/abs/2603.06743>`_, 2026 (``compute_loss_spg``).
  """
  log_ratio = jnp.asarray(log_ratio)
  check_ndim("log_ratio", log_ratio, 1)
  validation.check_positive("max_ratio", max_ratio)
  segments = resolve_segments(log_ratio, segment_ids, num_segments,
                              group_size=group_size, axis_name=axis_name)
  valid = valid_mask(mask, log_ratio) & segments.in_range
  dtype = float_dtype(log_ratio)
  segment_ids, num_segments = segments.ids, segments.num

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
    ratio_logp: Optional[jax.typing.ArrayLike] = None,
    max_ratio: Scalar = 5.0,
    group_size: Optional[int] = None,
    segment_ids: Optional[jax.typing.ArrayLike] = None,
    num_segments: Optional[int] = None,
    mask: Optional[jax.typing.ArrayLike] = None,
    axis_name: Optional[AxisName] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """StableDRL's policy loss: capped, self-normalized importance weights.

  ``loss = −Σ_i w̄_i A_i seq_logp_i / num_segments`` with ``w̄`` from
  :func:`self_normalized_weights` applied to the stop-gradient log-ratio
  ``(ratio_logp if given else seq_logp) − old_seq_logp``. The weights carry no
  gradient, so ``∇loss = −Σ_i w̄_i A_i ∇seq_logp_i / G``: within each segment
  a convex combination of per-sample gradients, whose norm is at most
  ``max_i |A_i| ‖∇seq_logp_i‖`` however noisy the ratios.

  For a diffusion LM the StableDRL reference weighs with the ELBO ratio but
  sends the gradient through the SPG sandwich bound; that is
  ``stabledrl_policy_loss(sandwich_logp(elbo, eubo, A), old_elbo, A,
  ratio_logp=elbo, group_size=G)`` (see :func:`sandwich_logp`).

  Args:
    seq_logp: ``[B]`` sequence log-likelihoods under the current policy (for a
      diffusion LM, e.g. an ELBO estimate); the gradient flows through these.
    old_seq_logp: ``[B]`` the same under the policy that sampled the batch.
    advantages: ``[B]`` advantages (e.g. from :func:`group_advantages`).
    ratio_logp: optional ``[B]`` current log-likelihoods that define the
      importance ratio in place of ``seq_logp`` (no gradient flows through
      them); e.g. the ELBO when ``seq_logp`` is the sandwich bound.
    max_ratio: ratio cap ``C``; finite and > 0 (the reference code uses 5).
    group_size: optional static int, contiguous groups of the global batch
      (see :func:`self_normalized_weights`); the loss is divided by the
      number of groups.
    segment_ids: optional ``[B]`` global group ids; weights are normalized
      within each group. With neither this nor ``group_size``: one segment,
      the whole (global) batch.
    num_segments: number of groups ``G`` in the global batch; required with
      ``segment_ids``. The loss is divided by it (by 1 without grouping).
    mask: optional ``[B]`` 0/1 (or bool) selection; masked sequences
      contribute 0 (even if NaN).
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
    >>> from stabledrl_jax import stabledrl_policy_loss
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
    >>> # −w̄·A/G: w̄ = softmax(0, 0.5) in group 0, softmax(0, log 5) in group 1.
    >>> [round(float(g), 4) for g in grad]
    [-0.1888, 0.3112, -0.0417, 0.2083]
    >>> # Weights from another estimate: ratios 1 and 1 give w̄ = 1/2 each.
    >>> float(stabledrl_policy_loss(seq_logp[:2], old[:2], adv[:2],
    ...                             ratio_logp=old[:2])[0])  # −(−3 + 2) / 2
    0.5

  References:
    Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
    Models <https://arxiv.org/abs/2603.06743>`_, 2026.
  """
  seq_logp = jnp.asarray(seq_logp)
  check_ndim("seq_logp", seq_logp, 1)
  check_same_shape("old_seq_logp", old_seq_logp, "seq_logp", seq_logp)
  check_same_shape("advantages", advantages, "seq_logp", seq_logp)
  if ratio_logp is None:
    ratio_logp = seq_logp
  check_same_shape("ratio_logp", ratio_logp, "seq_logp", seq_logp)
  segments = resolve_segments(seq_logp, segment_ids, num_segments,
                              group_size=group_size, axis_name=axis_name)
  valid = valid_mask(mask, seq_logp) & segments.in_range
  segment_ids, num_segments = segments.ids, segments.num
  dtype = float_dtype(seq_logp)
  log_ratio = jax.lax.stop_gradient(
      jnp.asarray(ratio_logp).astype(dtype)
      - jnp.asarray(old_seq_logp).astype(dtype))
  weights = self_normalized_weights(
      log_ratio, max_ratio=max_ratio, segment_ids=segment_ids,
      num_segments=num_segments, mask=valid, axis_name=axis_name)

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


# ---------------------------------------------------------------------------
# Token-level losses: aggregation, GRPO/PPO, value, entropy, KL.
# ---------------------------------------------------------------------------

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                     "seq-mean-token-sum-norm")
RATIO_LEVELS = ("token", "sequence")
KL_KINDS = ("k1", "k2", "k3")


def aggregate_loss(
    values: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    *,
    loss_agg: LossAggregation = "token-mean",
    axis_name: Optional[AxisName] = None,
) -> jax.Array:
  """Reduces ``[B, T]`` per-token values to a scalar, over the global batch.

  Modes (``n_b`` = real tokens of sequence ``b``; sums over real tokens):

  * ``"token-mean"``: ``Σ_bt v / Σ_b n_b`` — every token weighs the same.
  * ``"seq-mean-token-mean"``: mean over non-empty sequences of
    ``Σ_t v / n_b`` — every sequence weighs the same.
  * ``"seq-mean-token-sum"``: mean over non-empty sequences of ``Σ_t v``.
  * ``"seq-mean-token-sum-norm"``: ``Σ_bt v / (B · T)`` with ``B`` the global
    number of rows and ``T`` the padded length — a constant divisor
    (Dr. GRPO).

  Under ``axis_name`` every divisor is a global count (``psum``), never the
  count of one device or micro-batch, so the loss equals the loss of the
  whole batch.

  Args:
    values: ``[B, T]`` per-token values; entries where ``mask`` is 0 are
      ignored, even if NaN.
    mask: ``[B, T]`` 0/1 (or bool) selection, 1 for a real token (a
      selection, not a weight: any non-zero value counts as 1; a concrete
      negative value raises).
    loss_agg: one of the four modes above.
    axis_name: mapped axis name(s) the batch (rows) is split over.

  Returns:
    A scalar; 0 when there is no real token.

  Raises:
    ValueError: ``values`` is not 2-D, ``mask`` has another shape, or
      ``loss_agg`` is unknown.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import aggregate_loss
    >>> v = jnp.array([[1.0, 3.0], [5.0, 0.0]])
    >>> m = jnp.array([[1, 1], [1, 0]])
    >>> float(aggregate_loss(v, m))  # (1 + 3 + 5) / 3
    3.0
    >>> float(aggregate_loss(v, m, loss_agg="seq-mean-token-mean"))  # (2+5)/2
    3.5

  References:
    Liu et al., `Understanding R1-Zero-Like Training: A Critical Perspective
    (Dr. GRPO) <https://arxiv.org/abs/2503.20783>`_, 2025.
  """
  validation.check_choice("loss_agg", loss_agg, LOSS_AGGREGATIONS)
  values = jnp.asarray(values)
  check_ndim("values", values, 2)
  valid = valid_mask(mask, values)
  total = masked_total(values, valid, axis_name)
  if loss_agg == "token-mean":
    return safe_divide(total, masked_total(1, valid, axis_name))
  if loss_agg == "seq-mean-token-sum-norm":
    rows, length = values.shape
    return total / (all_sum(jnp.float32(rows), axis_name) * length)
  safe = jnp.where(valid, values.astype(float_dtype(values)), 0)
  per_seq = jnp.sum(safe, axis=1)
  tokens = jnp.sum(valid, axis=1)
  if loss_agg == "seq-mean-token-mean":
    per_seq = safe_divide(per_seq, tokens.astype(per_seq.dtype))
  nonempty = tokens > 0
  return safe_divide(masked_total(per_seq, nonempty, axis_name),
                     masked_total(1, nonempty, axis_name))


def grpo_policy_loss(
    logp: jax.typing.ArrayLike,
    old_logp: jax.typing.ArrayLike,
    advantages: jax.typing.ArrayLike,
    mask: Optional[jax.typing.ArrayLike] = None,
    *,
    eps_low: Scalar = 0.2,
    eps_high: Scalar = 0.2,
    dual_clip: Optional[Scalar] = None,
    ratio_level: RatioLevel = "token",
    loss_agg: LossAggregation = "token-mean",
    axis_name: Optional[AxisName] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO/GRPO clipped surrogate loss (conditional clip), with GSPO and dual-clip.

  Per token, ``r = exp(clip(logp − old_logp, −20, 20))`` and
  ``ℓ = max(−A r, −A clip(r, 1 − eps_low, 1 + eps_high))``. This clip is
  *conditional*: for ``A > 0`` it bounds ``r`` from above only, for ``A < 0``
  from below only, so a token with ``A < 0`` and a huge ``r`` keeps the
  unclipped ``−A r`` and its gradient grows with ``r``. ``dual_clip=c``
  bounds that case: for ``A < 0``, ``ℓ = min(ℓ, −A c)``. Compare
  :func:`stabledrl_policy_loss`, which caps every ratio.

  ``ratio_level="sequence"`` (GSPO) replaces each token's log-ratio by its
  sequence's masked mean log-ratio ``s_b`` in value; the gradient at token
  ``t`` is that of ``logp_t`` scaled by ``exp(s_b)`` (GSPO-token form, equal
  to GSPO when advantages are per sequence). Both levels clamp the log-ratio
  to ``[−20, 20]`` before ``exp`` (zero gradient outside): verl clamps GSPO's
  sequence log-ratio at ``+10`` only and TRL not at all; ``±20`` keeps every
  ratio finite in float32 without changing any loss whose ratios stay below
  ``e^20``. To bound the ``A < 0`` side use ``dual_clip``, or
  :func:`stabledrl_policy_loss`.

  Sequence-level inputs are accepted too: ``logp``, ``old_logp`` and
  ``advantages`` of shape ``[B]`` (e.g. diffusion-LM ELBO estimates, see
  :func:`diffusion_elbo`) are treated as ``B`` sequences of one token each,
  so every ``loss_agg`` mode averages over the selected sequences except
  ``"seq-mean-token-sum-norm"``, which divides by the global ``B``.

  Args:
    logp: ``[B, T]`` log-probabilities of the sampled tokens, current policy;
      or ``[B]`` sequence log-likelihoods.
    old_logp: the same under the sampling policy (no gradient).
    advantages: ``[B]`` (broadcast over tokens) or ``[B, T]``.
    mask: optional 0/1 (or bool) selection of ``logp``'s shape, 1 for a real
      token; padding contributes 0 even if NaN. None selects everything. A
      concrete negative value raises.
    eps_low: lower clip ``1 − eps_low``; in ``[0, 1)``.
    eps_high: upper clip ``1 + eps_high``; ≥ 0 (DAPO's clip-higher uses
      ``eps_high > eps_low``).
    dual_clip: None, or ``c > 1`` bounding the loss of ``A < 0`` tokens.
    ratio_level: ``"token"`` (PPO/GRPO) or ``"sequence"`` (GSPO).
    loss_agg: see :func:`aggregate_loss`.
    axis_name: mapped axis name(s) the batch is split over; divisors and
      metrics are then global.

  Returns:
    ``(loss, metrics)``; metrics are float32 scalars averaged over real tokens
    of the global batch: ``clip_fraction_low`` (``A < 0`` and
    ``r < 1 − eps_low``: clipped, no gradient), ``clip_fraction_high``
    (``A > 0`` and ``r > 1 + eps_high``), ``dual_clip_fraction`` (``A < 0``
    and ``r > c``; 0 without dual-clip), ``approx_kl`` (the token-mean of
    ``(r − 1) − log r``, an estimate of KL(π_old ‖ π_θ), with the token
    log-ratio).

  Raises:
    ValueError: ``logp`` neither 1-D nor 2-D, shapes differ, ``eps_low``
      outside ``[0, 1)``, ``eps_high`` < 0, ``dual_clip`` ≤ 1, unknown
      ``ratio_level`` or ``loss_agg``, a concrete negative ``mask`` value.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from stabledrl_jax import grpo_policy_loss
    >>> logp = jnp.log(jnp.array([[2.0, 1.0]]))  # ratios 2 and 1 (old = 0)
    >>> loss, m = grpo_policy_loss(logp, jnp.zeros((1, 2)), jnp.array([-1.0]),
    ...                            jnp.ones((1, 2)))
    >>> float(loss)  # A < 0: the ratio 2 is not clipped: (2 + 1) / 2
    1.5
    >>> loss, m = grpo_policy_loss(logp, jnp.zeros((1, 2)), jnp.array([-1.0]),
    ...                            jnp.ones((1, 2)), dual_clip=1.5)
    >>> float(loss), float(m["dual_clip_fraction"])  # (1.5 + 1) / 2
    (1.25, 0.5)
    >>> # Sequence level: ratios 2 and 1 with A = 1: clipped to 1.2, then mean.
    >>> loss, _ = grpo_policy_loss(jnp.log(jnp.array([2.0, 1.0])), jnp.zeros(2),
    ...                            jnp.ones(2))
    >>> round(float(loss), 4)  # −(1.2 + 1) / 2
    -1.1

  References:
    Schulman et al., `Proximal Policy Optimization Algorithms
    <https://arxiv.org/abs/1707.06347>`_, 2017.
    Ye et al., `Mastering Complex Control in MOBA Games with Deep
    Reinforcement Learning (dual-clip) <https://arxiv.org/abs/1912.09729>`_,
    2020.
    Zheng et al., `Group Sequence Policy Optimization
    <https://arxiv.org/abs/2507.18071>`_, 2025.
  """
  _check_eps(eps_low, eps_high)
  if dual_clip is not None:
    c = validation.concrete_scalar("dual_clip", dual_clip)
    if c is not None and not (c > 1 and c < float("inf")):
      raise ValueError(f"dual_clip must be None or finite and > 1, got "
                       f"{dual_clip!r}.")
  validation.check_choice("ratio_level", ratio_level, RATIO_LEVELS)
  validation.check_choice("loss_agg", loss_agg, LOSS_AGGREGATIONS)
  logp = jnp.asarray(logp)
  if logp.ndim not in (1, 2):
    raise ValueError(
        f"logp must have shape [B, T] (tokens) or [B] (sequences), got shape "
        f"{logp.shape}.")
  check_same_shape("old_logp", old_logp, "logp", logp)
  valid = valid_mask(mask, logp)
  advantages = jnp.asarray(advantages)
  if logp.ndim == 1:
    check_same_shape("advantages", advantages, "logp", logp)
    logp, old_logp = logp[:, None], jnp.asarray(old_logp)[:, None]
    advantages, valid = advantages[:, None], valid[:, None]
  if advantages.shape not in (logp.shape[:1], logp.shape):
    raise ValueError(
        f"advantages must have shape {logp.shape[:1]} or {logp.shape}, got "
        f"shape {advantages.shape}.")
  if advantages.ndim == 1:
    advantages = jnp.broadcast_to(advantages[:, None], logp.shape)

  dtype = float_dtype(logp)
  logp = jnp.where(valid, logp.astype(dtype), 0)
  old_logp = jnp.where(valid, jnp.asarray(old_logp).astype(dtype), 0)
  adv = jnp.where(valid, advantages.astype(dtype), 0)

  token_log_ratio = logp - jax.lax.stop_gradient(old_logp)
  if ratio_level == "token":
    log_ratio = token_log_ratio
  else:
    tokens = jnp.sum(valid, axis=1).astype(dtype)
    seq_log_ratio = safe_divide(jnp.sum(token_log_ratio, axis=1), tokens)
    log_ratio = (jax.lax.stop_gradient(seq_log_ratio)[:, None] + logp
                 - jax.lax.stop_gradient(logp))
  ratio = jnp.exp(jnp.clip(log_ratio, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
  clipped_ratio = jnp.clip(ratio, 1 - eps_low, 1 + eps_high)
  per_token = jnp.maximum(-adv * ratio, -adv * clipped_ratio)
  if dual_clip is not None:
    per_token = jnp.where(
        adv < 0, jnp.minimum(per_token, -adv * dual_clip), per_token)
  loss = aggregate_loss(per_token, valid, loss_agg=loss_agg,
                        axis_name=axis_name)

  ratio = jax.lax.stop_gradient(ratio)
  count = masked_total(1, valid, axis_name)
  token_mean = lambda x: safe_divide(masked_total(x, valid, axis_name), count)
  token_log_ratio = jax.lax.stop_gradient(
      jnp.clip(token_log_ratio, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
  dual_active = ((adv < 0) & (ratio > dual_clip) if dual_clip is not None
                 else jnp.zeros_like(valid))
  metrics = {
      "clip_fraction_low": token_mean((adv < 0) & (ratio < 1 - eps_low)),
      "clip_fraction_high": token_mean((adv > 0) & (ratio > 1 + eps_high)),
      "dual_clip_fraction": token_mean(dual_active),
      "approx_kl": token_mean(jnp.expm1(token_log_ratio) - token_log_ratio),
  }
  return loss, metrics


def _check_eps(eps_low: Scalar, eps_high: Scalar) -> None:
  low = validation.concrete_scalar("eps_low", eps_low)
  if low is not None and not 0 <= low < 1:
    raise ValueError(f"eps_low must be in [0, 1), got {eps_low!r}.")
  high = validation.concrete_scalar("eps_high", eps_high)
  if high is not None and not 0 <= high < float("inf"):
    raise ValueError(f"eps_high must be finite and >= 0, got {eps_high!r}.")


def value_loss(
    values: jax.typing.ArrayLike,
    old_values: jax.typing.ArrayLike,
    returns: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    *,
    clip_range: Optional[Scalar] = None,
    loss_agg: LossAggregation = "token-mean",
    axis_name: Optional[AxisName] = None,
) -> jax.Array:
  """Squared-error value loss, optionally clipped around the old values (PPO).

  Per token ``½ (v − R)²``; with ``clip_range=c``,
  ``½ max((v − R)², (clip(v, v_old − c, v_old + c) − R)²)``. Reduced with
  :func:`aggregate_loss`.

  Args:
    values: ``[B, T]`` value predictions (the gradient flows through these).
    old_values: ``[B, T]`` predictions of the policy that collected the batch.
    returns: ``[B, T]`` regression targets.
    mask: ``[B, T]`` 0/1 (or bool) selection, 1 for a real token.
    clip_range: None, or ``c > 0``.
    loss_agg: see :func:`aggregate_loss`.
    axis_name: mapped axis name(s) the batch is split over.

  Returns:
    The scalar loss.

  Raises:
    ValueError: shapes differ, ``clip_range`` ≤ 0, unknown ``loss_agg``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import value_loss
    >>> v, old, ret = jnp.array([[3.0]]), jnp.array([[0.0]]), jnp.array([[4.0]])
    >>> float(value_loss(v, old, ret, jnp.ones((1, 1))))  # ½ (3 − 4)²
    0.5
    >>> # Clipped to 1: ½ max((3 − 4)², (1 − 4)²).
    >>> float(value_loss(v, old, ret, jnp.ones((1, 1)), clip_range=1.0))
    4.5
  """
  if clip_range is not None:
    validation.check_positive("clip_range", clip_range)
  values = jnp.asarray(values)
  check_ndim("values", values, 2)
  check_same_shape("old_values", old_values, "values", values)
  check_same_shape("returns", returns, "values", values)
  valid = valid_mask(mask, values)
  dtype = float_dtype(values)
  v = jnp.where(valid, values.astype(dtype), 0)
  old = jnp.where(valid, jnp.asarray(old_values).astype(dtype), 0)
  target = jnp.where(valid, jnp.asarray(returns).astype(dtype), 0)
  per_token = jnp.square(v - target)
  if clip_range is not None:
    v_clipped = old + jnp.clip(v - old, -clip_range, clip_range)
    per_token = jnp.maximum(per_token, jnp.square(v_clipped - target))
  return aggregate_loss(0.5 * per_token, valid, loss_agg=loss_agg,
                        axis_name=axis_name)


def entropy_bonus(
    logits: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    *,
    loss_agg: LossAggregation = "token-mean",
    axis_name: Optional[AxisName] = None,
) -> jax.Array:
  """Mean entropy of the token distributions, to be *subtracted* from a loss.

  Per token ``H = −Σ_v p_v log p_v`` with ``p = softmax(logits)`` (computed in
  float32; ``−inf`` logits contribute 0), reduced with :func:`aggregate_loss`.
  Use as ``loss − coef · entropy_bonus(logits, mask)``.

  Args:
    logits: ``[B, T, V]`` unnormalized log-probabilities.
    mask: ``[B, T]`` 0/1 (or bool) selection, 1 for a real token.
    loss_agg: see :func:`aggregate_loss`.
    axis_name: mapped axis name(s) the batch is split over.

  Returns:
    The scalar aggregated entropy (≥ 0).

  Raises:
    ValueError: ``logits`` not 3-D, ``mask`` not ``logits.shape[:2]``,
      unknown ``loss_agg``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import entropy_bonus
    >>> float(entropy_bonus(jnp.zeros((1, 1, 4)), jnp.ones((1, 1))))  # log 4
    1.386...
  """
  logits = jnp.asarray(logits)
  check_ndim("logits", logits, 3)
  valid = valid_mask(mask, logits[..., 0])
  # Padding positions get zero logits, so a NaN there reaches neither the
  # value nor the gradient.
  logits = jnp.where(valid[..., None], logits.astype(float_dtype(logits)), 0)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(log_p)
  # Zero the -inf log-probs before the product so that 0 · (-inf) can reach
  # neither the value nor the gradient.
  entropy = -jnp.sum(p * jnp.where(p > 0, log_p, 0), axis=-1)
  return aggregate_loss(entropy, valid, loss_agg=loss_agg, axis_name=axis_name)


def kl_penalty(
    logp: jax.typing.ArrayLike,
    ref_logp: jax.typing.ArrayLike,
    *,
    kind: KLKind = "k3",
    clamp: Optional[Scalar] = 10.0,
) -> jax.Array:
  """Per-token estimates of KL(π_θ ‖ π_ref) from sampled-token log-probs.

  With ``δ = logp − ref_logp``: ``k1 = δ`` and ``k2 = ½ δ²``, unclamped;
  ``k3 = e^{−δ} + δ − 1`` (non-negative, low variance) is evaluated at
  ``δ`` clipped to ``[−20, 20]`` (so ``e^{−δ}`` stays finite) and its *value*
  is then clipped to ``[−clamp, clamp]``: a token with ``δ = −100`` costs
  ``clamp`` (10 by default) with zero gradient, not ``e^{100}``. These are
  verl's ``"k1"``, ``"k2"`` and ``"low_var_kl"`` estimators. Reduce the result
  with :func:`aggregate_loss`.

  Args:
    logp: log-probabilities under the current policy (any shape).
    ref_logp: the same under the reference policy.
    kind: ``"k1"``, ``"k2"`` or ``"k3"``.
    clamp: bound on the ``k3`` value, finite and > 0, or None for no bound
      (``k3`` then reaches ``e^{20} − 21 ≈ 4.9e8`` at most). Ignored by
      ``k1`` and ``k2``.

  Returns:
    An array of ``logp``'s shape (float32 or wider).

  Raises:
    ValueError: shapes differ, unknown ``kind``, ``clamp`` neither None nor
      finite > 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import kl_penalty
    >>> kl_penalty(jnp.array([0.0, 1.0]), jnp.array([0.0, 0.0]), kind="k2")
    Array([0. , 0.5], dtype=float32)
    >>> float(kl_penalty(jnp.array([-100.0]), jnp.array([0.0]))[0])
    10.0
    >>> round(float(kl_penalty(jnp.array([-1.0]), jnp.array([0.0]))[0]), 4)
    0.7183
    >>> float(kl_penalty(jnp.array([-100.0]), jnp.array([0.0]), kind="k1")[0])
    -100.0

  References:
    Schulman, `Approximating KL Divergence
    <http://joschu.net/blog/kl-approx.html>`_, 2020.
  """
  validation.check_choice("kind", kind, KL_KINDS)
  if clamp is not None:
    validation.check_positive("clamp", clamp)
  logp = jnp.asarray(logp)
  check_same_shape("ref_logp", ref_logp, "logp", logp)
  dtype = float_dtype(logp)
  delta = logp.astype(dtype) - jnp.asarray(ref_logp).astype(dtype)
  if kind == "k1":
    return delta
  if kind == "k2":
    return 0.5 * jnp.square(delta)
  delta = jnp.clip(delta, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
  k3 = jnp.expm1(-delta) + delta
  if clamp is not None:
    k3 = jnp.clip(k3, -clamp, clamp)
  return k3
