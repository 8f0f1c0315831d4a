"""Tests of the toy diffusion-LM RL study (examples/dllm_rl.py, examples/dllm)."""

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
pytestmark = [pytest.mark.slow, pytest.mark.examples]

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


# Imported under their own names from examples/, so that the spawned worker
# processes of the default (two-worker) path can import them too.
if str(EXAMPLES) not in sys.path:
  sys.path.insert(0, str(EXAMPLES))
study = importlib.import_module("dllm_rl")
config = importlib.import_module("dllm.config")
model = importlib.import_module("dllm.model")
rl_step = importlib.import_module("dllm.rl_step")
sampler = importlib.import_module("dllm.sampler")

METHODS = config.METHODS


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
  return config.Config(**base)


# ---------------------------------------------- token log-likelihoods, ELBO


def test_token_logp_and_library_elbo_match_numpy():
  # The model's per-token log-likelihoods under given masks, fed to the
  # library's 1/t ELBO (the warm start's objective), against NumPy.
  rng = np.random.default_rng(0)
  length, vocab, batch, num_mc = 3, 4, 2, 2
  logits = rng.normal(size=(length, vocab)).astype(np.float32)
  completions = np.array([[0, 3, 1], [2, 2, 0]])
  prompts = np.zeros((batch, length), np.int32)
  t = np.array([[0.5, 0.25], [0.8, 0.1]], np.float32)
  masked = np.array([[[1, 0, 1], [0, 0, 0]],
                     [[1, 1, 1], [0, 1, 0]]], bool)
  logp = model.token_logp(fixed_logits_apply, jnp.asarray(logits),
                          jnp.asarray(prompts), jnp.asarray(completions),
                          jnp.asarray(masked), vocab)
  chex.assert_shape(logp, (num_mc, batch, length))
  want_logp = np_log_softmax(logits)[np.arange(length), completions]
  np.testing.assert_allclose(np.asarray(logp),
                             np.broadcast_to(want_logp, masked.shape),
                             rtol=1e-5)
  got = stabledrl_jax.diffusion_elbo(
      logp, stabledrl_jax.DiffusionMasks(jnp.asarray(masked), jnp.asarray(t)),
      jnp.ones((batch, length)), weighting="inverse_t")
  want = np.zeros(batch)
  for b in range(batch):
    for m in range(num_mc):
      total = sum(want_logp[b, i] for i in range(length) if masked[m, b, i])
      want[b] += total / t[m, b] / num_mc
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_token_logp_reads_the_masked_input():
  # A model that sees MASK tokens: it predicts token 1 at a position when
  # that position is masked and token 2 otherwise; the log-likelihood of the
  # true token (1 everywhere) is high exactly where the input was masked.
  mask_id = 10

  def apply(params, tokens):
    del params
    is_masked = tokens[:, 2:] == mask_id
    high = jnp.where(is_masked, 1, 2)
    return 8.0 * jax.nn.one_hot(high, 10)

  masked = jnp.array([[[True, False]], [[False, True]]])
  logp = model.token_logp(apply, None, jnp.zeros((1, 2), jnp.int32),
                          jnp.ones((1, 2), jnp.int32), masked, mask_id)
  high = np_log_softmax(8.0 * np.eye(10)[1])[1]
  low = np_log_softmax(8.0 * np.eye(10)[2])[1]
  np.testing.assert_allclose(np.asarray(logp)[:, 0],
                             [[high, low], [low, high]], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- sampler


def test_unmask_schedule():
  assert sampler.unmask_schedule(5, 5) == (1, 2, 3, 4, 5)
  assert sampler.unmask_schedule(5, 2) == (2, 5)  # round(2.5) is 2 in Python
  assert sampler.unmask_schedule(4, 1) == (4,)


def test_sampler_reveals_everything_and_follows_sharp_logits():
  cfg = small_config(length=4, unmask_steps=3, temperature=1e-3)
  target = np.array([7, 2, 9, 0])
  logits = np.full((4, 10), -5.0, np.float32)
  logits[np.arange(4), target] = 5.0
  prompts = jnp.zeros((6, 4), jnp.int32)
  out = sampler.sample_completions(fixed_logits_apply, jnp.asarray(logits),
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

  out = sampler.sample_completions(apply, None, jax.random.key(1),
                                jnp.zeros((2, 3), jnp.int32), cfg)
  np.testing.assert_array_equal(np.asarray(out), [[0, 0, 6], [0, 0, 6]])


def test_sampler_temperature_draws_match_probabilities():
  cfg = small_config(length=1, unmask_steps=1, temperature=2.0)
  logits = np.array([[0.0, 1.0, 2.0] + [-30.0] * 7], np.float32)
  out = sampler.sample_completions(fixed_logits_apply, jnp.asarray(logits),
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
      np.asarray(sampler.sort_reward(prompts, completions)), [2 / 3, 2 / 3])


def test_grpo_policy_loss_is_the_sequence_level_clip_unbounded_for_negative_a():
  # The study's GRPO is the library's grpo_policy_loss on [B] sequence
  # log-likelihoods: -(1/B) sum_i min(r_i A_i, clip(r_i, 0.8, 1.2) A_i).
  cfg = small_config()
  logp = np.array([0.0, 0.1, -3.0, 4.0], np.float32)
  old = np.array([0.0, -0.5, -1.0, 0.0], np.float32)
  adv = np.array([1.0, 1.0, -1.0, -2.0], np.float32)
  r = np.exp(logp.astype(np.float64) - old)
  want = -np.mean(np.minimum(r * adv, np.clip(r, 0.8, 1.2) * adv))

  def loss(x):
    return rl_step.policy_loss("grpo", x, jnp.asarray(old), jnp.asarray(adv),
                               cfg, ratio_logp=x)

  np.testing.assert_allclose(float(loss(jnp.asarray(logp))), want, rtol=1e-5)
  # Gradient w.r.t. logp: -(1/B) r A where the unclipped term is the min or
  # r is inside [1 - eps, 1 + eps]; 0 where the clipped constant wins.
  grad = np.asarray(jax.grad(loss)(jnp.asarray(logp)))
  live = (r * adv < np.clip(r, 0.8, 1.2) * adv) | ((r >= 0.8) & (r <= 1.2))
  np.testing.assert_allclose(grad, np.where(live, -r * adv / 4, 0.0),
                             rtol=1e-5)
  # Sample 3 (A < 0, r = e^4) passes the conditional clip: gradient ~ r.
  assert live.tolist() == [True, False, False, True]
  assert grad[3] == pytest.approx(2 * np.exp(4) / 4, rel=1e-5)


def test_stabledrl_loss_takes_its_ratio_from_ratio_logp():
  # Weights: softmax within each group of min(ratio_logp - old, log 5);
  # gradient: -w A / num_groups through seq_logp only.
  cfg = small_config(num_prompts=2, group_size=2)
  seq = np.array([-1.0, -2.0, -0.5, -3.0], np.float32)
  ratio = np.array([0.0, 3.0, -1.0, 0.5], np.float32)
  old = np.array([0.0, 0.0, 0.0, 0.0], np.float32)
  adv = np.array([1.0, -1.0, 0.5, -0.5], np.float32)
  log_w = np.minimum(ratio - old, np.log(5.0)).reshape(2, 2)
  w = (np.exp(log_w) / np.exp(log_w).sum(1, keepdims=True)).ravel()
  want = -np.sum(w * adv * seq) / 2

  def loss(x):
    return rl_step.policy_loss("stabledrl", x, jnp.asarray(old),
                               jnp.asarray(adv), cfg,
                               ratio_logp=jnp.asarray(ratio))

  np.testing.assert_allclose(float(loss(jnp.asarray(seq))), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.grad(loss)(jnp.asarray(seq))),
                             -w * adv / 2, rtol=1e-5)


def test_collapse_stats_follow_the_ten_percent_rule():
  curve = [0.2] * 10 + [0.8] * 10 + [0.3] * 80
  final, best, collapsed = study.collapse_stats(curve)
  assert final == pytest.approx(0.3) and best == pytest.approx(0.8)
  assert collapsed  # 0.3 < 0.8 / 2
  final, best, collapsed = study.collapse_stats([0.5] * 50 + [0.45] * 50)
  assert best == pytest.approx(0.5) and not collapsed


# --------------------------------------------------------------------- RL step


@pytest.mark.parametrize("method,estimator", [
    ("grpo", {}),
    ("stabledrl", {}),
    # The sandwich gradient with complementary masks and the reference's
    # per-token-mean ELBO.
    ("stabledrl", {"coupling": "complementary", "weighting": "mean",
                   "seq_logp": "sandwich"}),
])
def test_rl_step_runs_two_steps(method, estimator):
  cfg = small_config(masks="independent", num_mc=2, logratio_noise=0.3,
                     **estimator)
  apply, params = model.make_model(cfg, 0)
  step = rl_step.make_rl_step(apply, cfg, method)
  opt_state = rl_step.make_optimizer(cfg).init(params)
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
  apply, params = model.make_model(cfg, 0)
  step = rl_step.make_rl_step(apply, cfg, "grpo")
  opt_state = rl_step.make_optimizer(cfg).init(params)
  _, _, metrics = step(params, opt_state, jax.random.key(0))
  assert float(metrics["logratio_std"]) == 0.0
  assert float(metrics["max_log_ratio"]) == 0.0
  assert float(metrics["bypass_fraction"]) == 0.0


def test_bad_config_and_method_raise():
  with pytest.raises(ValueError, match="masks"):
    config.Config(masks="shared")
  with pytest.raises(ValueError, match="num_mc"):
    config.Config(num_mc=0)
  with pytest.raises(ValueError, match="logratio_noise"):
    config.Config(logratio_noise=-1.0)
  with pytest.raises(ValueError, match="t_min"):
    config.Config(t_min=0.0)
  with pytest.raises(ValueError, match="coupling"):
    config.Config(coupling="antithetic")
  with pytest.raises(ValueError, match="num_mc must be even"):
    config.Config(coupling="complementary", num_mc=3)
  with pytest.raises(ValueError, match="weighting"):
    config.Config(weighting="sum")
  with pytest.raises(ValueError, match="seq_logp"):
    config.Config(seq_logp="eubo")
  with pytest.raises(ValueError, match="eubo_mix"):
    config.Config(eubo_mix=1.5)
  cfg = small_config()
  apply, _ = model.make_model(cfg, 0)
  with pytest.raises(ValueError, match="method"):
    rl_step.make_rl_step(apply, cfg, "ppo")
  with pytest.raises(ValueError, match="sandwich"):
    rl_step.make_rl_step(apply, small_config(seq_logp="sandwich"), "grpo")
  with pytest.raises(ValueError, match="sweep-estimators"):
    study.main(["--sweep-estimators", "independent,bogus", "--steps", "1",
                "--warm-steps", "0", "--workers", "1", "--out", "/nonexistent"])


def test_quick_run_never_writes_into_the_committed_study():
  assert study.parse_args([]).out == study.STUDY_DIR
  out = pathlib.Path(study.parse_args(["--quick"]).out)
  assert out.is_dir() and not any(out.iterdir())
  assert out.resolve() != pathlib.Path(study.STUDY_DIR).resolve()
  out.rmdir()
  assert study.parse_args(["--quick", "--out", "x"]).out == "x"


# ------------------------------------------------------------------ end to end


def test_quick_run_end_to_end(tmp_path):
  # The default path: two spawned worker processes.
  methods = ",".join(METHODS)
  result = study.main(["--quick", "--workers", "2", "--methods", methods,
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
  result = study.main(["--quick", "--steps", "2", "--warm-steps", "1",
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
  study.main(["--replot", "--out", str(tmp_path)])
  assert (tmp_path / "sweep_sigma.png").stat().st_size > 0


def test_estimator_sweep_table_and_replot(tmp_path, capsys):
  result = study.main(["--steps", "2", "--warm-steps", "1", "--seeds", "1",
                       "--workers", "1", "--methods", "grpo,stabledrl",
                       "--sweep-estimators", "shared,mean-sandwich",
                       "--out", str(tmp_path)])
  with open(tmp_path / "sweep_estimators.json") as f:
    saved = json.load(f)
  assert saved["config"]["sweep_values"] == ["shared", "mean-sandwich"]
  assert saved["config"]["rows"]["mean-sandwich"] == study.ESTIMATOR_ROWS[
      "mean-sandwich"]
  # GRPO has no sandwich row: its ratio and gradient come from one estimate.
  assert sorted((r["row"], r["method"]) for r in saved["runs"]) == [
      ("mean-sandwich", "stabledrl"), ("shared", "grpo"),
      ("shared", "stabledrl")]
  for run in saved["runs"]:
    row = study.ESTIMATOR_ROWS[run["row"]]
    assert run["num_mc"] == row["num_mc"] == 2
    assert run["masks"] == row.get("masks", "independent")
    assert run["weighting"] == row.get("weighting", "inverse_t")
    assert run["seq_logp"] == row.get("seq_logp", "elbo")
  by_row = {(r["row"], r["method"]): r for r in saved["runs"]}
  # Shared masks and unchanged parameters: the first optimizer step sees a
  # log-ratio of 0 up to float32 rounding (the old and new ELBOs are
  # compiled in different fusions); fresh masks give a spread.
  assert by_row[("shared", "stabledrl")]["logratio_std_curve"][0] < 1e-5
  assert by_row[("mean-sandwich", "stabledrl")]["logratio_std_curve"][0] > 0
  assert set(result["summary"]["shared"]) == {"grpo", "stabledrl"}
  assert set(result["summary"]["mean-sandwich"]) == {"stabledrl"}
  # The table has one row per sweep row, read back from the JSON.
  capsys.readouterr()
  study.main(["--table", "--out", str(tmp_path)])
  table = capsys.readouterr().out.strip().splitlines()
  assert [line.split(" | ")[0] for line in table[2:]] == ["| shared",
                                                          "| mean-sandwich"]
  spike = by_row[("shared", "stabledrl")]["spike_over_median"]
  assert f"{spike:.1f}×" in table[2]
  for name in ("sweep_estimators.png", "sweep_estimators_curves.png"):
    (tmp_path / name).unlink(missing_ok=True)
  study.main(["--replot", "--out", str(tmp_path)])
  for name in ("sweep_estimators.png", "sweep_estimators_curves.png"):
    assert (tmp_path / name).stat().st_size > 0
