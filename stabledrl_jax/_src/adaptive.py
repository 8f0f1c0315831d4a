"""Adaptive clipping thresholds and spike skipping, branch-free on any layout.

A fixed ``max_norm`` has to be tuned per task and over-suppresses early in
training, when norms are large for good reasons. The transforms here set the
threshold from the statistics of the global norms seen so far:

* :func:`zscore_clip` (ZClip): exponential moving mean and variance of the
  norm; a norm more than ``z_thresh`` standard deviations above the mean is
  scaled down to a threshold that shrinks the larger the outlier.
* :func:`quantile_clip` (AutoClip): the threshold is a quantile of the last
  ``history`` norms, kept in a ring buffer inside the state.
* :func:`skip_spikes` wraps any optax optimizer and drops a whole step (zero
  updates, inner state untouched) when its norm is non-finite, above
  ``max_norm`` or a z-score outlier against the recent accepted norms.

Every decision is arithmetic plus ``jnp.where``: the compiled update holds no
``conditional``, so it runs unchanged under ``jax.jit``, ``jax.pmap`` and
``jax.shard_map``. The norm is :func:`stabledrl_jax.global_norm` (float32,
exact for split gradients with ``axis_name``/``partition_specs``), so every
replica computes the same norm and therefore holds the same state.

A non-finite norm (NaN/inf) never enters the statistics: it zeroes the step
(like ``nonfinite="zero"`` in :func:`stabledrl_jax.unconditional_clip`), is
counted in ``num_nonfinite``, and leaves the running moments, history and
window exactly as they were. A ``max_norm`` given as an array that is ≤ 0,
NaN, inf or subnormal is handled the same way.

A norm of exactly 0 (all-equal rewards give zero advantages and zero
gradients) carries no information about the scale of the gradients: the step
passes unchanged (it is all zeros) and is not recorded either, so zero steps
can neither pull a mean to 0 nor fill a history with zeros. And the standard
deviation used by the z-score tests is never taken below 10% of the mean: a
run of identical norms has zero variance, with which any later norm above the
mean would be an outlier and the statistics could never move up again.

References:
  Kumar et al., `ZClip: Adaptive Spike Mitigation for LLM Pre-Training
  <https://arxiv.org/abs/2504.02507>`_, 2025.
  Seetharaman et al., `AutoClip: Adaptive Gradient Clipping for Source
  Separation Networks <https://arxiv.org/abs/2007.14469>`_, 2020.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from stabledrl_jax._src import clipping
from stabledrl_jax._src import norms
from stabledrl_jax._src import validation
from stabledrl_jax._src.typing import AxisName
from stabledrl_jax._src.typing import PyTree
from stabledrl_jax._src.typing import Scalar

# Added to the standard deviation before dividing by it, as in ZClip.
_STD_EPS = 1e-6
# The z-score tests treat norms as varying by at least this fraction of their
# mean: a norm within z_thresh * 10% of the mean is never an outlier. Without
# such a floor, identical norms (σ = 0) make every larger norm an outlier that
# ZClip clips to exactly μ, so μ and σ never move again.
_MIN_RELATIVE_STD = 0.1


def _check_unit_interval(name: str, value: Scalar, *,
                         closed_right: bool) -> None:
  """Raises unless a concrete ``value`` lies in (0, 1) or (0, 1]."""
  number = validation.concrete_scalar(name, value)
  if number is None:
    return
  inside = 0.0 < number < 1.0 or (closed_right and number == 1.0)
  if not inside:
    interval = "(0, 1]" if closed_right else "(0, 1)"
    raise ValueError(f"{name} must lie in {interval}, got {value!r}.")


def _check_max_norm(max_norm: Optional[Scalar]) -> None:
  if max_norm is not None:
    validation.check_threshold("max_norm", max_norm)


def _ceiling(max_norm: Optional[Scalar]) -> tuple[jax.Array, jax.Array]:
  """``(valid, ceiling)``: ``max_norm`` as float32, +inf when None or invalid.

  An invalid ``max_norm`` given as an array (≤ 0, NaN, inf, subnormal) zeroes
  the step; the +inf placeholder keeps it out of every division and comparison.
  """
  return clipping.usable_threshold(max_norm, placeholder=jnp.inf)


def _f32(x: jax.typing.ArrayLike) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _floored_std(var: jax.Array, mean: jax.Array) -> jax.Array:
  """``max(σ, 10% of μ)``: the spread the z-score tests use."""
  return jnp.maximum(jnp.sqrt(jnp.maximum(var, 0.0)), _MIN_RELATIVE_STD * mean)


# ---------------------------------------------------------------------------
# ZClip.


class ZScoreClipState(NamedTuple):
  """State of :func:`zscore_clip`: scalars only, identical on every replica.

  Attributes:
    count: int32 number of finite norms recorded so far (warm-up included).
    mean: float32 running mean μ of the norm: the plain mean during warm-up,
      then the EMA of the clipped norms.
    var: float32 running variance σ²: the population variance during
      warm-up, then the EMA.
    threshold: float32 largest norm the last step let through unchanged,
      ``min(μ + z_thresh·(σ + 1e-6), max_norm)`` from the statistics before
      that step, with σ floored at 10% of μ (``max_norm``, or +inf without it,
      during warm-up).
    global_norm: float32 pre-clip global norm of the last update.
    scale: float32 factor applied to the last update; the clipped norm is
      ``global_norm * scale`` (0 for a non-finite step).
    num_clipped: int32 number of steps that were scaled down.
    num_nonfinite: int32 number of steps whose norm was NaN or inf (or whose
      ``max_norm`` given as an array was ≤ 0, NaN, inf or subnormal).

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import zscore_clip
    >>> tx = zscore_clip(warmup_steps=2)
    >>> state = tx.init({"w": jnp.zeros(1)})
    >>> for g in [1.0, 3.0]:
    ...   _, state = tx.update({"w": jnp.array([g])}, state)
    >>> float(state.mean), float(state.var), int(state.count)
    (2.0, 1.0, 2)
  """
  count: jax.Array  # type: ignore[assignment]  # field shadows tuple.count
  mean: jax.Array
  var: jax.Array
  threshold: jax.Array
  global_norm: jax.Array
  scale: jax.Array
  num_clipped: jax.Array
  num_nonfinite: jax.Array


def zscore_clip(
    *,
    alpha: float = 0.97,
    z_thresh: float = 2.5,
    warmup_steps: int = 25,
    max_norm: Optional[Scalar] = None,
    axis_name: Optional[AxisName] = None,
    partition_specs: Optional[PyTree] = None,
) -> optax.GradientTransformation:
  """ZClip: clips global-norm outliers measured by an EMA z-score.

  With ``g`` the global norm of this step and μ, σ² the statistics before it:

  * warm-up (the first ``warmup_steps`` recorded norms): μ and σ² are the
    plain mean and population variance of the norms seen; the step is clipped
    only at ``max_norm`` when given.
  * afterwards: ``z = (g − μ) / (σ + 1e-6)`` with σ floored at 10% of μ
    (``σ = max(sqrt(σ²), 0.1·μ)``). If ``z > z_thresh`` the
    threshold is ``μ + z_thresh²·σ / z`` (ZClip's "adaptive_scaling": the
    larger the outlier, the harder it is scaled down), otherwise none; with
    ``max_norm`` the effective threshold is ``min(that, max_norm)``. The
    update is scaled by ``min(1, threshold / g)`` and the EMA is updated with
    the clipped norm ``g̃ = min(g, threshold)``:
    ``μ ← αμ + (1−α)g̃``, ``σ² ← ασ² + (1−α)(g̃ − μ_new)²``.

  Only finite, non-zero norms are recorded. A non-finite ``g`` (or a
  ``max_norm`` given as an array that is ≤ 0, NaN, inf or subnormal) gives
  all-zero updates, is counted in ``num_nonfinite`` and leaves μ, σ² and
  ``count`` unchanged. A zero ``g`` passes unchanged and leaves them unchanged
  too: zero-gradient steps (e.g. groups whose completions all got the same
  reward) neither start nor end the warm-up, and cannot pull μ to 0. The floor
  on σ keeps a run of identical norms (σ² = 0) from clipping every larger norm
  to exactly μ forever: the clipped norms then exceed μ, so μ and σ² keep
  moving.
  ``warmup_steps=0`` behaves as 1: the statistics start from the first
  recorded norm, which is never z-clipped.

  Args:
    alpha: EMA decay in (0, 1).
    z_thresh: z-score above which a norm is an outlier; > 0.
    warmup_steps: number of recorded norms averaged before the EMA takes over;
      ≥ 0. A static int: with ``optax.inject_hyperparams`` pass it in
      ``static_args``.
    max_norm: optional hard ceiling on the norm, applied at every step
      (warm-up included); a positive finite number or a traced scalar.
    axis_name: mapped axis name(s) every leaf is split over; see
      :func:`stabledrl_jax.global_norm`.
    partition_specs: pytree of ``PartitionSpec`` matching the updates; see
      :func:`stabledrl_jax.global_norm`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ZScoreClipState`.

  Raises:
    ValueError: ``alpha`` outside (0, 1); ``z_thresh`` ≤ 0 or not finite;
      ``warmup_steps`` negative or not an integer; ``max_norm`` a number
      ≤ 0, NaN, inf or subnormal, or an array that is not a real scalar;
      both ``axis_name`` and ``partition_specs`` given.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import zscore_clip
    >>> tx = zscore_clip(warmup_steps=3)
    >>> state = tx.init(None)
    >>> for g in (1.0, 1.2, 0.8):  # warm-up: statistics only
    ...   _, state = tx.update({"w": jnp.array([g])}, state)
    >>> round(float(state.mean), 4), round(float(state.var), 4)
    (1.0, 0.0267)
    >>> out, state = tx.update({"w": jnp.array([10.0])}, state)  # a spike
    >>> round(float(out["w"][0]), 4), int(state.num_clipped)
    (1.0185, 1)

  References:
    Kumar et al., `ZClip: Adaptive Spike Mitigation for LLM Pre-Training
    <https://arxiv.org/abs/2504.02507>`_, 2025.
  """
  _check_unit_interval("alpha", alpha, closed_right=False)
  validation.check_positive("z_thresh", z_thresh, float32=True)
  validation.check_int("warmup_steps", warmup_steps, 0, static_args_hint=True)
  _check_max_norm(max_norm)
  norms.check_layout(axis_name, partition_specs)
  num_warmup = max(int(warmup_steps), 1)

  def init_fn(params):
    norms.check_params_layout(params, partition_specs)
    return ZScoreClipState(
        count=jnp.zeros((), jnp.int32),
        mean=jnp.zeros((), jnp.float32),
        var=jnp.zeros((), jnp.float32),
        threshold=_ceiling(max_norm)[1],
        **clipping.init_clip_state()._asdict(),
    )

  def update_fn(updates, state, params=None):
    del params
    norm = norms.global_norm(
        updates, axis_name=axis_name, partition_specs=partition_specs)
    valid, ceiling = _ceiling(max_norm)
    record = jnp.isfinite(norm) & valid & (norm > 0)
    a, zt = _f32(alpha), _f32(z_thresh)
    warming = state.count < num_warmup
    mean, var = state.mean, state.var
    std = _floored_std(var, mean)
    z = (norm - mean) / (std + _STD_EPS)
    outlier = (~warming) & (z > zt)
    # z > z_thresh > 0 wherever this value is kept; elsewhere divide by 1.
    z_cap = jnp.where(
        outlier, mean + zt * zt * std / jnp.where(outlier, z, 1.0), jnp.inf)
    cap = jnp.minimum(z_cap, ceiling)

    updates, scale = clipping.clip_to_threshold(updates, norm, cap, valid)

    # Warm-up: running plain mean and population variance (Welford).
    n_new = (state.count + 1).astype(jnp.float32)
    delta = norm - mean
    warm_mean = mean + delta / n_new
    warm_var = (var * state.count.astype(jnp.float32)
                + delta * (norm - warm_mean)) / n_new
    # After warm-up: EMA of the clipped norm.
    clipped = jnp.minimum(norm, cap)
    ema_mean = a * mean + (1.0 - a) * clipped
    ema_var = a * var + (1.0 - a) * jnp.square(clipped - ema_mean)
    new_mean = jnp.where(warming, warm_mean, ema_mean)
    new_var = jnp.where(warming, warm_var, ema_var)

    threshold = jnp.where(
        warming, ceiling, jnp.minimum(mean + zt * (std + _STD_EPS), ceiling))
    new_state = ZScoreClipState(
        count=state.count + record.astype(jnp.int32),
        mean=jnp.where(record, new_mean, mean).astype(jnp.float32),
        var=jnp.where(record, new_var, var).astype(jnp.float32),
        threshold=threshold.astype(jnp.float32),
        **clipping.next_clip_state(state, norm, scale, cap, valid)._asdict(),
    )
    return updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# AutoClip.


class QuantileClipState(NamedTuple):
  """State of :func:`quantile_clip`: arrays only, identical on every replica.

  Attributes:
    norms: float32 ``[history]`` ring buffer of the last recorded (finite,
      non-zero) pre-clip norms; slot ``i`` holds the norm recorded when
      ``count % history == i``.
    count: int32 number of norms recorded so far.
    threshold: float32 threshold applied to the last step (``max_norm``, or
      +inf without it, before ``min_history`` norms were recorded).
    global_norm: float32 pre-clip global norm of the last update.
    scale: float32 factor applied to the last update (0 for a non-finite
      step).
    num_clipped: int32 number of steps that were scaled down.
    num_nonfinite: int32 number of steps whose norm was NaN or inf (or whose
      ``max_norm`` given as an array was ≤ 0, NaN, inf or subnormal).

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import quantile_clip
    >>> tx = quantile_clip(history=4, min_history=1)
    >>> state = tx.init({"w": jnp.zeros(1)})
    >>> for g in [1.0, 2.0, 8.0]:
    ...   _, state = tx.update({"w": jnp.array([g])}, state)
    >>> state.norms, round(float(state.threshold), 6)  # 0.9-quantile of [1, 2]
    (Array([1., 2., 8., 0.], dtype=float32), 1.9)
  """
  norms: jax.Array
  count: jax.Array  # type: ignore[assignment]  # field shadows tuple.count
  threshold: jax.Array
  global_norm: jax.Array
  scale: jax.Array
  num_clipped: jax.Array
  num_nonfinite: jax.Array


def _window_values(buffer: jax.Array, count: jax.Array) -> jax.Array:
  """Mask of the ring-buffer slots that hold a recorded value."""
  return jnp.arange(buffer.shape[0]) < count


def _ring_quantile(buffer: jax.Array, count: jax.Array,
                   quantile: Scalar) -> jax.Array:
  """``numpy.quantile(recorded, quantile)`` (linear) over the filled slots."""
  size = buffer.shape[0]
  filled = _window_values(buffer, count)
  big = jnp.finfo(jnp.float32).max  # sorts after every real norm, no inf-inf
  ordered = jnp.sort(jnp.where(filled, buffer, big))
  n = jnp.clip(count, 1, size)
  position = (n - 1).astype(jnp.float32) * _f32(quantile)
  lower = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, size - 1)
  upper = jnp.minimum(lower + 1, n - 1)
  frac = position - lower.astype(jnp.float32)
  low, high = ordered[lower], ordered[upper]
  return low + frac * (high - low)


def quantile_clip(
    *,
    quantile: float = 0.9,
    history: int = 1000,
    min_history: int = 10,
    max_norm: Optional[Scalar] = None,
    axis_name: Optional[AxisName] = None,
    partition_specs: Optional[PyTree] = None,
) -> optax.GradientTransformation:
  """AutoClip: clips at a quantile of the recent global norms.

  The threshold of a step is the ``quantile`` of the last ``history``
  recorded pre-clip norms, with linear interpolation (``numpy.quantile``'s default),
  computed *before* this step's norm is recorded; the update is scaled by
  ``min(1, threshold / g)``. Until ``min_history`` norms are recorded the
  step passes unchanged (or is clipped at ``max_norm`` when given). The
  history is a ``[history]`` ring buffer in the state (no host-side list), so
  the transform jits, checkpoints and runs under ``shard_map``; each step
  sorts it once (O(history log history)).

  Only finite, non-zero norms are recorded. A non-finite norm (or a ``max_norm``
  given as an array that is ≤ 0, NaN, inf or subnormal) gives all-zero updates,
  is counted in ``num_nonfinite`` and is not recorded. A zero norm passes
  unchanged and is not recorded either: zero-gradient steps would otherwise fill
  the history with zeros and make a low quantile 0, zeroing every update until
  ``history`` later norms had pushed them out. Every recorded norm is > 0, so
  the threshold is > 0.

  Args:
    quantile: which quantile of the history is the threshold, in (0, 1].
    history: how many recent norms are kept; ≥ 1. A static int: with
      ``optax.inject_hyperparams`` pass it in ``static_args``.
    min_history: norms needed before clipping starts; 1 ≤ min_history ≤
      history; static, like ``history``.
    max_norm: optional hard ceiling: the threshold is
      ``min(quantile threshold, max_norm)`` at every step.
    axis_name: mapped axis name(s) every leaf is split over; see
      :func:`stabledrl_jax.global_norm`.
    partition_specs: pytree of ``PartitionSpec`` matching the updates; see
      :func:`stabledrl_jax.global_norm`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`QuantileClipState`.

  Raises:
    ValueError: ``quantile`` outside (0, 1]; ``history`` or ``min_history``
      below 1 or not integers; ``min_history > history``; ``max_norm`` a
      number ≤ 0, NaN, inf or subnormal, or an array that is not a real
      scalar; both ``axis_name`` and ``partition_specs`` given.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import quantile_clip
    >>> tx = quantile_clip(quantile=0.5, history=4, min_history=3)
    >>> state = tx.init(None)
    >>> for g in (1.0, 3.0, 2.0):
    ...   _, state = tx.update({"w": jnp.array([g])}, state)
    >>> out, state = tx.update({"w": jnp.array([8.0])}, state)  # median 2
    >>> float(out["w"][0]), float(state.threshold)
    (2.0, 2.0)

  References:
    Seetharaman et al., `AutoClip: Adaptive Gradient Clipping for Source
    Separation Networks <https://arxiv.org/abs/2007.14469>`_, 2020.
  """
  _check_unit_interval("quantile", quantile, closed_right=True)
  validation.check_int("history", history, 1, static_args_hint=True)
  validation.check_int("min_history", min_history, 1, static_args_hint=True)
  if min_history > history:
    raise ValueError(
        f"min_history must be <= history ({history!r}), got "
        f"min_history={min_history!r} (its default is 10).")
  _check_max_norm(max_norm)
  norms.check_layout(axis_name, partition_specs)
  size = int(history)

  def init_fn(params):
    norms.check_params_layout(params, partition_specs)
    return QuantileClipState(
        norms=jnp.zeros((size,), jnp.float32),
        count=jnp.zeros((), jnp.int32),
        threshold=_ceiling(max_norm)[1],
        **clipping.init_clip_state()._asdict(),
    )

  def update_fn(updates, state, params=None):
    del params
    norm = norms.global_norm(
        updates, axis_name=axis_name, partition_specs=partition_specs)
    valid, ceiling = _ceiling(max_norm)
    record = jnp.isfinite(norm) & valid & (norm > 0)
    ready = state.count >= min_history
    threshold = jnp.minimum(jnp.where(
        ready, _ring_quantile(state.norms, state.count, quantile), jnp.inf),
                            ceiling)
    updates, scale = clipping.clip_to_threshold(
        updates, norm, threshold, valid)
    recorded = state.norms.at[state.count % size].set(norm)
    new_state = QuantileClipState(
        norms=jnp.where(record, recorded, state.norms),
        count=state.count + record.astype(jnp.int32),
        threshold=threshold.astype(jnp.float32),
        **clipping.next_clip_state(
            state, norm, scale, threshold, valid)._asdict(),
    )
    return updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Spike skipping.


class SkipSpikesState(NamedTuple):
  """State of :func:`skip_spikes`: arrays only, identical on every replica.

  Attributes:
    inner_state: the wrapped optimizer's state; bit-identical across a skipped
      step.
    norms: float32 ``[window]`` ring buffer of the last accepted non-zero
      norms.
    count: int32 number of norms recorded so far.
    threshold: float32 norm above which the last step counted as a spike:
      ``min(μ + z_thresh·(σ + 1e-6), max_norm)`` over the window before that
      step, with σ floored at 10% of μ (+inf when neither test was active).
    global_norm: float32 global norm of the last incoming update.
    skipped: bool, whether the last step was skipped.
    num_skipped: int32 number of skipped steps.
    num_nonfinite: int32 number of steps whose norm was NaN or inf (or whose
      ``max_norm`` given as an array was ≤ 0, NaN, inf or subnormal).
    consecutive_skips: int32 number of skips in a row up to the last step
      (0 after a step is taken).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from stabledrl_jax import skip_spikes
    >>> tx = skip_spikes(optax.sgd(1.0), max_norm=10.0)
    >>> state = tx.init({"w": jnp.zeros(1)})
    >>> out, state = tx.update({"w": jnp.array([50.0])}, state)
    >>> out["w"], bool(state.skipped), int(state.num_skipped)
    (Array([0.], dtype=float32), True, 1)
  """
  inner_state: optax.OptState
  norms: jax.Array
  count: jax.Array  # type: ignore[assignment]  # field shadows tuple.count
  threshold: jax.Array
  global_norm: jax.Array
  skipped: jax.Array
  num_skipped: jax.Array
  num_nonfinite: jax.Array
  consecutive_skips: jax.Array


def _select_tree(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Leafwise ``jnp.where(pred, on_true, on_false)``; keeps dtypes."""
  def select(t, f):
    return jnp.where(pred, t, f).astype(jnp.result_type(f))
  return jax.tree.map(select, on_true, on_false)


def _zeros_where(pred: jax.Array, tree: PyTree) -> PyTree:
  def zero(u):
    u = jnp.asarray(u)
    return jnp.where(pred, jnp.zeros((), u.dtype), u)
  return jax.tree.map(zero, tree)


def skip_spikes(
    inner: optax.GradientTransformation,
    *,
    max_norm: Optional[Scalar] = None,
    z_thresh: Optional[float] = None,
    window: int = 128,
    min_history: int = 64,
    max_consecutive: int = 10,
    axis_name: Optional[AxisName] = None,
    partition_specs: Optional[PyTree] = None,
) -> optax.GradientTransformationExtraArgs:
  """Wraps an optimizer so that spike and non-finite steps are skipped.

  A step is a *spike* when its global norm ``g`` (of the incoming updates)

  * is NaN or inf, or
  * exceeds ``max_norm`` (when given), or
  * with ``z_thresh`` given and at least ``min_history`` norms recorded:
    ``(g − μ) / (σ + 1e-6) > z_thresh``, where μ and σ are the mean and
    population standard deviation of the last ``window`` recorded norms, σ
    floored at 10% of μ.

  The recorded norms are those of accepted steps with a norm > 0. A zero norm
  (a zero-gradient step) is taken but not recorded: zeros in the window would
  make μ and σ 0 and every later step a spike. The floor on σ does the same
  for a window of identical norms.

  A skipped step returns all-zero updates and leaves ``inner``'s state
  bit-identical: the inner update still runs (on zeros), and a ``jnp.where``
  over every state leaf keeps the old values. There is no ``lax.cond`` in the
  compiled update, so it runs inside ``shard_map`` and every replica takes the
  same decision from the same (global) norm.

  After ``max_consecutive`` skips in a row, the next finite spike is taken
  (and recorded), so a lasting change of the norm's level cannot freeze
  training. Non-finite steps are always skipped: applying them would write
  NaN into the parameters and the inner state for good. They do count
  towards the run of consecutive skips. A step whose ``max_norm`` given as an
  array is ≤ 0, NaN, inf or subnormal is handled as a non-finite one.

  Args:
    inner: the optax transformation to protect, e.g. ``optax.adamw(1e-4)``
      or an ``optax.chain`` that includes a clip (the transformation, not the
      factory ``optax.adamw``).
    max_norm: optional norm above which a step is skipped; a positive finite
      number or a traced scalar.
    z_thresh: optional z-score above which a step is skipped; > 0.
    window: how many accepted norms the z-score statistics use; ≥ 1.
    min_history: accepted norms needed before the z-score test is active;
      1 ≤ min_history ≤ window.
    max_consecutive: largest number of finite spikes skipped in a row; ≥ 1.
      ``window``, ``min_history`` and ``max_consecutive`` are static ints:
      with ``optax.inject_hyperparams`` pass them in ``static_args``.
    axis_name: mapped axis name(s) every leaf is split over; see
      :func:`stabledrl_jax.global_norm`.
    partition_specs: pytree of ``PartitionSpec`` matching the updates; see
      :func:`stabledrl_jax.global_norm`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`SkipSpikesState`; extra keyword arguments are forwarded to
    ``inner``.

  Raises:
    TypeError: ``inner`` is not a transformation (e.g. the factory
      ``optax.adamw`` instead of ``optax.adamw(1e-3)``).
    ValueError: ``max_norm`` a number ≤ 0, NaN, inf or subnormal, or an array
      that is not a real scalar; ``z_thresh`` ≤ 0 or not finite; ``window``,
      ``min_history`` or ``max_consecutive`` below 1 or not integers;
      ``min_history > window``; both ``axis_name`` and ``partition_specs``
      given.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from stabledrl_jax import skip_spikes
    >>> tx = skip_spikes(optax.sgd(0.1), max_norm=10.0)
    >>> params = {"w": jnp.array([1.0, 1.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
    >>> updates["w"], bool(state.skipped)
    (Array([-0.3, -0.4], dtype=float32), False)
    >>> updates, state = tx.update({"w": jnp.array([30.0, 40.0])}, state)
    >>> updates["w"], bool(state.skipped), int(state.num_skipped)
    (Array([0., 0.], dtype=float32), True, 1)
    >>> updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state)
    >>> updates["w"], int(state.consecutive_skips), int(state.num_nonfinite)
    (Array([0., 0.], dtype=float32), 2, 1)
  """
  if not (hasattr(inner, "init") and hasattr(inner, "update")):
    hint = (f" Call the factory first, e.g. {inner.__name__}(1e-3)."
            if callable(inner) and hasattr(inner, "__name__") else "")
    raise TypeError(
        "inner must be an optax.GradientTransformation such as "
        f"optax.adamw(1e-3), got {inner!r}.{hint}")
  _check_max_norm(max_norm)
  if z_thresh is not None:
    validation.check_positive("z_thresh", z_thresh, float32=True)
  validation.check_int("window", window, 1, static_args_hint=True)
  validation.check_int("min_history", min_history, 1, static_args_hint=True)
  if min_history > window:
    raise ValueError(
        f"min_history must be <= window ({window!r}), got "
        f"min_history={min_history!r} (its default is 64).")
  validation.check_int("max_consecutive", max_consecutive, 1,
                       static_args_hint=True)
  norms.check_layout(axis_name, partition_specs)
  inner = optax.with_extra_args_support(inner)
  size = int(window)

  def init_fn(params):
    norms.check_params_layout(params, partition_specs)
    return SkipSpikesState(
        inner_state=inner.init(params),
        norms=jnp.zeros((size,), jnp.float32),
        count=jnp.zeros((), jnp.int32),
        threshold=_ceiling(max_norm)[1],
        global_norm=jnp.zeros((), jnp.float32),
        skipped=jnp.zeros((), jnp.bool_),
        num_skipped=jnp.zeros((), jnp.int32),
        num_nonfinite=jnp.zeros((), jnp.int32),
        consecutive_skips=jnp.zeros((), jnp.int32),
    )

  def update_fn(updates, state, params=None, **extra_args):
    norm = norms.global_norm(
        updates, axis_name=axis_name, partition_specs=partition_specs)
    # A max_norm array that is not a usable threshold counts as non-finite.
    valid, ceiling = _ceiling(max_norm)
    ok = jnp.isfinite(norm) & valid
    spike = (~ok) | (norm > ceiling)
    threshold = ceiling
    if z_thresh is not None:
      filled = _window_values(state.norms, state.count)
      n = jnp.clip(state.count, 1, size).astype(jnp.float32)
      mean = jnp.sum(jnp.where(filled, state.norms, 0.0)) / n
      var = jnp.sum(jnp.where(filled, jnp.square(state.norms - mean), 0.0)) / n
      std = _floored_std(var, mean)
      active = state.count >= min_history
      zt = _f32(z_thresh)
      spike = spike | (active & ((norm - mean) / (std + _STD_EPS) > zt))
      threshold = jnp.where(
          active, jnp.minimum(mean + zt * (std + _STD_EPS), ceiling), ceiling)
    skip = (~ok) | (spike & (state.consecutive_skips < max_consecutive))

    safe_updates = _zeros_where(skip, updates)
    new_updates, new_inner = inner.update(
        safe_updates, state.inner_state, params, **extra_args)
    new_updates = _zeros_where(skip, new_updates)
    new_inner = _select_tree(skip, state.inner_state, new_inner)

    record = (~skip) & (norm > 0)
    recorded = state.norms.at[state.count % size].set(norm)
    new_state = SkipSpikesState(
        inner_state=new_inner,
        norms=jnp.where(record, recorded, state.norms),
        count=state.count + record.astype(jnp.int32),
        threshold=jnp.asarray(threshold, jnp.float32),
        global_norm=norm,
        skipped=skip,
        num_skipped=state.num_skipped + skip.astype(jnp.int32),
        num_nonfinite=state.num_nonfinite + (~ok).astype(jnp.int32),
        consecutive_skips=jnp.where(
            skip, state.consecutive_skips + 1, 0).astype(jnp.int32),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

