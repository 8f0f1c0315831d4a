"""One RL step of the toy diffusion-LM study, from the library's pieces.

Sequence log-likelihoods come from :func:`stabledrl_jax.sample_diffusion_masks`
and :func:`stabledrl_jax.diffusion_elbo` (optionally
:func:`stabledrl_jax.diffusion_eubo` and :func:`stabledrl_jax.sandwich_logp`),
advantages from :func:`stabledrl_jax.group_advantages`, the losses are
:func:`stabledrl_jax.grpo_policy_loss` on sequence-level ``[B]`` inputs and
:func:`stabledrl_jax.stabledrl_policy_loss`, and the optimizer clips with
:func:`stabledrl_jax.unconditional_clip`. Nothing here re-implements an
estimator or a loss: this module only wires them to the model.
"""

import jax
import jax.numpy as jnp
import optax

import stabledrl_jax

from .config import METHODS
from .config import Config
from .model import token_logp
from .sampler import LogitsFn
from .sampler import sample_completions
from .sampler import sample_prompts
from .sampler import sort_reward


def policy_loss(method: str, seq_logp: jax.Array, old_seq_logp: jax.Array,
                advantages: jax.Array, cfg: Config,
                ratio_logp: jax.Array) -> jax.Array:
  """The only place where the two methods differ.

  Args:
    method: ``"grpo"`` or ``"stabledrl"``.
    seq_logp: ``[B]`` sequence log-likelihood the gradient flows through.
    old_seq_logp: ``[B]`` the sampling policy's ELBO (no gradient).
    advantages: ``[B]`` group advantages.
    cfg: the run's configuration.
    ratio_logp: ``[B]`` the current ELBO, for the importance log-ratio
      ``ratio_logp - old_seq_logp``; the same array as ``seq_logp`` unless
      ``cfg.seq_logp == "sandwich"``.

  Returns:
    The scalar loss.
  """
  if method == "grpo":
    # The sequence-level conditional clip -min(r A, clip(r, 1-eps, 1+eps) A),
    # averaged over the B completions (a fixed 1/G weight within a group).
    loss, _ = stabledrl_jax.grpo_policy_loss(
        seq_logp, old_seq_logp, advantages, eps_low=cfg.clip_eps,
        eps_high=cfg.clip_eps)
    return loss
  if method == "stabledrl":
    loss, _ = stabledrl_jax.stabledrl_policy_loss(
        seq_logp, old_seq_logp, advantages, ratio_logp=ratio_logp,
        max_ratio=cfg.max_ratio, group_size=cfg.group_size)
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
    global norm over the inner steps, from
    :func:`stabledrl_jax.clip_metrics`), ``max_log_ratio`` (largest log-ratio
    the loss saw, noise included), ``bypass_fraction`` (share of samples with
    ``A < 0`` and ``r > 1 + eps``: GRPO's clip does not bound them),
    ``logratio_std`` (batch std of the log-ratio at the first inner step),
    ``num_clipped`` and ``num_nonfinite`` (cumulative counts of clipped and
    non-finite optimizer steps).

  Raises:
    ValueError: unknown ``method``, or ``cfg.seq_logp == "sandwich"`` with
      ``"grpo"`` (GRPO takes its ratio and its gradient from one estimate).
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  sandwich = cfg.seq_logp == "sandwich"
  if sandwich and method != "stabledrl":
    raise ValueError(
        f"seq_logp='sandwich' needs method 'stabledrl', got {method!r}.")
  tx = make_optimizer(cfg)
  completion_mask = jnp.ones((cfg.batch, cfg.length), bool)

  def draw(key):
    return stabledrl_jax.sample_diffusion_masks(
        key, completion_mask, cfg.num_mc, coupling=cfg.coupling,
        t_min=cfg.t_min)

  def elbo(logp, masks):
    return stabledrl_jax.diffusion_elbo(logp, masks, completion_mask,
                                        weighting=cfg.weighting)

  def step(params, opt_state, key):
    key_p, key_s, key_old, key_inner = jax.random.split(key, 4)
    prompts = jnp.repeat(sample_prompts(key_p, cfg, cfg.num_prompts),
                         cfg.group_size, axis=0)
    completions = sample_completions(apply, params, key_s, prompts, cfg)
    rewards = sort_reward(prompts, completions)
    advantages = stabledrl_jax.group_advantages(
        rewards, group_size=cfg.group_size, scale="group")
    old_masks = draw(key_old)
    old_logp = jax.lax.stop_gradient(elbo(
        token_logp(apply, params, prompts, completions, old_masks.masked,
                   cfg.mask_id), old_masks))

    norms, max_log_ratio, bypass, log_ratio_std = [], [], [], None
    for inner in range(cfg.inner_steps):
      key_m, key_n = jax.random.split(jax.random.fold_in(key_inner, inner))
      masks = old_masks if cfg.masks == "coupled" else draw(key_m)
      # Injected noise enters as a noisy old log-likelihood: both losses then
      # see log_ratio = ELBO_new - ELBO_old + sigma * xi.
      noisy_old = old_logp - cfg.logratio_noise * jax.random.normal(
          key_n, old_logp.shape)

      def loss_fn(p, masks=masks, noisy_old=noisy_old):
        logp = token_logp(apply, p, prompts, completions, masks.masked,
                          cfg.mask_id)
        new_elbo = elbo(logp, masks)
        seq_logp = new_elbo
        if sandwich:
          eubo = stabledrl_jax.diffusion_eubo(logp, masks, completion_mask,
                                              beta=cfg.eubo_beta)
          seq_logp = stabledrl_jax.sandwich_logp(new_elbo, eubo, advantages,
                                                 mix=cfg.eubo_mix)
        loss = policy_loss(method, seq_logp, noisy_old, advantages, cfg,
                           ratio_logp=new_elbo)
        return loss, new_elbo - noisy_old

      grads, log_ratio = jax.grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      norms.append(stabledrl_jax.clip_metrics(opt_state)["global_norm"])
      max_log_ratio.append(jnp.max(log_ratio))
      # Where GRPO's conditional clip is bypassed: A < 0 and r > 1 + eps, so
      # the unclipped r A term is the minimum and its gradient grows with r.
      bypass.append(jnp.mean(((advantages < 0)
                              & (log_ratio > jnp.log1p(cfg.clip_eps)))
                             .astype(jnp.float32)))
      if log_ratio_std is None:
        log_ratio_std = jnp.std(log_ratio)

    clip = stabledrl_jax.clip_metrics(opt_state)
    metrics = {
        "reward": jnp.mean(rewards),
        "grad_norm": jnp.max(jnp.stack(norms)),
        "max_log_ratio": jnp.max(jnp.stack(max_log_ratio)),
        "bypass_fraction": jnp.mean(jnp.stack(bypass)),
        "logratio_std": log_ratio_std,
        "num_clipped": clip["num_clipped"],
        "num_nonfinite": clip["num_nonfinite"],
    }
    return params, opt_state, metrics

  return jax.jit(step)
