"""Tests for stabledrl_jax._src.normalization against NumPy versions written here."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stabledrl_jax._src import normalization


def np_moments(values):
  """Count, mean and population variance of rows, in float64."""
  values = np.asarray(values, np.float64)
  return len(values), values.mean(axis=0), values.var(axis=0)


def test_init_running_stats():
  stats = normalization.init_running_stats((3,))
  assert isinstance(stats, normalization.RunningStats)
  chex.assert_shape((stats.mean, stats.var), (3,))
  assert float(stats.count) == 0
  np.testing.assert_array_equal(stats.var, np.ones(3))


def test_update_sequence_matches_numpy_on_all_data():
  rng = np.random.default_rng(0)
  batches = [rng.normal(5.0, 3.0, size=(n,)).astype(np.float32)
             for n in (1, 7, 30, 2)]
  stats = normalization.init_running_stats()
  update = jax.jit(normalization.update_running_stats)
  for b in batches:
    stats = update(stats, b)
  count, mean, var = np_moments(np.concatenate(batches))
  np.testing.assert_allclose(stats.count, count)
  np.testing.assert_allclose(stats.mean, mean, rtol=1e-5)
  np.testing.assert_allclose(stats.var, var, rtol=1e-4)


@pytest.mark.slow
def test_update_vector_features_and_mask():
  rng = np.random.default_rng(1)
  x1 = rng.normal(size=(4, 6, 2)).astype(np.float32)  # batch [4, 6], S = (2,)
  m1 = rng.integers(0, 2, size=(4, 6))
  x2 = rng.normal(2.0, 0.5, size=(5, 2)).astype(np.float32)
  stats = normalization.init_running_stats((2,))
  stats = normalization.update_running_stats(stats, x1, mask=m1)
  stats = normalization.update_running_stats(stats, x2)
  kept = np.concatenate([x1[m1 != 0], x2])
  count, mean, var = np_moments(kept)
  np.testing.assert_allclose(stats.count, count)
  np.testing.assert_allclose(stats.mean, mean, rtol=1e-5)
  np.testing.assert_allclose(stats.var, var, rtol=1e-4)


@pytest.mark.slow
def test_fractional_mask_selects_like_the_losses():
  # A mask selects: any non-zero value keeps the value with weight 1, as the
  # losses read masks (it is not a weight).
  rng = np.random.default_rng(2)
  x = rng.normal(1.0, 2.0, size=(12,)).astype(np.float32)
  m = rng.uniform(0.0, 1.0, size=(12,)).astype(np.float32)
  m[[1, 4, 7]] = 0.0
  stats = normalization.update_running_stats(
      normalization.init_running_stats(), x[:5], mask=m[:5])
  stats = normalization.update_running_stats(stats, x[5:], mask=m[5:])
  kept = x[m != 0].astype(np.float64)
  np.testing.assert_allclose(stats.count, kept.size)
  np.testing.assert_allclose(stats.mean, kept.mean(), rtol=1e-5)
  np.testing.assert_allclose(stats.var, kept.var(), rtol=1e-4)


@pytest.mark.parametrize("bad", [-1.0, np.nan])
def test_negative_or_nan_mask_is_rejected(bad):
  # A negative mask used as a weight gave a negative variance and NaN rewards.
  mask = np.array([1.0, bad, 1.0], np.float32)
  with pytest.raises(ValueError, match="mask.*negative"):
    normalization.update_running_stats(
        normalization.init_running_stats(), jnp.arange(3.0), mask=mask)


def test_traced_negative_mask_counts_as_selected():
  # Under jit the values cannot be checked; a non-zero entry selects.
  update = jax.jit(normalization.update_running_stats)
  stats = update(normalization.init_running_stats(), jnp.array([1.0, 3.0]),
                 mask=jnp.array([-1.0, 1.0]))
  np.testing.assert_allclose([stats.count, stats.mean, stats.var],
                             [2.0, 2.0, 1.0])


@pytest.mark.slow
def test_update_drops_nonfinite_and_empty_batch_is_noop():
  stats = normalization.update_running_stats(
      normalization.init_running_stats(), jnp.array([1.0, jnp.nan, 4.0,
                                                     -jnp.inf]))
  count, mean, var = np_moments([1.0, 4.0])
  np.testing.assert_allclose((stats.count, stats.mean, stats.var),
                             (count, mean, var), rtol=1e-6)
  same = normalization.update_running_stats(stats, jnp.array([jnp.nan]))
  chex.assert_trees_all_equal(same, stats)
  same = normalization.update_running_stats(stats, jnp.ones(3),
                                            mask=jnp.zeros(3))
  chex.assert_trees_all_equal(same, stats)
  fresh = normalization.update_running_stats(
      normalization.init_running_stats(), jnp.zeros((0,)))
  chex.assert_trees_all_equal(fresh, normalization.init_running_stats())


@pytest.mark.slow
def test_update_large_offset_is_stable():
  # Values around 1e4 with spread 1: a naive E[x²] − E[x]² in float32 loses
  # the variance; the merge keeps it.
  rng = np.random.default_rng(2)
  batches = [1e4 + rng.normal(size=50).astype(np.float32) for _ in range(4)]
  stats = normalization.init_running_stats()
  for b in batches:
    stats = normalization.update_running_stats(stats, b)
  _, mean, var = np_moments(np.concatenate(batches))
  np.testing.assert_allclose(stats.mean, mean, rtol=1e-6)
  np.testing.assert_allclose(stats.var, var, rtol=1e-3)


def test_update_bad_shapes():
  stats = normalization.init_running_stats((2,))
  with pytest.raises(ValueError, match=r"x must have shape.*\(4, 3\)"):
    normalization.update_running_stats(stats, jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match=r"mask.*\(4,\).*\(3,\)"):
    normalization.update_running_stats(stats, jnp.zeros((4, 2)),
                                       mask=jnp.ones(3))


@pytest.mark.parametrize("clip", [None, 1.0])
def test_normalize_rewards_matches_numpy(clip):
  stats = normalization.RunningStats(
      count=jnp.float32(10), mean=jnp.array([1.0, -2.0]),
      var=jnp.array([4.0, 0.25]))
  r = np.array([[3.0, -2.0], [1.0, 0.0], [-5.0, -3.0]], np.float32)
  expected = (r - np.array([1.0, -2.0])) / np.sqrt(np.array([4.0, 0.25]) +
                                                   1e-8)
  if clip is not None:
    expected = np.clip(expected, -clip, clip)
  out = normalization.normalize_rewards(r, stats, clip=clip)
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_normalize_before_any_update_is_identity():
  r = jnp.array([0.5, -3.0])
  out = normalization.normalize_rewards(r, normalization.init_running_stats(),
                                        eps=1e-12)
  np.testing.assert_allclose(out, r, rtol=1e-6)


def test_normalize_bad_arguments():
  stats = normalization.init_running_stats()
  for eps in (0.0, -1.0, float("inf")):
    with pytest.raises(ValueError, match="eps"):
      normalization.normalize_rewards(jnp.ones(2), stats, eps=eps)
  with pytest.raises(ValueError, match="clip"):
    normalization.normalize_rewards(jnp.ones(2), stats, clip=0.0)
  with pytest.raises(ValueError, match=r"rewards.*\(2, 3\)"):
    normalization.normalize_rewards(jnp.ones((2, 3)),
                                    normalization.init_running_stats((2,)))
