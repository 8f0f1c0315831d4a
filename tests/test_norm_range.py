"""global_norm over float32's whole range: no overflow, eager equals jit.

Each case is checked against a float64 NumPy norm written here.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import stabledrl_jax as sdrl

F32_MAX = float(np.finfo(np.float32).max)


def np_norm(tree):
  """Float64 NumPy norm of the floating leaves (complex: |z|)."""
  total = 0.0
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(leaf)
    if a.dtype == jnp.bfloat16 or np.issubdtype(a.dtype, np.floating):
      total += float(np.sum(a.astype(np.float64) ** 2))
    elif np.iscomplexobj(a):
      total += float(np.sum(np.abs(a.astype(np.complex128)) ** 2))
  return np.sqrt(total)


def grad_rtol(dtype):
  """Tolerance of a gradient element computed in ``dtype``: a few of its
  rounding steps (float32 1e-5, float16 1e-3, bfloat16 8e-3)."""
  return {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.float16): 1e-3,
          jnp.dtype(jnp.bfloat16): 8e-3}[jnp.dtype(dtype)]


def both(fn, tree):
  """``fn(tree)`` eagerly and under jit, as Python floats."""
  return float(fn(tree)), float(jax.jit(fn)(tree))


@pytest.mark.parametrize("value", [2e19, 1e30, 3e38, F32_MAX, 1e-15])
def test_single_element_leaf_is_exact_eager_and_jit(value):
  # optax and the old norm gave inf eagerly for 2e19 but 2e19 under jit.
  eager, jitted = both(sdrl.global_norm, [jnp.float32(value)])
  assert eager == jitted == float(np.float32(value))


def test_norm_of_many_huge_elements_is_finite_and_exact():
  tree = {"w": jnp.full((100, 10), 1e30, jnp.float32),
          "b": jnp.full((7,), -3e33, jnp.float32), "s": jnp.float32(1.0)}
  for value in both(sdrl.global_norm, tree):
    np.testing.assert_allclose(value, np_norm(tree), rtol=1e-6)


def test_bins_add_up_when_mid_elements_outweigh_a_big_one():
  # One element above 2**44 and a million just below it: the mid-range sum
  # dominates and must not be dropped when the big bin is not empty.
  tree = [jnp.float32(2.0**45), jnp.full((2**20,), 2.0**43, jnp.float32)]
  for value in both(sdrl.global_norm, tree):
    np.testing.assert_allclose(value, np_norm(tree), rtol=1e-6)


def test_tiny_and_mid_elements_combine():
  tree = [jnp.full((5,), 1e-18, jnp.float32), jnp.float32(3e-19),
          jnp.full((3,), 1e-25, jnp.float32)]
  for value in both(sdrl.global_norm, tree):
    np.testing.assert_allclose(value, np_norm(tree), rtol=1e-6)


def test_norm_beyond_float32_range_is_inf():
  # Two elements at float32's maximum: the norm itself is not representable.
  assert both(sdrl.global_norm, [jnp.full((2,), F32_MAX)]) == (np.inf,) * 2


def test_low_precision_leaves():
  tree = {"h": jnp.full((4,), 300.0, jnp.float16),      # optax: inf
          "b": jnp.full((1000,), 1.0, jnp.bfloat16),    # optax: 16
          "big": jnp.full((3,), 1e30, jnp.bfloat16),
          "tiny": jnp.full((3,), 1e-30, jnp.bfloat16)}
  for value in both(sdrl.global_norm, tree):
    np.testing.assert_allclose(value, np_norm(tree), rtol=1e-6)
  small = {"h": jnp.full((4,), 300.0, jnp.float16),
           "b": jnp.full((1000,), 1.0, jnp.bfloat16)}
  for value in both(sdrl.global_norm, small):
    np.testing.assert_allclose(value, np.sqrt(4 * 300.0**2 + 1000), rtol=1e-6)


def test_complex_leaves():
  tree = [jnp.array([3e30 + 4e30j, 1 + 1j], jnp.complex64)]
  for value in both(sdrl.global_norm, tree):
    np.testing.assert_allclose(value, np_norm(tree), rtol=1e-6)


def test_squared_norm_is_exact_in_range_and_inf_past_float32():
  # The square of a norm above ~1.8e19 does not fit in float32.
  tree = {"a": jnp.array([3.0, 4.0]), "b": jnp.ones((2, 2), jnp.bfloat16)}
  assert both(sdrl.global_norm_squared, tree) == (29.0, 29.0)
  # The square of 2e19 exceeds float32's maximum; the norm does not.
  assert both(sdrl.global_norm_squared, [jnp.float32(2e19)]) == (np.inf,) * 2
  np.testing.assert_allclose(
      both(sdrl.global_norm_squared, [jnp.float32(1e15)]), 1e30, rtol=1e-6)


@pytest.mark.parametrize("bad, expected", [
    (np.nan, np.nan), (np.inf, np.inf), (-np.inf, np.inf)])
def test_nonfinite_element_gives_nonfinite_norm(bad, expected):
  for big in (1.0, 1e30, 1e-30):
    tree = [jnp.array([big, bad], jnp.float32), jnp.ones(3)]
    for value in both(sdrl.global_norm, tree):
      np.testing.assert_equal(value, expected)


def test_clip_of_a_finite_tree_with_a_huge_norm_is_not_nonfinite():
  tree = {"w": jnp.full((10,), 1e25, jnp.float32),
          "b": jnp.array([-1e24, 3.0], jnp.float32)}
  for clip in (sdrl.unconditional_clip, sdrl.conditional_clip):
    tx = clip(1.0)
    for update in (tx.update, jax.jit(tx.update)):
      out, state = update(tree, tx.init(tree))
      assert int(state.num_nonfinite) == 0 and int(state.num_clipped) == 1
      np.testing.assert_allclose(float(state.global_norm), np_norm(tree),
                                 rtol=1e-6)
      np.testing.assert_allclose(np_norm(out), 1.0,
                                 rtol=1e-5)


# Magnitudes spread over float32's range: each leaf is a random sign times
# 10**e, e uniform in [lo, hi], so a tree's norm reaches ~1e30. (Below ~1e-19
# squares leave float32's normal range: tiny norms are not exact.)
@st.composite
def wide_trees(draw):
  num_leaves = draw(st.integers(1, 4))
  lo = draw(st.integers(-15, 30))
  hi = draw(st.integers(lo, 30))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  tree = []
  for _ in range(num_leaves):
    size = int(rng.integers(1, 50))
    exponent = rng.uniform(lo, hi, size)
    values = rng.choice([-1.0, 1.0], size) * 10.0**exponent
    dtype = (jnp.float32, jnp.bfloat16)[int(rng.integers(0, 2))]
    tree.append(jnp.asarray(values, dtype))
  return tree


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(wide_trees())
def test_hypothesis_wide_range_trees_match_float64(tree):
  expected = np_norm(tree)
  eager, jitted = both(sdrl.global_norm, tree)
  np.testing.assert_allclose(eager, expected, rtol=1e-5)
  np.testing.assert_allclose(jitted, expected, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.floats(-15, 30), st.integers(0, 2**31 - 1))
def test_hypothesis_float16_leaves(log_scale, seed):
  rng = np.random.default_rng(seed)
  # float16 holds up to 65504: keep 5-sigma draws in its range.
  scale = min(10.0**log_scale, 1e4)
  tree = [jnp.asarray(rng.normal(size=30) * scale, jnp.float16),
          jnp.asarray(rng.normal(size=(4, 3)) * 10.0**log_scale, jnp.float32)]
  np.testing.assert_allclose(both(sdrl.global_norm, tree),
                             [np_norm(tree)] * 2, rtol=1e-5)


def test_shard_map_partition_specs_with_huge_values_is_exact():
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  rng = np.random.default_rng(0)
  tree = {"rep": jnp.asarray(rng.normal(size=(4, 4)) * 1e30, jnp.float32),
          "d": jnp.asarray(rng.normal(size=(8, 4)) * 1e20, jnp.float32),
          "dm": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
          "m": jnp.asarray(rng.normal(size=(4, 8)) * 1e-25, jnp.float32)}
  specs = {"rep": P(), "d": P("data"), "dm": P("data", "model"),
           "m": P(None, "model")}
  sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
             for k, v in tree.items()}
  fn = jax.jit(jax.shard_map(
      lambda t: sdrl.global_norm(t, partition_specs=specs), mesh=mesh,
      in_specs=(specs,), out_specs=P()))
  np.testing.assert_allclose(float(fn(sharded)), np_norm(tree), rtol=1e-6)
  np.testing.assert_allclose(float(jax.jit(sdrl.global_norm)(sharded)),
                             np_norm(tree), rtol=1e-6)


# The TPU and CUDA forms of the per-leaf sums are chosen only when a program is
# lowered for those platforms; run each form here on CPU, over the whole range.
@pytest.mark.parametrize("form", ["_sums_of_variadics", "_sums_for_tpu",
                                  "_sums_of_complex", "_sums_for_cpu"])
def test_every_platform_form_gives_the_exact_norm(form):
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  trees = [
      [jnp.float32(2e19), jnp.full((1024,), 3e30, jnp.float32),
       jnp.full((32, 32), 3e30, jnp.float32)],
      [jnp.asarray(rng.normal(size=(300, 300)), jnp.float32),  # > 64K: hypot on TPU
       jnp.asarray(rng.normal(size=(40, 3)) * 1e-10, jnp.float32),
       jnp.asarray(rng.normal(size=(64,)) * 1e3, jnp.bfloat16)],
      [jnp.full((5,), 1e-12, jnp.float32), jnp.float32(F32_MAX)],
  ]
  for tree in trees:
    plain, scaled = jax.jit(
        lambda leaves: getattr(norms, form)(leaves))(tree)
    norm = float(norms._norm_from_sums(plain, scaled))
    np.testing.assert_allclose(norm, np_norm(tree), rtol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 1e-10, 1e30])
def test_gradient_of_the_norm_is_x_over_norm(scale):
  # The gradient of ‖x‖ is x / ‖x‖; its float64 NumPy value, eager and jit.
  # A NaN here came from the square root of the branch not taken.
  rng = np.random.default_rng(1)
  tree = {"w": jnp.asarray(rng.normal(size=(30, 7)) * scale, jnp.float32),
          "b": jnp.asarray(rng.normal(size=(5,)) * scale, jnp.float32)}
  assert_gradient_is_x_over_norm(tree, rtol=1e-5, atol=1e-7)


def assert_gradient_is_x_over_norm(tree, rtol, atol):
  """``jax.grad(global_norm)``, eager and jitted, against ``x / ‖x‖``."""
  norm = np_norm(tree)
  grad = jax.grad(sdrl.global_norm)
  for got in (grad(tree), jax.jit(grad)(tree)):
    for key, leaf in tree.items():
      np.testing.assert_allclose(
          np.asarray(got[key], np.float64),
          np.asarray(leaf, np.float64) / norm, rtol=rtol, atol=atol)


@pytest.mark.parametrize("form", ["_sums_of_variadics", "_sums_for_tpu",
                                  "_sums_of_complex", "_sums_for_cpu"])
def test_every_platform_form_has_the_norms_gradient(form):
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  for scale in (1.0, 1e25):  # the second overflows the plain sum
    leaves = [jnp.asarray(rng.normal(size=(300, 300)) * scale, jnp.float32),
              jnp.asarray(rng.normal(size=(8,)) * scale, jnp.float32)]
    norm_of = lambda ls: norms._norm_from_sums(*getattr(norms, form)(ls))
    got = jax.jit(jax.grad(norm_of))(leaves)
    norm = np_norm(leaves)
    for g, leaf in zip(got, leaves):
      np.testing.assert_allclose(np.asarray(g, np.float64),
                                 np.asarray(leaf, np.float64) / norm,
                                 rtol=1e-4, atol=1e-7)


def test_gradient_is_zero_at_an_all_zero_leaf():
  # A frozen or masked parameter's gradient is all zeros; the norm's gradient
  # there is 0 (x / ‖x‖), and that of the squared norm 2x.
  tree = {"w": jnp.zeros((2, 2)), "b": jnp.array([3.0, 4.0])}
  for fn, expected_b in ((sdrl.global_norm, [0.6, 0.8]),
                         (sdrl.global_norm_squared, [6.0, 8.0])):
    for grad in (jax.grad(fn), jax.jit(jax.grad(fn))):
      got = grad(tree)
      np.testing.assert_array_equal(np.asarray(got["w"]), np.zeros((2, 2)))
      np.testing.assert_allclose(np.asarray(got["b"]), expected_b, rtol=1e-6)


def test_hypot_combiner_matches_numpy_over_the_float32_range():
  # The TPU form's reduce combines norms with this, never squaring a value.
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  tiny = float(np.finfo(np.float32).tiny)  # XLA flushes subnormals to 0
  pairs = [(0.0, 0.0), (3.0, 4.0), (1e30, 1e30), (2e19, 1.0), (1e-30, 3e-30),
           (tiny, tiny), (F32_MAX, 0.0), (F32_MAX / 2, F32_MAX / 2),
           (F32_MAX, F32_MAX), (np.inf, np.inf), (np.inf, 1.0), (2e-38, 0.0)]
  a, b = (np.array(v, np.float32) for v in zip(*pairs))
  got = np.asarray(jax.jit(norms._hypot)(a, b))
  expected = np.hypot(a.astype(np.float64), b.astype(np.float64))
  with np.errstate(over="ignore"):
    expected = expected.astype(np.float32)  # inf where float32 cannot hold it
  np.testing.assert_allclose(got, expected, rtol=3e-7)
  for a, b in ((np.nan, 1.0), (1.0, np.nan), (np.nan, np.inf), (0.0, np.nan)):
    assert np.isnan(jax.jit(norms._hypot)(np.float32(a), np.float32(b)))


_HYPOT_OVER_THE_RANGE = """
import jax, numpy as np
from stabledrl_jax._src import norms
dtype = np.dtype("{dtype}")
info, rng = np.finfo(dtype), np.random.default_rng(5)
a = 2.0 ** rng.uniform(np.log2(info.tiny), np.log2(info.max), 100_000)
b = np.concatenate([  # pairs far apart in size, and pairs close together
    2.0 ** rng.uniform(np.log2(info.tiny), np.log2(info.max), 50_000),
    np.maximum(a[50_000:] * 2.0 ** -rng.uniform(0, 30, 50_000), info.tiny)])
special = np.array([0, 0, 1, np.inf, np.inf, np.nan, np.nan, info.max], dtype)
a = np.concatenate([a.astype(dtype), special])
b = np.concatenate([b.astype(dtype), special[[1, 2, 3, 4, 2, 2, 6, 7]]])
got = np.asarray(jax.jit(norms._hypot)(a, b))
assert got.dtype == dtype, got.dtype
expected = np.hypot(a.astype(np.longdouble), b.astype(np.longdouble))
with np.errstate(over="ignore"):
  expected = expected.astype(dtype)
assert np.array_equal(np.isnan(got), np.isnan(expected))
assert np.array_equal(np.isinf(got), np.isinf(expected))
finite = np.isfinite(expected) & (expected > 0)
assert np.all(got[expected == 0] == 0)
worst = np.max(np.abs(got[finite] / expected[finite] - 1)) / info.eps
# One rounding of ours; one more of the reference where long double is double.
bound = 1.0 if np.finfo(np.longdouble).nmant > info.nmant else 2.0
assert worst <= bound, worst
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hypot_combiner_is_within_an_epsilon_over_the_normal_range(dtype):
  # 100,000 random pairs, normal numbers from the smallest to the largest,
  # and zeros, infs, NaNs and the largest finite value; float64 leaves (x64
  # mode) take the same combiner, hence a fresh process.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(
                 [root] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
  result = subprocess.run(
      [sys.executable, "-c", _HYPOT_OVER_THE_RANGE.format(dtype=dtype)],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]


def test_hypot_combiner_has_no_drift_over_long_chains():
  # A TPU reduce runs each lane as a long chain of combines. big * √(1 + r²)
  # rounds down about half the time and drifts by 3.6e-4 over 25,000 steps;
  # a float32 sum of squares drifts by ~4e-6 here.
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  x = np.abs(np.random.default_rng(4).normal(size=(25_000, 64))
             ).astype(np.float32)
  chain = jax.jit(lambda x: jax.lax.scan(
      lambda acc, row: (norms._hypot(acc, row), None),
      jnp.zeros((64,), jnp.float32), x)[0])
  expected = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=0))
  np.testing.assert_allclose(np.asarray(chain(x), np.float64), expected,
                             rtol=2e-5)

  def textbook(a, b):
    big, small = jnp.maximum(a, b), jnp.minimum(a, b)
    return big * jnp.sqrt(1 + (small / big) ** 2)

  drifted = jax.jit(lambda x: jax.lax.scan(
      lambda acc, row: (textbook(acc, row), None),
      jnp.full((64,), np.float32(1e-30)), x)[0])(x)
  # The data tell the two apart: the textbook form is 3.6e-4 low.
  assert np.all(np.asarray(drifted, np.float64) / expected - 1 < -3e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_hypot_sums_give_the_exact_norm_and_its_gradient(dtype):
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  top = float(jnp.finfo(dtype).max) / 64  # no element rounds to inf
  for scale in (1e-3, 1.0, min(1e30, top)):
    leaves = [jnp.asarray(rng.normal(size=(300, 40)) * scale, dtype),
              jnp.asarray(rng.normal(size=(7,)) * scale, dtype),
              jnp.zeros((3, 3), dtype)]
    norm_of = lambda ls: norms._norm_from_sums(*norms._hypot_sums(*ls))
    np.testing.assert_allclose(float(jax.jit(norm_of)(leaves)),
                               np_norm(leaves), rtol=1e-5)
    grads = jax.jit(jax.grad(norm_of))(leaves)
    for g, leaf in zip(grads, leaves):
      np.testing.assert_allclose(
          np.asarray(g, np.float64),
          np.asarray(leaf, np.float64) / np_norm(leaves),
          rtol=grad_rtol(dtype), atol=1e-6)


def test_hypot_sums_are_inf_or_nan_only_for_such_elements():
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  norm_of = jax.jit(lambda ls: norms._norm_from_sums(*norms._hypot_sums(*ls)))
  huge = [jnp.full((64, 64), 3e38, jnp.bfloat16)]  # the norm itself > max
  assert float(norm_of(huge)) == np.inf
  finite = [jnp.full((8,), 1e38, jnp.bfloat16)]  # squares overflow, norm not
  np.testing.assert_allclose(float(norm_of(finite)), np_norm(finite),
                             rtol=1e-6)
  assert float(norm_of([jnp.array([1.0, np.inf, np.inf], jnp.bfloat16)])
               ) == np.inf
  assert np.isnan(float(norm_of([jnp.array([1.0, np.nan], jnp.bfloat16)])))
  assert float(norm_of([jnp.zeros((5,), jnp.bfloat16)])) == 0.0


def test_tpu_form_pairs_only_small_float32_matrices(monkeypatch):
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  hypot_shapes, paired_shapes = [], []
  original_hypot, original_paired = norms._hypot_sums, norms._paired_sums

  def recording_hypot(*leaves):
    hypot_shapes.extend((str(x.dtype), x.shape) for x in leaves)
    return original_hypot(*leaves)

  def recording_paired(*xs):
    paired_shapes.append([(str(x.dtype), x.shape) for x in xs])
    return original_paired(*xs)

  monkeypatch.setattr(norms, "_hypot_sums", recording_hypot)
  monkeypatch.setattr(norms, "_paired_sums", recording_paired)
  rng = np.random.default_rng(5)
  leaves = [jnp.asarray(rng.normal(size=(300, 300)), jnp.float32),
            jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
            jnp.asarray(rng.normal(size=(700,)), jnp.float32),
            jnp.float32(3.0),
            jnp.asarray(rng.normal(size=(300, 40)) * 1e25, jnp.bfloat16),
            jnp.asarray(rng.normal(size=(50,)), jnp.float16)]
  norm_of = lambda ls: norms._norm_from_sums(*norms._sums_for_tpu(ls))
  np.testing.assert_allclose(float(jax.jit(norm_of)(leaves)), np_norm(leaves),
                             rtol=1e-5)
  assert paired_shapes == [[("float32", (8, 8))]]
  assert hypot_shapes == [("float32", (300, 300)), ("float32", (700,)),
                          ("float32", ()), ("bfloat16", (300, 40)),
                          ("float16", (50,))]
  grads = jax.jit(jax.grad(norm_of))(leaves)
  for g, leaf in zip(grads, leaves):
    np.testing.assert_allclose(
        np.asarray(g, np.float64),
        np.asarray(leaf, np.float64) / np_norm(leaves),
        rtol=grad_rtol(leaf.dtype), atol=1e-6)


def test_tpu_form_reduces_same_shaped_small_matrices_in_groups(monkeypatch):
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  groups = []
  original_paired = norms._paired_sums

  def recording_paired(*xs):
    groups.append([x.shape for x in xs])
    return original_paired(*xs)

  monkeypatch.setattr(norms, "_paired_sums", recording_paired)
  rng = np.random.default_rng(6)
  # 19 leaves of 8x8 (groups of 8, 8 and 3) between 3 of 4x16; one leaf's
  # squares overflow float32, so the norm comes from the scaled sums.
  leaves = [jnp.asarray(rng.normal(size=(8, 8)) * 10.0**(i - 9), jnp.float32)
            for i in range(19)]
  leaves[4:4] = [jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)
                 for _ in range(3)]
  leaves[7] = jnp.full((8, 8), 3e19, jnp.float32)
  norm_of = lambda ls: norms._norm_from_sums(*norms._sums_for_tpu(ls))
  np.testing.assert_allclose(float(jax.jit(norm_of)(leaves)), np_norm(leaves),
                             rtol=1e-6)
  assert groups == [[(8, 8)] * 8, [(8, 8)] * 8, [(8, 8)] * 3, [(4, 16)] * 3]
  small = [jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)
           for _ in range(11)]
  np.testing.assert_allclose(float(jax.jit(norm_of)(small)), np_norm(small),
                             rtol=1e-6)
  grads = jax.jit(jax.grad(norm_of))(small)
  for g, leaf in zip(grads, small):
    np.testing.assert_allclose(np.asarray(g), np.asarray(leaf) / np_norm(small),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_near_float32_max_is_not_nan_eagerly(dtype):
  # 2x overflows for x above half of float32's maximum; times the zero
  # cotangent of the overflowed plain sum that was NaN without jit.
  tree = {"w": jnp.array([[2e38, 1.0], [3.0, -1e37]], dtype),
          "b": jnp.ones((3,), dtype)}
  assert_gradient_is_x_over_norm(tree, rtol=grad_rtol(dtype), atol=1e-30)
