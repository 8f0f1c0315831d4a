"""The sorting task and the masked-diffusion sampler (the rollouts)."""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from .config import Config

LogitsFn = Callable[[Any, jax.Array], jax.Array]


def sample_prompts(key: jax.Array, cfg: Config, num: int) -> jax.Array:
  """``[num, length]`` uniform random digits."""
  return jax.random.randint(key, (num, cfg.length), 0, cfg.vocab)


def sort_reward(prompts: jax.Array, completions: jax.Array) -> jax.Array:
  """``[B]`` fraction of completion positions equal to ``sort(prompt)``."""
  target = jnp.sort(prompts, axis=-1)
  return jnp.mean((completions == target).astype(jnp.float32), axis=-1)


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
