"""Inputs real RL runs produce: zero and constant norms, bad threshold arrays,
low-precision leaves with tiny scales, partition_specs prefixes, MultiSteps.

The expected values come from plain NumPy (float64) written here, or from
facts about the inputs (a zero-gradient step has norm 0, a skipped step
returns zeros), never from the code under test.
"""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import stabledrl_jax as sdrl

_DIRECTION = np.array([1.0, -2.0, 2.0, 0.5, -0.5, 1.0]) / np.sqrt(10.5)

# Every transform that takes max_norm, built from keyword arguments.
WITH_MAX_NORM = {
    "unconditional_clip": sdrl.unconditional_clip,
    "conditional_clip": sdrl.conditional_clip,
    "zscore_clip": lambda max_norm: sdrl.zscore_clip(
        max_norm=max_norm, warmup_steps=2),
    "quantile_clip": lambda max_norm: sdrl.quantile_clip(
        max_norm=max_norm, history=8, min_history=2),
    "skip_spikes": lambda max_norm: sdrl.skip_spikes(
        optax.identity(), max_norm=max_norm, z_thresh=2.0, window=8,
        min_history=2),
}


def grads_with_norm(g):
  """A two-leaf float32 tree whose global norm is ``g``."""
  v = np.float64(g) * _DIRECTION
  return {"a": jnp.asarray(v[:4], jnp.float32),
          "b": jnp.asarray(v[4:], jnp.float32)}


def tree_norm(tree):
  return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                           for x in jax.tree.leaves(tree))))


def run(tx, norms):
  """Output-norm / input-norm ratio per step (nan for a zero input, whose
  output must be exactly zero)."""
  update = jax.jit(tx.update)
  state = tx.init(grads_with_norm(1.0))
  kept, states = [], []
  for g in norms:
    out, state = update(grads_with_norm(g), state)
    if g == 0:
      for leaf in jax.tree.leaves(out):
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
    kept.append(tree_norm(out) / g if g > 0 else np.nan)
    states.append(state)
  return np.array(kept), states


def noisy(n, level=1.0, spread=0.05, seed=0):
  return level * np.exp(spread * np.random.default_rng(seed).normal(size=n))


# --------------------------------------------------------------------------
# Zero and constant norms never lock an adaptive rule.

ADAPTIVE = {
    "zscore_clip": lambda: sdrl.zscore_clip(),
    "zscore_clip_max_norm": lambda: sdrl.zscore_clip(max_norm=10.0),
    "quantile_clip": lambda: sdrl.quantile_clip(quantile=0.1),
    "skip_spikes": lambda: sdrl.skip_spikes(
        optax.identity(), z_thresh=2.5, window=128, min_history=64),
}

_STATS = ("count", "mean", "var", "norms", "inner_state")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_zero_norm_steps_are_not_recorded(name):
  later = noisy(100)
  kept, states = run(ADAPTIVE[name](), np.r_[np.zeros(25), later])
  ref_kept, ref_states = run(ADAPTIVE[name](), later)
  # 25 zero steps first change nothing: the rule is the one that never saw
  # them, step for step.
  np.testing.assert_array_equal(kept[25:], ref_kept)
  for field in _STATS:
    if field in states[-1]._fields:
      jax.tree.map(np.testing.assert_array_equal,
                   getattr(states[-1], field), getattr(ref_states[-1], field))
  # Zero steps pass as zeros, are not clipped, skipped or counted non-finite.
  assert int(states[24].num_nonfinite) == 0
  assert int(getattr(states[24], "num_clipped",
                     getattr(states[24], "num_skipped", 0))) == 0


@pytest.mark.parametrize("max_norm", [None, 10.0])
def test_zclip_after_zero_warmup_keeps_updates(max_norm):
  # The reported failure: after 25 zero steps every later update was zeroed.
  kept, states = run(sdrl.zscore_clip(max_norm=max_norm),
                     np.r_[np.zeros(25), noisy(200, spread=0.3)])
  assert np.all(kept[25:] > 0.5)
  assert float(states[-1].mean) > 0.5


def test_quantile_clip_after_zero_steps_keeps_updates():
  # quantile=0.1 of a history holding 20 zeros was 0 for ~180 steps.
  kept, _ = run(sdrl.quantile_clip(quantile=0.1),
                np.r_[np.zeros(20), noisy(200, spread=0.3)])
  assert np.all(kept[20:] > 0.3)


def test_skip_spikes_after_zero_steps_takes_ordinary_steps():
  _, states = run(ADAPTIVE["skip_spikes"](),
                  np.r_[np.zeros(128), noisy(200, spread=0.05)])
  assert int(states[-1].num_skipped) == 0


def test_zclip_identical_norms_do_not_zero_the_spread():
  # After 25 identical norms σ² = 0. The z-score spread is floored at 10% of
  # the mean, so a norm 20% above it (< μ + 2.5·0.1·μ) passes unchanged...
  kept, states = run(sdrl.zscore_clip(), np.r_[np.ones(25), 1.2])
  assert float(states[-1].threshold) == pytest.approx(1.25, rel=1e-5)
  assert kept[-1] == pytest.approx(1.0, rel=1e-6)
  # ...and a spike is clipped to μ + z²·(0.1μ)²/(g − μ) (ZClip's adaptive
  # scaling with the floored σ), not to μ itself.
  kept, _ = run(sdrl.zscore_clip(), np.r_[np.ones(25), 3.0])
  assert kept[-1] * 3.0 == pytest.approx(1.0 + 2.5**2 * 0.01 / 2.0, rel=1e-5)


def test_zclip_recovers_from_identical_norms_and_a_level_change():
  # The reported failure: after 25 identical norms the statistics never moved
  # again and the rule kept ~half of every later norm.
  level = 2.0
  kept, states = run(sdrl.zscore_clip(),
                     np.r_[np.ones(25), noisy(300, level=level)])
  assert kept[-100:].mean() > 0.99
  assert float(states[-1].mean) == pytest.approx(level, rel=0.1)


def test_skip_spikes_identical_window_does_not_skip_a_small_rise():
  _, states = run(sdrl.skip_spikes(optax.identity(), z_thresh=2.5, window=16,
                                   min_history=8), np.r_[np.ones(16), 1.2])
  assert not bool(states[-1].skipped)


# --------------------------------------------------------------------------
# A threshold array that is <= 0, NaN or inf zeroes the step.

BAD_THRESHOLDS = [0.0, -1.0, -2.98e-8, np.nan, np.inf, -np.inf, 1e-40]


@pytest.mark.slow
@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("name", sorted(WITH_MAX_NORM))
def test_bad_threshold_array_zeroes_and_counts_the_step(name, jit):
  # inject_hyperparams passes max_norm as an array: traced under jit,
  # concrete eagerly; both follow the same rule.
  tx = optax.inject_hyperparams(WITH_MAX_NORM[name])(max_norm=1.0)
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(grads_with_norm(1.0))
  for warm in (1.0, 1.1, 0.9):  # fill the adaptive statistics
    _, state = update(grads_with_norm(warm), state)
  for bad in BAD_THRESHOLDS:
    for g in (0.0, 0.5, 3.0):
      inner = state.inner_state
      count = inner.count if "count" in inner._fields else None
      num_nonfinite = int(inner.num_nonfinite)
      state.hyperparams["max_norm"] = jnp.asarray(bad, jnp.float32)
      out, state = update(grads_with_norm(g), state)
      for leaf in jax.tree.leaves(out):
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
      assert int(state.inner_state.num_nonfinite) == num_nonfinite + 1
      if count is not None:  # not recorded in the statistics
        assert int(state.inner_state.count) == int(count)


@pytest.mark.slow
@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("nonfinite", ["zero", "propagate"])
@pytest.mark.parametrize("clip", [sdrl.unconditional_clip,
                                  sdrl.conditional_clip])
def test_schedule_that_reaches_zero_never_flips_the_update(clip, nonfinite,
                                                           jit):
  schedule = optax.linear_schedule(1.0, 0.0, transition_steps=3)
  assert float(schedule(3)) <= 0.0  # -2.98e-8 in float32
  tx = optax.inject_hyperparams(clip)(max_norm=schedule, nonfinite=nonfinite)
  grads = {"w": jnp.array([3.0, 4.0])}
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(grads)
  got = []
  for _ in range(5):
    out, state = update(grads, state)
    got.append(np.asarray(out["w"]))
  expected = [np.array([3.0, 4.0]) / 5.0 * m for m in (1.0, 2 / 3, 1 / 3)]
  np.testing.assert_allclose(got[:3], expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(got[3:], np.zeros((2, 2)))
  assert int(state.inner_state.num_nonfinite) == 2


@pytest.mark.parametrize("clip", [sdrl.unconditional_clip,
                                  sdrl.conditional_clip])
def test_zero_gradient_with_bad_threshold_keeps_adam_finite(clip):
  tx = optax.chain(
      optax.inject_hyperparams(clip)(max_norm=1.0), optax.adam(1e-2))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  state[0].hyperparams["max_norm"] = jnp.asarray(0.0)
  updates, state = jax.jit(tx.update)({"w": jnp.zeros(3)}, state, params)
  params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params["w"], np.ones(3))
  adam = state[1][0]
  assert np.all(np.isfinite(adam.mu["w"])) and np.all(np.isfinite(adam.nu["w"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WITH_MAX_NORM))
def test_no_nan_is_ever_computed_for_a_zero_gradient(name):
  # checkify's nan_checks test every primitive's output, including the branch
  # a jnp.where discards: no 0/0 may appear anywhere in the update.
  tx = optax.inject_hyperparams(WITH_MAX_NORM[name])(max_norm=1.0)
  update = jax.jit(checkify.checkify(tx.update, errors=checkify.nan_checks))
  state = tx.init(grads_with_norm(1.0))
  for max_norm in (1.0, 0.0, 1.0, -1.0, np.nan, np.inf):
    state.hyperparams["max_norm"] = jnp.asarray(max_norm, jnp.float32)
    for g in (0.0, 2.0, 0.0):
      error, (_, state) = update(grads_with_norm(g), state)
      error.throw()


# --------------------------------------------------------------------------
# The scale is applied in float32, then cast to the leaf's dtype.

LOW = [jnp.float16, jnp.bfloat16]


@pytest.mark.slow
@pytest.mark.parametrize("clip", [sdrl.unconditional_clip,
                                  sdrl.conditional_clip])
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("ratio", [2.4e7, 2.4e8])
def test_tiny_scale_on_low_precision_leaves(clip, dtype, ratio):
  # The reported failure (fp16): post-clip/max_norm 1.43 at a norm/max_norm
  # ratio of 2.4e7 and 0 at 2.4e8, the scale being rounded to fp16 first.
  leaf = np.full((16,), 1000.0)
  max_norm = np.linalg.norm(leaf) / ratio
  tx = clip(max_norm)
  out, state = jax.jit(tx.update)({"w": jnp.asarray(leaf, dtype)},
                                  tx.init(None))
  got = np.asarray(out["w"], np.float64)
  # Each element is 1000 * scale rounded once to the leaf's dtype.
  want = np.asarray(np.float32(1000.0) * np.float32(max_norm / np.linalg.norm(
      leaf)), np.float64)
  want = np.asarray(want.astype(dtype), np.float64)
  np.testing.assert_array_equal(got, np.full(16, want))
  # The post-clip norm is max_norm up to one rounding of each element (the
  # subnormal spacing once elements fall below the smallest normal).
  finfo = jnp.finfo(dtype)
  tol = float(finfo.eps) * max_norm + 4 * float(finfo.smallest_subnormal)
  assert abs(np.linalg.norm(got) - max_norm) <= tol
  assert np.all(got > 0)


def np_clip64(leaves, max_norm):
  """Float64 NumPy reference: the clipped leaves, before any rounding."""
  norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in leaves))
  scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
  return [np.asarray(x, np.float64) * scale for x in leaves], norm


@hypothesis.settings(deadline=None, max_examples=40)
@hypothesis.given(
    leaves=st.lists(
        st.tuples(
            st.sampled_from(["float16", "bfloat16", "float32"]),
            hnp.array_shapes(min_dims=0, max_dims=2, max_side=5),
            st.floats(-4, 4),  # log10 of the leaf's magnitude
            st.integers(0, 2**31 - 1)),
        min_size=1, max_size=5),
    log_max_norm=st.floats(-6, 3),
)
@pytest.mark.slow
def test_clip_of_random_low_precision_trees_matches_float64(
    leaves, log_max_norm):
  tree = []
  for dtype_name, shape, log_scale, seed in leaves:
    dtype = jnp.dtype(dtype_name)
    values = np.random.default_rng(seed).normal(size=shape) * 10.0**log_scale
    tree.append(jnp.asarray(values.astype(dtype)))
  max_norm = 10.0**log_max_norm
  want, norm = np_clip64(tree, max_norm)
  hypothesis.assume(norm > 0)
  tx = sdrl.unconditional_clip(max_norm)
  out, state = jax.jit(tx.update)(tree, tx.init(None))
  np.testing.assert_allclose(float(state.global_norm), norm, rtol=1e-5)
  for got, ref, leaf in zip(out, want, tree):
    assert got.dtype == leaf.dtype
    finfo = jnp.finfo(leaf.dtype)
    got = np.asarray(got, np.float64)
    # Within one rounding of the dtype of the float64 result (plus the
    # float32 scale's own rounding), or flushed only below the dtype's
    # smallest subnormal.
    tol = float(finfo.eps) * np.abs(ref) + float(finfo.smallest_subnormal)
    np.testing.assert_array_less(np.abs(got - ref), tol + 1e-6 * np.abs(ref))
    representable = np.abs(ref) >= float(finfo.smallest_subnormal)
    assert np.all((got != 0) | ~representable | (ref == 0))
  post = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in out))
  eps = max(float(jnp.finfo(x.dtype).eps) for x in tree)
  spacing = max(float(jnp.finfo(x.dtype).smallest_subnormal) for x in tree)
  size = sum(np.size(x) for x in tree)
  assert post <= min(norm, max_norm) * (1 + 2 * eps) + np.sqrt(size) * spacing


# --------------------------------------------------------------------------
# MultiSteps with a NaN micro-batch; skip_spikes given a factory.


def _multi_steps_run(**kwargs):
  tx = optax.MultiSteps(
      optax.chain(sdrl.unconditional_clip(1.0), optax.sgd(0.1)),
      every_k_schedule=2, **kwargs)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(10):
    g = {"w": jnp.full(3, jnp.nan if i == 1 else 1.0)}
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params["w"])


def test_multi_steps_nan_micro_batch_needs_skip_not_finite():
  # Without it optax keeps the NaN in its accumulator ((1 - emit) * NaN is
  # NaN): every later window is NaN and the clip zeroes it, forever.
  np.testing.assert_array_equal(_multi_steps_run(), np.ones(3))
  # With it the NaN micro-batch is dropped before accumulation and training
  # proceeds: 4 windows of two unit micro-batches after it, each clipped to
  # norm 1 and applied with lr 0.1.
  params = _multi_steps_run(should_skip_update_fn=optax.skip_not_finite)
  np.testing.assert_allclose(params, 1.0 - 4 * 0.1 / np.sqrt(3), rtol=1e-6)


def test_skip_spikes_given_a_factory_raises_type_error():
  with pytest.raises(TypeError, match=r"inner.*adamw\(1e-3\)"):
    sdrl.skip_spikes(optax.adamw)
  with pytest.raises(TypeError, match="inner"):
    sdrl.skip_spikes("adamw")
