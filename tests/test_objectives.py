"""Tests for stabledrl_jax.objectives against NumPy versions written here."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stabledrl_jax import objectives

# ---------------------------------------------------------------------------
# Independent NumPy references (float64).
# ---------------------------------------------------------------------------


def np_weights(log_ratio, max_ratio=5.0, segment_ids=None, mask=None):
  log_ratio = np.asarray(log_ratio, np.float64)
  ids = (np.zeros(len(log_ratio), int) if segment_ids is None
         else np.asarray(segment_ids))
  valid = (np.ones(len(log_ratio), bool) if mask is None
           else np.asarray(mask) != 0)
  out = np.zeros(len(log_ratio))
  for g in np.unique(ids):
    members = np.flatnonzero((ids == g) & valid)
    if len(members) == 0:
      continue
    capped = np.minimum(log_ratio[members], np.log(max_ratio))
    e = np.exp(capped - capped.max())
    out[members] = e / e.sum()
  return out


def np_stabledrl_loss(seq_logp, old, adv, max_ratio=5.0, segment_ids=None,
                      num_segments=1, mask=None):
  w = np_weights(np.asarray(seq_logp) - np.asarray(old), max_ratio,
                 segment_ids, mask)
  valid = np.ones(len(w), bool) if mask is None else np.asarray(mask) != 0
  terms = np.where(valid, w * np.where(valid, adv, 0) *
                   np.where(valid, seq_logp, 0), 0)
  return -terms.sum() / num_segments, w


# ---------------------------------------------------------------------------
# self_normalized_weights
# ---------------------------------------------------------------------------


def test_weights_cap_hand_made():
  # Ratios 1, 1, 100: the 100 is capped at 5, so weights are 1/7, 1/7, 5/7.
  w = objectives.self_normalized_weights(jnp.log(jnp.array([1.0, 1.0, 100.0])))
  np.testing.assert_allclose(w, [1 / 7, 1 / 7, 5 / 7], rtol=1e-6)


def test_weights_cap_is_upper_only():
  # Small ratios are not raised: 0.01 stays 0.01 relative to 1.
  w = objectives.self_normalized_weights(jnp.log(jnp.array([0.01, 1.0])))
  np.testing.assert_allclose(w, [0.01 / 1.01, 1 / 1.01], rtol=1e-6)


@pytest.mark.parametrize("max_ratio", [0.5, 2.0, 5.0, 100.0])
def test_weights_match_numpy_with_segments_and_mask(max_ratio):
  rng = np.random.default_rng(0)
  log_ratio = rng.normal(0.0, 3.0, size=12).astype(np.float32)
  ids = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
  mask = np.array([1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1])
  w = objectives.self_normalized_weights(
      log_ratio, max_ratio=max_ratio, segment_ids=ids, num_segments=4,
      mask=mask)
  expected = np_weights(log_ratio, max_ratio, ids, mask)
  np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-7)
  # Non-empty segments sum to one, the empty one (2) to zero.
  sums = np.bincount(ids, weights=np.asarray(w), minlength=4)
  np.testing.assert_allclose(sums, [1, 1, 0, 1], atol=1e-6)


def test_weights_unsorted_segment_ids():
  log_ratio = np.array([0.3, -1.0, 2.0, 0.0, -0.5], np.float32)
  ids = np.array([1, 0, 1, 0, 1])
  w = objectives.self_normalized_weights(
      log_ratio, segment_ids=ids, num_segments=2)
  np.testing.assert_allclose(w, np_weights(log_ratio, 5.0, ids), rtol=1e-6)


def test_weights_extreme_log_ratios_are_finite():
  c = 5.0
  w = objectives.self_normalized_weights(
      jnp.array([1e4, -1e4, 0.0]), max_ratio=c)
  chex.assert_tree_all_finite(w)
  np.testing.assert_allclose(w, [c / (c + 1), 0.0, 1 / (c + 1)], rtol=1e-6)
  # All hugely negative: the shift by the segment max keeps them finite.
  w = objectives.self_normalized_weights(jnp.array([-1e4, -1e4 - 1.0]))
  np.testing.assert_allclose(w, np_weights([-1e4, -1e4 - 1.0]), rtol=1e-6)


def test_weights_infinite_log_ratios():
  w = objectives.self_normalized_weights(jnp.array([jnp.inf, -jnp.inf, 0.0]))
  np.testing.assert_allclose(w, [5 / 6, 0.0, 1 / 6], rtol=1e-6)


def test_weights_empty_segments_and_all_masked_are_zero():
  w = objectives.self_normalized_weights(
      jnp.zeros(3), segment_ids=jnp.array([0, 0, 2]), num_segments=4)
  np.testing.assert_allclose(w, [0.5, 0.5, 1.0])
  w = objectives.self_normalized_weights(jnp.ones(3), mask=jnp.zeros(3))
  np.testing.assert_array_equal(w, np.zeros(3))


def test_weights_masked_nan_does_not_leak():
  w = objectives.self_normalized_weights(
      jnp.array([jnp.nan, 0.0, 1.0]), mask=jnp.array([0, 1, 1]))
  np.testing.assert_allclose(w, np_weights([0.0, 0.0, 1.0], mask=[0, 1, 1]),
                             rtol=1e-6)


def test_weights_carry_no_gradient():
  def f(lr):
    w = objectives.self_normalized_weights(lr)
    return jnp.sum(w * jnp.arange(3.0))
  g = jax.grad(f)(jnp.array([0.1, 0.2, 0.3]))
  np.testing.assert_array_equal(g, np.zeros(3))


def test_weights_bfloat16_computed_in_float32():
  lr = jnp.array([0.0, 1.0, 2.0], jnp.bfloat16)
  w = objectives.self_normalized_weights(lr)
  assert w.dtype == jnp.float32
  np.testing.assert_allclose(w, np_weights([0.0, 1.0, 2.0]), rtol=1e-6)


def test_weights_jit_and_traced_max_ratio():
  f = jax.jit(lambda lr, c: objectives.self_normalized_weights(lr, max_ratio=c))
  lr = jnp.array([0.0, 3.0])
  np.testing.assert_allclose(f(lr, 2.0), np_weights([0.0, 3.0], 2.0),
                             rtol=1e-6)


@pytest.mark.parametrize("max_ratio", [0.0, -1.0, float("nan"), float("inf")])
def test_weights_bad_max_ratio(max_ratio):
  with pytest.raises(ValueError, match="max_ratio"):
    objectives.self_normalized_weights(jnp.zeros(3), max_ratio=max_ratio)


def test_weights_bad_arguments():
  with pytest.raises(ValueError, match="num_segments is required"):
    objectives.self_normalized_weights(jnp.zeros(3), segment_ids=jnp.zeros(3))
  with pytest.raises(ValueError, match="num_segments=2"):
    objectives.self_normalized_weights(jnp.zeros(3), num_segments=2)
  for bad in (0, -3, 2.0, True):
    with pytest.raises(ValueError, match="num_segments must be"):
      objectives.self_normalized_weights(
          jnp.zeros(3), segment_ids=jnp.zeros(3, int), num_segments=bad)
  with pytest.raises(ValueError, match=r"segment_ids.*\(2,\)"):
    objectives.self_normalized_weights(
        jnp.zeros(3), segment_ids=jnp.zeros(2, int), num_segments=1)
  with pytest.raises(ValueError, match=r"mask.*\(4,\)"):
    objectives.self_normalized_weights(jnp.zeros(3), mask=jnp.ones(4))
  with pytest.raises(ValueError, match=r"log_ratio.*\(2, 3\)"):
    objectives.self_normalized_weights(jnp.zeros((2, 3)))


# ---------------------------------------------------------------------------
# stabledrl_policy_loss
# ---------------------------------------------------------------------------

SEQ_LOGP = np.array([-3.0, -2.0, -4.0, -1.0, -6.0, -2.5], np.float32)
OLD = np.array([-3.5, -2.0, -1.0, -9.0, -6.0, -2.0], np.float32)
ADV = np.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], np.float32)
IDS = np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("grouped", [False, True])
def test_stabledrl_loss_matches_numpy(grouped):
  kwargs = dict(segment_ids=IDS, num_segments=3) if grouped else {}
  loss, _ = objectives.stabledrl_policy_loss(SEQ_LOGP, OLD, ADV, **kwargs)
  expected, _ = np_stabledrl_loss(
      SEQ_LOGP, OLD, ADV, segment_ids=IDS if grouped else None,
      num_segments=3 if grouped else 1)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_stabledrl_gradient_per_sample_is_minus_w_a_over_g():
  g = jax.grad(lambda s: objectives.stabledrl_policy_loss(
      s, OLD, ADV, segment_ids=IDS, num_segments=3)[0])(jnp.asarray(SEQ_LOGP))
  w = np_weights(SEQ_LOGP - OLD, 5.0, IDS)
  np.testing.assert_allclose(g, -w * ADV / 3, rtol=1e-6)


def _per_sample_grad_setup(seed, log_ratio_scale):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(8, 5)).astype(np.float32)
  theta = rng.normal(size=5).astype(np.float32)
  adv = rng.normal(size=8).astype(np.float32)
  noise = rng.normal(scale=log_ratio_scale, size=8).astype(np.float32)
  # L_i(θ) = −‖θ − x_i‖² / 2, so ∇L_i = x_i − θ.
  seq_logp = lambda t: -0.5 * jnp.sum((t - x) ** 2, axis=1)
  old = np.asarray(seq_logp(theta)) - noise
  return x, theta, adv, old, seq_logp


@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 10.0), (2, 1e4)])
def test_stabledrl_gradient_norm_bounded_by_largest_per_sample(seed, scale):
  x, theta, adv, old, seq_logp = _per_sample_grad_setup(seed, scale)
  grad = jax.grad(lambda t: objectives.stabledrl_policy_loss(
      seq_logp(t), old, adv)[0])(jnp.asarray(theta))
  per_sample = x - theta
  w = np_weights(np.asarray(seq_logp(theta)) - old)
  np.testing.assert_allclose(
      grad, -(w * adv) @ per_sample, rtol=1e-4, atol=1e-5)
  bound = np.max(np.abs(adv) * np.linalg.norm(per_sample, axis=1))
  assert np.linalg.norm(grad) <= bound * (1 + 1e-5)


def test_unnormalized_ratio_gradient_breaks_that_bound():
  # The bound above is not vacuous: Σ r_i A_i ∇L_i / B with raw ratios of
  # e^10 exceeds max_i |A_i| ‖∇L_i‖ on the same data.
  x, theta, adv, old, seq_logp = _per_sample_grad_setup(1, 10.0)
  def raw_loss(t):
    ratio = jnp.exp(seq_logp(t) - old)
    return -jnp.mean(ratio * adv)
  grad = jax.grad(raw_loss)(jnp.asarray(theta))
  bound = np.max(np.abs(adv) * np.linalg.norm(x - theta, axis=1))
  assert np.linalg.norm(grad) > bound


def test_stabledrl_extreme_log_ratios_finite():
  seq_logp = jnp.array([0.0, -1.0, -2.0])
  old = jnp.array([-1e4, 1e4, 0.0])
  adv = jnp.array([1.0, -1.0, 0.5])
  f = lambda s: objectives.stabledrl_policy_loss(s, old, adv)
  (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(seq_logp)
  chex.assert_tree_all_finite((loss, metrics, grad))
  np.testing.assert_allclose(grad, -np_weights(seq_logp - old) * adv,
                             rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio_max"], np.exp(20.0), rtol=1e-5)


def test_stabledrl_masked_entries_weigh_zero_even_if_nan():
  seq_logp = jnp.array([-1.0, jnp.nan, -2.0, -0.5])
  old = jnp.array([-1.5, 0.0, jnp.inf, -0.5])
  adv = jnp.array([1.0, jnp.nan, 3.0, -1.0])
  mask = jnp.array([1, 0, 0, 1])
  f = lambda s: objectives.stabledrl_policy_loss(s, old, adv, mask=mask)
  (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(seq_logp)
  chex.assert_tree_all_finite((loss, metrics, grad))
  expected, w = np_stabledrl_loss(
      np.array([-1.0, 0, 0, -0.5]), np.array([-1.5, 0, 0, -0.5]),
      np.array([1.0, 0, 0, -1.0]), mask=[1, 0, 0, 1])
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(grad, -w * np.array([1.0, 0, 0, -1.0]),
                             rtol=1e-6)
  assert grad[1] == 0 and grad[2] == 0


def test_stabledrl_metrics_match_numpy():
  mask = np.array([1, 1, 1, 1, 0, 1])
  _, metrics = objectives.stabledrl_policy_loss(
      SEQ_LOGP, OLD, ADV, max_ratio=2.0, segment_ids=IDS, num_segments=4,
      mask=mask)
  valid = mask != 0
  ratio = np.exp(SEQ_LOGP - OLD)[valid]
  w = np_weights(SEQ_LOGP - OLD, 2.0, IDS, mask)
  ess = [1 / np.sum(w[IDS == g] ** 2) for g in range(3)]  # segment 3 empty
  np.testing.assert_allclose(metrics["ratio_mean"], ratio.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio_max"], ratio.max(), rtol=1e-6)
  np.testing.assert_allclose(metrics["capped_fraction"],
                             np.mean(ratio > 2.0), rtol=1e-6)
  np.testing.assert_allclose(metrics["effective_sample_size"], np.mean(ess),
                             rtol=1e-6)


def test_stabledrl_bad_shapes():
  with pytest.raises(ValueError, match="old_seq_logp"):
    objectives.stabledrl_policy_loss(SEQ_LOGP, OLD[:3], ADV)
  with pytest.raises(ValueError, match="advantages"):
    objectives.stabledrl_policy_loss(SEQ_LOGP, OLD, ADV[:, None])
  with pytest.raises(ValueError, match="seq_logp"):
    objectives.stabledrl_policy_loss(SEQ_LOGP[None], OLD[None], ADV[None])
  with pytest.raises(ValueError, match="max_ratio"):
    objectives.stabledrl_policy_loss(SEQ_LOGP, OLD, ADV, max_ratio=-5.0)
