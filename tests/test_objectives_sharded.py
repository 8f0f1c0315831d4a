"""Objectives, advantages and running statistics under shard_map on 8 devices.

Every reducing function, given ``axis_name``, must return on each device what
it returns on one device for the whole batch: segments and GRPO groups that
span devices, very uneven sequence lengths per device, empty rows and empty
devices included. The root conftest gives this process 8 CPU devices.
"""

import functools

import chex
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from stabledrl_jax._src import advantages
from stabledrl_jax._src import diffusion
from stabledrl_jax._src import normalization
from stabledrl_jax._src import objectives

# Minutes on two cores (8-device shard_map compiles): out of the quick loop, in CI.
pytestmark = pytest.mark.slow

DEVICES = 8
ROWS = 3  # rows per device: groups of 4 always straddle devices
B = DEVICES * ROWS
T = 6
# DESIGN: rtol 1e-6 against the whole-batch answer; the atol only covers
# results that cancel to ~0, where the summation order decides the last bits.
RTOL, ATOL = 1e-6, 1e-7


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() >= DEVICES, "conftest must provide 8 CPU devices"
  return jax.make_mesh((DEVICES,), ("x",))


def run_sharded(mesh, fn, args, out_specs, axes="x"):
  """Runs ``fn(*args)`` under shard_map with every argument split on rows."""
  args = [jax.device_put(a, NamedSharding(mesh, P(axes))) for a in args]
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(axes),) * len(args),
                         out_specs=out_specs)
  return jax.jit(mapped)(*args)


def assert_close(actual, expected):
  chex.assert_trees_all_close(actual, expected, rtol=RTOL, atol=ATOL)


def uneven_token_mask():
  """Device d's rows have lengths that shrink with d; device 7 is all empty."""
  lengths = np.array([[T, T, T], [T, 5, 4], [4, 3, 6], [2, 2, 2], [1, 0, 1],
                      [0, 0, 1], [1, 0, 0], [0, 0, 0]]).reshape(-1)
  return (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)


RNG = np.random.default_rng(7)
LOG_RATIO = RNG.normal(0.0, 3.0, size=B).astype(np.float32)
LOG_RATIO[[2, 9, 17]] = [1e4, -1e4, 40.0]
SEQ_MASK = (RNG.random(B) > 0.2).astype(np.float32)
SEQ_MASK[21:] = 0  # the last device holds only masked rows
CONTIGUOUS_IDS = np.arange(B) // 4  # 6 groups of 4, each across 2 devices
SCATTERED_IDS = RNG.permutation(np.arange(B) % 5)  # 5 groups + an empty 6th


@pytest.mark.parametrize("ids", [None, CONTIGUOUS_IDS, SCATTERED_IDS])
def test_self_normalized_weights(mesh, ids):
  kwargs = {} if ids is None else dict(num_segments=6)
  def fn(lr, mask, *seg):
    return objectives.self_normalized_weights(
        lr, mask=mask, segment_ids=seg[0] if seg else None, axis_name="x",
        **kwargs)
  args = [LOG_RATIO, SEQ_MASK] + ([] if ids is None else [ids])
  got = run_sharded(mesh, fn, args, P("x"))
  expected = objectives.self_normalized_weights(
      LOG_RATIO, mask=SEQ_MASK, segment_ids=ids, **kwargs)
  chex.assert_tree_all_finite(got)
  assert_close(got, expected)


def test_stabledrl_loss_metrics_and_gradients(mesh):
  seq_logp = RNG.normal(-5.0, 1.0, size=B).astype(np.float32)
  old = seq_logp - LOG_RATIO
  adv = RNG.normal(size=B).astype(np.float32)
  kwargs = dict(max_ratio=3.0, num_segments=6)

  def loss_and_grad(axis_name, s, o, a, m, ids):
    f = lambda s: objectives.stabledrl_policy_loss(
        s, o, a, mask=m, segment_ids=ids, axis_name=axis_name, **kwargs)
    return jax.value_and_grad(f, has_aux=True)(s)

  (loss, metrics), grad = run_sharded(
      mesh, functools.partial(loss_and_grad, "x"),
      [seq_logp, old, adv, SEQ_MASK, CONTIGUOUS_IDS], ((P(), P()), P("x")))
  (loss1, metrics1), grad1 = loss_and_grad(
      None, seq_logp, old, adv, SEQ_MASK, CONTIGUOUS_IDS)
  chex.assert_tree_all_finite((loss, metrics, grad))
  assert_close((loss, metrics, grad), (loss1, metrics1, grad1))


def test_stabledrl_gradient_of_replicated_parameters(mesh):
  # Parameters replicated, data split: the gradient of the (psum'd) loss with
  # respect to the parameters is the whole-batch gradient on every device.
  x = RNG.normal(size=(B, 3)).astype(np.float32)
  theta = np.array([0.3, -0.2, 0.1], np.float32)
  old = RNG.normal(-1.0, 2.0, size=B).astype(np.float32)
  adv = RNG.normal(size=B).astype(np.float32)

  def grad_fn(axis_name, x, old, adv, ids, theta):
    def f(t):
      return objectives.stabledrl_policy_loss(
          x @ t, old, adv, segment_ids=ids, num_segments=6,
          axis_name=axis_name)[0]
    return jax.grad(f)(theta)

  args = [jax.device_put(a, NamedSharding(mesh, P("x")))
          for a in (x, old, adv, CONTIGUOUS_IDS)]
  mapped = jax.jit(jax.shard_map(
      functools.partial(grad_fn, "x"), mesh=mesh,
      in_specs=(P("x"),) * 4 + (P(),), out_specs=P()))
  got = mapped(*args, jax.device_put(theta, NamedSharding(mesh, P())))
  assert_close(got, grad_fn(None, x, old, adv, CONTIGUOUS_IDS, theta))


@pytest.mark.parametrize("adv_shape", [(B,), (B, T)])
def test_grpo_all_modes_uneven_lengths(mesh, adv_shape):
  mask = uneven_token_mask()
  logp = RNG.normal(-1.0, 0.5, size=(B, T)).astype(np.float32)
  old = (logp + RNG.normal(0.0, 0.5, size=(B, T))).astype(np.float32)
  old[0, 0] = logp[0, 0] + 1e4  # extreme ratios on a real token
  old[1, 1] = logp[1, 1] - 1e4
  adv = RNG.normal(size=adv_shape).astype(np.float32)  # per sequence or token

  def all_modes(axis_name, logp, old, adv, mask):
    out = {}
    for level in objectives.RATIO_LEVELS:
      for mode in objectives.LOSS_AGGREGATIONS:
        f = lambda lp: objectives.grpo_policy_loss(
            lp, old, adv, mask, dual_clip=3.0, ratio_level=level,
            loss_agg=mode, axis_name=axis_name)
        out[level, mode] = jax.value_and_grad(f, has_aux=True)(logp)
    return out

  spec = ((P(), P()), P("x"))
  got = run_sharded(mesh, functools.partial(all_modes, "x"),
                    [logp, old, adv, mask],
                    {k: spec for k in all_modes(None, logp, old, adv, mask)})
  expected = all_modes(None, logp, old, adv, mask)
  chex.assert_tree_all_finite(got)
  assert_close(got, expected)


def test_value_entropy_aggregation_uneven_lengths(mesh):
  mask = uneven_token_mask()
  v = RNG.normal(size=(B, T)).astype(np.float32)
  old = (v + RNG.normal(scale=0.3, size=(B, T))).astype(np.float32)
  ret = RNG.normal(size=(B, T)).astype(np.float32)
  logits = RNG.normal(size=(B, T, 5)).astype(np.float32)

  def fn(axis_name, v, old, ret, logits, mask):
    out = {}
    for mode in objectives.LOSS_AGGREGATIONS:
      out["value", mode] = objectives.value_loss(
          v, old, ret, mask, clip_range=0.2, loss_agg=mode,
          axis_name=axis_name)
      out["entropy", mode] = objectives.entropy_bonus(
          logits, mask, loss_agg=mode, axis_name=axis_name)
    return out

  args = [v, old, ret, logits, mask]
  expected = fn(None, *args)
  got = run_sharded(mesh, functools.partial(fn, "x"), args,
                    {k: P() for k in expected})
  assert_close(got, expected)


REWARDS = RNG.integers(0, 3, size=B).astype(np.float32)
REWARDS[[5, 6, 13]] = [np.nan, np.inf, np.nan]


@pytest.mark.parametrize("group_size", [4, 6, 8, 24])
def test_group_and_rloo_advantages(mesh, group_size):
  def fn(axis_name, r):
    out = {s: advantages.group_advantages(r, group_size=group_size, scale=s,
                                          axis_name=axis_name)
           for s in advantages.ADVANTAGE_SCALES}
    out["rloo"] = advantages.rloo_advantages(r, group_size=group_size,
                                             axis_name=axis_name)
    return out

  expected = fn(None, REWARDS)
  got = run_sharded(mesh, functools.partial(fn, "x"), [REWARDS],
                    {k: P("x") for k in expected})
  assert_close(got, expected)


def test_group_size_must_divide_global_batch(mesh):
  with pytest.raises(ValueError, match="global batch size 24"):
    run_sharded(mesh, lambda r: advantages.group_advantages(
        r, group_size=5, axis_name="x"), [REWARDS], P("x"))


def test_running_stats(mesh):
  x = RNG.normal(3.0, 2.0, size=(B, 2)).astype(np.float32)
  x[4, 1] = np.nan
  mask = (RNG.random(B) > 0.3).astype(np.float32)
  start = normalization.update_running_stats(
      normalization.init_running_stats((2,)), RNG.normal(size=(5, 2)))

  def fn(axis_name, x, mask):
    return normalization.update_running_stats(start, x, mask=mask,
                                              axis_name=axis_name)

  expected = fn(None, x, mask)
  got = run_sharded(mesh, functools.partial(fn, "x"), [x, mask],
                    normalization.RunningStats(P(), P(), P()))
  assert_close(got, expected)


@pytest.mark.parametrize("group_size", [None, 4, 6, 24])
def test_weights_and_loss_with_group_size(mesh, group_size):
  # group_size numbers rows of the global batch: groups of 4 and 6 straddle
  # devices; the result equals contiguous segment_ids on the whole batch.
  seq_logp = RNG.normal(-5.0, 1.0, size=B).astype(np.float32)
  ratio_logp = seq_logp + RNG.normal(0.0, 2.0, size=B).astype(np.float32)
  old = seq_logp - LOG_RATIO
  adv = RNG.normal(size=B).astype(np.float32)

  def fn(axis_name, s, r, o, a, m):
    w = objectives.self_normalized_weights(r - o, group_size=group_size,
                                           mask=m, axis_name=axis_name)
    f = lambda s: objectives.stabledrl_policy_loss(
        s, o, a, ratio_logp=r, group_size=group_size, mask=m,
        axis_name=axis_name)
    return w, jax.value_and_grad(f, has_aux=True)(s)

  args = [seq_logp, ratio_logp, old, adv, SEQ_MASK]
  got = run_sharded(mesh, functools.partial(fn, "x"), args,
                    (P("x"), ((P(), P()), P("x"))))
  expected = fn(None, *args)
  chex.assert_tree_all_finite(got)
  assert_close(got, expected)
  if group_size is not None:
    ids = np.arange(B) // group_size
    by_ids = objectives.self_normalized_weights(
        ratio_logp - old, segment_ids=ids, num_segments=B // group_size,
        mask=SEQ_MASK)
    assert_close(got[0], by_ids)


M = 3


def test_diffusion_reference_loss_pipeline(mesh):
  # Estimators per row (no collective) and the reference loss with groups of
  # 4 that straddle devices: value and gradient equal the whole batch's.
  lengths = np.array([T, T - 1, 3, 0, 1, T, 2, T] * 3)
  completion = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  token_logp = -RNG.uniform(0.01, 5.0, size=(M, B, T)).astype(np.float32)
  masks = diffusion.sample_diffusion_masks(jax.random.key(0), completion, M)
  old_elbo = RNG.normal(-2.0, 1.0, size=B).astype(np.float32)
  adv = RNG.normal(size=B).astype(np.float32)

  def fn(axis_name, token_logp, masked, t, completion, old_elbo, adv):
    m = diffusion.DiffusionMasks(masked, t)

    def loss(x):
      elbo = diffusion.diffusion_elbo(x, m, completion)
      eubo = diffusion.diffusion_eubo(x, m, completion)
      sandwich = diffusion.sandwich_logp(elbo, eubo, adv)
      return objectives.stabledrl_policy_loss(
          sandwich, old_elbo, adv, ratio_logp=elbo, group_size=4,
          axis_name=axis_name)

    elbo_t = diffusion.diffusion_elbo(token_logp, m, completion,
                                      weighting="inverse_t")
    return elbo_t, jax.value_and_grad(loss, has_aux=True)(token_logp)

  args = [token_logp, masks.masked, masks.t, completion, old_elbo, adv]
  split = [P(None, "x"), P(None, "x"), P(None, "x"), P("x"), P("x"), P("x")]
  placed = [jax.device_put(a, NamedSharding(mesh, spec))
            for a, spec in zip(args, split)]
  mapped = jax.shard_map(functools.partial(fn, "x"), mesh=mesh,
                         in_specs=tuple(split),
                         out_specs=(P("x"), ((P(), P()), P(None, "x"))))
  got = jax.jit(mapped)(*placed)
  expected = fn(None, *args)
  chex.assert_tree_all_finite(got)
  assert_close(got, expected)


def test_grpo_sequence_level_inputs(mesh):
  logp = RNG.normal(-3.0, 1.0, size=B).astype(np.float32)
  old = (logp + RNG.normal(0.0, 0.5, size=B)).astype(np.float32)
  adv = RNG.normal(size=B).astype(np.float32)

  def fn(axis_name, logp, old, adv, mask):
    out = {}
    for mode in objectives.LOSS_AGGREGATIONS:
      f = lambda lp, mode=mode: objectives.grpo_policy_loss(
          lp, old, adv, mask, loss_agg=mode, axis_name=axis_name)
      out[mode] = jax.value_and_grad(f, has_aux=True)(logp)
    return out

  args = [logp, old, adv, SEQ_MASK]
  expected = fn(None, *args)
  got = run_sharded(mesh, functools.partial(fn, "x"), args,
                    {k: ((P(), P()), P("x")) for k in expected})
  assert_close(got, expected)


def test_group_advantages_with_scattered_segment_ids(mesh):
  def fn(axis_name, r, ids):
    out = {s: advantages.group_advantages(
        r, segment_ids=ids, num_segments=6, scale=s, axis_name=axis_name)
           for s in advantages.ADVANTAGE_SCALES}
    out["rloo"] = advantages.rloo_advantages(
        r, segment_ids=ids, num_segments=6, axis_name=axis_name)
    return out

  expected = fn(None, REWARDS, SCATTERED_IDS)
  got = run_sharded(mesh, functools.partial(fn, "x"),
                    [REWARDS, SCATTERED_IDS], {k: P("x") for k in expected})
  assert_close(got, expected)


def test_two_axis_mesh_tuple_axis_name():
  # A (2, 4) mesh with the batch split over both axes: device order follows
  # the tuple, so groups still map to the right global rows.
  mesh2 = jax.make_mesh((2, 4), ("a", "b"))
  axes = ("a", "b")
  seq_logp = RNG.normal(-3.0, 1.0, size=B).astype(np.float32)

  def fn(axis_name, r, s, ids):
    adv = advantages.group_advantages(r, group_size=4, axis_name=axis_name)
    loss, _ = objectives.stabledrl_policy_loss(
        s, s - 1.0, adv, segment_ids=ids, num_segments=6, axis_name=axis_name)
    return adv, loss

  args = [REWARDS, seq_logp, CONTIGUOUS_IDS]
  got = run_sharded(mesh2, functools.partial(fn, axes), args,
                    (P(axes), P()), axes=axes)
  assert_close(got, fn(None, *args))


def test_without_axis_name_results_differ(mesh):
  # Control: the data above really need the collectives. Per-device
  # normalizers and divisors (axis_name=None inside shard_map) give other
  # answers — the per-micro-batch bug the global counts avoid.
  mask = uneven_token_mask()
  logp = RNG.normal(-1.0, 0.5, size=(B, T)).astype(np.float32)
  adv = RNG.normal(size=B).astype(np.float32)

  def fn(axis_name, lr, ids, logp, mask, adv):
    w = objectives.self_normalized_weights(
        lr, segment_ids=ids, num_segments=6, axis_name=axis_name)
    loss, _ = objectives.grpo_policy_loss(logp, logp - 0.1, adv, mask,
                                          axis_name=axis_name)
    snl, _ = objectives.stabledrl_policy_loss(
        lr, lr - 1.0, adv, axis_name=axis_name)
    return w, loss[None], snl[None]

  args = [LOG_RATIO, CONTIGUOUS_IDS, logp, mask, adv]
  expected = fn(None, *args)
  local = run_sharded(mesh, functools.partial(fn, None), args,
                      (P("x"), P("x"), P("x")))
  for got, want in zip(local, expected):
    assert not np.allclose(got, want, rtol=1e-3, equal_nan=True)
