"""Unconditional and conditional global-norm clipping as optax transforms.

Both scale the updates by ``min(1, max_norm / ||g||)``; they differ in how the
compiled program gets there:

* :func:`unconditional_clip` always multiplies. The program has no branch, so
  XLA fuses the scale into the next transform's pass (e.g. AdamW's moment
  update): the clip costs one extra read of the gradients for the norm.
* :func:`conditional_clip` evaluates ``||g|| > max_norm`` and takes one of two
  branches with ``jax.lax.cond``. Results agree with the unconditional clip to
  float rounding; the branch is a fusion barrier, so the rescaled gradients are
  materialised before the optimizer reads them again.

Both share the norm of :mod:`stabledrl_jax._src.norms` (float32 accumulation,
exact under ``pmap``/``shard_map`` and across processes) and the non-finite
policy: with ``nonfinite="zero"`` a step whose norm is NaN/inf yields all-zero
updates, so no NaN reaches the parameters.

References:
  Pascanu et al., `On the difficulty of training recurrent neural networks
  <https://arxiv.org/abs/1211.5063>`_, 2013.
  Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
  Models <https://arxiv.org/abs/2603.06743>`_, 2026.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from stabledrl_jax._src import norms
from stabledrl_jax._src import validation
from stabledrl_jax._src.typing import AxisName
from stabledrl_jax._src.typing import NonFinitePolicy
from stabledrl_jax._src.typing import PyTree
from stabledrl_jax._src.typing import Scalar
from stabledrl_jax._src.typing import Updates

NONFINITE_POLICIES = ("zero", "propagate")


class ClipState(NamedTuple):
  """State of :func:`unconditional_clip` and :func:`conditional_clip`.

  Identical on every replica after each update; arrays only, so it round-trips
  through numpy and checkpoints.

  Attributes:
    global_norm: float32 pre-clip global norm of the last update.
    scale: float32 factor applied to the last update (0 for a non-finite step
      under ``nonfinite="zero"``, and for a step whose ``max_norm`` given as
      an array was unusable).
    num_clipped: int32 number of steps whose norm exceeded ``max_norm``.
    num_nonfinite: int32 number of steps whose norm was NaN or inf, or whose
      ``max_norm`` given as an array was ≤ 0, NaN, inf or subnormal.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from stabledrl_jax import unconditional_clip
    >>> tx = optax.chain(unconditional_clip(1.0), optax.sgd(0.1))
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> _, opt_state = tx.update(params, tx.init(params), params)
    >>> clip_state = opt_state[0]  # log these
    >>> float(clip_state.global_norm), round(float(clip_state.scale), 6)
    (5.0, 0.2)
  """
  global_norm: jax.Array
  scale: jax.Array
  num_clipped: jax.Array
  num_nonfinite: jax.Array


def init_clip_state() -> ClipState:
  """A fresh :class:`ClipState`: norm 0, scale 1, counters 0."""
  return ClipState(
      global_norm=jnp.zeros((), jnp.float32),
      scale=jnp.ones((), jnp.float32),
      num_clipped=jnp.zeros((), jnp.int32),
      num_nonfinite=jnp.zeros((), jnp.int32),
  )


def check_clip_args(max_norm: Optional[Scalar], axis_name: Optional[AxisName],
                    partition_specs: Optional[PyTree],
                    nonfinite: NonFinitePolicy) -> None:
  """Validates the arguments shared by the clipping transforms."""
  validation.check_threshold("max_norm", max_norm)
  validation.check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
  norms.check_layout(axis_name, partition_specs)


def usable_threshold(max_norm: Optional[Scalar],
                     placeholder: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Checks a (possibly traced) ``max_norm``; returns ``(valid, threshold)``.

  ``valid`` is True for a finite, normal float32 number > 0 and False for ≤ 0,
  NaN, inf and subnormals (flushed to 0 on CPU; TPUs have none). A schedule that
  reaches 0 is caught here: ``optax.linear_schedule(1, 0, 3)`` ends at -2.98e-8,
  which would flip the update's sign. ``threshold`` is ``max_norm`` as float32
  where valid and ``placeholder`` elsewhere, so that no division by a zero,
  negative or NaN threshold is ever computed; callers zero the step where
  ``valid`` is False. ``None`` (no ceiling) is valid, with threshold +inf.
  """
  if max_norm is None:
    return jnp.asarray(True), jnp.asarray(jnp.inf, jnp.float32)
  max_norm = jnp.asarray(max_norm, jnp.float32)
  finfo = jnp.finfo(jnp.float32)
  # NaN fails both comparisons.
  valid = (max_norm >= finfo.tiny) & (max_norm <= finfo.max)
  return valid, jnp.where(valid, max_norm, jnp.float32(placeholder))


def clip_scale(norm: jax.Array, threshold: Scalar) -> jax.Array:
  """``min(1, threshold / norm)`` in float32 for a threshold in (0, inf].

  ``norm == 0`` gives exactly 1 (``threshold / 0`` is +inf), never NaN.
  """
  threshold = jnp.asarray(threshold, jnp.float32)
  return jnp.minimum(1.0, threshold / norm)


def scale_updates(updates: Updates, scale: jax.Array,
                  keep: Optional[jax.typing.ArrayLike]) -> Updates:
  """``u * scale`` on floating leaves, zero where ``keep`` is False.

  The product is taken in float32 (or the leaf's wider dtype) and then cast to
  the leaf's dtype: casting a small scale to fp16/bf16 first would round it, or
  flush it to 0, before the multiply. ``keep=None`` skips the guard (the
  "propagate" policy). Non-floating leaves pass through unchanged.
  """
  scale = jnp.asarray(scale, jnp.float32)

  def scale_leaf(u):
    if not norms.is_counted(u):
      return u
    u = jnp.asarray(u)
    # fp8/fp16/bf16 are widened to float32 explicitly (fp8 has no implicit
    # promotion); float32, float64 and complex leaves multiply as they are.
    wide = u.astype(jnp.float32) if jnp.finfo(u.dtype).bits < 32 else u
    scaled = (wide * scale).astype(u.dtype)
    if keep is None:
      return scaled
    return jnp.where(keep, scaled, jnp.zeros((), u.dtype))
  return jax.tree.map(scale_leaf, updates)


def clip_to_threshold(updates: Updates, norm: jax.Array, threshold: Scalar,
                      valid: jax.typing.ArrayLike = True
                      ) -> tuple[Updates, jax.Array]:
  """Scales ``updates`` by ``clip_scale(norm, threshold)``, or zeroes them.

  The "zero" policy shared by every clipping transform: a step whose norm is
  NaN/inf, or whose user threshold is not ``valid`` (see
  :func:`usable_threshold`), returns all-zero updates.

  Returns:
    ``(updates, float32 scale applied)``; the scale is 0 for a zeroed step.
  """
  keep = jnp.isfinite(norm) & valid
  scale = jnp.where(keep, clip_scale(norm, threshold), 0.0)
  return scale_updates(updates, scale, keep), scale


def count_steps(num_clipped: jax.Array, num_nonfinite: jax.Array,
                norm: jax.Array, threshold: Scalar,
                valid: jax.typing.ArrayLike = True
                ) -> tuple[jax.Array, jax.Array]:
  """Adds this step to the int32 counters of clipped and non-finite steps.

  A step with an invalid user threshold counts as non-finite.
  """
  keep = jnp.isfinite(norm) & valid
  clipped = keep & (norm > jnp.asarray(threshold, jnp.float32))
  return (num_clipped + clipped.astype(jnp.int32),
          num_nonfinite + (~keep).astype(jnp.int32))


def _init_fn(partition_specs: Optional[PyTree]) -> optax.TransformInitFn:
  """An ``init_fn`` that checks ``partition_specs`` against the params early."""
  def init_fn(params):
    norms.check_params_layout(params, partition_specs)
    return init_clip_state()
  return init_fn


def next_clip_state(state: Any, norm: jax.Array, scale: jax.Array,
                    threshold: Scalar,
                    valid: jax.typing.ArrayLike = True) -> ClipState:
  """The :class:`ClipState` after a step: its norm, scale and counters.

  ``state`` is any state with ``num_clipped`` and ``num_nonfinite`` counters
  (the adaptive clips' states share these fields).
  """
  num_clipped, num_nonfinite = count_steps(
      state.num_clipped, state.num_nonfinite, norm, threshold, valid)
  return ClipState(norm, scale.astype(jnp.float32), num_clipped, num_nonfinite)


def unconditional_clip(
    max_norm: Scalar,
    *,
    axis_name: Optional[AxisName] = None,
    partition_specs: Optional[PyTree] = None,
    nonfinite: NonFinitePolicy = "zero",
) -> optax.GradientTransformation:
  """Scales updates by ``min(1, max_norm / ||g||)`` with no branch.

  The same arithmetic runs every step; the compiled update contains no
  ``conditional`` and no select on the norm other than the non-finite guard.
  A drop-in replacement for ``optax.clip_by_global_norm`` with exact float32
  norms and distributed layouts (see :func:`stabledrl_jax.global_norm`).

  The scale is applied in float32 and the product cast to each leaf's dtype,
  so fp16/bf16 leaves are scaled as precisely as their dtype allows. Past a
  norm of 2¹²⁶·``max_norm`` (~8.5e37·``max_norm``) the scale is below
  float32's normal range and flushed to 0 (XLA:CPU flushes subnormals, TPUs
  have none), so the update is all zeros (``scale`` 0 in the state).

  A ``max_norm`` given as an array (``optax.inject_hyperparams``, a
  schedule; eager or jitted) that is ≤ 0, NaN, inf or subnormal makes the
  step a non-finite one under both policies: all-zero updates, counted in
  ``num_nonfinite``. It never flips the update's sign, inflates it, or turns a
  zero gradient into NaN.

  Args:
    max_norm: the largest global norm an update may have; a positive finite
      number, or a scalar array (``optax.inject_hyperparams`` passes its
      hyperparameters and schedules as arrays, eager or jitted).
    axis_name: mapped axis name(s) every leaf is split over (FSDP/ZeRO-style
      sharded gradients inside ``pmap``/``shard_map``). For plain data
      parallelism, ``pmean`` the gradients first and leave this None.
    partition_specs: pytree of ``PartitionSpec`` matching the updates, for
      leaves split over different mesh axes (or replicated).
    nonfinite: ``"zero"`` returns all-zero updates for a step whose norm is
      NaN/inf and counts it; ``"propagate"`` lets NaN/inf through like optax.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`ClipState`.

  Raises:
    ValueError: ``max_norm`` is a Python or NumPy number ≤ 0, NaN, inf or
      subnormal, or an array that is not a real scalar;
      ``nonfinite`` is unknown; both ``axis_name`` and ``partition_specs`` are
      given; ``partition_specs`` does not match the updates (at update time).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from stabledrl_jax import unconditional_clip
    >>> tx = unconditional_clip(1.0)
    >>> grads = {"w": jnp.array([3.0, 4.0])}
    >>> clipped, state = tx.update(grads, tx.init(grads))
    >>> clipped["w"], float(state.global_norm), int(state.num_clipped)
    (Array([0.6, 0.8], dtype=float32), 5.0, 1)
    >>> opt = optax.chain(unconditional_clip(1.0), optax.adamw(1e-3))
  """
  check_clip_args(max_norm, axis_name, partition_specs, nonfinite)

  def update_fn(updates, state, params=None):
    del params
    norm = norms.global_norm(
        updates, axis_name=axis_name, partition_specs=partition_specs)
    valid, threshold = usable_threshold(max_norm)
    if nonfinite == "zero":
      updates, scale = clip_to_threshold(updates, norm, threshold, valid)
    else:
      scale = jnp.where(valid, clip_scale(norm, threshold), 0.0)
      updates = scale_updates(updates, scale, None)
    return updates, next_clip_state(state, norm, scale, threshold, valid)

  return optax.GradientTransformation(_init_fn(partition_specs), update_fn)


def conditional_clip(
    max_norm: Scalar,
    *,
    axis_name: Optional[AxisName] = None,
    partition_specs: Optional[PyTree] = None,
    nonfinite: NonFinitePolicy = "zero",
) -> optax.GradientTransformation:
  """Rescales updates only when ``||g|| > max_norm``, with ``jax.lax.cond``.

  The branching twin of :func:`unconditional_clip`: same arguments, same
  results (to 1e-6 relative), same :class:`ClipState`. The compiled update
  holds one ``conditional``; XLA cannot fuse across it, so inside an optimizer
  step the rescaled gradients are written out and read back.

  With ``nonfinite="zero"`` the branch has three arms (keep, rescale, zero)
  selected by ``jax.lax.switch``; with ``"propagate"`` two (``jax.lax.cond``).

  Args:
    max_norm: see :func:`unconditional_clip`.
    axis_name: see :func:`unconditional_clip`.
    partition_specs: see :func:`unconditional_clip`.
    nonfinite: see :func:`unconditional_clip`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`ClipState`.

  Raises:
    ValueError: as :func:`unconditional_clip`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import conditional_clip
    >>> tx = conditional_clip(10.0)
    >>> grads = {"w": jnp.array([3.0, 4.0])}
    >>> clipped, state = tx.update(grads, tx.init(grads))
    >>> clipped["w"], float(state.scale)
    (Array([3., 4.], dtype=float32), 1.0)
  """
  check_clip_args(max_norm, axis_name, partition_specs, nonfinite)

  def update_fn(updates, state, params=None):
    del params
    norm = norms.global_norm(
        updates, axis_name=axis_name, partition_specs=partition_specs)
    valid, threshold = usable_threshold(max_norm)
    scale = jnp.where(valid, clip_scale(norm, threshold), 0.0)
    # Only floating leaves go through the branch; the others (integer step
    # counters, boolean masks, None) are handed back exactly as they came.
    leaves, treedef = jax.tree.flatten(updates)
    counted = [i for i, leaf in enumerate(leaves) if norms.is_counted(leaf)]
    keep = lambda u: u
    rescale = lambda u: scale_updates(u, scale, None)
    # True for a NaN norm too: under "propagate" it then takes the rescale
    # branch, whose scale is NaN, so NaN reaches every floating leaf as in
    # optax and unconditional_clip; under "zero" the switch sends it to zero.
    # An invalid max_norm rescales by 0 under "propagate".
    over = ~(norm <= threshold) | ~valid
    if nonfinite == "zero":
      ok = jnp.isfinite(norm) & valid
      zero = lambda u: scale_updates(u, jnp.zeros((), jnp.float32), False)
      branch = jnp.where(ok, over.astype(jnp.int32), 2)
      branched = jax.lax.switch(
          branch, (keep, rescale, zero), [leaves[i] for i in counted])
      applied = jnp.where(ok, jnp.where(over, scale, 1.0), 0.0)
    else:
      branched = jax.lax.cond(
          over, rescale, keep, [leaves[i] for i in counted])
      applied = jnp.where(over, scale, 1.0)
    for i, leaf in zip(counted, branched):
      leaves[i] = leaf
    updates = jax.tree.unflatten(treedef, leaves)
    return updates, next_clip_state(state, norm, applied, threshold, valid)

  return optax.GradientTransformation(_init_fn(partition_specs), update_fn)
