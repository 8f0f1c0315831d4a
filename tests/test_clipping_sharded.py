"""Clipping on 8 CPU devices: pmap, shard_map (1-D and 2-D meshes), jit.

Every distributed answer is compared with the single-device answer on the
gathered tree (rtol 1e-6). The root conftest gives the process 8 CPU devices.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import stabledrl_jax as sdrl

# Minutes on two cores (8-device shard_map/pmap compiles): out of the quick loop, in CI.
pytestmark = pytest.mark.slow

CLIPS = (sdrl.unconditional_clip, sdrl.conditional_clip)
RTOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
  # Fails rather than skips: a silently skipped distributed test proves nothing.
  assert jax.device_count() >= 8, "the root conftest must provide 8 devices"


def single_device(clip, tree, max_norm, steps=1):
  """Reference: the transform applied to the whole tree on one device."""
  tx = clip(max_norm)
  state = tx.init(tree)
  for _ in range(steps):
    out, state = jax.jit(tx.update)(tree, state)
  return out, state


def random_tree(shapes, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return {name: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
          for name, shape in shapes.items()}


def put(tree, mesh, specs):
  """Places a whole tree on ``mesh`` with ``specs`` (a tree prefix)."""
  return jax.device_put(
      tree, jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                         is_leaf=lambda x: isinstance(x, P)))


def assert_state_close(state, reference):
  chex.assert_trees_all_close(state.global_norm, reference.global_norm,
                              rtol=RTOL)
  chex.assert_trees_all_close(state.scale, reference.scale, rtol=RTOL)
  chex.assert_trees_all_equal(state.num_clipped, reference.num_clipped)
  chex.assert_trees_all_equal(state.num_nonfinite, reference.num_nonfinite)


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("max_norm", [1.0, 1e3])
def test_pmap_with_axis_name(clip, max_norm):
  tree = random_tree({"w": (8, 6), "b": (16,), "h": (8, 2, 3)}, scale=2.0)
  blocks = jax.tree.map(lambda x: x.reshape((8, -1) + x.shape[1:]), tree)
  tx = clip(max_norm, axis_name="i")
  states = jax.pmap(tx.init)(blocks)

  def step(u, s):
    return tx.update(u, s)

  out, state = jax.pmap(step, axis_name="i")(blocks, states)
  gathered = jax.tree.map(lambda b, x: b.reshape(x.shape), out, tree)
  ref_out, ref_state = single_device(clip, tree, max_norm)
  chex.assert_trees_all_close(gathered, ref_out, rtol=RTOL)
  for replica in range(8):
    assert_state_close(jax.tree.map(lambda x: x[replica], state), ref_state)


@pytest.mark.parametrize("clip", CLIPS)
def test_shard_map_1d_with_axis_name(clip):
  mesh = jax.make_mesh((8,), ("x",))
  tree = random_tree({"w": (16, 4), "b": (8,), "e": (24, 2, 2)}, seed=1,
                     scale=3.0)
  specs = jax.tree.map(lambda _: P("x"), tree)
  tree_sharded = put(tree, mesh, specs)
  tx = clip(2.0, axis_name="x")
  state0 = tx.init(tree)
  state_specs = jax.tree.map(lambda _: P(), state0)

  @jax.jit
  def step(u, s):
    return jax.shard_map(tx.update, mesh=mesh, in_specs=(specs, state_specs),
                         out_specs=(specs, state_specs))(u, s)

  out, state = step(tree_sharded, state0)
  out, state = step(tree_sharded, state)  # counters over two steps
  ref_out, ref_state = single_device(clip, tree, 2.0, steps=2)
  chex.assert_trees_all_close(out, ref_out, rtol=RTOL)
  assert_state_close(state, ref_state)
  assert int(state.num_clipped) == 2


@pytest.mark.parametrize("clip", CLIPS)
def test_shard_map_2d_with_tuple_axis_name(clip):
  # Every leaf split over both axes of a 2-D mesh: axis_name=("data", "model").
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  tree = random_tree({"w": (16, 3), "b": (8,), "e": (24, 2)}, seed=4,
                     scale=2.0)
  specs = jax.tree.map(lambda _: P(("data", "model")), tree)
  tx = clip(1.5, axis_name=("data", "model"))
  state0 = tx.init(tree)
  state_specs = jax.tree.map(lambda _: P(), state0)
  step = jax.jit(jax.shard_map(tx.update, mesh=mesh,
                               in_specs=(specs, state_specs),
                               out_specs=(specs, state_specs)))
  out, state = step(put(tree, mesh, specs), state0)
  ref_out, ref_state = single_device(clip, tree, 1.5)
  chex.assert_trees_all_close(out, ref_out, rtol=RTOL)
  assert_state_close(state, ref_state)
  norm = jax.jit(jax.shard_map(
      lambda t: sdrl.global_norm(t, axis_name=("data", "model")), mesh=mesh,
      in_specs=(specs,), out_specs=P()))(put(tree, mesh, specs))
  np.testing.assert_allclose(float(norm), float(ref_state.global_norm),
                             rtol=RTOL)


MIXED_SPECS = {
    "data_rows": P("data"),                 # one axis, leading dim
    "model_cols": P(None, "model"),         # one axis, non-leading dim
    "both": P("data", "model"),             # both axes, two dims
    "both_flat": P(("data", "model")),      # both axes, one dim
    "replicated": P(),                      # counted once
    "replicated_vec": P(None),              # also replicated
    "step": P(),                            # integer leaf: not counted
}
MIXED_SHAPES = {
    "data_rows": (4, 3), "model_cols": (3, 8), "both": (2, 4),
    "both_flat": (16,), "replicated": (5,), "replicated_vec": (3,),
}


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("scale", [0.1, 5.0])
def test_shard_map_2d_with_partition_specs(clip, scale):
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  tree = random_tree(MIXED_SHAPES, seed=2, scale=scale)
  tree["step"] = jnp.int32(11)
  sharded = put(tree, mesh, MIXED_SPECS)
  tx = clip(1.5, partition_specs=MIXED_SPECS)
  state0 = tx.init(tree)
  state_specs = jax.tree.map(lambda _: P(), state0)
  sm = jax.shard_map(tx.update, mesh=mesh, in_specs=(MIXED_SPECS, state_specs),
                     out_specs=(MIXED_SPECS, state_specs), check_vma=True)
  out, state = jax.jit(sm)(sharded, state0)
  ref_out, ref_state = single_device(clip, tree, 1.5)
  chex.assert_trees_all_close(out, ref_out, rtol=RTOL)
  assert_state_close(state, ref_state)
  assert int(out["step"]) == 11
  # A replicated leaf counted once: the norm is the gathered tree's norm, not
  # one where replicated leaves are multiplied by the mesh size.
  gathered = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                         for k, x in tree.items() if k != "step"))
  np.testing.assert_allclose(float(state.global_norm), gathered, rtol=RTOL)


def test_shard_map_2d_state_is_replicated_on_every_device():
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  tree = random_tree(MIXED_SHAPES, seed=3, scale=5.0)
  tree["step"] = jnp.int32(0)
  tx = sdrl.unconditional_clip(1.0, partition_specs=MIXED_SPECS)
  state0 = tx.init(tree)
  per_device = jax.tree.map(lambda _: P(("data", "model")), state0)

  def update_and_expose(u, s):
    _, s = tx.update(u, s)
    # Each device returns its own copy: all 8 must agree.
    return jax.tree.map(lambda x: x[None], s)

  sm = jax.shard_map(update_and_expose, mesh=mesh,
                     in_specs=(MIXED_SPECS, jax.tree.map(lambda _: P(), state0)),
                     out_specs=per_device, check_vma=False)
  copies = jax.jit(sm)(put(tree, mesh, MIXED_SPECS), state0)
  for field in copies:
    values = np.asarray(field)
    assert values.shape[0] == 8
    np.testing.assert_array_equal(values, np.broadcast_to(values[0],
                                                          values.shape))


def count_all_reduces(hlo_text):
  return len(re.findall(r"\ball-reduce(?:-start)?\(", hlo_text))


def test_one_all_reduce_for_several_axis_sets_and_replicated_leaves():
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  shapes = {f"l{i:03d}": (8, 4) for i in range(100)}
  specs = {k: (P("model") if i % 2 else P(("data", "model")))
           for i, k in enumerate(shapes)}
  specs["l000"] = P()  # replicated: counted on device (0, 0) only
  specs["l001"] = P("data")
  tree = random_tree(shapes)
  tx = sdrl.unconditional_clip(1.0, partition_specs=specs)
  state0 = tx.init(tree)
  state_specs = jax.tree.map(lambda _: P(), state0)
  sm = jax.shard_map(tx.update, mesh=mesh, in_specs=(specs, state_specs),
                     out_specs=(specs, state_specs))
  lowered = jax.jit(sm).lower(put(tree, mesh, specs), state0)
  # Three axis sets and a replicated leaf, one psum over {data, model}.
  assert lowered.as_text().count("all_reduce") == 1
  assert count_all_reduces(lowered.compile().as_text()) == 1
  _, state = jax.jit(sm)(put(tree, mesh, specs), state0)
  total = sum(np.sum(np.asarray(x, np.float64) ** 2) for x in tree.values())
  np.testing.assert_allclose(float(state.global_norm), np.sqrt(total),
                             rtol=RTOL)


def test_jit_on_sharded_global_arrays_needs_no_axis():
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  tree = random_tree(MIXED_SHAPES, seed=4, scale=5.0)
  sharded = put(tree, mesh, {k: MIXED_SPECS[k] for k in tree})
  for clip in CLIPS:
    tx = clip(1.0)
    out, state = jax.jit(tx.update)(sharded, tx.init(tree))
    ref_out, ref_state = single_device(clip, tree, 1.0)
    chex.assert_trees_all_close(out, ref_out, rtol=RTOL)
    assert_state_close(state, ref_state)
    assert out["both"].sharding.is_equivalent_to(sharded["both"].sharding, 2)


@pytest.mark.parametrize("collective", ["pmap", "shard_map"])
def test_data_parallel_pattern_pmean_then_clip_without_axis(collective):
  """Each device holds a different *full* gradient: average, then clip."""
  per_device = random_tree({"w": (8, 3, 2), "b": (8, 4)}, seed=5, scale=4.0)
  mean = jax.tree.map(lambda x: x.mean(axis=0), per_device)
  ref_out, ref_state = single_device(sdrl.unconditional_clip, mean, 1.0)
  tx = sdrl.unconditional_clip(1.0)
  state0 = tx.init(mean)

  def step(g, s):
    g = jax.lax.pmean(g, "data")
    return tx.update(g, s)

  if collective == "pmap":
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, (8,) + x.shape), state0)
    out, state = jax.pmap(step, axis_name="data")(per_device, states)
    out = jax.tree.map(lambda x: x[3], out)
    state = jax.tree.map(lambda x: x[5], state)
  else:
    mesh = jax.make_mesh((8,), ("data",))
    state_specs = jax.tree.map(lambda _: P(), state0)
    squeeze = lambda g, s: step(jax.tree.map(lambda x: x[0], g), s)
    out, state = jax.jit(jax.shard_map(
        squeeze, mesh=mesh, in_specs=(P("data"), state_specs),
        out_specs=(P(), state_specs)))(put(per_device, mesh, P("data")),
                                        state0)
  chex.assert_trees_all_close(out, ref_out, rtol=RTOL)
  assert_state_close(state, ref_state)


def test_nonfinite_on_one_shard_zeroes_every_shard():
  mesh = jax.make_mesh((8,), ("x",))
  tree = put({"w": jnp.ones((16,)).at[13].set(jnp.nan)}, mesh, {"w": P("x")})
  tx = sdrl.unconditional_clip(1.0, axis_name="x")
  state0 = tx.init(tree)
  state_specs = jax.tree.map(lambda _: P(), state0)
  out, state = jax.jit(jax.shard_map(
      tx.update, mesh=mesh, in_specs=({"w": P("x")}, state_specs),
      out_specs=({"w": P("x")}, state_specs)))(tree, state0)
  np.testing.assert_array_equal(out["w"], np.zeros(16))
  assert int(state.num_nonfinite) == 1


def test_chain_with_adamw_under_shard_map_matches_single_device():
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  shapes = {k: v for k, v in MIXED_SHAPES.items()}
  specs = {k: MIXED_SPECS[k] for k in shapes}
  params = random_tree(shapes, seed=6)
  grads = random_tree(shapes, seed=7, scale=3.0)
  tx = optax.chain(sdrl.unconditional_clip(1.0, partition_specs=specs),
                   optax.adamw(1e-2))
  ref_tx = optax.chain(sdrl.unconditional_clip(1.0), optax.adamw(1e-2))
  opt_state = tx.init(params)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  # Adam's moments have the structure of the params: give them their specs.
  state_specs = (
      jax.tree.map(lambda _: P(), opt_state[0]),
      (opt_state[1][0]._replace(count=P(), mu=specs, nu=specs),) +
      tuple(jax.tree.map(lambda _: P(), s) for s in opt_state[1][1:]))
  sm = jax.jit(jax.shard_map(step, mesh=mesh,
                             in_specs=(specs, state_specs, specs),
                             out_specs=(specs, state_specs)))
  ref_step = jax.jit(lambda p, s, g: (lambda u, s: (
      optax.apply_updates(p, u), s))(*ref_tx.update(g, s, p)))
  p, s = put(params, mesh, specs), put(opt_state, mesh, state_specs)
  grads = put(grads, mesh, specs)
  rp, rs = params, ref_tx.init(params)
  for _ in range(3):
    p, s = sm(p, s, grads)
    rp, rs = ref_step(rp, rs, grads)
  chex.assert_trees_all_close(p, rp, rtol=RTOL, atol=1e-7)
  assert_state_close(s[0], rs[0])


@pytest.mark.parametrize("clip", CLIPS)
def test_shard_map_with_partition_specs_prefix(clip):
  # One P() for a whole replicated subtree, as shard_map's in_specs accept.
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  tree = {"sharded": random_tree({"w": (8, 4)}, seed=5)["w"],
          "frozen": random_tree({"a": (3,), "b": (2, 2)}, seed=6)}
  specs = {"sharded": P("data", "model"), "frozen": P()}
  tx = clip(1.0, partition_specs=specs)
  state0 = tx.init(tree)
  state_specs = jax.tree.map(lambda _: P(), state0)
  sm = jax.shard_map(tx.update, mesh=mesh, in_specs=(specs, state_specs),
                     out_specs=(specs, state_specs), check_vma=True)
  out, state = jax.jit(sm)(put(tree, mesh, specs), state0)
  ref_out, ref_state = single_device(clip, tree, 1.0)
  chex.assert_trees_all_close(out, ref_out, rtol=RTOL)
  assert_state_close(state, ref_state)
  gathered = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                         for x in jax.tree.leaves(tree)))
  np.testing.assert_allclose(float(state.global_norm), gathered, rtol=RTOL)
