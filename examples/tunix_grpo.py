"""StableDRL and our clipping inside tunix's GRPO, against tunix's own GRPO.

tunix (``pip install google-tunix``) is the JAX-native post-training library;
its ``GRPOLearner`` takes any ``optax.GradientTransformation`` as the actor
optimizer (and wraps it in ``nnx.Optimizer``) and any registered policy loss.
This script runs tunix's GRPO twice on CPU, everything identical but two
lines:

* ``tunix``: tunix's ``"grpo"`` loss, ``optax.chain(optax.clip_by_global_norm,
  adamw)``;
* ``stabledrl``: :func:`stabledrl_jax.stabledrl_policy_loss` registered as the
  tunix policy loss ``"stabledrl"``, and ``skip_spikes(chain(
  unconditional_clip, adamw))`` as the actor optimizer.

The model is tunix's own test model (``tunix.tests.test_common.ToyTransformer``
with ``MockVocab``, shipped in the wheel; no download), sampled with
``rollout_engine="vanilla"``. The toy reward is verifiable: the fraction of
completion words that are ``"hello"``. At ``--nan-step`` one rollout's reward is
NaN (a broken reward model, a division by zero in a verifier), in both runs.

Per step it prints the mean reward and the pre-clip gradient norm as tunix
logs them (through a tunix metrics backend), and our counters read with
:func:`stabledrl_jax.clip_metrics` from the trainer's ``nnx.Optimizer``.

Run::

  pip install -e ".[tunix]"
  python examples/tunix_grpo.py   # both runs: about 45 s of CPU time

The same two changes in a real tunix config (model from a checkpoint, TPU
mesh; only the two marked lines differ from tunix's GRPO recipe)::

  import optax, stabledrl_jax as sdrl
  # The "stabledrl" policy loss: stabledrl_loss_fn below, copied into your
  # project (its decorator registers it with tunix on import).
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl.grpo import grpo_learner

  mesh = jax.make_mesh((1, 4), ("fsdp", "tp"))          # e.g. a v5e-4
  actor = ...  # e.g. tunix.models.gemma3.params.create_model_from_checkpoint
  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={r: mesh for r in rl_cluster_lib.Role},
      rollout_engine="vanilla",
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=sdrl.skip_spikes(optax.chain(       # change 1
              sdrl.unconditional_clip(1.0), optax.adamw(lr_schedule)),
              z_thresh=6.0),
          max_steps=1000, ...),
      rollout_config=...)
  learner = grpo_learner.GRPOLearner(
      rl_cluster=rl_cluster_lib.RLCluster(
          actor=actor, reference=reference, tokenizer=tokenizer,
          cluster_config=cluster_config),
      algo_config=grpo_learner.GRPOConfig(
          num_generations=8, beta=0.0,
          policy_loss_fn="stabledrl"),                     # change 2
      reward_fns=[...])
  learner.train(train_ds)
  # Logging: sdrl.clip_metrics(learner.rl_cluster.actor_trainer.optimizer)

Requires ``google-tunix`` (see the ``tunix`` extra in pyproject.toml).
"""

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from tunix.rl import common as tunix_common
from tunix.rl import function_registry
from tunix.rl import rl_cluster as rl_cluster_lib
from tunix.rl.grpo import grpo_learner
from tunix.rl.rollout import base_rollout
from tunix.sft import hooks
from tunix.sft import metrics_logger
from tunix.tests import test_common

import stabledrl_jax as sdrl

TARGET_WORD = "hello"
PROMPTS = ["input string", "hello world", "My name", "hello there",
           "Tunix library", "distributed training", "PT optimizer",
           "name is"]
MAX_RATIO = 5.0  # StableDRL's ratio cap C (the reference code's value)


@function_registry.register_policy_loss_fn("stabledrl")
def stabledrl_loss_fn(model, train_example, algo_config, pad_id, eos_id,
                      **kwargs):
  """tunix policy loss: :func:`stabledrl_jax.stabledrl_policy_loss`.

  Sequence log-likelihoods are the sums of the completion tokens' log-probs;
  each prompt's ``num_generations`` completions (contiguous in tunix's batch)
  form one self-normalized group. With ``num_iterations=1`` (tunix's default)
  tunix passes no old log-probs: the ratio is 1 and the weights are uniform
  within a group; with ``num_iterations > 1`` the ratio cap and the
  self-normalization act on the later iterations.

  Returns:
    ``(loss, aux)``; ``aux`` has the keys GRPOLearner logs (``kl`` = 0: no
    reference term; ``pg_clipfrac`` = share of ratios capped at
    ``MAX_RATIO``) and our loss metrics.
  """
  del kwargs
  graphdef, state = nnx.split(model)
  per_token_logps = tunix_common.compute_per_token_logps(
      graphdef, state,
      prompt_tokens=train_example.prompt_ids,
      completion_tokens=train_example.completion_ids,
      pad_id=pad_id, eos_id=eos_id, stop_gradient=False,
      temperature=algo_config.temperature)
  mask = train_example.completion_mask.astype(jnp.float32)
  seq_logp = jnp.sum(per_token_logps.astype(jnp.float32) * mask, axis=-1)
  if train_example.old_per_token_logps is None:  # on-policy: ratio 1
    old_seq_logp = jax.lax.stop_gradient(seq_logp)
  else:
    old_seq_logp = jnp.sum(
        train_example.old_per_token_logps.astype(jnp.float32) * mask, axis=-1)
  loss, metrics = sdrl.stabledrl_policy_loss(
      seq_logp, old_seq_logp,
      train_example.advantages.astype(jnp.float32),
      max_ratio=MAX_RATIO, group_size=algo_config.num_generations)
  aux = {"kl": jnp.zeros((), jnp.float32),
         "pg_clipfrac": metrics["capped_fraction"], **metrics}
  return loss, aux


def make_reward_fn(bad_step: Optional[int], bad_value: float,
                   means: list[float]):
  """The toy reward; ``bad_value`` (NaN or inf) for the first rollout of call
  ``bad_step`` (0-based; one call per training step). Appends each call's
  mean toy reward (before the bad value is put in) to ``means``."""

  def reward_fn(prompts, completions, **kwargs):
    del prompts, kwargs
    rewards = []
    for text in completions:
      words = text.split()
      rewards.append(words.count(TARGET_WORD) / max(len(words), 1))
    means.append(float(np.mean(rewards)))
    if len(means) - 1 == bad_step:
      rewards[0] = bad_value
    return rewards

  return reward_fn


class _Recorder:
  """A tunix metrics backend that keeps every scalar tunix logs, by step."""

  def __init__(self):
    self.by_step = collections.defaultdict(dict)

  def log_scalar(self, event: str, value: Any, **kwargs):
    self.by_step[int(kwargs.get("step", -1))][event] = float(np.asarray(value))

  def close(self):
    pass


class _StepHook(hooks.TrainingHooks):
  """Reads our counters from the trainer's ``nnx.Optimizer``.

  tunix calls the hooks while the next step is already dispatched, so the
  records are keyed by the optimizer's own count of ``update`` calls (one per
  micro-batch; with gradient accumulation tunix wraps the optimizer in
  ``optax.MultiSteps``, which applies one update per ``accumulation`` calls).
  """

  def __init__(self, bar, accumulation: int):
    self.bar = bar
    self.accumulation = accumulation
    self.by_update = {}

  def _record(self, train_ctx):
    calls = int(train_ctx.optimizer.step[...])
    update = calls // self.accumulation
    if calls % self.accumulation or update == 0 or update in self.by_update:
      return
    params = jax.tree.leaves(nnx.state(train_ctx.model, nnx.Param))
    self.by_update[update] = {
        "params_finite": all(bool(jnp.all(jnp.isfinite(p))) for p in params),
        **{k: v.item() for k, v in
           sdrl.clip_metrics(train_ctx.optimizer).items()}}
    self.bar.update(update - self.bar.n)

  def on_train_step_start(self, train_ctx):
    self._record(train_ctx)

  def on_train_step_end(self, train_ctx, train_step, train_loss):
    self._record(train_ctx)

  def on_train_start(self, train_ctx):
    pass

  def on_train_end(self, train_ctx):
    self._record(train_ctx)

  def on_eval_step_start(self, train_ctx):
    pass

  def on_eval_step_end(self, train_ctx, eval_loss):
    pass


def make_optimizer(method: str, args) -> optax.GradientTransformation:
  """The only optimizer difference between the two runs."""
  # Learning-rate warm-up, injected so that it can be logged.
  schedule = optax.linear_schedule(0.0, args.learning_rate, 4)
  adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=schedule,
                                                weight_decay=0.0)
  if method == "tunix":
    return optax.chain(optax.clip_by_global_norm(args.max_norm), adamw)
  return sdrl.skip_spikes(
      optax.chain(sdrl.unconditional_clip(args.max_norm), adamw),
      z_thresh=args.z_thresh, window=16, min_history=4)


def run(method: str, args, show_progress: bool = True) -> dict:
  """One GRPO run; returns its per-step records and summary."""
  vocab = test_common.MockVocab()
  config = test_common.ModelConfig(vocab_size=vocab.GetPieceSize(),
                                   num_layers=args.num_layers)
  actor = test_common.ToyTransformer(config=config,
                                     rngs=nnx.Rngs(args.seed))
  reference = test_common.ToyTransformer(config=config,
                                         rngs=nnx.Rngs(args.seed))
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  recorder = _Recorder()
  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={role: mesh for role in (
          rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE,
          rl_cluster_lib.Role.ROLLOUT)},
      rollout_engine="vanilla",
      offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=make_optimizer(method, args),
          eval_every_n_steps=10**9,
          max_steps=args.steps,
          mini_batch_size=args.batch_size if args.micro_batch_size else None,
          train_micro_batch_size=args.micro_batch_size,
          metrics_logging_options=metrics_logger.MetricsLoggerOptions(
              log_dir=args.log_dir,
              backend_kwargs={"custom_backend": [lambda: recorder]}),
          pbar_description=None,
      ),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=args.max_tokens, max_prompt_length=8,
          kv_cache_size=64, temperature=1.0),
  )
  cluster = rl_cluster_lib.RLCluster(actor=actor, reference=reference,
                                     tokenizer=vocab,
                                     cluster_config=cluster_config)
  means = []
  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster,
      algo_config=grpo_learner.GRPOConfig(
          num_generations=args.num_generations, num_iterations=1, beta=0.0,
          policy_loss_fn="grpo" if method == "tunix" else "stabledrl"),
      reward_fns=make_reward_fn(args.bad_step, float(args.bad_reward),
                                means),
  )
  bar = tqdm.tqdm(total=args.steps, desc=method, file=sys.stderr,
                  disable=not show_progress, dynamic_ncols=True)
  hook = _StepHook(bar, args.batch_size // (args.micro_batch_size
                                            or args.batch_size))
  cluster.actor_trainer.with_training_hooks(hook)
  rng = np.random.default_rng(args.seed)
  dataset = [{"prompts": rng.choice(PROMPTS, args.batch_size)}
             for _ in range(args.steps)]
  start = time.perf_counter()
  learner.train(dataset)
  seconds = time.perf_counter() - start
  bar.close()
  records = []
  for update in range(1, args.steps + 1):
    logged = recorder.by_step.get(update, {})
    record = {"step": update, "reward": means[update - 1],
              **hook.by_update.get(update, {})}
    for event, value in logged.items():
      for name in ("grad_norm", "learning_rate"):
        if event.endswith("/train/" + name):
          record["tunix/" + name] = value
    records.append(record)
  return {"method": method, "steps": records, "seconds": seconds}


def main(argv: Optional[list[str]] = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--batch-size", type=int, default=4,
                      help="prompts per step")
  parser.add_argument("--micro-batch-size", type=int, default=None,
                      help="prompts per micro-batch: tunix then accumulates "
                      "batch-size / micro-batch-size gradients per step")
  parser.add_argument("--num-generations", type=int, default=4)
  parser.add_argument("--max-tokens", type=int, default=6)
  parser.add_argument("--num-layers", type=int, default=1)
  parser.add_argument("--learning-rate", type=float, default=1e-2)
  parser.add_argument("--max-norm", type=float, default=1.0)
  parser.add_argument("--z-thresh", type=float, default=None,
                      help="also skip z-score spikes (default: only "
                      "non-finite steps)")
  parser.add_argument("--bad-step", type=int, default=4,
                      help="0-based step whose first rollout gets "
                      "--bad-reward; -1: none")
  parser.add_argument("--bad-reward", choices=("inf", "nan"), default="inf")
  parser.add_argument("--methods", default="tunix,stabledrl")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--log-dir", default=os.path.join(
      tempfile.gettempdir(), "tunix_grpo_logs"),
                      help="tunix's metrics logger directory")
  parser.add_argument("--json-out", default=None)
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if args.bad_step < 0:
    args.bad_step = None
  results = {}
  for method in args.methods.split(","):
    result = run(method, args, show_progress=not args.no_progress)
    results[method] = result
    for r in result["steps"]:
      print(_line(method, r), flush=True)
    print(_summary(result), flush=True)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(results, f, indent=1)
  return results


def _fmt(value: Any, spec: str = ".3f") -> str:
  """``value`` formatted, ``-`` when tunix did not log it."""
  return "-" if value is None else format(value, spec)


def _line(method: str, r: dict) -> str:
  """One step: reward, then what tunix logs, then what clip_metrics reads."""
  ours = ""
  if "skip_spikes/num_skipped" in r:
    ours = (f" | clip_metrics: pre-clip norm "
            f"{_fmt(r['skip_spikes/global_norm'])} lr "
            f"{_fmt(r['hyperparams/learning_rate'], '.4f')} skipped "
            f"{r['skip_spikes/num_skipped']} non-finite "
            f"{r['skip_spikes/num_nonfinite']} clipped "
            f"{r['clip/num_clipped']}")
  return (f"{method:9s} step {r['step']:3d}  reward {_fmt(r['reward'])}  "
          f"params finite {r.get('params_finite')} | tunix logs: grad_norm "
          f"{_fmt(r.get('tunix/grad_norm'))} learning_rate "
          f"{_fmt(r.get('tunix/learning_rate'))}{ours}")


def _summary(result: dict) -> str:
  steps = result["steps"]
  last = steps[-1]
  counters = {k: v for k, v in last.items()
              if k.split("/")[-1].startswith("num_")}
  return (f"{result['method']}: {len(steps)} steps, mean reward first "
          f"{steps[0]['reward']:.3f} last {last['reward']:.3f}, params "
          f"finite at the end: {last.get('params_finite')}, counters "
          f"{counters}, {result['seconds']:.1f} s")


if __name__ == "__main__":
  main()
