"""Tests for zscore_clip, quantile_clip and skip_spikes.

Each rule is checked step by step against a plain NumPy (float64)
re-implementation written here from the published description, over a norm
trace with spikes, NaN and inf. The shard_map tests use the 8 CPU devices the
root conftest provides.
"""

import os
import re
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import stabledrl_jax as sdrl

RTOL = 1e-5
_DIRECTION = np.array([1.0, -2.0, 2.0, 0.5, -0.5, 1.0]) / np.sqrt(10.5)


def grads_with_norm(g):
  """A two-leaf float32 tree whose global norm is ``g`` (NaN/inf allowed)."""
  v = np.float64(g) * _DIRECTION if np.isfinite(g) else np.full(6, g)
  return {"a": jnp.asarray(v[:4], jnp.float32),
          "b": jnp.asarray(v[4:], jnp.float32)}


def tree_norm(tree):
  return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                           for x in jax.tree.leaves(tree))))


def spiky_trace(n=100, seed=0):
  """Norms around a slowly decaying level, with spikes, a NaN and an inf."""
  rng = np.random.default_rng(seed)
  level = 2.0 * np.exp(-np.arange(n) / 60.0) + 1.0
  trace = level * np.exp(0.08 * rng.normal(size=n))
  trace[[30, 31, 47, 64, 65, 66, 80]] *= [8.0, 5.0, 20.0, 6.0, 6.0, 6.0, 3.0]
  trace[12] = np.nan   # during the warm-up of the longer warm-up settings
  trace[52] = np.inf
  trace[71] = np.nan
  return trace


def run(tx, trace, params=None):
  """Applies ``tx`` to the trace; returns output norms and the states."""
  update = jax.jit(tx.update)
  state = tx.init(grads_with_norm(1.0) if params is None else params)
  out_norms, states = [], []
  for g in trace:
    out, state = update(grads_with_norm(g), state)
    out_norms.append(tree_norm(out))
    states.append(state)
  return np.array(out_norms), states


# --------------------------------------------------------------------------
# Independent NumPy versions of the three rules.


def np_zclip(trace, alpha, z_thresh, warmup_steps, max_norm):
  """ZClip with a warm-up buffer; returns clipped norms and thresholds.

  Zero norms pass and are not recorded; σ is floored at 10% of μ.
  """
  ceiling = np.inf if max_norm is None else max_norm
  buffer, mean, var = [], None, None
  out, thresholds = [], []
  for g in trace:
    if mean is None:
      thresholds.append(ceiling)
      if not np.isfinite(g):
        out.append(0.0)
        continue
      out.append(min(g, ceiling))
      if g > 0:
        buffer.append(g)
      if len(buffer) >= max(warmup_steps, 1):
        mean, var = np.mean(buffer), np.var(buffer)
      continue
    std = max(np.sqrt(var), 0.1 * mean)
    thresholds.append(min(mean + z_thresh * (std + 1e-6), ceiling))
    if not np.isfinite(g):
      out.append(0.0)
      continue
    if g == 0:
      out.append(0.0)
      continue
    z = (g - mean) / (std + 1e-6)
    limit = mean + z_thresh * std / (z / z_thresh) if z > z_thresh else np.inf
    limit = min(limit, ceiling)
    clipped = min(g, limit)
    out.append(clipped)
    mean = alpha * mean + (1 - alpha) * clipped
    var = alpha * var + (1 - alpha) * (clipped - mean) ** 2
  return np.array(out), np.array(thresholds)


def np_autoclip(trace, quantile, history, min_history):
  seen, out, thresholds = [], [], []
  for g in trace:
    limit = (np.quantile(seen[-history:], quantile) if len(seen) >= min_history
             else np.inf)
    thresholds.append(limit)
    if not np.isfinite(g):
      out.append(0.0)
      continue
    out.append(min(g, limit))
    if g > 0:
      seen.append(g)
  return np.array(out), np.array(thresholds)


def np_skip(trace, max_norm, z_thresh, window, min_history, max_consecutive):
  accepted, run_length, skipped = [], 0, []
  for g in trace:
    if not np.isfinite(g):
      skip = True
    else:
      spike = max_norm is not None and g > max_norm
      if z_thresh is not None and len(accepted) >= min_history:
        recent = np.array(accepted[-window:])
        std = max(recent.std(), 0.1 * recent.mean())
        spike = spike or (g - recent.mean()) / (std + 1e-6) > z_thresh
      skip = spike and run_length < max_consecutive
    skipped.append(skip)
    if skip:
      run_length += 1
    else:
      run_length = 0
      if g > 0:
        accepted.append(g)
  return np.array(skipped)


# --------------------------------------------------------------------------
# Rules against NumPy.

ZCLIP_SETTINGS = [
    dict(alpha=0.97, z_thresh=2.5, warmup_steps=25, max_norm=None),
    dict(alpha=0.9, z_thresh=2.0, warmup_steps=5, max_norm=2.5),
    dict(alpha=0.8, z_thresh=1.5, warmup_steps=0, max_norm=None),
    dict(alpha=0.99, z_thresh=3.0, warmup_steps=40, max_norm=30.0),
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", ZCLIP_SETTINGS)
def test_zscore_clip_matches_numpy(kwargs):
  trace = spiky_trace()
  out, states = run(sdrl.zscore_clip(**kwargs), trace)
  expected, thresholds = np_zclip(trace, **kwargs)
  np.testing.assert_allclose(out, expected, rtol=RTOL)
  np.testing.assert_allclose([s.threshold for s in states], thresholds,
                             rtol=RTOL)
  finite = np.isfinite(trace)
  assert int(states[-1].num_nonfinite) == np.sum(~finite)
  assert int(states[-1].count) == np.sum(finite)
  clipped = finite & (expected < np.where(finite, trace, 0) * (1 - 1e-4))
  assert clipped.sum() > 0  # the trace does exercise clipping
  assert int(states[-1].num_clipped) == clipped.sum()
  np.testing.assert_allclose([s.global_norm for s in states], trace,
                             rtol=RTOL)


def test_zscore_clip_warmup_statistics():
  trace = np.array([1.0, 1.5, 0.5, 2.0])
  _, states = run(sdrl.zscore_clip(warmup_steps=4), trace)
  np.testing.assert_allclose(states[-1].mean, np.mean(trace), rtol=1e-6)
  np.testing.assert_allclose(states[-1].var, np.var(trace), rtol=1e-6)
  # Nothing is clipped during warm-up without max_norm.
  assert int(states[-1].num_clipped) == 0


QUANTILE_SETTINGS = [
    dict(quantile=0.9, history=1000, min_history=10),
    dict(quantile=0.5, history=16, min_history=4),
    dict(quantile=1.0, history=8, min_history=8),
    dict(quantile=0.25, history=5, min_history=1),
    dict(quantile=0.73, history=7, min_history=3),
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", QUANTILE_SETTINGS)
def test_quantile_clip_matches_numpy(kwargs):
  trace = spiky_trace()
  out, states = run(sdrl.quantile_clip(**kwargs), trace)
  expected, thresholds = np_autoclip(trace, **kwargs)
  np.testing.assert_allclose(out, expected, rtol=RTOL)
  np.testing.assert_allclose([s.threshold for s in states], thresholds,
                             rtol=RTOL)
  finite = np.isfinite(trace)
  assert int(states[-1].count) == finite.sum()
  assert int(states[-1].num_nonfinite) == (~finite).sum()
  assert states[-1].norms.shape == (kwargs["history"],)


def test_quantile_clip_interpolates_like_numpy_quantile():
  # Four recorded norms, quantile 0.9: position 2.7 between 3.0 and 10.0.
  tx = sdrl.quantile_clip(quantile=0.9, history=4, min_history=4)
  trace = [10.0, 1.0, 3.0, 2.0, 50.0]
  out, states = run(tx, trace)
  assert out[-1] == pytest.approx(3.0 + 0.7 * 7.0, rel=1e-6)
  assert float(states[-1].threshold) == pytest.approx(
      np.quantile([10.0, 1.0, 3.0, 2.0], 0.9), rel=1e-6)
  np.testing.assert_allclose(out[:4], trace[:4], rtol=1e-6)  # min_history


SKIP_SETTINGS = [
    dict(max_norm=None, z_thresh=2.5, window=16, min_history=8,
         max_consecutive=3),
    dict(max_norm=4.0, z_thresh=None, window=128, min_history=64,
         max_consecutive=10),
    dict(max_norm=10.0, z_thresh=2.0, window=32, min_history=32,
         max_consecutive=1),
    dict(max_norm=None, z_thresh=3.0, window=5, min_history=5,
         max_consecutive=2),
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", SKIP_SETTINGS)
def test_skip_spikes_matches_numpy(kwargs):
  trace = spiky_trace()
  out, states = run(sdrl.skip_spikes(optax.identity(), **kwargs), trace)
  skipped = np_skip(trace, **kwargs)
  assert skipped[np.isfinite(trace)].any()  # some finite spike is skipped
  np.testing.assert_array_equal([bool(s.skipped) for s in states], skipped)
  np.testing.assert_allclose(out, np.where(skipped, 0.0, trace), rtol=RTOL)
  assert int(states[-1].num_skipped) == skipped.sum()
  assert int(states[-1].count) == (~skipped).sum()
  assert int(states[-1].num_nonfinite) == (~np.isfinite(trace)).sum()


# --------------------------------------------------------------------------
# Non-finite norms never reach the statistics.

TRANSFORMS = {
    "zscore": lambda: sdrl.zscore_clip(warmup_steps=3, max_norm=5.0),
    "quantile": lambda: sdrl.quantile_clip(history=4, min_history=2),
    "skip": lambda: sdrl.skip_spikes(optax.adam(0.1), z_thresh=2.0, window=4,
                                     min_history=2),
}
# Fields that describe the last step rather than the accumulated statistics.
PER_STEP_FIELDS = {"threshold", "global_norm", "scale", "num_nonfinite",
                   "skipped", "num_skipped", "consecutive_skips"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_nonfinite_never_poisons_statistics(name):
  clean = np.array([1.0, 1.3, 0.9, 1.1, 7.0, 1.2, 0.8, 1.0])
  dirty = np.insert(clean, [1, 3, 3, 6], [np.nan, np.inf, np.nan, -np.inf])
  out_clean, states_clean = run(TRANSFORMS[name](), clean)
  out_dirty, states_dirty = run(TRANSFORMS[name](), dirty)
  finite = np.isfinite(dirty)
  np.testing.assert_array_equal(out_dirty[~finite], 0.0)
  # The finite steps behave exactly as if the bad steps never happened.
  np.testing.assert_array_equal(out_dirty[finite], out_clean)
  last_clean, last_dirty = states_clean[-1], states_dirty[-1]
  for field in last_clean._fields:
    if field not in PER_STEP_FIELDS:
      chex.assert_trees_all_equal(getattr(last_dirty, field),
                                  getattr(last_clean, field))
  assert int(last_dirty.num_nonfinite) == 4
  chex.assert_tree_all_finite(
      [getattr(last_dirty, f) for f in last_dirty._fields
       if f not in ("threshold",)])


# --------------------------------------------------------------------------
# skip_spikes around a real optimizer.


def _adam_params(tx, grads_seq, params):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for grads in grads_seq:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.slow
def test_skip_spikes_leaves_adam_bit_identical():
  params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([0.1])}
  g1 = {"w": jnp.array([0.3, 0.1, -0.2]), "b": jnp.array([0.05])}
  g2 = {"w": jnp.array([-0.1, 0.4, 0.2]), "b": jnp.array([-0.3])}
  spike = jax.tree.map(lambda x: 1e4 * x, g1)
  nan = {"w": jnp.array([jnp.nan, 0.0, 1.0]), "b": jnp.array([0.0])}
  tx = sdrl.skip_spikes(optax.adam(1e-2), max_norm=10.0)
  got, got_state = _adam_params(tx, [g1, spike, nan, g2], params)
  want, want_state = _adam_params(tx, [g1, g2], params)
  chex.assert_trees_all_equal(got, want)
  chex.assert_trees_all_equal(got_state.inner_state, want_state.inner_state)
  assert int(got_state.num_skipped) == 2 and int(want_state.num_skipped) == 0
  # And the same as plain Adam on [g1, g2].
  plain, _ = _adam_params(optax.adam(1e-2), [g1, g2], params)
  chex.assert_trees_all_close(got, plain, rtol=1e-6)


@pytest.mark.slow
def test_skipped_step_returns_zeros_and_keeps_inner_state():
  params = {"w": jnp.ones(3)}
  tx = sdrl.skip_spikes(optax.adam(1e-2), max_norm=1.0)
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.array([0.1, 0.2, 0.3])}, state, params)
  before = jax.tree.map(np.asarray, state.inner_state)
  updates, state = tx.update({"w": jnp.array([5.0, 0.0, 0.0])}, state, params)
  chex.assert_trees_all_equal(updates, {"w": jnp.zeros(3)})
  chex.assert_trees_all_equal(state.inner_state, before)
  assert bool(state.skipped) and float(state.global_norm) == 5.0


def test_skip_spikes_python_float_leaves():
  # The clips take Python floats as leaves; so does the skipper.
  tx = sdrl.skip_spikes(optax.scale(-1.0), max_norm=10.0)
  updates, state = tx.update({"a": 3.0, "b": jnp.array([4.0])},
                             tx.init({"a": 0.0, "b": jnp.zeros(1)}))
  assert float(updates["a"]) == -3.0 and not bool(state.skipped)
  updates, state = tx.update({"a": 30.0, "b": jnp.array([40.0])}, state)
  assert float(updates["a"]) == 0.0 and float(updates["b"][0]) == 0.0
  assert bool(state.skipped) and float(state.global_norm) == 50.0


def test_consecutive_skip_cap():
  tx = sdrl.skip_spikes(optax.identity(), max_norm=1.0, max_consecutive=2)
  trace = [0.5, 5.0, 5.0, 5.0, 5.0, 5.0, np.nan, 5.0, 0.5]
  # Two spikes skipped, the third taken; NaN is always skipped but counts.
  want = [False, True, True, False, True, True, True, False, False]
  want_run = [0, 1, 2, 0, 1, 2, 3, 0, 0]
  out, states = run(tx, trace)
  assert [bool(s.skipped) for s in states] == want
  assert [int(s.consecutive_skips) for s in states] == want_run
  np.testing.assert_allclose(out, [0.5, 0, 0, 5, 0, 0, 0, 5, 0.5], rtol=1e-6)
  assert int(states[-1].num_skipped) == 5
  assert int(states[-1].num_nonfinite) == 1


@pytest.mark.slow
def test_skip_spikes_forwards_extra_args():
  seen = []

  def update_fn(updates, state, params=None, *, flag):
    del params
    seen.append(flag)
    return updates, state

  inner = optax.GradientTransformationExtraArgs(lambda p: (), update_fn)
  tx = sdrl.skip_spikes(inner)
  tx.update({"w": jnp.ones(2)}, tx.init(None), flag=7)
  assert seen == [7]


# --------------------------------------------------------------------------
# Compiled program, tracing, state as plain arrays.

ALL = {
    "zscore": lambda **kw: sdrl.zscore_clip(warmup_steps=2, max_norm=3.0, **kw),
    "quantile": lambda **kw: sdrl.quantile_clip(history=8, min_history=2,
                                                **kw),
    "skip": lambda **kw: sdrl.skip_spikes(optax.adam(1e-3), max_norm=3.0,
                                          z_thresh=2.0, window=8,
                                          min_history=2, **kw),
}


def has_conditional(tx, grads):
  """Whether the compiled update holds an HLO ``conditional`` instruction."""
  state = tx.init(grads)
  text = jax.jit(tx.update).lower(grads, state).compile().as_text()
  return re.search(r"\sconditional\(", text) is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ALL))
def test_no_conditional_in_compiled_update(name):
  grads = grads_with_norm(2.0)
  assert not has_conditional(ALL[name](), grads)
  # The probe does find a branch where there is one.
  assert has_conditional(sdrl.conditional_clip(1.0), grads)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ALL))
def test_no_retracing_and_numpy_round_trip(name):
  tx = ALL[name]()
  trace = [1.0, 1.2, 0.9, 9.0, np.nan, 1.1, 20.0, 1.0]

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(grads, state):
    return tx.update(grads, state, grads)

  def go(round_trip):
    state = tx.init(grads_with_norm(1.0))
    outs = []
    for g in trace:
      if round_trip:
        state = jax.tree.map(np.asarray, state)
        assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(state))
      out, state = step(grads_with_norm(g), state)
      outs.append(out)
    return outs, state

  outs_a, state_a = go(round_trip=False)
  outs_b, state_b = go(round_trip=True)  # a retrace would raise here
  chex.assert_trees_all_equal(outs_a, outs_b)
  chex.assert_trees_all_equal(state_a, state_b)
  chex.clear_trace_counter()


@pytest.mark.slow
def test_norm_is_the_float32_global_norm():
  # 1001 bf16 leaves of 1.0: the norm is sqrt(1001), which no sum kept in
  # bfloat16 gives (1001 has more significant bits than bfloat16 holds).
  grads = [jnp.ones((), jnp.bfloat16)] * 1001
  for make in ALL.values():
    tx = make()
    _, state = tx.update(grads, tx.init(grads), grads)
    assert float(state.global_norm) == pytest.approx(np.sqrt(1001.0),
                                                     rel=1e-6)


# --------------------------------------------------------------------------
# Bad input.

BAD = [
    (sdrl.zscore_clip, dict(alpha=0.0), "alpha"),
    (sdrl.zscore_clip, dict(alpha=1.0), "alpha"),
    (sdrl.zscore_clip, dict(alpha=-0.5), "alpha"),
    (sdrl.zscore_clip, dict(z_thresh=0.0), "z_thresh"),
    (sdrl.zscore_clip, dict(z_thresh=-1.0), "z_thresh"),
    (sdrl.zscore_clip, dict(z_thresh=float("nan")), "z_thresh"),
    (sdrl.zscore_clip, dict(warmup_steps=-1), "warmup_steps"),
    (sdrl.zscore_clip, dict(warmup_steps=2.5), "warmup_steps"),
    (sdrl.zscore_clip, dict(max_norm=0.0), "max_norm"),
    (sdrl.zscore_clip, dict(max_norm=-1.0), "max_norm"),
    (sdrl.zscore_clip, dict(max_norm=float("inf")), "max_norm"),
    (sdrl.quantile_clip, dict(quantile=0.0), "quantile"),
    (sdrl.quantile_clip, dict(quantile=1.5), "quantile"),
    (sdrl.quantile_clip, dict(history=0), "history"),
    (sdrl.quantile_clip, dict(min_history=0), "min_history"),
    (sdrl.quantile_clip, dict(history=5, min_history=6), "min_history"),
    (sdrl.quantile_clip, dict(history=True), "history"),
]
BAD_SKIP = [
    (dict(window=0), "window"),
    (dict(min_history=0), "min_history"),
    (dict(window=8, min_history=9), "min_history"),
    (dict(max_consecutive=0), "max_consecutive"),
    (dict(z_thresh=0.0), "z_thresh"),
    (dict(z_thresh=-2.0), "z_thresh"),
    (dict(max_norm=-1.0), "max_norm"),
    (dict(max_norm=float("nan")), "max_norm"),
]


@pytest.mark.parametrize("factory,kwargs,name", BAD)
def test_bad_arguments_raise(factory, kwargs, name):
  with pytest.raises(ValueError, match=name) as excinfo:
    factory(**kwargs)
  assert repr(kwargs[name] if name in kwargs else kwargs) in str(excinfo.value)


@pytest.mark.parametrize("kwargs,name", BAD_SKIP)
def test_bad_skip_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name) as excinfo:
    sdrl.skip_spikes(optax.sgd(0.1), **kwargs)
  assert repr(kwargs[name]) in str(excinfo.value)


@pytest.mark.parametrize("name", sorted(ALL))
def test_axis_name_and_partition_specs_together_raise(name):
  with pytest.raises(ValueError, match="axis_name"):
    ALL[name](axis_name="x", partition_specs={"a": P(), "b": P()})


@pytest.mark.parametrize("name", sorted(ALL))
def test_mismatched_partition_specs_raise_naming_the_path(name):
  tx = ALL[name](partition_specs={"a": P(), "c": P()})
  with pytest.raises(ValueError, match="partition_specs"):
    tx.init(grads_with_norm(1.0))
  state = ALL[name]().init(grads_with_norm(1.0))
  with pytest.raises(ValueError, match="partition_specs") as error:
    tx.update(grads_with_norm(1.0), state)
  if jax.__version_info__ >= (0, 10):  # Older jax does not name the path.
    assert "'b'" in str(error.value)


# --------------------------------------------------------------------------
# shard_map on 8 CPU devices.

SHARDED = {
    "zscore": lambda **kw: sdrl.zscore_clip(alpha=0.9, z_thresh=2.0,
                                            warmup_steps=4, **kw),
    "quantile": lambda **kw: sdrl.quantile_clip(quantile=0.8, history=6,
                                                min_history=3, **kw),
    "skip": lambda **kw: sdrl.skip_spikes(optax.sgd(0.5), z_thresh=2.0,
                                          window=6, min_history=4, **kw),
}


def to_varying(x, axis):
  """Marks a replicated value as per-device (``pcast`` from jax 0.9 on)."""
  if hasattr(jax.lax, "pcast"):
    return jax.lax.pcast(x, axis, to="varying")
  return jax.lax.pvary(x, axis)


def sharded_trace_trees(trace, seed=3):
  """Trees {"w": [16, 3], "b": [8]} with global norm ``trace[i]``."""
  rng = np.random.default_rng(seed)
  trees = []
  for g in trace:
    w, b = rng.normal(size=(16, 3)), rng.normal(size=(8,))
    s = g / np.sqrt(np.sum(w ** 2) + np.sum(b ** 2))
    trees.append({"w": jnp.asarray(w * s, jnp.float32),
                  "b": jnp.asarray(b * s, jnp.float32)})
  return trees


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["axis_name", "partition_specs"])
@pytest.mark.parametrize("name", sorted(SHARDED))
def test_shard_map_matches_single_device_and_state_is_replicated(
    name, layout):
  assert jax.device_count() >= 8, "the root conftest must provide 8 devices"
  mesh = jax.make_mesh((8,), ("x",))
  if layout == "axis_name":
    specs = {"w": P("x"), "b": P("x")}
    kwargs = dict(axis_name="x")
  else:  # "b" replicated on every device, counted once
    specs = {"w": P("x"), "b": P()}
    kwargs = dict(partition_specs=specs)
  tx, tx_ref = SHARDED[name](**kwargs), SHARDED[name]()
  trace = np.array([1.0, 1.1, 0.9, 1.2, 1.0, 9.0, np.nan, 1.05, 0.95, 12.0,
                    1.1, 1.0])
  trees = sharded_trace_trees(trace)
  state = tx.init(trees[0])
  state_specs = jax.tree.map(lambda _: P(), state)

  def body(u, s):
    out, new = tx.update(u, s, u)
    # Every device's copy of the state, to check at run time as well.
    copies = jax.tree.map(lambda x: to_varying(x, "x")[None], new)
    return out, new, copies

  step = jax.jit(jax.shard_map(
      body, mesh=mesh, in_specs=(specs, state_specs),
      out_specs=(specs, state_specs, jax.tree.map(lambda _: P("x"), state)),
      check_vma=True))
  ref_step = jax.jit(tx_ref.update)
  ref_state = tx_ref.init(trees[0])
  put = lambda t: jax.device_put(
      t, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
  norms, ref_norms = [], []
  for tree in trees:
    out, state, copies = step(put(tree), state)
    ref_out, ref_state = ref_step(tree, ref_state, tree)
    norms.append(tree_norm(out))
    ref_norms.append(tree_norm(ref_out))
    for leaf in jax.tree.leaves(copies):
      leaf = np.asarray(leaf)
      for replica in leaf[1:]:
        np.testing.assert_array_equal(replica, leaf[0])
  np.testing.assert_allclose(norms, ref_norms, rtol=1e-6)
  assert np.count_nonzero(np.array(ref_norms) < trace * 0.999) >= 2
  chex.assert_trees_all_close(state, ref_state, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.examples
def test_benchmark_script_draws_the_plot(tmp_path):
  script = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "benchmarks", "adaptive_thresholds.py")
  out = tmp_path / "thresholds.png"
  result = subprocess.run(
      [sys.executable, script, "--steps", "200", "--out", str(out)],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert out.stat().st_size > 10_000
  for name in ("fixed", "z-score", "quantile", "skip"):
    assert name in result.stdout


def test_quantile_clip_max_norm_is_a_ceiling_at_every_step():
  tx = sdrl.quantile_clip(quantile=0.5, history=4, min_history=2, max_norm=2.0)
  update = jax.jit(tx.update)
  state = tx.init({"w": jnp.zeros(1)})
  history, out_norms, expected = [], [], []
  for g in [5.0, 1.0, 3.0, 4.0, 1.5]:
    out, state = update({"w": jnp.array([g])}, state)
    out_norms.append(abs(float(out["w"][0])))
    threshold = 2.0
    if len(history) >= 2:
      threshold = min(float(np.quantile(history[-4:], 0.5)), 2.0)
    expected.append(min(g, threshold))
    history.append(g)
  np.testing.assert_allclose(out_norms, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="max_norm"):
    sdrl.quantile_clip(max_norm=-1.0)
