"""Tests for stabledrl_jax._src.objectives against NumPy versions written here."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from stabledrl_jax._src import objectives

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


@pytest.mark.slow
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
  # One segment may be said explicitly.
  np.testing.assert_allclose(
      objectives.self_normalized_weights(jnp.zeros(4), num_segments=1), 0.25)
  with pytest.raises(ValueError, match="num_segments"):
    objectives.self_normalized_weights(jnp.zeros(3), num_segments=True)
  with pytest.raises(ValueError, match="segment_ids must be integers"):
    objectives.self_normalized_weights(
        jnp.zeros(3), segment_ids=jnp.array([0.0, 1.0, 1.0]), num_segments=2)
  for ids in ([0, 0, 2], [0, -1, 1]):
    with pytest.raises(ValueError, match=r"segment_ids.*\[0, num_segments=2\)"):
      objectives.self_normalized_weights(
          jnp.zeros(3), segment_ids=jnp.array(ids), num_segments=2)
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


@pytest.mark.slow
@pytest.mark.parametrize("grouped", [False, True])
def test_stabledrl_loss_matches_numpy(grouped):
  kwargs = dict(segment_ids=IDS, num_segments=3) if grouped else {}
  loss, _ = objectives.stabledrl_policy_loss(SEQ_LOGP, OLD, ADV, **kwargs)
  expected, _ = np_stabledrl_loss(
      SEQ_LOGP, OLD, ADV, segment_ids=IDS if grouped else None,
      num_segments=3 if grouped else 1)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.slow
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
@pytest.mark.parametrize("grouped", [False, True])
def test_stabledrl_gradient_norm_bounded_by_largest_per_sample(
    seed, scale, grouped):
  x, theta, adv, old, seq_logp = _per_sample_grad_setup(seed, scale)
  # Two groups of 4 (each a convex combination, averaged over G = 2), or one.
  ids, groups = (np.repeat([0, 1], 4), 2) if grouped else (None, None)
  grad = jax.grad(lambda t: objectives.stabledrl_policy_loss(
      seq_logp(t), old, adv, segment_ids=ids, num_segments=groups)[0])(
          jnp.asarray(theta))
  per_sample = x - theta
  w = np_weights(np.asarray(seq_logp(theta)) - old, segment_ids=ids)
  np.testing.assert_allclose(
      grad, -(w * adv) @ per_sample / (groups or 1), rtol=1e-4, atol=1e-5)
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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------
# aggregate_loss
# ---------------------------------------------------------------------------


def np_aggregate(values, mask, mode):
  values = np.asarray(values, np.float64)
  mask = np.asarray(mask) != 0
  rows = []
  for v, m in zip(values, mask):
    if m.any():
      rows.append((v[m].sum(), m.sum()))
  if mode == "token-mean":
    n = sum(c for _, c in rows)
    return sum(s for s, _ in rows) / n if n else 0.0
  if mode == "seq-mean-token-mean":
    return np.mean([s / c for s, c in rows]) if rows else 0.0
  if mode == "seq-mean-token-sum":
    return np.mean([s for s, _ in rows]) if rows else 0.0
  return sum(s for s, _ in rows) / values.size


VALUES = np.array([[1.0, 2.0, 3.0, 4.0],
                   [5.0, np.nan, -1.0, 0.5],
                   [7.0, 7.0, 7.0, 7.0],
                   [-2.0, 0.0, 8.0, 1.0]], np.float32)
MASK = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]])


@pytest.mark.parametrize("mode", objectives.LOSS_AGGREGATIONS)
def test_aggregate_matches_numpy(mode):
  out = objectives.aggregate_loss(VALUES, MASK, loss_agg=mode)
  np.testing.assert_allclose(out, np_aggregate(VALUES, MASK, mode), rtol=1e-6)


@pytest.mark.parametrize("mode", objectives.LOSS_AGGREGATIONS)
def test_aggregate_all_masked_is_zero(mode):
  out = objectives.aggregate_loss(VALUES, np.zeros_like(MASK), loss_agg=mode)
  assert float(out) == 0.0


def test_aggregate_bad_arguments():
  with pytest.raises(ValueError, match="loss_agg.*'seq-mean'"):
    objectives.aggregate_loss(VALUES, MASK, loss_agg="seq-mean")
  with pytest.raises(ValueError, match=r"values.*\(4,\)"):
    objectives.aggregate_loss(VALUES[0], MASK[0])
  with pytest.raises(ValueError, match=r"mask.*\(4, 3\)"):
    objectives.aggregate_loss(VALUES, MASK[:, :3])


# ---------------------------------------------------------------------------
# grpo_policy_loss
# ---------------------------------------------------------------------------


def np_grpo(logp, old, adv, mask, eps_low=0.2, eps_high=0.2, dual=None,
            level="token", mode="token-mean"):
  logp = np.asarray(logp, np.float64)
  old = np.asarray(old, np.float64)
  mask = np.asarray(mask) != 0
  adv = np.asarray(adv, np.float64)
  if adv.ndim == 1:
    adv = np.repeat(adv[:, None], logp.shape[1], axis=1)
  loss = np.zeros_like(logp)
  ratio = np.zeros_like(logp)
  for b in range(logp.shape[0]):
    seq = (np.mean(logp[b][mask[b]] - old[b][mask[b]]) if mask[b].any()
           else 0.0)
    for t in range(logp.shape[1]):
      if not mask[b, t]:
        continue
      lr = seq if level == "sequence" else logp[b, t] - old[b, t]
      r = np.exp(np.clip(lr, -20, 20))
      a = adv[b, t]
      val = max(-a * r, -a * min(max(r, 1 - eps_low), 1 + eps_high))
      if dual is not None and a < 0:
        val = min(val, -a * dual)
      loss[b, t] = val
      ratio[b, t] = r
  return np_aggregate(loss, mask, mode), ratio, adv


RNG = np.random.default_rng(3)
LOGP = RNG.normal(-1.0, 0.5, size=(4, 5)).astype(np.float32)
OLD_LOGP = (LOGP + RNG.normal(0.0, 0.4, size=(4, 5))).astype(np.float32)
TOK_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0],
                     [1, 1, 1, 1, 0]])
SEQ_ADV = np.array([1.0, -1.0, 0.5, -2.0], np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("mode", objectives.LOSS_AGGREGATIONS)
@pytest.mark.parametrize("level", objectives.RATIO_LEVELS)
@pytest.mark.parametrize("dual", [None, 1.2])
def test_grpo_loss_matches_numpy(mode, level, dual):
  loss, _ = objectives.grpo_policy_loss(
      LOGP, OLD_LOGP, SEQ_ADV, TOK_MASK, eps_low=0.1, eps_high=0.3,
      dual_clip=dual, ratio_level=level, loss_agg=mode)
  expected, _, _ = np_grpo(LOGP, OLD_LOGP, SEQ_ADV, TOK_MASK, 0.1, 0.3, dual,
                           level, mode)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.slow
def test_grpo_token_advantages_match_numpy():
  adv = RNG.normal(size=(4, 5)).astype(np.float32)
  loss, _ = objectives.grpo_policy_loss(LOGP, OLD_LOGP, adv, TOK_MASK)
  expected, _, _ = np_grpo(LOGP, OLD_LOGP, adv, TOK_MASK)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_grpo_metrics_match_numpy():
  loss, metrics = objectives.grpo_policy_loss(
      LOGP, OLD_LOGP, SEQ_ADV, TOK_MASK, eps_low=0.1, eps_high=0.1,
      dual_clip=1.1)
  _, ratio, adv = np_grpo(LOGP, OLD_LOGP, SEQ_ADV, TOK_MASK)
  m = TOK_MASK != 0
  r, a = ratio[m], adv[m]
  lr = (LOGP.astype(np.float64) - OLD_LOGP)[m]
  np.testing.assert_allclose(metrics["clip_fraction_low"],
                             np.mean((a < 0) & (r < 0.9)), rtol=1e-6)
  np.testing.assert_allclose(metrics["clip_fraction_high"],
                             np.mean((a > 0) & (r > 1.1)), rtol=1e-6)
  np.testing.assert_allclose(metrics["dual_clip_fraction"],
                             np.mean((a < 0) & (r > 1.1)), rtol=1e-6)
  np.testing.assert_allclose(metrics["approx_kl"],
                             np.mean(np.exp(lr) - 1 - lr), rtol=1e-4)
  # The data must exercise every clip case, or the checks above are weak.
  assert 0 < metrics["clip_fraction_low"] and 0 < metrics["clip_fraction_high"]
  assert 0 < metrics["dual_clip_fraction"]


@pytest.mark.slow
@pytest.mark.parametrize("level", objectives.RATIO_LEVELS)
def test_grpo_gradient_matches_numpy_finite_differences(level):
  f = lambda lp: objectives.grpo_policy_loss(
      lp, OLD_LOGP, SEQ_ADV, TOK_MASK, ratio_level=level,
      loss_agg="seq-mean-token-mean")[0]
  grad = jax.grad(f)(jnp.asarray(LOGP))
  h = 1e-3
  base = LOGP.astype(np.float64)
  for b, t in [(0, 0), (0, 3), (1, 1), (3, 2)]:
    up, down = base.copy(), base.copy()
    up[b, t] += h
    down[b, t] -= h
    fd = (np_grpo(up, OLD_LOGP, SEQ_ADV, TOK_MASK, level=level,
                  mode="seq-mean-token-mean")[0]
          - np_grpo(down, OLD_LOGP, SEQ_ADV, TOK_MASK, level=level,
                    mode="seq-mean-token-mean")[0]) / (2 * h)
    np.testing.assert_allclose(grad[b, t], fd, rtol=1e-3, atol=1e-5)
  assert np.all(np.asarray(grad)[TOK_MASK == 0] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [10.0, 100.0, 1000.0])
def test_grpo_negative_advantage_gradient_grows_with_ratio(ratio):
  # The "bypass": A < 0 and r = 1e3 — the conditional clip leaves −A r, whose
  # gradient in logp is |A| r. Dual-clip removes it; StableDRL bounds it.
  logp = jnp.zeros((1, 1))
  old = jnp.full((1, 1), -np.log(ratio), jnp.float32)
  adv, mask = jnp.array([-2.0]), jnp.ones((1, 1))
  grad = jax.grad(lambda lp: objectives.grpo_policy_loss(
      lp, old, adv, mask)[0])(logp)
  np.testing.assert_allclose(grad[0, 0], 2.0 * ratio, rtol=1e-4)
  grad = jax.grad(lambda lp: objectives.grpo_policy_loss(
      lp, old, adv, mask, dual_clip=3.0)[0])(logp)
  assert float(grad[0, 0]) == 0.0
  grad = jax.grad(lambda s: objectives.stabledrl_policy_loss(
      s, old[:, 0], adv)[0])(logp[:, 0])
  np.testing.assert_allclose(grad[0], 2.0, rtol=1e-6)


@pytest.mark.slow
def test_grpo_extreme_and_masked_nan_inputs_finite():
  logp = jnp.array([[0.0, -1e4, jnp.nan], [1e4, 0.0, 0.0]])
  old = jnp.array([[-1e4, 0.0, 0.0], [0.0, jnp.inf, 0.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 1]])
  adv = jnp.array([-1.0, 1.0])
  for dual in (None, 2.0):
    for level in objectives.RATIO_LEVELS:
      f = lambda lp: objectives.grpo_policy_loss(
          lp, old, adv, mask, dual_clip=dual, ratio_level=level)
      (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(logp)
      chex.assert_tree_all_finite((loss, metrics, grad))


def test_grpo_bad_arguments():
  args = (LOGP, OLD_LOGP, SEQ_ADV, TOK_MASK)
  bad = [
      (dict(eps_low=-0.1), "eps_low"), (dict(eps_low=1.0), "eps_low"),
      (dict(eps_high=-0.1), "eps_high"), (dict(dual_clip=1.0), "dual_clip"),
      (dict(dual_clip=0.5), "dual_clip"), (dict(ratio_level="seq"),
                                           "ratio_level.*'seq'"),
      (dict(loss_agg="mean"), "loss_agg.*'mean'"),
  ]
  for kwargs, match in bad:
    with pytest.raises(ValueError, match=match):
      objectives.grpo_policy_loss(*args, **kwargs)
  with pytest.raises(ValueError, match=r"old_logp.*\(4, 4\)"):
    objectives.grpo_policy_loss(LOGP, OLD_LOGP[:, :4], SEQ_ADV, TOK_MASK)
  with pytest.raises(ValueError, match=r"mask.*\(4,\)"):
    objectives.grpo_policy_loss(LOGP, OLD_LOGP, SEQ_ADV, TOK_MASK[:, 0])
  with pytest.raises(ValueError, match=r"advantages.*\(3,\)"):
    objectives.grpo_policy_loss(LOGP, OLD_LOGP, SEQ_ADV[:3], TOK_MASK)
  with pytest.raises(ValueError, match=r"advantages.*\(5,\)"):
    objectives.grpo_policy_loss(LOGP[0], OLD_LOGP[0], SEQ_ADV, TOK_MASK[0])
  with pytest.raises(ValueError, match=r"logp.*\(1, 4, 5\)"):
    objectives.grpo_policy_loss(LOGP[None], OLD_LOGP[None], SEQ_ADV)


SEQ_LEVEL_LOGP = np.array([-3.0, -2.0, -4.0, -1.0, -6.0, -2.5], np.float32)
SEQ_LEVEL_OLD = np.array([-3.1, -2.9, -3.0, -1.0, -9.0, -2.4], np.float32)
SEQ_LEVEL_MASK = np.array([1, 1, 0, 1, 1, 1])


@pytest.mark.slow
@pytest.mark.parametrize("mode", objectives.LOSS_AGGREGATIONS)
@pytest.mark.parametrize("dual", [None, 1.5])
def test_grpo_sequence_inputs_are_one_token_rows(mode, dual):
  # [B] inputs (e.g. ELBO estimates of a diffusion LM) are B one-token rows.
  kwargs = dict(dual_clip=dual, loss_agg=mode, eps_low=0.1, eps_high=0.3)
  loss, metrics = objectives.grpo_policy_loss(
      SEQ_LEVEL_LOGP, SEQ_LEVEL_OLD, ADV, SEQ_LEVEL_MASK, **kwargs)
  expected, _, _ = np_grpo(SEQ_LEVEL_LOGP[:, None], SEQ_LEVEL_OLD[:, None],
                           ADV, SEQ_LEVEL_MASK[:, None], 0.1, 0.3, dual,
                           "token", mode)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  as_rows = objectives.grpo_policy_loss(
      SEQ_LEVEL_LOGP[:, None], SEQ_LEVEL_OLD[:, None], ADV,
      SEQ_LEVEL_MASK[:, None], **kwargs)
  chex.assert_trees_all_close((loss, metrics), as_rows, rtol=1e-6)


@pytest.mark.slow
def test_grpo_sequence_inputs_mask_optional_and_gradient():
  loss_fn = lambda s: objectives.grpo_policy_loss(s, SEQ_LEVEL_OLD, ADV)[0]
  loss, grad = jax.value_and_grad(loss_fn)(jnp.asarray(SEQ_LEVEL_LOGP))
  expected, ratio, _ = np_grpo(SEQ_LEVEL_LOGP[:, None], SEQ_LEVEL_OLD[:, None],
                               ADV, np.ones((6, 1)))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  # d/ds of −A r / B where the clip is not active, else 0.
  r = ratio[:, 0]
  active = np.where(ADV > 0, r < 1.2, r > 0.8)
  np.testing.assert_allclose(grad, np.where(active, -ADV * r / 6, 0.0),
                             rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Grouping: group_size, segment_ids, out-of-range ids; masks select.
# ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("group_size", [1, 2, 3, 6])
def test_group_size_equals_contiguous_segment_ids(group_size):
  ids = np.arange(6) // group_size
  mask = np.array([1, 1, 1, 0, 1, 1])
  by_size = objectives.self_normalized_weights(
      SEQ_LOGP - OLD, group_size=group_size, mask=mask)
  by_ids = objectives.self_normalized_weights(
      SEQ_LOGP - OLD, segment_ids=ids, num_segments=6 // group_size, mask=mask)
  np.testing.assert_allclose(by_size, np_weights(SEQ_LOGP - OLD, 5.0, ids,
                                                 mask), rtol=1e-6)
  np.testing.assert_array_equal(by_size, by_ids)
  ratio_logp = SEQ_LOGP + 0.7
  loss_fn = lambda s, **kw: objectives.stabledrl_policy_loss(
      s, OLD, ADV, ratio_logp=ratio_logp, mask=mask, **kw)
  by_size = jax.value_and_grad(lambda s: loss_fn(s, group_size=group_size)[0])(
      jnp.asarray(SEQ_LOGP))
  by_ids = jax.value_and_grad(lambda s: loss_fn(
      s, segment_ids=ids, num_segments=6 // group_size)[0])(
          jnp.asarray(SEQ_LOGP))
  chex.assert_trees_all_close(by_size, by_ids, rtol=1e-6)
  chex.assert_trees_all_close(loss_fn(SEQ_LOGP, group_size=group_size)[1],
                              loss_fn(SEQ_LOGP, segment_ids=ids,
                                      num_segments=6 // group_size)[1],
                              rtol=1e-6)


def test_ratio_logp_sets_weights_gradient_through_seq_logp():
  # Weights from ratio_logp − old; gradient −w̄ A / G through seq_logp.
  ratio_logp = np.array([-1.0, -2.0, -4.0, 5.0, -6.0, -2.0], np.float32)
  loss, grad = jax.value_and_grad(lambda s: objectives.stabledrl_policy_loss(
      s, OLD, ADV, ratio_logp=ratio_logp, group_size=2)[0])(
          jnp.asarray(SEQ_LOGP))
  w = np_weights(ratio_logp - OLD, 5.0, IDS)
  np.testing.assert_allclose(loss, -np.sum(w * ADV * SEQ_LOGP) / 3, rtol=1e-6)
  np.testing.assert_allclose(grad, -w * ADV / 3, rtol=1e-6)
  # No gradient reaches ratio_logp.
  g = jax.grad(lambda r: objectives.stabledrl_policy_loss(
      SEQ_LOGP, OLD, ADV, ratio_logp=r)[0])(jnp.asarray(ratio_logp))
  np.testing.assert_array_equal(g, 0.0)
  with pytest.raises(ValueError, match=r"ratio_logp.*\(6,\)"):
    objectives.stabledrl_policy_loss(SEQ_LOGP, OLD, ADV,
                                     ratio_logp=ratio_logp[:5])


def test_group_size_bad_arguments():
  with pytest.raises(ValueError, match="group_size must divide.*6.*4"):
    objectives.self_normalized_weights(SEQ_LOGP, group_size=4)
  for bad in (0, 2.0, True):
    with pytest.raises(ValueError, match="group_size"):
      objectives.self_normalized_weights(SEQ_LOGP, group_size=bad)
  with pytest.raises(ValueError, match="group_size or segment_ids"):
    objectives.stabledrl_policy_loss(SEQ_LOGP, OLD, ADV, group_size=2,
                                     segment_ids=IDS, num_segments=3)
  with pytest.raises(ValueError, match="num_segments=2 contradicts"):
    objectives.self_normalized_weights(SEQ_LOGP, group_size=2, num_segments=2)
  # Saying the right count is allowed.
  objectives.self_normalized_weights(SEQ_LOGP, group_size=2, num_segments=3)


@pytest.mark.slow
def test_out_of_range_ids_under_jit_weigh_zero_and_count_nowhere():
  ids = jnp.array([0, 0, 7, -1, 1, 1])
  log_ratio = jnp.array([0.0, 1.0, 50.0, 50.0, 0.5, 0.0])
  w = jax.jit(lambda lr, i: objectives.self_normalized_weights(
      lr, segment_ids=i, num_segments=2))(log_ratio, ids)
  inside = np.array([1, 1, 0, 0, 1, 1])
  np.testing.assert_allclose(
      w, np_weights(log_ratio, 5.0, np.clip(ids, 0, 1), inside), rtol=1e-6)
  np.testing.assert_allclose([w[:2].sum(), w[4:].sum()], [1.0, 1.0],
                             rtol=1e-6)

  def loss(s, i):
    return objectives.stabledrl_policy_loss(s, OLD, ADV, segment_ids=i,
                                            num_segments=2)

  seq = SEQ_LOGP.copy()
  seq[[2, 3]] = np.nan  # out-of-range entries are never read
  (value, metrics), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      jnp.asarray(seq), ids)
  (ref_value, ref_metrics), ref_grad = jax.value_and_grad(
      lambda s: objectives.stabledrl_policy_loss(
          s, OLD, ADV, segment_ids=np.clip(ids, 0, 1), num_segments=2,
          mask=inside), has_aux=True)(jnp.asarray(SEQ_LOGP))
  chex.assert_trees_all_close((value, metrics), (ref_value, ref_metrics),
                              rtol=1e-6)
  np.testing.assert_allclose(grad, np.where(inside, ref_grad, 0.0), rtol=1e-6)
  # Concrete ids out of range still raise.
  with pytest.raises(ValueError, match="segment_ids must lie"):
    loss(jnp.asarray(SEQ_LOGP), ids)


def test_negative_masks_are_rejected_everywhere():
  neg_seq = np.array([1, 1, -1, 1, 1, 1])
  neg_tok = TOK_MASK.copy()
  neg_tok[0, 0] = -1
  cases = [
      lambda: objectives.self_normalized_weights(SEQ_LOGP, mask=neg_seq),
      lambda: objectives.stabledrl_policy_loss(SEQ_LOGP, OLD, ADV,
                                               mask=neg_seq),
      lambda: objectives.grpo_policy_loss(SEQ_LOGP, OLD, ADV, neg_seq),
      lambda: objectives.grpo_policy_loss(LOGP, OLD_LOGP, SEQ_ADV, neg_tok),
      lambda: objectives.aggregate_loss(LOGP, neg_tok),
      lambda: objectives.value_loss(LOGP, LOGP, LOGP, neg_tok),
      lambda: objectives.entropy_bonus(np.zeros((4, 5, 3)), neg_tok),
      lambda: objectives.self_normalized_weights(
          SEQ_LOGP, mask=np.array([1, 1, np.nan, 1, 1, 1])),
  ]
  for fn in cases:
    with pytest.raises(ValueError, match="mask.*negative"):
      fn()


def test_masks_select_not_weigh():
  # Any non-zero value selects with weight 1, bool masks work the same.
  half = np.where(TOK_MASK != 0, 0.5, 0.0)
  for mask in (half, TOK_MASK.astype(bool)):
    chex.assert_trees_all_close(
        objectives.grpo_policy_loss(LOGP, OLD_LOGP, SEQ_ADV, mask),
        objectives.grpo_policy_loss(LOGP, OLD_LOGP, SEQ_ADV, TOK_MASK),
        rtol=1e-6)


# ---------------------------------------------------------------------------
# value_loss, entropy_bonus, kl_penalty
# ---------------------------------------------------------------------------


def np_value_loss(v, old, ret, mask, clip=None, mode="token-mean"):
  v, old, ret = (np.asarray(a, np.float64) for a in (v, old, ret))
  per = (v - ret) ** 2
  if clip is not None:
    vc = np.minimum(np.maximum(v, old - clip), old + clip)
    per = np.maximum(per, (vc - ret) ** 2)
  return np_aggregate(0.5 * per, mask, mode)


@pytest.mark.parametrize("clip", [None, 0.2, 5.0])
@pytest.mark.parametrize("mode", objectives.LOSS_AGGREGATIONS)
def test_value_loss_matches_numpy(clip, mode):
  v = RNG.normal(size=(4, 5)).astype(np.float32)
  old = (v + RNG.normal(scale=0.5, size=(4, 5))).astype(np.float32)
  ret = RNG.normal(size=(4, 5)).astype(np.float32)
  out = objectives.value_loss(v, old, ret, TOK_MASK, clip_range=clip,
                              loss_agg=mode)
  np.testing.assert_allclose(out, np_value_loss(v, old, ret, TOK_MASK, clip,
                                                mode), rtol=1e-5)


@pytest.mark.slow
def test_value_loss_gradient_matches_numpy():
  # token-mean over N real tokens: d/dv ½(v − R)² / N = (v − R) / N, and with
  # the clip the branch with the larger error decides; a clipped value whose
  # branch wins passes no gradient to v.
  v = np.array([[3.0, 0.5, 1.0], [2.0, 9.0, 0.0]], np.float32)
  old = np.array([[0.0, 0.4, 1.0], [1.5, 7.0, 0.0]], np.float32)
  ret = np.array([[4.0, 0.0, 1.5], [-1.0, 8.2, 0.0]], np.float32)
  mask = np.array([[1, 1, 1], [1, 1, 0]])
  n = mask.sum()
  grad = jax.grad(lambda x: objectives.value_loss(x, old, ret, mask))(v)
  np.testing.assert_allclose(grad, mask * (v - ret) / n, rtol=1e-6)
  grad = jax.grad(lambda x: objectives.value_loss(
      x, old, ret, mask, clip_range=1.0))(v)
  v_clipped = np.clip(v, old - 1.0, old + 1.0)
  unclipped_wins = (v - ret) ** 2 >= (v_clipped - ret) ** 2
  inside = np.abs(v - old) < 1.0
  expected = np.where(unclipped_wins, v - ret,
                      np.where(inside, v_clipped - ret, 0.0)) * mask / n
  np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_value_loss_bad_arguments():
  v = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match="clip_range"):
    objectives.value_loss(v, v, v, v, clip_range=0.0)
  with pytest.raises(ValueError, match=r"returns.*\(2, 2\)"):
    objectives.value_loss(v, v, v[:, :2], v)
  with pytest.raises(ValueError, match="loss_agg"):
    objectives.value_loss(v, v, v, v, loss_agg="sum")


def np_entropy(logits):
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(-1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", objectives.LOSS_AGGREGATIONS)
def test_entropy_matches_numpy(mode):
  logits = RNG.normal(scale=2.0, size=(4, 5, 7)).astype(np.float32)
  logits[0, 0, :3] = -np.inf  # impossible tokens contribute 0
  out = objectives.entropy_bonus(logits, TOK_MASK, loss_agg=mode)
  expected = np_aggregate(np_entropy(logits), TOK_MASK, mode)
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  chex.assert_tree_all_finite(jax.grad(
      lambda x: objectives.entropy_bonus(x, TOK_MASK, loss_agg=mode))(
          jnp.asarray(logits)))


@pytest.mark.slow
def test_entropy_gradient_matches_numpy():
  # dH/dz_i = −p_i (log p_i + H) per token, averaged over real tokens.
  logits = RNG.normal(size=(4, 5, 7)).astype(np.float32)
  grad = jax.grad(lambda x: objectives.entropy_bonus(x, TOK_MASK))(
      jnp.asarray(logits))
  z = logits.astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  h = -np.sum(p * np.log(p), -1, keepdims=True)
  expected = -p * (np.log(p) + h) * TOK_MASK[..., None] / TOK_MASK.sum()
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_entropy_padding_nan_does_not_leak():
  logits = RNG.normal(size=(4, 5, 7)).astype(np.float32)
  logits[TOK_MASK == 0] = np.nan
  value, grad = jax.value_and_grad(
      lambda x: objectives.entropy_bonus(x, TOK_MASK))(jnp.asarray(logits))
  chex.assert_tree_all_finite((value, grad))
  np.testing.assert_array_equal(np.asarray(grad)[TOK_MASK == 0], 0.0)


def test_entropy_bad_arguments():
  with pytest.raises(ValueError, match=r"logits.*\(2, 3\)"):
    objectives.entropy_bonus(np.zeros((2, 3)), np.ones((2,)))
  with pytest.raises(ValueError, match=r"mask.*\(2, 2\)"):
    objectives.entropy_bonus(np.zeros((2, 3, 4)), np.ones((2, 2)))


def np_verl_kl(logprob, ref_logprob, kl_penalty):
  """verl's ``kl_penalty_forward`` (trainer/ppo/core_algos.py), in NumPy."""
  logprob = np.asarray(logprob, np.float64)
  ref_logprob = np.asarray(ref_logprob, np.float64)
  if kl_penalty in ("kl", "k1"):
    return logprob - ref_logprob
  if kl_penalty in ("mse", "k2"):
    return 0.5 * np.square(logprob - ref_logprob)
  if kl_penalty in ("low_var_kl", "k3"):
    kl = ref_logprob - logprob
    kl = np.clip(kl, -20, 20)
    ratio = np.exp(kl)
    kld = ratio - kl - 1
    return np.clip(kld, -10, 10)
  raise NotImplementedError(kl_penalty)


KL_LOGP = np.array([-1.0, -0.5, -3.0, 0.0, -50.0, 0.0, -100.0, 30.0, 2.0],
                   np.float32)
KL_REF = np.array([-1.0, -1.5, -0.5, -20.0, 0.0, 0.0, 0.0, 0.0, -0.3],
                  np.float32)


@pytest.mark.parametrize("kind", objectives.KL_KINDS)
def test_kl_penalty_matches_verl(kind):
  out = objectives.kl_penalty(KL_LOGP, KL_REF, kind=kind)
  np.testing.assert_allclose(out, np_verl_kl(KL_LOGP, KL_REF, kind),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_kl_k3_delta_minus_100_costs_clamp_with_zero_gradient():
  value, grad = jax.value_and_grad(
      lambda x: objectives.kl_penalty(x, jnp.zeros(1))[0])(jnp.array([-100.0]))
  assert float(value) == 10.0 and float(grad[0]) == 0.0
  assert float(objectives.kl_penalty(
      jnp.array([-100.0]), jnp.zeros(1), clamp=3.0)[0]) == 3.0


def test_kl_k1_k2_are_not_clamped():
  np.testing.assert_allclose(
      objectives.kl_penalty(jnp.array([-100.0, 30.0]), jnp.zeros(2),
                            kind="k1"), [-100.0, 30.0])
  np.testing.assert_allclose(
      objectives.kl_penalty(jnp.array([-100.0, 30.0]), jnp.zeros(2),
                            kind="k2"), [5000.0, 450.0])


@pytest.mark.parametrize("kind", objectives.KL_KINDS)
def test_kl_penalty_gradient_matches_numpy(kind):
  # d/dlogp of k1 = 1, k2 = δ, k3 = 1 − e^{−δ}; k3's is 0 where its value is
  # clamped (k3 > 10) or δ is outside ±20.
  d = KL_LOGP.astype(np.float64) - KL_REF
  k3 = np.exp(-d) + d - 1
  expected = {"k1": np.ones_like(d), "k2": d,
              "k3": np.where((k3 < 10) & (np.abs(d) < 20), 1 - np.exp(-d),
                             0.0)}[kind]
  grad = jax.grad(lambda x: jnp.sum(objectives.kl_penalty(
      x, KL_REF, kind=kind)))(jnp.asarray(KL_LOGP))
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_kl_k3_never_overflows_and_is_nonnegative():
  logp = jnp.array([-1e4, 1e4, 0.0, -88.0, 100.0])
  ref = jnp.zeros(5)
  for clamp in (10.0, 50.0, None):
    out, grad = jax.value_and_grad(
        lambda x: jnp.sum(objectives.kl_penalty(x, ref, clamp=clamp)))(logp)
    chex.assert_tree_all_finite((out, grad))
    assert np.all(np.asarray(objectives.kl_penalty(logp, ref, clamp=clamp))
                  >= 0)
  unclamped = objectives.kl_penalty(jnp.array([-100.0]), jnp.zeros(1),
                                    clamp=None)
  np.testing.assert_allclose(unclamped, [np.exp(20.0) - 21], rtol=1e-6)


def test_kl_bad_arguments():
  with pytest.raises(ValueError, match="kind.*'k4'"):
    objectives.kl_penalty(np.zeros(2), np.zeros(2), kind="k4")
  for clamp in (0.0, -1.0, float("inf")):
    with pytest.raises(ValueError, match="clamp"):
      objectives.kl_penalty(np.zeros(2), np.zeros(2), clamp=clamp)
  with pytest.raises(ValueError, match=r"ref_logp.*\(3,\)"):
    objectives.kl_penalty(np.zeros(2), np.zeros(3))


# ---------------------------------------------------------------------------
# Properties and tracing
# ---------------------------------------------------------------------------

_LOG_RATIOS = st.lists(
    st.one_of(st.floats(-30.0, 30.0), st.sampled_from([-1e4, 1e4])),
    min_size=6, max_size=6)


@settings(max_examples=30, deadline=None)
@given(_LOG_RATIOS, st.lists(st.integers(0, 2), min_size=6, max_size=6),
       st.floats(0.1, 50.0))
def test_weights_properties(log_ratio, ids, max_ratio):
  w = np.asarray(objectives.self_normalized_weights(
      jnp.array(log_ratio, jnp.float32), max_ratio=max_ratio,
      segment_ids=jnp.array(ids), num_segments=3))
  assert np.all(np.isfinite(w)) and np.all(w >= 0)
  ids = np.array(ids)
  for g in range(3):
    members = ids == g
    if members.any():
      np.testing.assert_allclose(w[members].sum(), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      w, np_weights(np.float32(log_ratio), max_ratio, ids), rtol=1e-4,
      atol=1e-6)


def test_jitted_losses_trace_once():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(seq_logp, old, adv, logp, old_logp, mask):
    a, _ = objectives.stabledrl_policy_loss(seq_logp, old, adv)
    b, _ = objectives.grpo_policy_loss(logp, old_logp, adv, mask)
    return a + b
  tokens = np.repeat(SEQ_LOGP[:, None] / 3, 3, axis=1)  # [6, 3]
  for shift in (0.0, 1.0, 5.0):
    out = step(SEQ_LOGP + shift, OLD, ADV, tokens + shift, tokens,
               np.ones_like(tokens))
    chex.assert_tree_all_finite(out)
