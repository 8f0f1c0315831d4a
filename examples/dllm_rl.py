"""Toy diffusion-LM RL study: GRPO's conditional clip versus StableDRL.

A tiny masked-diffusion language model (``flax.nnx``, 2-layer bidirectional
transformer, d=128, ~400k parameters) learns to sort 5 digits. It is
warm-started by masked-diffusion supervised training, stopped while the task
is still far from solved, then fine-tuned by RL with group sampling:

* rollouts: 16 prompts x G = 8 completions, drawn by iterative
  confidence-based unmasking with temperature sampling;
* reward: the fraction of completion positions equal to the sorted prompt;
* advantages: :func:`stabledrl_jax.group_advantages` (group mean and std);
* sequence log-likelihoods: the masked-diffusion ELBO estimated with a few
  Monte Carlo masks (``--num-mc``), the noisy estimate a real diffusion LM
  has to use; the importance log-ratio is ``ELBO_new - ELBO_old``;
* several optimizer steps per rollout batch (``--inner-steps``), with
  ``optax.chain(unconditional_clip(c), optax.adam(lr))`` for both methods.

The two methods differ only in the policy loss:

* ``grpo``: the sequence-level conditional clip
  ``-min(r A, clip(r, 1 - eps, 1 + eps) A)`` averaged with the fixed ``1/G``
  weight per completion;
* ``stabledrl``: :func:`stabledrl_jax.stabledrl_policy_loss` (ratio capped at
  5 whatever the sign of the advantage, self-normalised within each group).

Noise knobs (``--masks``, ``--num-mc``, ``--logratio-noise``) set how noisy the
ratio is: with ``--masks independent`` the old and new ELBOs use fresh masks
(estimator noise of several nats); with ``--masks coupled`` they share masks
(no estimator noise) and ``--logratio-noise SIGMA`` adds Gaussian noise to the
log-ratio. ``--sweep-sigma`` / ``--sweep-mc`` run a grid of noise levels.

Runs are spread over ``--workers`` single-threaded processes (one per core).

Usage::

  python examples/dllm_rl.py --out examples/results/dllm_rl
  python examples/dllm_rl.py --quick --out /tmp/dllm_quick
  python examples/dllm_rl.py --seeds 3 --sweep-sigma 0,0.3,1,3 --out examples/results/dllm_rl
  python examples/dllm_rl.py --seeds 3 --sweep-mc 1,4,16 --out examples/results/dllm_rl

Outputs ``DIR/results.json``, ``DIR/reward.png`` and ``DIR/grad_norm.png``
(or ``DIR/sweep_<name>.json`` and ``DIR/sweep_<name>.png`` for a sweep).

References:
  Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
  Models <https://arxiv.org/abs/2603.06743>`_, 2026.
  Shao et al., `DeepSeekMath (GRPO) <https://arxiv.org/abs/2402.03300>`_, 2024.
  Sahoo et al., `Simple and Effective Masked Diffusion Language Models
  <https://arxiv.org/abs/2406.07524>`_, 2024.
  Nie et al., `Large Language Diffusion Models (LLaDA)
  <https://arxiv.org/abs/2502.09992>`_, 2025.
"""

import os

SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"

if __name__ == "__main__" and "XLA_FLAGS" not in os.environ:
  # Eigen's thread pool off in each process, so that two worker processes
  # on two cores oversubscribe them less (XLA may still use a thread or two).
  # Set before JAX starts; spawned workers inherit it.
  os.environ["XLA_FLAGS"] = SINGLE_THREAD_XLA_FLAGS

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import dataclasses
import json
import multiprocessing
import queue
import time
from concurrent import futures
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import stabledrl_jax

METHODS = ("grpo", "stabledrl")
MASK_MODES = ("independent", "coupled")


@dataclasses.dataclass(frozen=True)
class Config:
  """Every knob of one run; identical for both methods."""
  # Task: sort `length` digits in [0, vocab); token `vocab` is MASK.
  length: int = 5
  vocab: int = 10
  # Model.
  d_model: int = 128
  num_heads: int = 4
  num_layers: int = 2
  mlp_dim: int = 512
  # Masked-diffusion warm start (shared by every run).
  warm_steps: int = 40
  warm_batch: int = 64
  warm_lr: float = 3e-4
  warm_seed: int = 0
  t_min: float = 1e-3
  eval_prompts: int = 512
  # RL.
  rl_steps: int = 400
  num_prompts: int = 16
  group_size: int = 8
  inner_steps: int = 2
  lr: float = 3e-4
  max_norm: float = 1.0
  clip_eps: float = 0.2
  max_ratio: float = 5.0
  temperature: float = 1.0
  unmask_steps: int = 5
  # Ratio noise.
  masks: str = "independent"
  num_mc: int = 1
  logratio_noise: float = 0.0

  def __post_init__(self):
    if self.masks not in MASK_MODES:
      raise ValueError(f"masks must be one of {MASK_MODES}, got {self.masks!r}.")
    for name in ("length", "vocab", "d_model", "num_heads", "num_layers",
                 "mlp_dim", "warm_batch", "eval_prompts", "rl_steps",
                 "num_prompts", "group_size", "inner_steps", "unmask_steps",
                 "num_mc"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}.")
    if self.warm_steps < 0:
      raise ValueError(f"warm_steps must be >= 0, got {self.warm_steps!r}.")
    for name in ("lr", "warm_lr", "max_norm", "clip_eps", "max_ratio",
                 "temperature"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}.")
    if not 0 < self.t_min < 1:
      raise ValueError(f"t_min must be in (0, 1), got {self.t_min!r}.")
    if not self.logratio_noise >= 0:
      raise ValueError(
          f"logratio_noise must be >= 0, got {self.logratio_noise!r}.")
    if self.unmask_steps > self.length:
      raise ValueError(f"unmask_steps must be <= length ({self.length}), got "
                       f"{self.unmask_steps!r}.")

  @property
  def mask_id(self) -> int:
    return self.vocab

  @property
  def batch(self) -> int:
    return self.num_prompts * self.group_size


# ----------------------------------------------------------------------- model


class Block(nnx.Module):
  """Pre-norm transformer block with full (bidirectional) self-attention."""

  def __init__(self, d_model: int, num_heads: int, mlp_dim: int, *,
               rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
        num_heads, d_model, decode=False, keep_rngs=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.fc1 = nnx.Linear(d_model, mlp_dim, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_dim, d_model, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


class DiffusionLM(nnx.Module):
  """Masked-diffusion LM over ``[prompt, completion]`` token sequences.

  Tokens ``[B, 2 * length]`` (digits or MASK) → logits ``[B, length, vocab]``
  for the completion positions (the model never predicts MASK).
  """

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    self.length = cfg.length
    self.embed = nnx.Embed(cfg.vocab + 1, cfg.d_model, rngs=rngs)
    init = nnx.initializers.normal(0.02)
    self.pos = nnx.Param(init(rngs.params(), (2 * cfg.length, cfg.d_model)))
    self.blocks = nnx.List([
        Block(cfg.d_model, cfg.num_heads, cfg.mlp_dim, rngs=rngs)
        for _ in range(cfg.num_layers)])
    self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
    self.head = nnx.Linear(cfg.d_model, cfg.vocab, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.pos[...]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x[:, self.length:]))


LogitsFn = Callable[[Any, jax.Array], jax.Array]


def make_model(cfg: Config, seed: int):
  """Returns ``(apply, params)``: ``apply(params, tokens) -> logits``."""
  graphdef, params = nnx.split(DiffusionLM(cfg, rngs=nnx.Rngs(seed)))

  def apply(params, tokens):
    return nnx.merge(graphdef, params)(tokens)

  return apply, params


def num_params(params) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(params))


# ------------------------------------------------------------------------ task


def sample_prompts(key: jax.Array, cfg: Config, num: int) -> jax.Array:
  """``[num, length]`` uniform random digits."""
  return jax.random.randint(key, (num, cfg.length), 0, cfg.vocab)


def sort_reward(prompts: jax.Array, completions: jax.Array) -> jax.Array:
  """``[B]`` fraction of completion positions equal to ``sort(prompt)``."""
  target = jnp.sort(prompts, axis=-1)
  return jnp.mean((completions == target).astype(jnp.float32), axis=-1)


# ------------------------------------------------------- masked-diffusion ELBO


def draw_masks(key: jax.Array, num_mc: int, batch: int, length: int,
               t_min: float):
  """Monte Carlo masks for the ELBO.

  Returns:
    ``(t, masked)``: ``t [num_mc, batch]`` ~ U(t_min, 1) and boolean
    ``masked [num_mc, batch, length]``, each position masked w.p. ``t``.
  """
  key_t, key_m = jax.random.split(key)
  t = jax.random.uniform(key_t, (num_mc, batch), minval=t_min, maxval=1.0)
  masked = jax.random.uniform(key_m, (num_mc, batch, length)) < t[..., None]
  return t, masked


def elbo_from_masks(apply: LogitsFn, params, prompts: jax.Array,
                    completions: jax.Array, t: jax.Array, masked: jax.Array,
                    mask_id: int) -> jax.Array:
  """Masked-diffusion ELBO of the completions, averaged over given masks.

  ``log p(x | prompt) >= E_t E_{x_t} [ (1/t) sum_{i masked} log p(x_i | x_t) ]``
  with ``t ~ U(0, 1)`` and each completion position masked w.p. ``t``. This
  returns the average over the ``M`` supplied ``(t, masked)`` draws, an
  unbiased estimate of the bound.

  Args:
    apply: ``apply(params, tokens [N, 2L]) -> logits [N, L, V]``.
    params: model parameters.
    prompts: ``[B, L]`` int prompt tokens.
    completions: ``[B, L]`` int completion tokens.
    t: ``[M, B]`` masking rates.
    masked: ``[M, B, L]`` bool, True where the completion token is masked.
    mask_id: the MASK token id.

  Returns:
    ``[B]`` float32 ELBO estimates (differentiable in ``params``).
  """
  num_mc, batch, length = masked.shape
  noisy = jnp.where(masked, mask_id, completions[None])
  tokens = jnp.concatenate(
      [jnp.broadcast_to(prompts[None], noisy.shape), noisy], axis=-1)
  logits = apply(params, tokens.reshape(num_mc * batch, 2 * length))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logp = logp.reshape(num_mc, batch, length, -1)
  token_logp = jnp.take_along_axis(
      logp, jnp.broadcast_to(completions[None], masked.shape)[..., None],
      axis=-1)[..., 0]
  per_draw = jnp.sum(jnp.where(masked, token_logp, 0.0), axis=-1) / t
  return jnp.mean(per_draw, axis=0)


def diffusion_loss(apply: LogitsFn, params, key: jax.Array, prompts: jax.Array,
                   targets: jax.Array, cfg: Config) -> jax.Array:
  """Supervised masked-diffusion loss: ``-ELBO / length``, batch mean."""
  t, masked = draw_masks(key, 1, prompts.shape[0], cfg.length, cfg.t_min)
  elbo = elbo_from_masks(apply, params, prompts, targets, t, masked,
                         cfg.mask_id)
  return -jnp.mean(elbo) / cfg.length


# --------------------------------------------------------------------- sampler


def unmask_schedule(length: int, steps: int) -> tuple:
  """Cumulative number of revealed positions after each step."""
  return tuple(int(round(length * (k + 1) / steps)) for k in range(steps))


def sample_completions(apply: LogitsFn, params, key: jax.Array,
                       prompts: jax.Array, cfg: Config) -> jax.Array:
  """Iterative confidence-based unmasking with temperature sampling.

  Starts from an all-MASK completion. At each of ``cfg.unmask_steps`` steps it
  samples a token at every masked position from ``softmax(logits / T)`` and
  reveals the masked positions whose sampled token has the highest
  probability, until all are revealed.

  Returns:
    ``[B, length]`` int32 completions.
  """
  batch = prompts.shape[0]
  x = jnp.full((batch, cfg.length), cfg.mask_id, jnp.int32)
  revealed = 0
  for step, total in enumerate(unmask_schedule(cfg.length, cfg.unmask_steps)):
    logits = apply(params, jnp.concatenate([prompts, x], axis=-1))
    logits = logits.astype(jnp.float32) / cfg.temperature
    tokens = jax.random.categorical(jax.random.fold_in(key, step), logits)
    probs = jax.nn.softmax(logits, axis=-1)
    conf = jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    still_masked = x == cfg.mask_id
    conf = jnp.where(still_masked, conf, -jnp.inf)
    # rank 0 = most confident masked position.
    rank = jnp.argsort(jnp.argsort(-conf, axis=-1), axis=-1)
    reveal = still_masked & (rank < total - revealed)
    x = jnp.where(reveal, tokens, x)
    revealed = total
  return x


def evaluate(apply: LogitsFn, params, key: jax.Array, cfg: Config) -> float:
  """Mean reward of sampled completions on ``cfg.eval_prompts`` prompts."""
  key_p, key_s = jax.random.split(key)
  prompts = sample_prompts(key_p, cfg, cfg.eval_prompts)
  completions = sample_completions(apply, params, key_s, prompts, cfg)
  return float(jnp.mean(sort_reward(prompts, completions)))


# ------------------------------------------------------------------ warm start


def warm_start(cfg: Config):
  """Masked-diffusion supervised warm start.

  Returns:
    ``(apply, params, warm_start_reward)``.
  """
  apply, params = make_model(cfg, cfg.warm_seed)
  tx = optax.adam(cfg.warm_lr)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    key_p, key_m = jax.random.split(key)
    prompts = sample_prompts(key_p, cfg, cfg.warm_batch)
    loss, grads = jax.value_and_grad(
        lambda p: diffusion_loss(apply, p, key_m, prompts,
                                 jnp.sort(prompts, axis=-1), cfg))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.random.key(cfg.warm_seed)
  for i in range(cfg.warm_steps):
    params, opt_state, _ = step(params, opt_state, jax.random.fold_in(key, i))
  reward = evaluate(apply, params, jax.random.key(10_000 + cfg.warm_seed), cfg)
  return apply, params, reward


# ---------------------------------------------------------------- policy loss


def grpo_sequence_loss(seq_logp: jax.Array, old_seq_logp: jax.Array,
                       advantages: jax.Array, eps: float) -> jax.Array:
  """Sequence-level GRPO loss with the conditional (PPO) clip.

  ``-(1/B) sum_i min(r_i A_i, clip(r_i, 1 - eps, 1 + eps) A_i)`` with
  ``r_i = exp(seq_logp_i - old_seq_logp_i)``: the fixed ``1/G`` weight per
  completion, averaged over groups. For ``A < 0`` and a large noisy ``r`` the
  unclipped ``r A`` term is the minimum, so nothing bounds it.
  """
  log_ratio = seq_logp - jax.lax.stop_gradient(old_seq_logp)
  ratio = jnp.exp(jnp.clip(log_ratio, -20.0, 20.0))
  surrogate = jnp.minimum(ratio * advantages,
                          jnp.clip(ratio, 1 - eps, 1 + eps) * advantages)
  return -jnp.mean(surrogate)


def policy_loss(method: str, seq_logp: jax.Array, old_seq_logp: jax.Array,
                advantages: jax.Array, cfg: Config) -> jax.Array:
  """The only place where the two methods differ."""
  if method == "grpo":
    return grpo_sequence_loss(seq_logp, old_seq_logp, advantages, cfg.clip_eps)
  if method == "stabledrl":
    segment_ids = jnp.repeat(jnp.arange(cfg.num_prompts), cfg.group_size)
    loss, _ = stabledrl_jax.stabledrl_policy_loss(
        seq_logp, old_seq_logp, advantages, max_ratio=cfg.max_ratio,
        segment_ids=segment_ids, num_segments=cfg.num_prompts)
    return loss
  raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


# --------------------------------------------------------------------- RL step


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
  """The same for both methods; its first state is a ``ClipState``."""
  return optax.chain(stabledrl_jax.unconditional_clip(cfg.max_norm),
                     optax.adam(cfg.lr))


def make_rl_step(apply: LogitsFn, cfg: Config, method: str):
  """Builds the jitted RL step: one rollout batch, ``inner_steps`` updates.

  Returns:
    ``step(params, opt_state, key) -> (params, opt_state, metrics)``.
    Metrics: ``reward`` (rollout mean), ``grad_norm`` (largest pre-clip
    global norm over the inner steps, from ``ClipState``), ``max_log_ratio``
    (largest log-ratio the loss saw, noise included), ``bypass_fraction``
    (share of samples with ``A < 0`` and ``r > 1 + eps``: GRPO's clip does not
    bound them), ``logratio_std`` (batch std of the log-ratio at the first
    inner step), ``num_clipped`` and ``num_nonfinite`` (cumulative counts of
    clipped and non-finite optimizer steps, from ``ClipState``).
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  tx = make_optimizer(cfg)

  def step(params, opt_state, key):
    key_p, key_s, key_old, key_inner = jax.random.split(key, 4)
    prompts = jnp.repeat(sample_prompts(key_p, cfg, cfg.num_prompts),
                         cfg.group_size, axis=0)
    completions = sample_completions(apply, params, key_s, prompts, cfg)
    rewards = sort_reward(prompts, completions)
    advantages = stabledrl_jax.group_advantages(
        rewards, group_size=cfg.group_size, scale="group")
    old_masks = draw_masks(key_old, cfg.num_mc, cfg.batch, cfg.length,
                           cfg.t_min)
    old_logp = jax.lax.stop_gradient(elbo_from_masks(
        apply, params, prompts, completions, *old_masks, cfg.mask_id))

    norms, max_log_ratio, bypass, log_ratio_std = [], [], [], None
    for inner in range(cfg.inner_steps):
      key_m, key_n = jax.random.split(jax.random.fold_in(key_inner, inner))
      if cfg.masks == "coupled":
        masks = old_masks
      else:
        masks = draw_masks(key_m, cfg.num_mc, cfg.batch, cfg.length, cfg.t_min)
      # Injected noise enters as a noisy old log-likelihood: both losses then
      # see log_ratio = ELBO_new - ELBO_old + sigma * xi.
      noisy_old = old_logp - cfg.logratio_noise * jax.random.normal(
          key_n, old_logp.shape)

      def loss_fn(p, masks=masks, noisy_old=noisy_old):
        seq_logp = elbo_from_masks(apply, p, prompts, completions, *masks,
                                   cfg.mask_id)
        loss = policy_loss(method, seq_logp, noisy_old, advantages, cfg)
        return loss, seq_logp - noisy_old

      grads, log_ratio = jax.grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      norms.append(opt_state[0].global_norm)
      max_log_ratio.append(jnp.max(log_ratio))
      # Where GRPO's conditional clip is bypassed: A < 0 and r > 1 + eps, so
      # the unclipped r A term is the minimum and its gradient grows with r.
      bypass.append(jnp.mean(((advantages < 0)
                              & (log_ratio > jnp.log1p(cfg.clip_eps)))
                             .astype(jnp.float32)))
      if log_ratio_std is None:
        log_ratio_std = jnp.std(log_ratio)

    metrics = {
        "reward": jnp.mean(rewards),
        "grad_norm": jnp.max(jnp.stack(norms)),
        "max_log_ratio": jnp.max(jnp.stack(max_log_ratio)),
        "bypass_fraction": jnp.mean(jnp.stack(bypass)),
        "logratio_std": log_ratio_std,
        "num_clipped": opt_state[0].num_clipped,
        "num_nonfinite": opt_state[0].num_nonfinite,
    }
    return params, opt_state, metrics

  return jax.jit(step)


# ---------------------------------------------------------------------- a run


def collapse_stats(reward_curve) -> tuple:
  """``(final, best_window, collapsed)`` by the 10%-window rule.

  ``final`` is the mean reward over the last 10% of steps, ``best_window`` the
  best mean over any window of that length; ``collapsed`` is
  ``final < best_window / 2``.
  """
  curve = np.asarray(reward_curve, np.float64)
  window = max(1, int(round(0.1 * len(curve))))
  means = np.convolve(curve, np.ones(window) / window, mode="valid")
  final = float(means[-1])
  best = float(means.max())
  return final, best, bool(final < 0.5 * best)


_STEPS = {}


def cached_rl_step(apply: LogitsFn, cfg: Config, method: str):
  """:func:`make_rl_step`, built (and compiled) once per configuration."""
  key = (id(apply), cfg, method)
  if key not in _STEPS:
    _STEPS[key] = (apply, make_rl_step(apply, cfg, method))
  return _STEPS[key][1]


def run_one(cfg: Config, method: str, seed: int, params, apply: LogitsFn,
            progress: Optional[Callable[[int], None]] = None) -> dict:
  """One RL run from the warm-start ``params``; returns its record."""
  step = cached_rl_step(apply, cfg, method)
  opt_state = make_optimizer(cfg).init(params)
  key = jax.random.key(seed)
  history = []
  start = time.perf_counter()
  for i in range(cfg.rl_steps):
    params, opt_state, metrics = step(params, opt_state,
                                      jax.random.fold_in(key, i))
    history.append(jax.device_get(metrics))
    if progress is not None:
      progress(1)
  seconds = time.perf_counter() - start
  curve = lambda name: [float(h[name]) for h in history]
  rewards, norms = curve("reward"), curve("grad_norm")
  final, best, collapsed = collapse_stats(rewards)
  finite = np.asarray(norms)[np.isfinite(norms)]
  median = float(np.median(finite)) if finite.size else float("nan")
  worst = float(finite.max()) if finite.size else float("nan")
  return {
      "method": method,
      "seed": seed,
      "masks": cfg.masks,
      "num_mc": cfg.num_mc,
      "logratio_noise": cfg.logratio_noise,
      "final_reward": final,
      "best_window_reward": best,
      "collapsed": collapsed,
      "max_grad_norm": worst,
      "median_grad_norm": median,
      "spike_over_median": worst / median if median > 0 else float("nan"),
      "num_nonfinite": int(history[-1]["num_nonfinite"]),
      "num_clipped": int(history[-1]["num_clipped"]),
      "optimizer_steps": cfg.rl_steps * cfg.inner_steps,
      "seconds": seconds,
      "reward_curve": rewards,
      "grad_norm_curve": norms,
      "max_ratio_curve": [float(np.exp(min(v, 20.0)))
                          for v in curve("max_log_ratio")],
      "max_log_ratio_curve": curve("max_log_ratio"),
      "bypass_fraction_curve": curve("bypass_fraction"),
      "logratio_std_curve": curve("logratio_std"),
  }


# ------------------------------------------------------------------- workers


_PROGRESS = None


def _init_worker(progress_queue):
  global _PROGRESS
  _PROGRESS = progress_queue


_APPLY = {}


def _worker(job: dict) -> dict:
  """Runs one job in a worker process: rebuilds the model, loads params."""
  cfg = Config(**job["config"])
  arch = (cfg.length, cfg.vocab, cfg.d_model, cfg.num_heads, cfg.num_layers,
          cfg.mlp_dim, cfg.warm_seed)
  if arch not in _APPLY:
    _APPLY[arch] = make_model(cfg, cfg.warm_seed)[0]
  apply = _APPLY[arch]
  params = jax.tree.map(jnp.asarray, job["params"])
  return run_one(cfg, job["method"], job["seed"], params, apply,
                 _PROGRESS.put)


def run_jobs(jobs: list, params, workers: int, desc: str) -> list:
  """Runs ``(cfg, method, seed)`` jobs; ``workers > 1`` uses processes."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  total = sum(cfg.rl_steps for cfg, _, _ in jobs)
  host_params = jax.tree.map(np.asarray, params)
  bar = tqdm(total=total, desc=desc, unit="step", smoothing=0.05)
  if workers <= 1:
    apply, _ = make_model(jobs[0][0], jobs[0][0].warm_seed)
    records = []
    for cfg, method, seed in jobs:
      records.append(run_one(cfg, method, seed, params, apply, bar.update))
    bar.close()
    return records
  ctx = multiprocessing.get_context("spawn")
  manager = ctx.Manager()
  progress = manager.Queue()
  payloads = [{"config": dataclasses.asdict(cfg), "method": method,
               "seed": seed, "params": host_params}
              for cfg, method, seed in jobs]
  with futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                   initializer=_init_worker,
                                   initargs=(progress,)) as pool:
    pending = [pool.submit(_worker, p) for p in payloads]
    while not all(f.done() for f in pending):
      try:
        bar.update(progress.get(timeout=0.5))
      except queue.Empty:
        pass
    records = [f.result() for f in pending]
  while not progress.empty():
    bar.update(progress.get())
  bar.close()
  manager.shutdown()
  return records


# -------------------------------------------------------------------- output


COLORS = {"grpo": "tab:red", "stabledrl": "tab:blue"}


def summarize(records: list) -> dict:
  """Per-method table: seeds, collapsed, final reward, worst spike."""
  table = {}
  for method in METHODS:
    runs = [r for r in records if r["method"] == method]
    if not runs:
      continue
    finals = np.asarray([r["final_reward"] for r in runs])
    table[method] = {
        "seeds": len(runs),
        "collapsed": int(sum(r["collapsed"] for r in runs)),
        "final_reward_mean": float(finals.mean()),
        "final_reward_sd": float(finals.std(ddof=1)) if len(runs) > 1 else 0.0,
        "worst_spike_over_median": float(
            max(r["spike_over_median"] for r in runs)),
        "max_grad_norm": float(max(r["max_grad_norm"] for r in runs)),
        "max_log_ratio": float(max(max(r["max_log_ratio_curve"])
                                   for r in runs)),
        "mean_bypass_fraction": float(np.mean(
            [np.mean(r["bypass_fraction_curve"]) for r in runs])),
        "mean_logratio_std_first_step": float(
            np.mean([r["logratio_std_curve"][0] for r in runs])),
        "num_nonfinite": int(sum(r["num_nonfinite"] for r in runs)),
    }
  return table


def plot_curves(records: list, warm_reward: float, cfg: Config, out: str):
  """``reward.png`` and ``grad_norm.png``: every seed of both methods."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  noise = (f"{cfg.masks} masks, M={cfg.num_mc}, "
           f"injected sigma={cfg.logratio_noise:g}")
  for name, key, ylabel in (
      ("reward.png", "reward_curve", "mean rollout reward"),
      ("grad_norm.png", "grad_norm_curve", "pre-clip global grad norm")):
    fig, ax = plt.subplots(figsize=(7, 4))
    for method in METHODS:
      runs = [r for r in records if r["method"] == method]
      for i, r in enumerate(runs):
        ax.plot(r[key], color=COLORS[method], alpha=0.6, lw=0.9,
                label=method if i == 0 else None)
    if key == "reward_curve":
      ax.axhline(warm_reward, color="k", ls="--", lw=1, label="warm start")
      ax.set_ylim(0, 1)
    else:
      ax.set_yscale("log")
      ax.axhline(cfg.max_norm, color="k", ls="--", lw=1, label="clip c")
    ax.set_xlabel("RL step (rollout batch)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"sort-{cfg.length} toy dLLM, {noise}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=120)
    plt.close(fig)


def plot_sweep(records: list, field: str, warm_reward: float, path: str):
  """Final reward, pre-clip norms and failure counts against the noise.

  The third panel counts, per method and noise level, the seeds flagged by
  the 10%-window collapse rule (solid) and the seeds whose final reward ended
  below the warm start (hatched): a run that falls from its first step has no
  earlier peak for the rule to compare with.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  levels = sorted({r[field] for r in records})
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
  for k, method in enumerate(METHODS):
    shift = (k - 0.5) * 0.08
    for j, level in enumerate(levels):
      runs = [r for r in records
              if r["method"] == method and r[field] == level]
      finals = [r["final_reward"] for r in runs]
      x = np.full(len(runs), j + shift)
      label = method if j == 0 else None
      axes[0].scatter(x, finals, color=COLORS[method], s=14, label=label)
      sd = np.std(finals, ddof=1) if len(finals) > 1 else 0.0  # as tables
      axes[0].errorbar(j + shift, np.mean(finals), yerr=sd,
                       color=COLORS[method], capsize=3, fmt="_")
      axes[1].scatter(x, [r["max_grad_norm"] for r in runs],
                      color=COLORS[method], s=14)
      axes[1].scatter(x, [r["median_grad_norm"] for r in runs],
                      facecolors="none", edgecolors=COLORS[method], s=14)
      below = sum(r["final_reward"] < warm_reward for r in runs)
      bar_x = j + (k - 0.5) * 0.2
      axes[2].bar(bar_x - 0.04, sum(r["collapsed"] for r in runs),
                  width=0.08, color=COLORS[method])
      axes[2].bar(bar_x + 0.04, below, width=0.08, color="white",
                  edgecolor=COLORS[method], hatch="///")
  axes[0].axhline(warm_reward, color="k", ls="--", lw=1, label="warm start")
  axes[0].set_ylabel("final reward (last 10%)")
  axes[1].set_yscale("log")
  axes[1].set_ylabel("pre-clip norm: max (filled), median (open)")
  axes[2].set_ylabel("seeds: collapsed (solid), below warm start (hatched)",
                     fontsize=8)
  axes[2].set_ylim(0, max(1, max(
      sum(1 for r in records if r["method"] == m and r[field] == level)
      for m in METHODS for level in levels)) + 0.3)
  axes[2].yaxis.get_major_locator().set_params(integer=True)
  for ax in axes:
    ax.set_xticks(range(len(levels)), [f"{v:g}" for v in levels])
    ax.set_xlabel(field)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ---------------------------------------------------------------------- main


def parse_args(argv=None):
  """Command-line flags; defaults are the committed study."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="examples/results/dllm_rl")
  parser.add_argument("--quick", action="store_true",
                      help="a few steps, 1 seed per method (smoke run)")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--steps", type=int, default=Config.rl_steps)
  parser.add_argument("--warm-steps", type=int, default=Config.warm_steps)
  parser.add_argument("--num-mc", type=int, default=Config.num_mc,
                      help="Monte Carlo masks per ELBO estimate")
  parser.add_argument("--masks", choices=MASK_MODES, default=Config.masks,
                      help="independent: old/new ELBOs use fresh masks; "
                      "coupled: shared masks (no estimator noise)")
  parser.add_argument("--logratio-noise", type=float,
                      default=Config.logratio_noise,
                      help="std of Gaussian noise added to the log-ratio")
  parser.add_argument("--inner-steps", type=int, default=Config.inner_steps)
  parser.add_argument("--max-norm", type=float, default=Config.max_norm)
  parser.add_argument("--lr", type=float, default=Config.lr)
  parser.add_argument("--sweep-sigma", default=None,
                      help="comma-separated injected noise levels, run with "
                      "coupled masks; writes sweep_sigma.{json,png}")
  parser.add_argument("--sweep-mc", default=None,
                      help="comma-separated MC mask counts, run with "
                      "independent masks; writes sweep_mc.{json,png}")
  parser.add_argument("--replot", action="store_true",
                      help="redraw the PNGs of --out from its JSON files "
                      "and exit (no training)")
  parser.add_argument("--workers", type=int, default=2,
                      help="worker processes (1 = run in this process)")
  return parser.parse_args(argv)


def replot(out: str) -> None:
  """Redraws every PNG of ``out`` from the JSON files a run wrote there."""
  fields = {f.name for f in dataclasses.fields(Config)}
  found = False
  for name, field in (("results", None), ("sweep_sigma", "logratio_noise"),
                      ("sweep_mc", "num_mc")):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
      continue
    found = True
    with open(path) as f:
      saved = json.load(f)
    if field is None:
      cfg = Config(**{k: v for k, v in saved["config"].items() if k in fields})
      plot_curves(saved["runs"], saved["warm_start_reward"], cfg, out)
    else:
      plot_sweep(saved["runs"], field, saved["warm_start_reward"],
                 os.path.join(out, f"{name}.png"))
    print(f"redrew the plots of {path}")
  if not found:
    raise SystemExit(f"--replot: no results.json or sweep_*.json in {out!r}")


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.replot:
    replot(args.out)
    return {}
  methods = tuple(m for m in args.methods.split(",") if m)
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"--methods must name {METHODS}, got {m!r}.")
  seeds, steps, warm_steps = args.seeds, args.steps, args.warm_steps
  if args.quick:
    seeds, steps = 1, min(steps, 8)
  cfg = Config(rl_steps=steps, warm_steps=warm_steps, num_mc=args.num_mc,
               masks=args.masks, logratio_noise=args.logratio_noise,
               inner_steps=args.inner_steps, max_norm=args.max_norm,
               lr=args.lr)
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  apply, params, warm_reward = warm_start(cfg)
  print(f"model: {num_params(params)} parameters; warm start "
        f"({cfg.warm_steps} steps) reward {warm_reward:.3f}")

  if args.sweep_sigma or args.sweep_mc:
    if args.sweep_sigma:
      name, field = "sigma", "logratio_noise"
      conditions = [dataclasses.replace(cfg, masks="coupled",
                                        logratio_noise=float(v))
                    for v in args.sweep_sigma.split(",")]
    else:
      name, field = "mc", "num_mc"
      conditions = [dataclasses.replace(cfg, masks="independent",
                                        num_mc=int(v))
                    for v in args.sweep_mc.split(",")]
  else:
    name, field, conditions = None, None, [cfg]

  jobs = [(c, m, s) for c in conditions for m in methods for s in range(seeds)]
  records = run_jobs(jobs, params, args.workers,
                     desc=f"{len(jobs)} RL runs")
  seconds = time.perf_counter() - start
  result = {
      # A sweep records the settings it forced (e.g. coupled masks) and the
      # swept values; the other fields are shared by every run.
      "config": dict(dataclasses.asdict(conditions[0]), seeds=seeds,
                     methods=methods, num_params=num_params(params),
                     workers=args.workers, sweep=name,
                     sweep_values=[getattr(c, field) for c in conditions]
                     if field else None),
      "warm_start_reward": warm_reward,
      "wall_seconds": seconds,
  }
  if name is None:
    result["summary"] = summarize(records)
    result["runs"] = records
    path = os.path.join(args.out, "results.json")
    plot_curves(records, warm_reward, cfg, args.out)
    print(json.dumps(result["summary"], indent=1))
  else:
    levels = sorted({getattr(c, field) for c in conditions})
    result["summary"] = {
        f"{level:g}": summarize([r for r in records if r[field] == level])
        for level in levels}
    result["runs"] = records
    path = os.path.join(args.out, f"sweep_{name}.json")
    plot_sweep(records, field, warm_reward,
               os.path.join(args.out, f"sweep_{name}.png"))
    for level, table in result["summary"].items():
      print(f"{field}={level}: " + "; ".join(
          f"{m}: final {t['final_reward_mean']:.3f}±{t['final_reward_sd']:.3f}"
          f", collapsed {t['collapsed']}/{t['seeds']}, spike "
          f"{t['worst_spike_over_median']:.1f}x" for m, t in table.items()))
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path} ({seconds:.0f} s)")
  return result


if __name__ == "__main__":
  main()
