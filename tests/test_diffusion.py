"""Diffusion-LM likelihood estimators against a NumPy port of the reference.

The reference is the StableDRL code (github.com/JianyuanZhong/StableDRL,
``networks/llada_svpo.py``): ``_get_per_seq_logps_spg`` from the point where
the model's per-token log-probabilities are known, and the SNIS branch of
``compute_loss_spg``. Both are ported below line by line to float64 NumPy
(with ``num_iterations = 1``); gradients are central finite differences of
the port, with the importance weights held fixed as the reference's
``.detach()`` holds them.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stabledrl_jax as sdj

# ---------------------------------------------------------------------------
# The reference, ported to NumPy.
# ---------------------------------------------------------------------------


def ref_per_seq_logps(per_token_logps, perturb_mask, completion_mask,
                      reward_mask, logp_estimation="mix", eubo_beta=1.5,
                      mix_weight=0.5):
  """``_get_per_seq_logps_spg`` after the model call.

  Args:
    per_token_logps: ``[B, num_t, T]`` float64 log-probs of the targets.
    perturb_mask: ``[B, num_t, T]`` bool, positions replaced by MASK (the
      reference also masks padding: ``| ~completion_mask_append``).
    completion_mask: ``[B, T]`` 0/1.
    reward_mask: ``[B]`` bool, ``advantages > 0``.
  """
  batch_size, num_t, logits_to_keep = per_token_logps.shape
  num_iterations = 1
  per_token_logps = per_token_logps.reshape(
      num_iterations, batch_size, num_t, logits_to_keep)
  # prob = softmax(logits).gather(target): the same token's probability.
  per_token_probs = np.exp(per_token_logps)
  completion_mask_expanded = np.broadcast_to(
      completion_mask[None, :, None, :],
      (num_iterations, batch_size, num_t, logits_to_keep)).astype(np.float64)
  perturb_mask_expanded = perturb_mask.reshape(
      num_iterations, batch_size, num_t, logits_to_keep)

  denominator = (completion_mask_expanded * perturb_mask_expanded).sum(axis=3)
  if (denominator == 0).any():
    denominator = np.maximum(denominator, 1e-8)
  per_seq_logps = (per_token_logps * completion_mask_expanded
                   * perturb_mask_expanded).sum(axis=3) / denominator
  per_seq_elbo = per_seq_logps.mean(axis=2)

  if logp_estimation in ("eubo", "mix"):
    empirical_t = ((completion_mask_expanded * perturb_mask_expanded).sum(
        axis=3) / np.maximum(completion_mask_expanded.sum(axis=3), 1e-8))
    empirical_t_expanded = np.broadcast_to(
        empirical_t[..., None], completion_mask_expanded.shape)
    per_token_avg_ps = (per_token_probs ** eubo_beta * perturb_mask_expanded
                        * completion_mask_expanded
                        / np.maximum(empirical_t_expanded, 1e-8))
    per_token_avg_ps = per_token_avg_ps.mean(axis=2)
    per_token_avg_ps_dezero = per_token_avg_ps.copy()
    per_token_avg_ps_dezero[per_token_avg_ps_dezero == 0] = 1
    loss_mask = per_token_avg_ps > 0

  reward_mask_expanded = np.broadcast_to(reward_mask[None],
                                         (num_iterations, batch_size))
  per_seq_logps_positive = per_seq_elbo
  if logp_estimation == "eubo":
    per_seq_logps_negative = ((np.log(per_token_avg_ps_dezero) * loss_mask)
                              .sum(axis=2) / np.maximum(
                                  loss_mask.sum(axis=2), 1e-8) / eubo_beta)
  elif logp_estimation == "mix":
    l_eubo = ((np.log(per_token_avg_ps_dezero) * loss_mask).sum(axis=2)
              / np.maximum(loss_mask.sum(axis=2), 1e-8) / eubo_beta)
    l_elbo = per_seq_elbo
    per_seq_logps_negative = mix_weight * l_eubo + (1 - mix_weight) * l_elbo
  elif logp_estimation == "elbo":
    per_seq_logps_negative = per_seq_elbo
  else:
    raise ValueError(logp_estimation)
  final_per_seq_logps = (reward_mask_expanded * per_seq_logps_positive
                         + (~reward_mask_expanded) * per_seq_logps_negative)
  return final_per_seq_logps, per_seq_elbo


def ref_snis_weights(per_seq_elbo, ref_elbo, ais_clip_iw=5.0):
  """``compute_loss_spg``'s SNIS weights: softmax of the capped ELBO ratio."""
  per_seq_elbo = np.nan_to_num(per_seq_elbo, nan=0.0, posinf=0.0, neginf=0.0)
  log_iw = per_seq_elbo[0] - ref_elbo
  clipped_log_iw = np.minimum(log_iw, np.log(ais_clip_iw))
  e = np.exp(clipped_log_iw - clipped_log_iw.max())
  return e / e.sum()


def ref_snis_loss(per_seq_logps, normalized_weights, advantages):
  """``compute_loss_spg``'s SNIS loss ``−Σ w A L_SPG`` (one iteration)."""
  per_seq_logps = np.nan_to_num(per_seq_logps, nan=0.0, posinf=0.0,
                                neginf=0.0)
  weights_for_loss = normalized_weights[None]
  surrogate_objective = weights_for_loss * advantages[None] * per_seq_logps
  return -np.sum(surrogate_objective)


def np_inverse_t_elbo(token_logp, masked, t, completion_mask):
  """LLaDA/MDLM: per sample Σ_masked logp / t (0 if t = 0), mean over samples."""
  sel = masked & (completion_mask[None] != 0)
  totals = np.where(sel, token_logp, 0.0).sum(-1)
  per_sample = np.where(t > 0, totals / np.where(t > 0, t, 1), 0.0)
  return per_sample.mean(0)


def central_differences(f, x, h=1e-6):
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    grad[idx] = (f(up) - f(down)) / (2 * h)
  return grad


# ---------------------------------------------------------------------------
# Random inputs with the edge cases: an empty completion, an all-masked
# completion, a one-token completion, samples that mask nothing.
# ---------------------------------------------------------------------------

M, B, T = 4, 8, 10
LENGTHS = np.array([10, 7, 3, 0, 10, 5, 1, 8])


def make_problem(seed):
  rng = np.random.default_rng(seed)
  completion = (np.arange(T)[None] < LENGTHS[:, None]).astype(np.float32)
  token_logp = -rng.uniform(0.01, 6.0, size=(M, B, T))
  t = rng.uniform(1e-3, 1.0, size=(M, B))
  t[0, 1] = 1e-3  # t = t_min: masks nothing here
  masked = rng.random((M, B, T)) < t[..., None]
  masked[0, 1] = False
  masked[:, 4] = True  # row 4: every completion token masked in every sample
  masked[1, 0] = False  # one sample of row 0 masks nothing
  # The reference also marks padding as MASK; the estimators must ignore it.
  masked |= completion[None] == 0
  return token_logp, masked, t.astype(np.float32), completion


def ref_inputs(token_logp, masked):
  """Our ``[M, B, T]`` layout to the reference's ``[B, num_t, T]``."""
  return np.transpose(token_logp, (1, 0, 2)), np.transpose(masked, (1, 0, 2))


ADV = np.array([1.0, -0.5, 0.0, -1.0, 2.0, -0.25, 0.5, -1.5])


# ---------------------------------------------------------------------------
# Estimators.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elbo_mean_matches_reference(seed):
  token_logp, masked, t, completion = make_problem(seed)
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  got = sdj.diffusion_elbo(jnp.asarray(token_logp, jnp.float32), masks,
                           completion)
  _, expected = ref_per_seq_logps(*ref_inputs(token_logp, masked), completion,
                                  ADV > 0)
  assert got.dtype == jnp.float32 and got.shape == (B,)
  np.testing.assert_allclose(got, expected[0], rtol=1e-6, atol=1e-6)
  assert float(got[3]) == 0.0  # empty completion


@pytest.mark.parametrize("seed", [0, 1])
def test_elbo_inverse_t_matches_numpy(seed):
  token_logp, masked, t, completion = make_problem(seed)
  t[2, 5] = 0.0
  masked[2, 5] = completion[5] == 0  # t = 0 masks no completion token
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  got = sdj.diffusion_elbo(jnp.asarray(token_logp, jnp.float32), masks,
                           completion, weighting="inverse_t")
  expected = np_inverse_t_elbo(token_logp, masked, t.astype(np.float64),
                               completion)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
  chex.assert_tree_all_finite(got)


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.5, 1.0, 1.5, 3.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_eubo_matches_reference(seed, beta):
  token_logp, masked, t, completion = make_problem(seed)
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  got = sdj.diffusion_eubo(jnp.asarray(token_logp, jnp.float32), masks,
                           completion, beta=beta)
  # "eubo" with all advantages ≤ 0 returns the EUBO for every sequence.
  expected, _ = ref_per_seq_logps(*ref_inputs(token_logp, masked), completion,
                                  np.zeros(B, bool), "eubo", eubo_beta=beta)
  np.testing.assert_allclose(got, expected[0], rtol=1e-6, atol=1e-6)
  assert float(got[3]) == 0.0  # empty completion


@pytest.mark.slow
def test_eubo_all_masked_equals_hand_value():
  # Every token masked in both samples: t̂ = 1, a_i = mean_m p_im^β.
  logp = np.log(np.array([[[0.5, 0.2]], [[0.1, 0.4]]]))
  masks = sdj.DiffusionMasks(jnp.ones((2, 1, 2), bool), jnp.ones((2, 1)))
  got = sdj.diffusion_eubo(jnp.asarray(logp, jnp.float32), masks,
                           jnp.ones((1, 2)), beta=2.0)
  a = [(0.5**2 + 0.1**2) / 2, (0.2**2 + 0.4**2) / 2]
  np.testing.assert_allclose(got, [np.mean(np.log(a)) / 2], rtol=1e-6)


@pytest.mark.slow
def test_eubo_keeps_tokens_whose_p_beta_underflows():
  # β·logp = −150: p^β underflows float32, the log-sum-exp keeps the token.
  logp = jnp.array([[[-100.0, -1.0]]])
  masks = sdj.DiffusionMasks(jnp.ones((1, 1, 2), bool), jnp.ones((1, 1)))
  got = sdj.diffusion_eubo(logp, masks, jnp.ones((1, 2)), beta=1.5)
  np.testing.assert_allclose(got, [(-150.0 - 1.5) / 2 / 1.5], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mix,estimation", [(0.5, "mix"), (1.0, "eubo"),
                                            (0.0, "elbo"), (0.3, "mix")])
def test_sandwich_matches_reference(mix, estimation):
  token_logp, masked, t, completion = make_problem(4)
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  logp32 = jnp.asarray(token_logp, jnp.float32)
  elbo = sdj.diffusion_elbo(logp32, masks, completion)
  eubo = sdj.diffusion_eubo(logp32, masks, completion)
  got = sdj.sandwich_logp(elbo, eubo, ADV, mix=mix)
  expected, _ = ref_per_seq_logps(*ref_inputs(token_logp, masked), completion,
                                  ADV > 0, estimation, mix_weight=mix)
  np.testing.assert_allclose(got, expected[0], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_gradients_flow_through_masked_completion_tokens_only():
  token_logp, masked, t, completion = make_problem(5)
  token_logp[~masked] = np.nan  # values outside the selection are never read
  token_logp[:, completion == 0] = np.nan
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  for fn in (lambda x: sdj.diffusion_elbo(x, masks, completion),
             lambda x: sdj.diffusion_elbo(x, masks, completion,
                                          weighting="inverse_t"),
             lambda x: sdj.diffusion_eubo(x, masks, completion)):
    value, grad = jax.value_and_grad(lambda x, fn=fn: jnp.sum(fn(x)))(
        jnp.asarray(token_logp, jnp.float32))
    chex.assert_tree_all_finite((value, grad))
    selected = masked & (completion[None] != 0)
    assert np.all(np.asarray(grad)[~selected] == 0)
  # t carries no gradient: the inverse_t ELBO divides by it, and without a
  # stop_gradient its gradient would be -Σ m logp / (M t²) per sample.
  finite_logp = jnp.asarray(np.nan_to_num(token_logp), jnp.float32)
  grad_t = jax.grad(lambda t_: jnp.sum(sdj.diffusion_elbo(
      finite_logp, sdj.DiffusionMasks(masks.masked, t_), completion,
      weighting="inverse_t")))(masks.t)
  np.testing.assert_array_equal(grad_t, np.zeros_like(grad_t))


@pytest.mark.slow
def test_estimator_gradients_match_reference_finite_differences():
  token_logp, masked, t, completion = make_problem(6)
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  reward_mask = ADV > 0

  def ref_sandwich_total(x):
    final, _ = ref_per_seq_logps(*ref_inputs(x, masked), completion,
                                 reward_mask)
    return float(np.sum(final * np.arange(1, B + 1)))

  def ours(x):
    elbo = sdj.diffusion_elbo(x, masks, completion)
    eubo = sdj.diffusion_eubo(x, masks, completion)
    return jnp.sum(sdj.sandwich_logp(elbo, eubo, ADV) * jnp.arange(1, B + 1))

  grad = jax.grad(ours)(jnp.asarray(token_logp, jnp.float32))
  expected = central_differences(ref_sandwich_total, token_logp)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_exact_under_jit_and_vmap():
  problems = [make_problem(seed) for seed in (7, 8, 9)]
  logp = jnp.asarray(np.stack([p[0] for p in problems]), jnp.float32)
  masked = jnp.asarray(np.stack([p[1] for p in problems]))
  t = jnp.asarray(np.stack([p[2] for p in problems]))
  completion = problems[0][3]

  def estimate(lp, mk, tt):
    masks = sdj.DiffusionMasks(mk, tt)
    return (sdj.diffusion_elbo(lp, masks, completion),
            sdj.diffusion_elbo(lp, masks, completion, weighting="inverse_t"),
            sdj.diffusion_eubo(lp, masks, completion))

  batched = jax.jit(jax.vmap(estimate))(logp, masked, t)
  for i in range(3):
    eager = estimate(logp[i], masked[i], t[i])
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], batched),
                                eager, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# The StableDRL reference loss.
# ---------------------------------------------------------------------------


def reference_problem(seed):
  """New token log-probs with fresh masks; the old ELBO with other masks."""
  token_logp, masked, t, completion = make_problem(seed)
  old_logp, old_masked, _, _ = make_problem(seed + 100)
  old_logp = old_logp + np.random.default_rng(seed).normal(0, 0.3, (M, B, T))
  _, old_elbo = ref_per_seq_logps(*ref_inputs(old_logp, old_masked),
                                  completion, ADV > 0)
  return token_logp, masked, t, completion, old_elbo[0]


def library_loss(token_logp, masks, completion, old_elbo, adv, group_size,
                 use_ratio_logp=True):
  elbo = sdj.diffusion_elbo(token_logp, masks, completion)
  eubo = sdj.diffusion_eubo(token_logp, masks, completion)
  sandwich = sdj.sandwich_logp(elbo, eubo, adv)
  return sdj.stabledrl_policy_loss(
      sandwich, old_elbo, adv, ratio_logp=elbo if use_ratio_logp else None,
      group_size=group_size)[0]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_ratio_logp_loss_and_gradient_equal_reference(seed):
  token_logp, masked, t, completion, old_elbo = reference_problem(seed)
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  reward_mask = ADV > 0
  final, elbo = ref_per_seq_logps(*ref_inputs(token_logp, masked), completion,
                                  reward_mask)
  weights = ref_snis_weights(elbo, old_elbo)
  expected_loss = ref_snis_loss(final, weights, ADV)

  def ref_loss_of(x):  # the weights are detached in the reference
    return ref_snis_loss(ref_per_seq_logps(
        *ref_inputs(x, masked), completion, reward_mask)[0], weights, ADV)

  expected_grad = central_differences(ref_loss_of, token_logp)
  loss, grad = jax.value_and_grad(library_loss)(
      jnp.asarray(token_logp, jnp.float32), masks, completion,
      jnp.asarray(old_elbo, jnp.float32), ADV, B)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_groups_are_the_reference_loss_per_group_averaged():
  # The reference softmaxes over one local batch; with group_size the loss is
  # the mean over groups of that loss on each group.
  token_logp, masked, t, completion, old_elbo = reference_problem(13)
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  final, elbo = ref_per_seq_logps(*ref_inputs(token_logp, masked), completion,
                                  ADV > 0)
  per_group = [
      ref_snis_loss(final[:, g], ref_snis_weights(elbo[:, g], old_elbo[g]),
                    ADV[g]) for g in (slice(0, 4), slice(4, 8))]
  loss = library_loss(jnp.asarray(token_logp, jnp.float32), masks,
                      completion, jnp.asarray(old_elbo, jnp.float32), ADV, 4)
  np.testing.assert_allclose(loss, np.mean(per_group), rtol=1e-6, atol=1e-6)


def test_without_ratio_logp_the_loss_differs_from_reference():
  # The finding: one input for ratio and gradient gives another loss.
  token_logp, masked, t, completion, old_elbo = reference_problem(14)
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  args = (jnp.asarray(token_logp, jnp.float32), masks, completion,
          jnp.asarray(old_elbo, jnp.float32), ADV, B)
  with_ratio = float(library_loss(*args))
  without = float(library_loss(*args, use_ratio_logp=False))
  final, elbo = ref_per_seq_logps(*ref_inputs(token_logp, masked), completion,
                                  ADV > 0)
  reference = ref_snis_loss(final, ref_snis_weights(elbo, old_elbo), ADV)
  np.testing.assert_allclose(with_ratio, reference, rtol=1e-6, atol=1e-6)
  assert abs(without - reference) > 1e-2


# ---------------------------------------------------------------------------
# The mask sampler.
# ---------------------------------------------------------------------------

COMPLETION = (np.arange(12)[None] < np.array([12, 9, 4, 0, 1])[:, None]
              ).astype(np.int32)
COMPLETION[1, :2] = 0  # a prompt before the completion


@pytest.mark.slow
@pytest.mark.parametrize("coupling", ["independent", "complementary"])
def test_sampler_shapes_and_never_masks_outside_completion(coupling):
  masks = sdj.sample_diffusion_masks(jax.random.key(0), COMPLETION, 6,
                                     coupling=coupling)
  assert masks.masked.shape == (6, 5, 12) and masks.masked.dtype == jnp.bool_
  assert masks.t.shape == (6, 5) and masks.t.dtype == jnp.float32
  assert not np.any(np.asarray(masks.masked)[:, COMPLETION == 0])


@pytest.mark.slow
def test_complementary_pairs_partition_the_completion():
  masks = sdj.sample_diffusion_masks(jax.random.key(1), COMPLETION, 8,
                                     coupling="complementary", t_min=0.2,
                                     t_max=0.7)
  masked = np.asarray(masks.masked).reshape(4, 2, 5, 12)
  t = np.asarray(masks.t).reshape(4, 2, 5)
  # Every completion token is masked in exactly one sample of each pair.
  np.testing.assert_array_equal(masked.sum(axis=1), np.broadcast_to(
      COMPLETION, (4, 5, 12)))
  np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
  assert np.all((t[:, 0] >= 0.2) & (t[:, 0] <= 0.7))


@pytest.mark.slow
def test_independent_rates_follow_t():
  completion = np.ones((64, 256), np.int32)
  masks = sdj.sample_diffusion_masks(jax.random.key(2), completion, 4,
                                     t_min=0.1, t_max=0.9)
  t = np.asarray(masks.t)
  assert np.all((t >= 0.1) & (t <= 0.9))
  rates = np.asarray(masks.masked).mean(-1)
  # Binomial(256, t) / 256 has std ≤ 0.032; 6 std allows for 256 rows.
  assert np.max(np.abs(rates - t)) < 0.19
  assert abs(np.mean(rates - t)) < 0.01
  # Same key, same masks; under jit too.
  again = jax.jit(sdj.sample_diffusion_masks, static_argnums=2)(
      jax.random.key(2), completion, 4, t_min=0.1, t_max=0.9)
  np.testing.assert_array_equal(again.masked, masks.masked)


@pytest.mark.slow
def test_sampler_t_min_equals_t_max():
  masks = sdj.sample_diffusion_masks(jax.random.key(3), COMPLETION, 2,
                                     t_min=1.0, t_max=1.0)
  np.testing.assert_array_equal(
      masks.masked, np.broadcast_to(COMPLETION != 0, (2, 5, 12)))


# ---------------------------------------------------------------------------
# Bad arguments.
# ---------------------------------------------------------------------------


def test_bad_arguments_name_the_argument():
  token_logp, masked, t, completion = make_problem(0)
  masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
  key = jax.random.key(0)
  cases = [
      (lambda: sdj.sample_diffusion_masks(key, COMPLETION, 3,
                                          coupling="complementary"),
       "num_samples.*even"),
      (lambda: sdj.sample_diffusion_masks(key, COMPLETION, 0), "num_samples"),
      (lambda: sdj.sample_diffusion_masks(key, COMPLETION, 2,
                                          coupling="pairs"), "coupling"),
      (lambda: sdj.sample_diffusion_masks(key, COMPLETION[0], 2),
       "completion_mask"),
      (lambda: sdj.sample_diffusion_masks(key, COMPLETION, 2, t_min=0.5,
                                          t_max=0.4), "t_min"),
      (lambda: sdj.sample_diffusion_masks(key, COMPLETION, 2, t_max=1.5),
       "t_max"),
      (lambda: sdj.sample_diffusion_masks(key, -COMPLETION, 2),
       "completion_mask.*negative"),
      (lambda: sdj.diffusion_elbo(token_logp, masks, completion,
                                  weighting="t"), "weighting"),
      (lambda: sdj.diffusion_elbo(token_logp[0], masks, completion),
       "token_logp"),
      (lambda: sdj.diffusion_elbo(token_logp, masks, completion[:, :5]),
       "completion_mask"),
      (lambda: sdj.diffusion_elbo(
          token_logp, sdj.DiffusionMasks(masks.masked, masks.t[:2]),
          completion), "masks.t"),
      (lambda: sdj.diffusion_elbo(
          token_logp, sdj.DiffusionMasks(masks.masked[:2], masks.t),
          completion), "masks.masked"),
      (lambda: sdj.diffusion_elbo(token_logp, masks.masked, completion),
       "masks"),
      (lambda: sdj.diffusion_eubo(token_logp, masks, completion, beta=0.0),
       "beta"),
      (lambda: sdj.diffusion_eubo(token_logp, masks, completion, beta=-1.0),
       "beta"),
      (lambda: sdj.diffusion_eubo(token_logp, masks, -completion),
       "completion_mask.*negative"),
      (lambda: sdj.sandwich_logp(np.zeros(3), np.zeros(3), np.zeros(3),
                                 mix=1.5), "mix"),
      (lambda: sdj.sandwich_logp(np.zeros(3), np.zeros(3), np.zeros(3),
                                 mix=-0.1), "mix"),
      (lambda: sdj.sandwich_logp(np.zeros(3), np.zeros(2), np.zeros(3)),
       "eubo"),
      (lambda: sdj.sandwich_logp(np.zeros(3), np.zeros(3), np.zeros(4)),
       "advantages"),
  ]
  for fn, match in cases:
    with pytest.raises(ValueError, match=match):
      fn()


def report_reference_comparison():
  """Prints the max abs differences to the reference (``python <this file>``)."""
  for seed in (10, 11, 12, 13, 14):
    token_logp, masked, t, completion, old_elbo = reference_problem(seed)
    masks = sdj.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t))
    final, elbo = ref_per_seq_logps(*ref_inputs(token_logp, masked),
                                    completion, ADV > 0)
    weights = ref_snis_weights(elbo, old_elbo)
    ref_loss = ref_snis_loss(final, weights, ADV)
    ref_grad = central_differences(lambda x: ref_snis_loss(ref_per_seq_logps(
        *ref_inputs(x, masked), completion, ADV > 0)[0], weights, ADV),
                                   token_logp)
    args = (jnp.asarray(token_logp, jnp.float32), masks, completion,
            jnp.asarray(old_elbo, jnp.float32), ADV, B)
    loss, grad = jax.value_and_grad(library_loss)(*args)
    without = library_loss(*args, use_ratio_logp=False)
    print(f"seed {seed}: reference loss {ref_loss:.6f}, ratio_logp loss "
          f"{float(loss):.6f} (|diff| {abs(float(loss) - ref_loss):.2e}, "
          f"max |grad diff| {np.max(np.abs(np.asarray(grad) - ref_grad)):.2e}"
          f"), without ratio_logp {float(without):.6f}")


if __name__ == "__main__":
  report_reference_comparison()
