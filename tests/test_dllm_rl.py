"""Tests of the toy diffusion-LM RL study (examples/dllm_rl.py)."""

import importlib
import json
import pathlib
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stabledrl_jax

# Runs the example and benchmark programs: minutes, not seconds.
pytestmark = pytest.mark.slow

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example():
  # Imported under its own name from examples/, so that the spawned worker
  # processes of the default (two-worker) path can import it too.
  if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
  return importlib.import_module("dllm_rl")


dllm = load_example()

METHODS = dllm.METHODS


def fixed_logits_apply(params, tokens):
  """A 'model' whose logits ignore the input: ``params`` is ``[L, V]``."""
  length = params.shape[0]
  return jnp.broadcast_to(params, (tokens.shape[0], length, params.shape[1]))


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def small_config(**kw):
  base = dict(length=4, d_model=16, num_heads=2, num_layers=1, mlp_dim=32,
              warm_steps=2, warm_batch=8, eval_prompts=16, rl_steps=2,
              num_prompts=2, group_size=4, unmask_steps=2)
  base.update(kw)
  return dllm.Config(**base)


# ------------------------------------------------------------------------ ELBO


def test_elbo_with_given_masks_matches_numpy():
  rng = np.random.default_rng(0)
  length, vocab, batch, num_mc = 3, 4, 2, 2
  logits = rng.normal(size=(length, vocab)).astype(np.float32)
  completions = np.array([[0, 3, 1], [2, 2, 0]])
  prompts = np.zeros((batch, length), np.int32)
  t = np.array([[0.5, 0.25], [0.8, 0.1]], np.float32)
  masked = np.array([[[1, 0, 1], [0, 0, 0]],
                     [[1, 1, 1], [0, 1, 0]]], bool)
  got = dllm.elbo_from_masks(fixed_logits_apply, jnp.asarray(logits),
                             jnp.asarray(prompts), jnp.asarray(completions),
                             jnp.asarray(t), jnp.asarray(masked), vocab)
  logp = np_log_softmax(logits)
  want = np.zeros(batch)
  for b in range(batch):
    for m in range(num_mc):
      total = sum(logp[i, completions[b, i]] for i in range(length)
                  if masked[m, b, i])
      want[b] += total / t[m, b] / num_mc
  chex.assert_shape(got, (batch,))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_elbo_is_unbiased_for_fixed_logits():
  # With input-independent logits, E[1{masked_i} / t] = 1 for every position,
  # so the ELBO's expectation is exactly sum_i log p_i(x_i).
  rng = np.random.default_rng(1)
  length, vocab, num_mc = 5, 10, 40_000
  logits = rng.normal(size=(length, vocab)).astype(np.float32)
  completion = np.array([[3, 1, 4, 1, 5]])
  t, masked = dllm.draw_masks(jax.random.key(0), num_mc, 1, length, 1e-2)
  # Per-draw estimates: the ELBO of one draw at a time.
  per_draw = jax.vmap(
      lambda tt, mm: dllm.elbo_from_masks(
          fixed_logits_apply, jnp.asarray(logits),
          jnp.zeros((1, length), jnp.int32), jnp.asarray(completion),
          tt[None], mm[None], vocab))(t, masked)[:, 0]
  per_draw = np.asarray(per_draw, np.float64)
  truth = np_log_softmax(logits)[np.arange(length), completion[0]].sum()
  stderr = per_draw.std() / np.sqrt(num_mc)
  assert abs(per_draw.mean() - truth) < 5 * stderr
  # The estimator is noisy: a single draw is far from the truth.
  assert per_draw.std() > 0.5 * abs(truth)


def test_draw_masks_rate_and_shapes():
  t, masked = dllm.draw_masks(jax.random.key(3), 4000, 2, 5, 0.2)
  chex.assert_shape(t, (4000, 2))
  chex.assert_shape(masked, (4000, 2, 5))
  t = np.asarray(t)
  assert t.min() >= 0.2 and t.max() <= 1.0
  # Each position is masked w.p. t: the masked fraction tracks t.
  frac = np.asarray(masked).mean(-1)
  np.testing.assert_allclose(frac.mean(), t.mean(), atol=0.01)
  np.testing.assert_allclose(np.corrcoef(frac.ravel(), t.ravel())[0, 1], 1,
                             atol=0.35)


# --------------------------------------------------------------------- sampler


def test_unmask_schedule():
  assert dllm.unmask_schedule(5, 5) == (1, 2, 3, 4, 5)
  assert dllm.unmask_schedule(5, 2) == (2, 5)  # round(2.5) is 2 in Python
  assert dllm.unmask_schedule(4, 1) == (4,)


def test_sampler_reveals_everything_and_follows_sharp_logits():
  cfg = small_config(length=4, unmask_steps=3, temperature=1e-3)
  target = np.array([7, 2, 9, 0])
  logits = np.full((4, 10), -5.0, np.float32)
  logits[np.arange(4), target] = 5.0
  prompts = jnp.zeros((6, 4), jnp.int32)
  out = dllm.sample_completions(fixed_logits_apply, jnp.asarray(logits),
                                jax.random.key(0), prompts, cfg)
  np.testing.assert_array_equal(np.asarray(out), np.tile(target, (6, 1)))


def test_sampler_reveals_most_confident_position_first():
  # A model that is sure about position 2 only while everything is masked:
  # afterwards it predicts 0 everywhere. One position per step, so position 2
  # must be revealed first, with its confident token.
  cfg = small_config(length=3, unmask_steps=3, temperature=1.0)

  def apply(params, tokens):
    del params
    completion = tokens[:, 3:]
    all_masked = jnp.all(completion == cfg.mask_id, axis=-1)
    # Positions 0 and 1: near-uniform (confidence ~0.1); position 2: ~1.
    sure = jnp.zeros((3, 10)).at[2].set(-9.0).at[2, 6].set(9.0)
    later = jnp.full((3, 10), -9.0).at[:, 0].set(9.0)
    return jnp.where(all_masked[:, None, None], sure, later)

  out = dllm.sample_completions(apply, None, jax.random.key(1),
                                jnp.zeros((2, 3), jnp.int32), cfg)
  np.testing.assert_array_equal(np.asarray(out), [[0, 0, 6], [0, 0, 6]])


def test_sampler_temperature_draws_match_probabilities():
  cfg = small_config(length=1, unmask_steps=1, temperature=2.0)
  logits = np.array([[0.0, 1.0, 2.0] + [-30.0] * 7], np.float32)
  out = dllm.sample_completions(fixed_logits_apply, jnp.asarray(logits),
                                jax.random.key(2),
                                jnp.zeros((20_000, 1), jnp.int32), cfg)
  freq = np.bincount(np.asarray(out).ravel(), minlength=10)[:3] / 20_000
  p = np.exp(np.array([0.0, 0.5, 1.0]))
  np.testing.assert_allclose(freq, p / p.sum(), atol=0.015)


# ------------------------------------------------------------- reward and loss


def test_sort_reward_matches_hand_computed():
  prompts = jnp.array([[3, 1, 2], [0, 0, 5]])
  completions = jnp.array([[1, 2, 2], [0, 5, 5]])
  np.testing.assert_allclose(
      np.asarray(dllm.sort_reward(prompts, completions)), [2 / 3, 2 / 3])


def test_grpo_sequence_loss_matches_numpy_and_is_unbounded_for_negative_a():
  logp = np.array([0.0, 0.1, -3.0, 4.0], np.float32)
  old = np.array([0.0, -0.5, -1.0, 0.0], np.float32)
  adv = np.array([1.0, 1.0, -1.0, -2.0], np.float32)
  r = np.exp(logp.astype(np.float64) - old)
  want = -np.mean(np.minimum(r * adv, np.clip(r, 0.8, 1.2) * adv))
  got = dllm.grpo_sequence_loss(jnp.asarray(logp), jnp.asarray(old),
                                jnp.asarray(adv), 0.2)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Gradient w.r.t. logp: -(1/B) r A where the unclipped term is the min or
  # r is inside [1 - eps, 1 + eps]; 0 where the clipped constant wins.
  grad = np.asarray(jax.grad(dllm.grpo_sequence_loss)(
      jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), 0.2))
  live = (r * adv < np.clip(r, 0.8, 1.2) * adv) | ((r >= 0.8) & (r <= 1.2))
  np.testing.assert_allclose(grad, np.where(live, -r * adv / 4, 0.0),
                             rtol=1e-5)
  # Sample 3 (A < 0, r = e^4) passes the conditional clip: gradient ~ r.
  assert live.tolist() == [True, False, False, True]
  assert grad[3] == pytest.approx(2 * np.exp(4) / 4, rel=1e-5)


def test_collapse_stats_follow_the_ten_percent_rule():
  curve = [0.2] * 10 + [0.8] * 10 + [0.3] * 80
  final, best, collapsed = dllm.collapse_stats(curve)
  assert final == pytest.approx(0.3) and best == pytest.approx(0.8)
  assert collapsed  # 0.3 < 0.8 / 2
  final, best, collapsed = dllm.collapse_stats([0.5] * 50 + [0.45] * 50)
  assert best == pytest.approx(0.5) and not collapsed


# --------------------------------------------------------------------- RL step


@pytest.mark.parametrize("method", METHODS)
def test_rl_step_runs_two_steps(method):
  cfg = small_config(masks="independent", num_mc=2, logratio_noise=0.3)
  apply, params = dllm.make_model(cfg, 0)
  step = dllm.make_rl_step(apply, cfg, method)
  opt_state = dllm.make_optimizer(cfg).init(params)
  before = jax.tree.map(np.asarray, params)
  for i in range(2):
    params, opt_state, metrics = step(params, opt_state, jax.random.key(i))
  chex.assert_tree_all_finite(params)
  clip_state = opt_state[0]
  assert isinstance(clip_state, stabledrl_jax.ClipState)
  assert float(clip_state.global_norm) > 0
  assert float(metrics["grad_norm"]) >= float(clip_state.global_norm)
  # At most two RL steps x two optimizer steps were clipped.
  assert 0 <= int(metrics["num_clipped"]) <= 2 * 2
  assert 0 <= float(metrics["reward"]) <= 1
  assert np.isfinite(float(metrics["max_log_ratio"]))
  assert float(metrics["logratio_std"]) > 0
  assert 0 <= float(metrics["bypass_fraction"]) <= 1
  assert int(metrics["num_nonfinite"]) == 0
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                       params, before)
  assert max(jax.tree.leaves(moved)) > 0


def test_coupled_masks_without_noise_give_zero_log_ratio_at_first_step():
  # Same masks and the same parameters: ELBO_new == ELBO_old exactly, so the
  # first inner step sees ratio 1 (GRPO's clip is then inactive).
  cfg = small_config(masks="coupled", num_mc=1, logratio_noise=0.0,
                     inner_steps=1)
  apply, params = dllm.make_model(cfg, 0)
  step = dllm.make_rl_step(apply, cfg, "grpo")
  opt_state = dllm.make_optimizer(cfg).init(params)
  _, _, metrics = step(params, opt_state, jax.random.key(0))
  assert float(metrics["logratio_std"]) == 0.0
  assert float(metrics["max_log_ratio"]) == 0.0
  assert float(metrics["bypass_fraction"]) == 0.0


def test_bad_config_and_method_raise():
  with pytest.raises(ValueError, match="masks"):
    dllm.Config(masks="shared")
  with pytest.raises(ValueError, match="num_mc"):
    dllm.Config(num_mc=0)
  with pytest.raises(ValueError, match="logratio_noise"):
    dllm.Config(logratio_noise=-1.0)
  with pytest.raises(ValueError, match="t_min"):
    dllm.Config(t_min=0.0)
  cfg = small_config()
  apply, _ = dllm.make_model(cfg, 0)
  with pytest.raises(ValueError, match="method"):
    dllm.make_rl_step(apply, cfg, "ppo")


# ------------------------------------------------------------------ end to end


def test_quick_run_end_to_end(tmp_path):
  # The default path: two spawned worker processes.
  methods = ",".join(METHODS)
  result = dllm.main(["--quick", "--workers", "2", "--methods", methods,
                      "--out", str(tmp_path)])
  for name in ("results.json", "reward.png", "grad_norm.png"):
    assert (tmp_path / name).stat().st_size > 0
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["warm_start_reward"] == pytest.approx(result["warm_start_reward"])
  assert 0 <= saved["warm_start_reward"] <= 1
  assert {r["method"] for r in saved["runs"]} == set(METHODS)
  for run in saved["runs"]:
    steps = saved["config"]["rl_steps"]
    assert len(run["reward_curve"]) == len(run["grad_norm_curve"]) == steps
    for key in ("final_reward", "max_grad_norm", "median_grad_norm",
                "collapsed", "seed"):
      assert key in run
    assert run["max_grad_norm"] >= run["median_grad_norm"] > 0
    # The summary fields are the 10%-window rule applied to the saved curve.
    curve = np.asarray(run["reward_curve"])
    window = max(1, round(0.1 * len(curve)))
    final = curve[-window:].mean()
    best = max(curve[i:i + window].mean()
               for i in range(len(curve) - window + 1))
    assert run["final_reward"] == pytest.approx(final)
    assert run["collapsed"] == bool(final < 0.5 * best)
    norms = np.asarray(run["grad_norm_curve"])
    np.testing.assert_allclose(run["max_grad_norm"],
                               np.max(norms[np.isfinite(norms)]), rtol=1e-6)
  # Both methods see the same rollouts at step 0 (same seed, same warm start):
  # only the loss differs.
  by_method = {r["method"]: r for r in saved["runs"]}
  for curve in ("reward_curve", "logratio_std_curve"):
    assert by_method["grpo"][curve][0] == pytest.approx(
        by_method["stabledrl"][curve][0], rel=1e-6)


def test_sweep_writes_summary_and_plot(tmp_path):
  result = dllm.main(["--quick", "--steps", "2", "--warm-steps", "1",
                      "--workers", "1", "--sweep-sigma", "0,1",
                      "--out", str(tmp_path)])
  assert (tmp_path / "sweep_sigma.png").stat().st_size > 0
  with open(tmp_path / "sweep_sigma.json") as f:
    saved = json.load(f)
  assert saved["config"]["sweep"] == "sigma"
  assert saved["config"]["sweep_values"] == [0.0, 1.0]
  assert saved["config"]["masks"] == "coupled"
  assert set(saved["summary"]) == {"0", "1"}
  assert set(result["summary"]["1"]) == set(METHODS)
  assert {(r["method"], r["logratio_noise"]) for r in saved["runs"]} == {
      (m, s) for m in METHODS for s in (0.0, 1.0)}
  # --replot redraws the figure from the JSON alone.
  (tmp_path / "sweep_sigma.png").unlink()
  dllm.main(["--replot", "--out", str(tmp_path)])
  assert (tmp_path / "sweep_sigma.png").stat().st_size > 0
