"""Tests for stabledrl_jax._src.advantages against NumPy versions written here."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stabledrl_jax._src import advantages


def np_group_advantages(rewards, group_size, scale="group", eps=1e-6):
  rewards = np.asarray(rewards, np.float64)
  out = np.zeros_like(rewards)
  finite_all = rewards[np.isfinite(rewards)]
  batch_std = np.std(finite_all, ddof=1) if len(finite_all) > 1 else 0.0
  for start in range(0, len(rewards), group_size):
    r = rewards[start:start + group_size]
    ok = np.isfinite(r)
    if not ok.any():
      continue
    centered = r[ok] - r[ok].mean()
    if scale == "group":
      std = np.std(r[ok], ddof=1) if ok.sum() > 1 else 0.0
      centered = centered / (std + eps)
    elif scale == "batch":
      centered = centered / (batch_std + eps)
    out[start:start + group_size][ok] = centered
  return out


def np_rloo(rewards, group_size):
  rewards = np.asarray(rewards, np.float64)
  out = np.zeros_like(rewards)
  for i, r in enumerate(rewards):
    start = i // group_size * group_size
    others = [rewards[j] for j in range(start, start + group_size)
              if j != i and np.isfinite(rewards[j])]
    if np.isfinite(r) and others:
      out[i] = r - np.mean(others)
  return out


def np_gae(rewards, values, discounts, gamma, lam):
  rewards = np.asarray(rewards, np.float64)
  values = np.asarray(values, np.float64)
  if values.shape == rewards.shape:
    values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,))], -1)
  out = np.zeros_like(rewards)
  for b in np.ndindex(rewards.shape[:-1]):
    acc = 0.0
    for t in reversed(range(rewards.shape[-1])):
      d = gamma * discounts[b + (t,)]
      delta = rewards[b + (t,)] + d * values[b + (t + 1,)] - values[b + (t,)]
      acc = delta + d * lam * acc
      out[b + (t,)] = acc
  return out


REWARDS = np.array([1.0, 0.0, 0.5, 0.25,
                    3.0, 3.0, 3.0, 3.0,
                    2.0, np.nan, -1.0, np.inf,
                    np.nan, np.nan, np.nan, 4.0], np.float32)


@pytest.mark.slow
def test_group_advantages_hand_made():
  # Group [1, 0, 2, 1]: mean 1, sample std sqrt(2/3).
  a = advantages.group_advantages(jnp.array([1.0, 0.0, 2.0, 1.0]),
                                  group_size=4, eps=1e-6)
  np.testing.assert_allclose(a, np.array([0, -1, 1, 0]) / (np.sqrt(2 / 3)
                                                           + 1e-6), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("scale", advantages.ADVANTAGE_SCALES)
@pytest.mark.parametrize("group_size", [1, 2, 4, 8, 16])
def test_group_advantages_match_numpy(scale, group_size):
  a = advantages.group_advantages(REWARDS, group_size=group_size, scale=scale,
                                  eps=1e-4)
  chex.assert_tree_all_finite(a)
  np.testing.assert_allclose(
      a, np_group_advantages(REWARDS, group_size, scale, 1e-4), rtol=1e-5,
      atol=1e-6)


@pytest.mark.slow
def test_group_advantages_nonfinite_get_zero_and_constant_groups_zero():
  a = advantages.group_advantages(REWARDS, group_size=4)
  assert np.all(np.asarray(a)[~np.isfinite(REWARDS)] == 0)
  np.testing.assert_array_equal(a[4:8], np.zeros(4))
  assert float(a[15]) == 0.0  # alone among NaNs


def test_group_advantages_jit():
  f = jax.jit(lambda r: advantages.group_advantages(r, group_size=4,
                                                    scale="batch"))
  np.testing.assert_allclose(f(REWARDS), np_group_advantages(REWARDS, 4,
                                                             "batch"),
                             rtol=1e-5, atol=1e-6)


def test_group_advantages_bad_arguments():
  r = jnp.zeros(6)
  with pytest.raises(ValueError, match="group_size.*6.*group_size=4"):
    advantages.group_advantages(r, group_size=4)
  for bad in (0, -2, 2.0, None):
    with pytest.raises(ValueError, match="group_size"):
      advantages.group_advantages(r, group_size=bad)
  with pytest.raises(ValueError, match="scale.*'std'"):
    advantages.group_advantages(r, group_size=2, scale="std")
  for eps in (0.0, -1e-6, float("nan")):
    with pytest.raises(ValueError, match="eps"):
      advantages.group_advantages(r, group_size=2, eps=eps)
  with pytest.raises(ValueError, match=r"rewards.*\(2, 3\)"):
    advantages.group_advantages(jnp.zeros((2, 3)), group_size=3)


@pytest.mark.slow
@pytest.mark.parametrize("scale", advantages.ADVANTAGE_SCALES)
def test_segment_ids_match_contiguous_groups_after_permutation(scale):
  # Scattered ids: the same advantages as contiguous groups, permuted.
  rng = np.random.default_rng(4)
  perm = rng.permutation(len(REWARDS))
  ids = (np.arange(len(REWARDS)) // 4)[perm]
  for fn in (lambda r, **kw: advantages.group_advantages(r, scale=scale, **kw),
             advantages.rloo_advantages):
    scattered = fn(REWARDS[perm], segment_ids=ids,
                   num_segments=len(REWARDS) // 4)
    contiguous = fn(REWARDS, group_size=4)
    np.testing.assert_allclose(scattered, np.asarray(contiguous)[perm],
                               rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_group_size_one_gives_zero_advantages():
  # A reward alone in its group equals its mean (verl instead returns the raw
  # score for a group of one, TRL refuses fewer than 2 generations).
  r = jnp.array([0.3, -2.0, 5.0])
  for scale in advantages.ADVANTAGE_SCALES:
    np.testing.assert_array_equal(
        advantages.group_advantages(r, group_size=1, scale=scale), 0.0)
  np.testing.assert_array_equal(advantages.rloo_advantages(r, group_size=1),
                                0.0)


def test_out_of_range_ids_under_jit_count_as_missing():
  r = jnp.array([1.0, 0.0, 100.0, 3.0, 1.0])
  ids = jnp.array([0, 0, 2, 1, 1])  # id 2 with num_segments=2
  got = jax.jit(lambda r, i: advantages.group_advantages(
      r, segment_ids=i, num_segments=2, scale="none"))(r, ids)
  np.testing.assert_allclose(got, [0.5, -0.5, 0.0, 1.0, -1.0])
  with pytest.raises(ValueError, match="segment_ids must lie"):
    advantages.group_advantages(r, segment_ids=ids, num_segments=2)
  with pytest.raises(ValueError, match="group_size or segment_ids"):
    advantages.group_advantages(r, group_size=5, segment_ids=ids,
                                num_segments=3)


@pytest.mark.parametrize("group_size", [1, 2, 4, 8])
def test_rloo_matches_numpy(group_size):
  a = advantages.rloo_advantages(REWARDS, group_size=group_size)
  chex.assert_tree_all_finite(a)
  np.testing.assert_allclose(a, np_rloo(REWARDS, group_size), rtol=1e-5,
                             atol=1e-6)


def test_rloo_bad_arguments():
  with pytest.raises(ValueError, match="group_size.*5"):
    advantages.rloo_advantages(jnp.zeros(5), group_size=2)


@pytest.mark.slow
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.95), (0.5, 0.0)])
@pytest.mark.parametrize("bootstrap", [True, False])
def test_gae_matches_numpy(gamma, lam, bootstrap):
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=(3, 6)).astype(np.float32)
  values = rng.normal(size=(3, 7 if bootstrap else 6)).astype(np.float32)
  discounts = np.ones((3, 6), np.float32)
  discounts[0, 2] = 0.0  # an episode ends after step 2 of row 0
  discounts[1, -1] = 0.0
  a = advantages.gae_advantages(rewards, values, discounts, gamma=gamma,
                                lam=lam)
  np.testing.assert_allclose(a, np_gae(rewards, values, discounts, gamma, lam),
                             rtol=1e-5, atol=1e-6)


def test_gae_hand_made_monte_carlo_return():
  # lam = 1, values 0: the advantage is the discounted return.
  a = advantages.gae_advantages(jnp.array([1.0, 0.0, 2.0]), jnp.zeros(3),
                                jnp.ones(3), gamma=0.5, lam=1.0)
  np.testing.assert_allclose(a, [1.5, 1.0, 2.0], rtol=1e-6)


def test_gae_no_gradient_and_1d():
  g = jax.grad(lambda v: jnp.sum(advantages.gae_advantages(
      jnp.ones(3), v, jnp.ones(3), gamma=0.9, lam=0.9)))(jnp.ones(4))
  np.testing.assert_array_equal(g, np.zeros(4))


def test_gae_bad_arguments():
  r = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="gamma"):
    advantages.gae_advantages(r, r, r, gamma=1.5, lam=0.9)
  with pytest.raises(ValueError, match="lam"):
    advantages.gae_advantages(r, r, r, gamma=0.9, lam=-0.1)
  with pytest.raises(ValueError, match=r"values.*\(2, 5\)"):
    advantages.gae_advantages(r, jnp.zeros((2, 5)), r, gamma=0.9, lam=0.9)
  with pytest.raises(ValueError, match=r"discounts.*\(3,\)"):
    advantages.gae_advantages(r, r, jnp.zeros(3), gamma=0.9, lam=0.9)
  with pytest.raises(ValueError, match="rewards"):
    advantages.gae_advantages(jnp.float32(1), jnp.zeros(1), jnp.float32(1),
                              gamma=0.9, lam=0.9)


def test_numpy_integer_sizes_accepted():
  a = advantages.rloo_advantages(REWARDS, group_size=np.int64(4))
  np.testing.assert_allclose(a, np_rloo(REWARDS, 4), rtol=1e-5, atol=1e-6)
