"""The bidirectional transformer and its masked-diffusion warm start."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import stabledrl_jax

from . import sampler
from .config import Config
from .sampler import LogitsFn


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


def make_model(cfg: Config, seed: int):
  """Returns ``(apply, params)``: ``apply(params, tokens) -> logits``."""
  graphdef, params = nnx.split(DiffusionLM(cfg, rngs=nnx.Rngs(seed)))

  def apply(params, tokens):
    return nnx.merge(graphdef, params)(tokens)

  return apply, params


def num_params(params) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(params))


def token_logp(apply: LogitsFn, params, prompts: jax.Array,
               completions: jax.Array, masked: jax.Array,
               mask_id: int) -> jax.Array:
  """Per-token log-likelihoods of the completions under diffusion masks.

  Args:
    apply: ``apply(params, tokens [N, 2L]) -> logits [N, L, V]``.
    params: model parameters.
    prompts: ``[B, L]`` int prompt tokens.
    completions: ``[B, L]`` int completion tokens.
    masked: ``[M, B, L]`` bool, True where the completion token is replaced
      by MASK in the model's input.
    mask_id: the MASK token id.

  Returns:
    ``[M, B, L]`` float32 ``log p(completion_i | prompt, masked completion)``
    (differentiable in ``params``): the ``token_logp`` input of
    :func:`stabledrl_jax.diffusion_elbo` and
    :func:`stabledrl_jax.diffusion_eubo`.
  """
  num_mc, batch, length = masked.shape
  noisy = jnp.where(masked, mask_id, completions[None])
  tokens = jnp.concatenate(
      [jnp.broadcast_to(prompts[None], noisy.shape), noisy], axis=-1)
  logits = apply(params, tokens.reshape(num_mc * batch, 2 * length))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logp = logp.reshape(num_mc, batch, length, -1)
  return jnp.take_along_axis(
      logp, jnp.broadcast_to(completions[None], masked.shape)[..., None],
      axis=-1)[..., 0]


def diffusion_loss(apply: LogitsFn, params, key: jax.Array, prompts: jax.Array,
                   targets: jax.Array, cfg: Config) -> jax.Array:
  """Supervised masked-diffusion loss: ``-ELBO / length``, batch mean.

  One mask per sequence, ``t ~ U(t_min, 1)``, and the LLaDA/MDLM ``1/t``
  weighting (:func:`stabledrl_jax.diffusion_elbo` with ``"inverse_t"``).
  """
  completion_mask = jnp.ones(targets.shape, bool)
  masks = stabledrl_jax.sample_diffusion_masks(key, completion_mask, 1,
                                               t_min=cfg.t_min)
  logp = token_logp(apply, params, prompts, targets, masks.masked,
                    cfg.mask_id)
  elbo = stabledrl_jax.diffusion_elbo(logp, masks, completion_mask,
                                      weighting="inverse_t")
  return -jnp.mean(elbo) / cfg.length


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
    prompts = sampler.sample_prompts(key_p, cfg, cfg.warm_batch)
    loss, grads = jax.value_and_grad(
        lambda p: diffusion_loss(apply, p, key_m, prompts,
                                 jnp.sort(prompts, axis=-1), cfg))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.random.key(cfg.warm_seed)
  for i in range(cfg.warm_steps):
    params, opt_state, _ = step(params, opt_state, jax.random.fold_in(key, i))
  reward = sampler.evaluate(apply, params,
                            jax.random.key(10_000 + cfg.warm_seed), cfg)
  return apply, params, reward
