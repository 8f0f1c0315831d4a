"""Single-device tests of global_norm, unconditional_clip and conditional_clip."""

import re

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import stabledrl_jax as sdrl

CLIPS = (sdrl.unconditional_clip, sdrl.conditional_clip)


def np_norm(tree):
  """Float64 NumPy reference norm of the floating leaves."""
  total = 0.0
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating) or a.dtype == jnp.bfloat16:
      total += float(np.sum(a.astype(np.float64) ** 2))
    elif np.iscomplexobj(a):
      total += float(np.sum(np.abs(a.astype(np.complex128)) ** 2))
  return np.sqrt(total)


def np_clip(tree, max_norm):
  """NumPy reference clip (float64 arithmetic)."""
  norm = np_norm(tree)
  scale = 1.0 if norm <= max_norm else max_norm / norm
  return jax.tree.map(lambda x: np.asarray(x, np.float64) * scale, tree)


def count_conditionals(hlo_text):
  return len(re.findall(r"\bconditional\(", hlo_text))


def make_tree(seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return {
      "dense": {"w": jnp.asarray(rng.normal(size=(5, 3)) * scale, jnp.float32),
                "b": jnp.asarray(rng.normal(size=(3,)) * scale, jnp.float32)},
      "emb": [jnp.asarray(rng.normal(size=(7,)) * scale, jnp.float32)],
  }


# ---------------------------------------------------------------- global_norm


def test_global_norm_matches_numpy_on_mixed_tree():
  tree = {"a": jnp.array([3.0, 4.0]), "b": jnp.ones((2, 2), jnp.bfloat16),
          "c": jnp.array([1 + 2j], jnp.complex64), "step": jnp.int32(7),
          "mask": jnp.array([True, False]), "none": None}
  norm = sdrl.global_norm(tree)
  assert norm.dtype == jnp.float32 and norm.shape == ()
  # 9 + 16 + 4 * 1 + |1+2j|^2 = 34; ints, bools and None do not count.
  np.testing.assert_allclose(float(norm), np.sqrt(34.0), rtol=1e-7)
  np.testing.assert_allclose(float(sdrl.global_norm_squared(tree)), 34.0,
                             rtol=1e-7)


def test_global_norm_of_empty_and_integer_trees_is_zero():
  assert float(sdrl.global_norm({})) == 0.0
  assert float(sdrl.global_norm({"n": jnp.arange(4)})) == 0.0


@pytest.mark.slow
def test_fp16_tree_of_300s_does_not_overflow():
  tree = [jnp.full((64, 64), 300.0, jnp.float16) for _ in range(4)]
  truth = np_norm(tree)  # 300 * sqrt(4 * 4096) = 38400
  # Why this test exists: summed in fp16, optax's norm overflows and its clip
  # zeroes the update.
  zeroed, _ = optax.clip_by_global_norm(1.0).update(tree, ())
  assert not np.any(np.asarray(zeroed[0], np.float32))
  np.testing.assert_allclose(float(sdrl.global_norm(tree)), truth, rtol=5e-3)


@pytest.mark.slow
def test_thousand_bf16_leaves_keep_their_mass():
  # 1001 has more significant bits than bfloat16 holds: any sum across the
  # leaves kept in bfloat16 (pairwise or chained) misses it.
  tree = [jnp.ones((), jnp.bfloat16) for _ in range(1001)]
  assert float(sdrl.global_norm_squared(tree)) == 1001.0
  np.testing.assert_allclose(float(sdrl.global_norm(tree)), np.sqrt(1001.0),
                             rtol=1e-7)
  jitted = jax.jit(sdrl.global_norm_squared)(tree)
  assert float(jitted) == 1001.0


def test_global_norm_without_axes_adds_no_collective():
  # Inside shard_map over a named axis, where a stray psum would lower to an
  # all-reduce; with no axis_name the norm stays local.
  mesh = jax.make_mesh((1,), ("x",), devices=jax.devices()[:1])
  tree = make_tree()
  specs = jax.tree.map(lambda _: P(), tree)
  local = jax.shard_map(sdrl.global_norm, mesh=mesh, in_specs=(specs,),
                        out_specs=P(), check_vma=False)
  with_axis = jax.shard_map(lambda t: sdrl.global_norm(t, axis_name="x"),
                            mesh=mesh, in_specs=(specs,), out_specs=P())
  assert "all_reduce" not in jax.jit(local).lower(tree).as_text()
  # The check can fail: the same lowering with an axis does show one.
  assert "all_reduce" in jax.jit(with_axis).lower(tree).as_text()


def test_axis_name_and_partition_specs_are_exclusive():
  tree = make_tree()
  specs = jax.tree.map(lambda _: P(), tree)
  with pytest.raises(ValueError, match="axis_name.*partition_specs"):
    sdrl.global_norm(tree, axis_name="x", partition_specs=specs)


def test_partition_specs_mismatch_names_the_argument_and_the_path():
  tree = make_tree()  # {"dense": {"b", "w"}, "emb": [leaf]}
  cases = [
      ({"dense": {"w": P(), "bias": P()}, "emb": [P()]}, r"\['dense'\]"),
      ({"dense": {"w": P(), "b": P()}, "emb": [P(), P()]}, r"\['emb'\]"),
      ({"dense": {"w": P(), "b": P()}, "emb": (P(),)},
       r"\['emb'\][\s\S]*tuple[\s\S]*list"),
      ({"dense": {"w": P(), "b": None}, "emb": P()},
       r"\['dense'\]\['b'\][\s\S]*NoneType"),
      ([P(), P()], r"list[\s\S]*dict"),
  ]
  for specs, where in cases:
    with pytest.raises(ValueError, match="^partition_specs must be a prefix "
                       "of the updates' tree") as error:
      sdrl.global_norm(tree, partition_specs=specs)
    # JAX's own message, which follows ours, names the key path and the
    # types in jax 0.10; the oldest supported jax only says what differs.
    if jax.__version_info__ >= (0, 10):
      assert re.search(where, str(error.value)), (specs, str(error.value))
  with pytest.raises(ValueError, match="leaves must be PartitionSpec.*'x'"):
    sdrl.global_norm(tree, partition_specs={"dense": {"w": P(), "b": "x"},
                                            "emb": [P()]})


@pytest.mark.slow
def test_partition_specs_may_be_a_prefix_of_the_tree():
  tree = make_tree()
  full = {"dense": {"w": P(), "b": P()}, "emb": [P()]}
  expected = np_norm(tree)
  for specs in [full, P(), {"dense": P(), "emb": P()},
                {"dense": P(), "emb": [P()]}]:
    np.testing.assert_allclose(
        float(sdrl.global_norm(tree, partition_specs=specs)), expected,
        rtol=1e-6)
    for clip in CLIPS:
      tx = clip(1.0, partition_specs=specs)
      out, _ = tx.update(tree, tx.init(tree))
      chex.assert_trees_all_close(out, np_clip(tree, 1.0), rtol=1e-6)
  # A spec facing a None (an empty subtree) covers no leaf.
  np.testing.assert_allclose(
      float(sdrl.global_norm({"a": None, "b": jnp.ones(4)},
                             partition_specs={"a": P(), "b": P()})), 2.0)


def test_fp8_leaves_count_in_float32():
  tree = [jnp.full((16,), 3.0, jnp.float8_e4m3fn)]
  np.testing.assert_allclose(float(sdrl.global_norm(tree)), 12.0, rtol=1e-7)
  for clip in CLIPS:
    tx = clip(6.0)
    out, _ = tx.update(tree, tx.init(tree))
    assert out[0].dtype == jnp.float8_e4m3fn
    np.testing.assert_allclose(np.asarray(out[0], np.float32), 1.5, rtol=1e-7)


# ------------------------------------------------------------ clip arithmetic


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_matches_numpy_and_optax(clip, max_norm):
  tree = make_tree(scale=1.0)
  tx = clip(max_norm)
  updates, state = jax.jit(tx.update)(tree, tx.init(tree))
  chex.assert_trees_all_close(updates, np_clip(tree, max_norm), rtol=1e-6)
  reference, _ = optax.clip_by_global_norm(max_norm).update(tree, ())
  chex.assert_trees_all_close(updates, reference, rtol=1e-6)
  norm = np_norm(tree)
  np.testing.assert_allclose(float(state.global_norm), norm, rtol=1e-6)
  np.testing.assert_allclose(float(state.scale), min(1.0, max_norm / norm),
                             rtol=1e-6)
  assert int(state.num_clipped) == int(norm > max_norm)
  assert int(state.num_nonfinite) == 0


@pytest.mark.slow
@pytest.mark.parametrize("nonfinite", ["zero", "propagate"])
def test_conditional_equals_unconditional(nonfinite):
  for seed, scale in [(0, 0.1), (1, 1.0), (2, 30.0)]:
    tree = make_tree(seed, scale)
    outs = []
    for clip in CLIPS:
      tx = clip(2.0, nonfinite=nonfinite)
      outs.append(jax.jit(tx.update)(tree, tx.init(tree)))
    chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-6)


# XLA:CPU flushes subnormal floats to zero, so they are left out here.
finite_arrays = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
    elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(leaves=st.lists(finite_arrays, min_size=1, max_size=4),
                  max_norm=st.floats(1e-3, 1e3),
                  clip=st.sampled_from(CLIPS))
@pytest.mark.slow
def test_clip_properties(leaves, max_norm, clip):
  tree = [jnp.asarray(x) for x in leaves]
  tx = clip(max_norm)
  updates, state = tx.update(tree, tx.init(tree))
  norm = np_norm(tree)
  out_norm = np_norm(updates)
  # Bounded.
  assert out_norm <= max_norm * (1 + 1e-6) + 1e-30
  if norm <= max_norm * (1 - 1e-6):
    # Identity below the threshold.
    chex.assert_trees_all_equal(updates, tree)
  elif norm > 0:
    # Direction kept: every leaf is the same positive multiple of the input.
    flat_in = np.concatenate([np.ravel(x) for x in leaves]).astype(np.float64)
    flat_out = np.concatenate([np.ravel(x) for x in updates]).astype(
        np.float64)
    np.testing.assert_allclose(flat_out, flat_in * (max_norm / norm),
                               rtol=2e-6, atol=1e-6 * max_norm)
  assert float(state.scale) <= 1.0


@pytest.mark.parametrize("clip", CLIPS)
def test_zero_gradients_pass_unchanged(clip):
  tree = jax.tree.map(jnp.zeros_like, make_tree())
  tx = clip(1.0)
  updates, state = tx.update(tree, tx.init(tree))
  chex.assert_trees_all_equal(updates, tree)
  chex.assert_tree_all_finite(updates)
  assert float(state.scale) == 1.0 and float(state.global_norm) == 0.0
  assert int(state.num_clipped) == 0


@pytest.mark.parametrize("clip", CLIPS)
def test_low_precision_leaves_keep_their_dtype(clip):
  tree = {"h": jnp.full((8,), 300.0, jnp.float16),
          "b": jnp.full((8,), 2.0, jnp.bfloat16)}
  tx = clip(1.0)
  updates, state = jax.jit(tx.update)(tree, tx.init(tree))
  assert updates["h"].dtype == jnp.float16 and updates["b"].dtype == jnp.bfloat16
  chex.assert_tree_all_finite(updates)
  np.testing.assert_allclose(np_norm(updates), 1.0, rtol=1e-2)


@pytest.mark.parametrize("clip", CLIPS)
def test_non_floating_leaves_pass_through_and_empty_tree_works(clip):
  tree = {"w": jnp.array([30.0, 40.0]), "step": jnp.int32(3),
          "mask": jnp.array([True, False]), "skip": None}
  tx = clip(5.0)
  updates, _ = jax.jit(tx.update)(tree, tx.init(tree))
  assert updates["step"] is not None and int(updates["step"]) == 3
  assert updates["step"].dtype == jnp.int32
  np.testing.assert_array_equal(updates["mask"], tree["mask"])
  assert updates["skip"] is None
  np.testing.assert_allclose(updates["w"], [3.0, 4.0], rtol=1e-6)
  empty, state = tx.update({}, tx.init({}))
  assert empty == {} and float(state.global_norm) == 0.0
  # Eagerly, non-floating leaves come back as the very same objects.
  eager, _ = tx.update(tree, tx.init(tree))
  assert eager["step"] is tree["step"] and eager["mask"] is tree["mask"]


# ------------------------------------------------------------ non-finite steps


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_step_is_zeroed_and_counted(clip, bad):
  tx = clip(1.0)
  good = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([1.0], jnp.bfloat16)}
  poisoned = {"w": jnp.array([bad, 4.0]), "b": jnp.array([1.0], jnp.bfloat16)}
  update = jax.jit(tx.update)
  state = tx.init(good)
  out, state = update(poisoned, state)
  for leaf in jax.tree.leaves(out):
    np.testing.assert_array_equal(np.asarray(leaf, np.float32), 0.0)
  assert int(state.num_nonfinite) == 1 and float(state.scale) == 0.0
  assert not np.isfinite(float(state.global_norm))
  # The next finite step clips normally.
  out, state = update(good, state)
  expected = np_clip(good, 1.0)
  np.testing.assert_allclose(out["w"], expected["w"], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out["b"], np.float32),
                             np.asarray(expected["b"], np.float32),
                             rtol=8e-3)  # bfloat16 rounding
  assert int(state.num_nonfinite) == 1 and int(state.num_clipped) == 1


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_propagate_lets_nonfinite_through_like_optax(clip, bad):
  tx = clip(1.0, nonfinite="propagate")
  tree = {"a": jnp.array([bad, 1.0]), "b": jnp.array([3.0, 4.0])}
  out, state = jax.jit(tx.update)(tree, tx.init(tree))
  reference, _ = optax.clip_by_global_norm(1.0).update(tree, ())
  # Same non-finite pattern as optax, leaf for leaf and element for element.
  for leaf, ref in zip(jax.tree.leaves(out), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(np.isfinite(leaf), np.isfinite(ref))
    np.testing.assert_array_equal(np.isnan(leaf), np.isnan(ref))
  assert int(state.num_nonfinite) == 1


@pytest.mark.parametrize("clip", CLIPS)
def test_counters_over_several_steps(clip):
  tx = clip(1.0)
  update = jax.jit(tx.update)
  norms = [0.5, 2.0, np.nan, 3.0, 0.9, np.inf, 1.5]
  state = tx.init({"w": jnp.zeros(1)})
  for norm in norms:
    _, state = update({"w": jnp.array([norm], jnp.float32)}, state)
  finite = [n for n in norms if np.isfinite(n)]
  assert int(state.num_clipped) == sum(n > 1.0 for n in finite)
  assert int(state.num_nonfinite) == len(norms) - len(finite)
  assert state.num_clipped.dtype == jnp.int32
  assert state.num_nonfinite.dtype == jnp.int32


def test_state_round_trips_through_numpy():
  tx = sdrl.unconditional_clip(1.0)
  tree = make_tree(scale=5.0)
  _, state = tx.update(tree, tx.init(tree))
  as_numpy = jax.tree.map(np.asarray, state)
  restored = sdrl.ClipState(*[jnp.asarray(x) for x in as_numpy])
  chex.assert_trees_all_equal(restored, state)
  assert [x.dtype for x in state] == [jnp.float32, jnp.float32, jnp.int32,
                                       jnp.int32]
  # The restored state keeps working.
  _, state2 = jax.jit(tx.update)(tree, restored)
  assert int(state2.num_clipped) == 2


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("max_norm", [0.0, -1.0, np.float32(-2.0), np.nan,
                                      np.inf])
def test_bad_max_norm_raises_naming_it(clip, max_norm):
  with pytest.raises(ValueError, match=r"max_norm.*" + re.escape(repr(max_norm))):
    clip(max_norm)


@pytest.mark.parametrize("clip", CLIPS)
def test_max_norm_array_is_checked_when_the_step_runs(clip):
  # A JAX array is what optax.inject_hyperparams passes, eagerly too: a bad
  # value zeroes the step and counts it instead of raising mid-training.
  tx = clip(jnp.float32(0.0))
  grads = {"w": jnp.array([3.0, 4.0])}
  out, state = tx.update(grads, tx.init(grads))
  np.testing.assert_array_equal(out["w"], [0.0, 0.0])
  assert int(state.num_nonfinite) == 1
  with pytest.raises(ValueError, match="max_norm must be a real scalar"):
    clip(jnp.array([1.0, 2.0]))


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("max_norm", [1e-46, 1e-40, 1e39])
def test_max_norm_that_float32_cannot_hold_raises(clip, max_norm):
  # 1e-46 is 0 in float32 and 1e-40 subnormal, flushed to 0 on CPU (zero
  # gradients would give 0/0); 1e39 is inf.
  with pytest.raises(ValueError, match=r"max_norm.*float32.*" + re.escape(
      repr(max_norm))):
    clip(max_norm)


@pytest.mark.parametrize("clip", CLIPS)
def test_non_scalar_max_norm_raises(clip):
  with pytest.raises(ValueError, match="max_norm"):
    clip(np.array([1.0, 2.0]))


@pytest.mark.parametrize("clip", CLIPS)
def test_bad_nonfinite_and_layout_raise(clip):
  with pytest.raises(ValueError, match="nonfinite.*'skip'"):
    clip(1.0, nonfinite="skip")
  with pytest.raises(ValueError, match="axis_name.*partition_specs"):
    clip(1.0, axis_name="x", partition_specs={"w": P()})


@pytest.mark.parametrize("clip", CLIPS)
def test_mismatched_partition_specs_raise_at_update(clip):
  tx = clip(1.0, partition_specs={"w": P(), "v": P()})
  tree = {"w": jnp.ones(2), "b": jnp.ones(2)}
  where = r"^partition_specs must be a prefix[\s\S]*'v'[\s\S]*'b'"
  with pytest.raises(ValueError, match=where):
    tx.init(tree)
  with pytest.raises(ValueError, match=where):
    tx.update(tree, tx.init(None))


# ---------------------------------------------------------- compiled program


@pytest.mark.slow
def test_hlo_unconditional_has_no_conditional_conditional_has_one():
  tree = make_tree()
  for clip, expected in [(sdrl.unconditional_clip, 0),
                         (sdrl.conditional_clip, 1)]:
    for nonfinite in ["zero", "propagate"]:
      tx = clip(1.0, nonfinite=nonfinite)
      hlo = jax.jit(tx.update).lower(tree, tx.init(tree)).compile().as_text()
      assert count_conditionals(hlo) == expected, (clip, nonfinite)


def test_python_float_leaves_count_and_are_clipped():
  tree = {"a": 30.0, "b": jnp.array([40.0])}
  np.testing.assert_allclose(float(sdrl.global_norm(tree)), 50.0, rtol=1e-7)
  for clip in CLIPS:
    tx = clip(1.0)
    out, state = tx.update(tree, tx.init(tree))
    np.testing.assert_allclose(float(out["a"]), 0.6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["b"]), [0.8], rtol=1e-6)
    assert float(state.global_norm) == pytest.approx(50.0)


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
def test_no_retracing_across_steps(clip):
  chex.clear_trace_counter()  # the counter is keyed by code, shared by params
  tx = optax.chain(clip(1.0), optax.adam(1e-2))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params = make_tree()
  opt_state = tx.init(params)
  for seed in range(4):
    params, opt_state = step(params, opt_state, make_tree(seed, 10.0))
  # A non-finite step does not retrace either.
  params, opt_state = step(params, opt_state, make_tree(0, np.nan))
  assert int(opt_state[0].num_clipped) == 4
  assert int(opt_state[0].num_nonfinite) == 1


# ------------------------------------------------------------------- drop-in


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
def test_inject_hyperparams_changes_take_effect(clip):
  tx = optax.inject_hyperparams(clip)(max_norm=1.0)
  grads = {"w": jnp.array([3.0, 4.0])}
  update = jax.jit(tx.update)
  state = tx.init(grads)
  out, state = update(grads, state)
  np.testing.assert_allclose(out["w"], [0.6, 0.8], rtol=1e-6)
  state.hyperparams["max_norm"] = jnp.asarray(2.5)
  out, state = update(grads, state)
  np.testing.assert_allclose(out["w"], [1.5, 2.0], rtol=1e-6)
  bad = optax.inject_hyperparams(clip)(max_norm=-1.0)
  out, state = bad.update(grads, bad.init(grads))
  np.testing.assert_array_equal(out["w"], [0.0, 0.0])
  assert int(state.inner_state.num_nonfinite) == 1


def test_schedule_through_inject_hyperparams():
  schedule = optax.linear_schedule(1.0, 5.0, transition_steps=4)
  tx = optax.inject_hyperparams(sdrl.conditional_clip)(max_norm=schedule)
  grads = {"w": jnp.array([3.0, 4.0])}
  state = tx.init(grads)
  update = jax.jit(tx.update)
  seen = []
  for _ in range(5):
    out, state = update(grads, state)
    seen.append(float(np.linalg.norm(out["w"])))
  np.testing.assert_allclose(seen, [1.0, 2.0, 3.0, 4.0, 5.0], rtol=1e-6)


@pytest.mark.parametrize("clip", CLIPS)
def test_multi_steps_accumulates_then_clips(clip):
  tx = optax.MultiSteps(optax.chain(clip(1.0),
                                    optax.sgd(1.0)), every_k_schedule=2)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  g1, g2 = {"w": jnp.array([6.0, 0.0])}, {"w": jnp.array([0.0, 8.0])}
  out, state = update(g1, state, params)
  np.testing.assert_array_equal(out["w"], [0.0, 0.0])
  out, state = update(g2, state, params)
  # Mean gradient (3, 4) has norm 5, clipped to 1, then sgd(1.0) negates.
  np.testing.assert_allclose(out["w"], [-0.6, -0.8], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
def test_flax_nnx_optimizer(clip):
  class Linear(nnx.Module):

    def __init__(self, rngs):
      self.w = nnx.Param(jax.random.normal(rngs.params(), (3, 1)))
      self.b = nnx.Param(jnp.zeros((1,)))

    def __call__(self, x):
      return x @ self.w + self.b

  model = Linear(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
      model, optax.chain(clip(0.1), optax.sgd(1.0)),
      wrt=nnx.Param)
  x = jnp.ones((4, 3)) * 10.0
  y = jnp.zeros((4, 1)) + 100.0
  before = {"w": np.asarray(model.w[...]), "b": np.asarray(model.b[...])}

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)

  train_step(model, optimizer)
  moved = np.sqrt(np.sum((np.asarray(model.w[...]) - before["w"]) ** 2)
                  + np.sum((np.asarray(model.b[...]) - before["b"]) ** 2))
  np.testing.assert_allclose(moved, 0.1, rtol=1e-5)
