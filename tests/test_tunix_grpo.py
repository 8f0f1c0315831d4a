"""Integration with tunix's GRPOLearner: examples/tunix_grpo.py for 3 steps.

Needs google-tunix (``pip install -e ".[tunix]"``); skipped without it.
"""

import math
import os
import sys

import numpy as np
import pytest

if os.environ.get("REQUIRE_TUNIX") == "1":  # CI's tunix step: never skip
  import tunix.rl.grpo.grpo_learner  # noqa: F401
else:
  pytest.importorskip(
      "tunix.rl.grpo.grpo_learner",
      reason="google-tunix is not installed (pip install -e '.[tunix]')")

import stabledrl_jax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples"))
import tunix_grpo  # noqa: E402

STEPS = 3


@pytest.fixture
def loss_calls(monkeypatch):
  """Counts (traced) calls of stabledrl_policy_loss made by the tunix loss."""
  calls = []
  original = stabledrl_jax.stabledrl_policy_loss

  def counting(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(stabledrl_jax, "stabledrl_policy_loss", counting)
  return calls


def _run(tmp_path, method, bad_reward):
  results = tunix_grpo.main([
      "--steps", str(STEPS), "--methods", method, "--bad-step", "1",
      "--bad-reward", bad_reward, "--max-norm", "1e-3", "--no-progress",
      "--log-dir", str(tmp_path)])
  return results[method]["steps"]


def _check_norms_match_tunix_log(steps):
  for r in steps:
    if math.isfinite(r["skip_spikes/global_norm"]):
      np.testing.assert_allclose(r["skip_spikes/global_norm"],
                                 r["tunix/grad_norm"], rtol=1e-5)


def test_stabledrl_skips_the_inf_reward_step(tmp_path, loss_calls):
  steps = _run(tmp_path, "stabledrl", "inf")
  assert loss_calls, "the registered StableDRL loss was not used"
  assert [r["step"] for r in steps] == [1, 2, 3]
  assert all(r["params_finite"] for r in steps)
  # Step 2 had the inf reward: NaN advantages, NaN gradient, skipped.
  assert [r["skip_spikes/num_nonfinite"] for r in steps] == [0, 1, 1]
  assert [r["skip_spikes/num_skipped"] for r in steps] == [0, 1, 1]
  # max_norm 1e-3: every step that is taken is clipped.
  assert [r["clip/num_clipped"] for r in steps] == [1, 1, 2]
  assert math.isnan(steps[1]["skip_spikes/global_norm"])
  # The skipped step does not advance the injected schedule.
  lrs = [r["hyperparams/learning_rate"] for r in steps]
  assert lrs[1] == lrs[0] < lrs[2]
  _check_norms_match_tunix_log(steps)


def test_stabledrl_with_a_nan_reward(tmp_path, loss_calls):
  steps = _run(tmp_path, "stabledrl", "nan")
  assert loss_calls
  assert all(r["params_finite"] for r in steps)
  # tunix 0.1.7 sums rewards with np.nansum: the NaN reward becomes 0, so the
  # gradient stays finite and no step is skipped.
  assert steps[-1]["skip_spikes/num_nonfinite"] == 0
  assert [r["clip/num_clipped"] for r in steps] == [1, 2, 3]
  _check_norms_match_tunix_log(steps)


def test_tunix_baseline_writes_nan_into_the_params(tmp_path):
  steps = _run(tmp_path, "tunix", "inf")
  assert steps[0]["params_finite"]
  assert not steps[1]["params_finite"]
  assert math.isnan(steps[1]["tunix/grad_norm"])
  assert "tunix/learning_rate" not in steps[0]  # hidden behind EmptyState



def test_tunix_cli_drops_max_grad_norm():
  """tunix's CLI builds the optimizer from the keys optax's function takes:
  a ``max_grad_norm`` key is dropped without a word (so clip in the
  optimizer you pass, as the example does)."""
  import jax.numpy as jnp
  from tunix.cli import config as cli_config

  hp = cli_config.HyperParameters.__new__(cli_config.HyperParameters)
  hp.config = {"rl_training_config": {"actor_optimizer_config": {
      "opt_type": "sgd", "learning_rate": 1.0, "max_grad_norm": 1.0}}}
  tx = hp.create_optimizer("rl_training_config", "actor_optimizer_config")
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  assert "max_grad_norm" not in state.hyperparams
  # A gradient of norm 500 comes out unclipped: sgd(1.0) gives -g.
  updates, _ = tx.update({"w": jnp.array([300.0, 400.0])}, state, params)
  np.testing.assert_array_equal(updates["w"], [-300.0, -400.0])
