"""clip_metrics finds our states in any nesting and reports exact keys."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import stabledrl_jax as sd

CLIP_KEYS = {"global_norm", "scale", "num_clipped", "num_nonfinite"}
SKIP_KEYS = {"global_norm", "threshold", "skipped", "num_skipped",
             "num_nonfinite", "consecutive_skips"}


def _grads(*values):
  """One gradient per value: a two-leaf tree whose norm is exactly ``value``."""
  return [{"a": jnp.array([0.6 * v], jnp.float32),
           "b": jnp.array([[0.8 * v]], jnp.float32)} for v in values]


def _params():
  return {"a": jnp.zeros(1, jnp.float32), "b": jnp.zeros((1, 1), jnp.float32)}


def _run(tx, grads):
  params = _params()
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return state


def _np(metrics):
  return {k: np.asarray(v) for k, v in metrics.items()}


def test_single_clip_state_bare_keys_and_values():
  state = _run(optax.chain(sd.unconditional_clip(2.0), optax.sgd(0.1)),
               _grads(1.0, 5.0, float("nan"), 4.0))
  m = _np(sd.clip_metrics(state))
  assert set(m) == CLIP_KEYS
  assert list(m) == sorted(m)
  np.testing.assert_allclose(m["global_norm"], 4.0, rtol=1e-6)
  np.testing.assert_allclose(m["scale"], 0.5, rtol=1e-6)
  assert m["num_clipped"] == 2 and m["num_clipped"].dtype == np.int32
  assert m["num_nonfinite"] == 1


def test_conditional_clip_reports_like_unconditional():
  state = _run(sd.conditional_clip(2.0), _grads(8.0))
  m = _np(sd.clip_metrics(state))
  assert set(m) == CLIP_KEYS
  np.testing.assert_allclose(m["scale"], 0.25, rtol=1e-6)


def test_zscore_metrics_match_numpy_statistics():
  norms = [1.0, 3.0, 2.0]
  state = _run(sd.zscore_clip(warmup_steps=5, max_norm=2.5), _grads(*norms))
  m = _np(sd.clip_metrics(state))
  assert set(m) == CLIP_KEYS | {"threshold", "norm_mean", "norm_std"}
  # Warm-up: plain mean and population std of the norms seen.
  np.testing.assert_allclose(m["norm_mean"], np.mean(norms), rtol=1e-6)
  np.testing.assert_allclose(m["norm_std"], np.std(norms), rtol=1e-6)
  np.testing.assert_allclose(m["threshold"], 2.5)
  assert m["num_clipped"] == 1  # only 3.0 exceeded max_norm


def test_quantile_metrics():
  state = _run(sd.quantile_clip(quantile=0.5, history=8, min_history=2),
               _grads(1.0, 3.0, 10.0))
  m = _np(sd.clip_metrics(state))
  assert set(m) == CLIP_KEYS | {"threshold"}
  np.testing.assert_allclose(m["threshold"], np.quantile([1.0, 3.0], 0.5))
  np.testing.assert_allclose(m["scale"], 2.0 / 10.0, rtol=1e-6)
  assert m["num_clipped"] == 1


def test_skip_spikes_alone():
  state = _run(sd.skip_spikes(optax.sgd(0.1), max_norm=5.0),
               _grads(1.0, 9.0, float("inf")))
  m = _np(sd.clip_metrics(state))
  assert set(m) == SKIP_KEYS
  assert m["skipped"] == 1 and m["skipped"].dtype == np.int32
  assert m["num_skipped"] == 2
  assert m["num_nonfinite"] == 1
  assert m["consecutive_skips"] == 2
  np.testing.assert_allclose(m["threshold"], 5.0)


@pytest.mark.slow
def test_several_kinds_are_prefixed_and_hyperparams_reported():
  schedule = optax.linear_schedule(1.0, 0.0, transition_steps=10)
  tx = sd.skip_spikes(
      optax.chain(sd.unconditional_clip(1.0),
                  optax.inject_hyperparams(optax.adamw)(
                      learning_rate=schedule, weight_decay=0.5)),
      max_norm=6.0)
  state = _run(tx, _grads(2.0, 3.0, 7.0))
  m = _np(sd.clip_metrics(state))
  expected = ({f"skip_spikes/{k}" for k in SKIP_KEYS}
              | {f"clip/{k}" for k in CLIP_KEYS}
              | {f"hyperparams/{k}" for k in
                 ("learning_rate", "b1", "b2", "eps", "eps_root",
                  "weight_decay")})
  assert set(m) == expected
  np.testing.assert_allclose(m["skip_spikes/global_norm"], 7.0, rtol=1e-6)
  assert m["skip_spikes/num_skipped"] == 1
  # The inner clip last saw the second step (the skipped one is rolled back).
  np.testing.assert_allclose(m["clip/global_norm"], 3.0, rtol=1e-6)
  assert m["clip/num_clipped"] == 2
  # Two steps taken: the schedule's value at count 1, as injected last.
  np.testing.assert_allclose(m["hyperparams/learning_rate"], 0.9, rtol=1e-6)
  np.testing.assert_allclose(m["hyperparams/weight_decay"], 0.5)


def test_hyperparams_do_not_change_the_bare_keys():
  tx = optax.chain(sd.unconditional_clip(1.0),
                   optax.inject_hyperparams(optax.sgd)(learning_rate=0.3))
  m = sd.clip_metrics(_run(tx, _grads(2.0)))
  assert set(m) == CLIP_KEYS | {"hyperparams/learning_rate"}


def test_repeated_kind_is_numbered_in_order():
  # Inner clip at 1.0 sees the output of the outer clip at 3.0.
  tx = optax.chain(sd.unconditional_clip(3.0), sd.unconditional_clip(1.0),
                   optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
                   optax.inject_hyperparams(optax.scale)(step_size=2.0))
  m = _np(sd.clip_metrics(_run(tx, _grads(6.0))))
  assert set(m) == ({f"clip_{i}/{k}" for i in (0, 1) for k in CLIP_KEYS}
                    | {"hyperparams_0/learning_rate",
                       "hyperparams_1/step_size"})
  np.testing.assert_allclose(m["clip_0/global_norm"], 6.0, rtol=1e-6)
  np.testing.assert_allclose(m["clip_1/global_norm"], 3.0, rtol=1e-6)
  np.testing.assert_allclose(m["clip_1/scale"], 1.0 / 3.0, rtol=1e-6)


def test_inject_hyperparams_around_our_clip():
  tx = optax.inject_hyperparams(sd.unconditional_clip)(max_norm=0.5)
  m = _np(sd.clip_metrics(_run(tx, _grads(2.0))))
  assert set(m) == CLIP_KEYS | {"hyperparams/max_norm"}
  np.testing.assert_allclose(m["scale"], 0.25, rtol=1e-6)
  np.testing.assert_allclose(m["hyperparams/max_norm"], 0.5)


@pytest.mark.slow
def test_multi_steps_and_multi_transform():
  tx = optax.MultiSteps(
      optax.chain(sd.zscore_clip(warmup_steps=3), optax.sgd(0.1)),
      every_k_schedule=2)
  state = _run(tx, _grads(1.0, 3.0, 5.0, 7.0))
  m = _np(sd.clip_metrics(state))
  assert set(m) == CLIP_KEYS | {"threshold", "norm_mean", "norm_std"}
  # The inner clip saw the two accumulated means: 2.0 and 6.0.
  np.testing.assert_allclose(m["global_norm"], 6.0, rtol=1e-6)
  np.testing.assert_allclose(m["norm_mean"], 4.0, rtol=1e-6)

  tx = optax.multi_transform(
      {"x": optax.chain(sd.unconditional_clip(1.0), optax.sgd(0.1)),
       "y": sd.quantile_clip()},
      {"a": "x", "b": "y"})
  m = sd.clip_metrics(_run(tx, _grads(5.0)))
  assert {k.split("/")[0] for k in m} == {"clip", "quantile_clip"}
  np.testing.assert_allclose(m["clip/global_norm"], 3.0, rtol=1e-6)


def test_no_state_of_ours_gives_empty_dict():
  assert sd.clip_metrics(_run(optax.adamw(1e-3), _grads(1.0))) == {}
  assert sd.clip_metrics(None) == {}
  assert sd.clip_metrics(()) == {}


@pytest.mark.slow
def test_under_jit_matches_eager():
  tx = sd.skip_spikes(optax.chain(sd.zscore_clip(warmup_steps=1),
                                  sd.unconditional_clip(2.0),
                                  optax.adam(1e-2)), z_thresh=3.0,
                      min_history=2)
  params = _params()
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state, sd.clip_metrics(state)

  for g in _grads(1.0, 2.0, 1.5, 40.0):
    params, state, jit_metrics = step(params, state, g)
  eager = _np(sd.clip_metrics(state))
  jitted = _np(jit_metrics)
  assert set(eager) == set(jitted)
  assert "skip_spikes/num_skipped" in eager and "clip/scale" in eager
  for k in eager:
    np.testing.assert_array_equal(jitted[k], eager[k], err_msg=k)
  assert eager["skip_spikes/num_skipped"] == 1


class _Model(nnx.Module):

  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 2, rngs=rngs)

  def __call__(self, x):
    return self.linear(x)


def _nnx_optimizer(tx):
  model = _Model(nnx.Rngs(0))
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


@pytest.mark.slow
@pytest.mark.parametrize("jit", [False, True])
def test_nnx_optimizer_every_view(jit):
  tx = sd.skip_spikes(
      optax.chain(sd.unconditional_clip(0.1),
                  optax.inject_hyperparams(optax.adamw)(learning_rate=0.01)),
      max_norm=1e6)
  model, optimizer = _nnx_optimizer(tx)
  x = jnp.arange(12.0).reshape(4, 3)

  def train_step(model, optimizer, x):
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    optimizer.update(model, grads)
    return sd.clip_metrics(optimizer)

  if jit:
    train_step = nnx.jit(train_step)
  for _ in range(2):
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    step_metrics = _np(train_step(model, optimizer, x))
  views = {
      "optimizer": sd.clip_metrics(optimizer),
      "opt_state": sd.clip_metrics(optimizer.opt_state),
      "nnx.state": sd.clip_metrics(nnx.state(optimizer)),
      "nnx.state(opt_state)": sd.clip_metrics(
          nnx.state(optimizer, nnx.optimizer.OptState)),
      "jit(nnx.state)": jax.jit(sd.clip_metrics)(nnx.state(optimizer)),
  }
  assert "clip/num_clipped" in step_metrics
  assert "hyperparams/learning_rate" in step_metrics
  for name, m in views.items():
    m = _np(m)
    assert set(m) == set(step_metrics), name
    for k in m:
      np.testing.assert_array_equal(m[k], step_metrics[k], err_msg=name)
  assert step_metrics["clip/num_clipped"] == 2
  np.testing.assert_allclose(step_metrics["hyperparams/learning_rate"], 0.01)
  # The reported pre-clip norm is the norm of the last gradient.
  leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(grads)]
  np.testing.assert_allclose(
      step_metrics["skip_spikes/global_norm"],
      np.sqrt(sum(np.sum(v * v) for v in leaves)), rtol=1e-4)


def test_trainer_object_with_optimizer_attribute():
  _, optimizer = _nnx_optimizer(
      optax.chain(sd.unconditional_clip(1.0), optax.sgd(0.1)))

  class Trainer:
    pass

  trainer = Trainer()
  trainer.optimizer = optimizer
  assert set(sd.clip_metrics(trainer)) == CLIP_KEYS


def test_plain_dict_state_from_a_checkpoint():
  # Restoring without a target turns named tuples into field-name mappings.
  tx = sd.skip_spikes(optax.chain(sd.quantile_clip(history=4, min_history=1),
                                  optax.sgd(0.1)), max_norm=3.0)
  state = _run(tx, _grads(1.0, 5.0))

  def to_dict(node):
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      return {k: to_dict(v) for k, v in node._asdict().items()}
    if isinstance(node, tuple):
      return {str(i): to_dict(v) for i, v in enumerate(node)}
    return node

  expected = _np(sd.clip_metrics(state))
  got = _np(sd.clip_metrics(to_dict(state)))
  assert set(got) == set(expected)
  assert "quantile_clip/threshold" in got
  for k in got:
    np.testing.assert_array_equal(got[k], expected[k])
