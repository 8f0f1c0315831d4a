"""One RL step of the toy diffusion-LM study."""

import jax
import jax.numpy as jnp
import optax

import stabledrl_jax

from .config import Config, METHODS
from .model import draw_masks, elbo_from_masks
from .sampler import LogitsFn, sample_completions, sample_prompts, sort_reward


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
