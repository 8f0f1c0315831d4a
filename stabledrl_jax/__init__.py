"""stabledrl_jax: stable reinforcement-learning fine-tuning for JAX and optax.

Gradient-side clipping that is exact on any number of devices, and the
StableDRL objective (unconditional ratio capping, self-normalized weights),
and Monte Carlo likelihood estimators for masked-diffusion language models.
"""

from stabledrl_jax._src.adaptive import QuantileClipState
from stabledrl_jax._src.adaptive import SkipSpikesState
from stabledrl_jax._src.adaptive import ZScoreClipState
from stabledrl_jax._src.adaptive import quantile_clip
from stabledrl_jax._src.adaptive import skip_spikes
from stabledrl_jax._src.adaptive import zscore_clip
from stabledrl_jax._src.advantages import gae_advantages
from stabledrl_jax._src.advantages import group_advantages
from stabledrl_jax._src.advantages import rloo_advantages
from stabledrl_jax._src.clipping import ClipState
from stabledrl_jax._src.clipping import conditional_clip
from stabledrl_jax._src.clipping import unconditional_clip
from stabledrl_jax._src.diffusion import DiffusionMasks
from stabledrl_jax._src.diffusion import diffusion_elbo
from stabledrl_jax._src.diffusion import diffusion_eubo
from stabledrl_jax._src.diffusion import sample_diffusion_masks
from stabledrl_jax._src.diffusion import sandwich_logp
from stabledrl_jax._src.metrics import clip_metrics
from stabledrl_jax._src.normalization import RunningStats
from stabledrl_jax._src.normalization import init_running_stats
from stabledrl_jax._src.normalization import normalize_rewards
from stabledrl_jax._src.normalization import update_running_stats
from stabledrl_jax._src.norms import global_norm
from stabledrl_jax._src.norms import global_norm_squared
from stabledrl_jax._src.objectives import aggregate_loss
from stabledrl_jax._src.objectives import entropy_bonus
from stabledrl_jax._src.objectives import grpo_policy_loss
from stabledrl_jax._src.objectives import kl_penalty
from stabledrl_jax._src.objectives import self_normalized_weights
from stabledrl_jax._src.objectives import stabledrl_policy_loss
from stabledrl_jax._src.objectives import value_loss

__version__ = "0.2.0.dev0"

__all__ = (
    "ClipState",
    "DiffusionMasks",
    "QuantileClipState",
    "RunningStats",
    "SkipSpikesState",
    "ZScoreClipState",
    "aggregate_loss",
    "clip_metrics",
    "conditional_clip",
    "diffusion_elbo",
    "diffusion_eubo",
    "entropy_bonus",
    "gae_advantages",
    "global_norm",
    "global_norm_squared",
    "group_advantages",
    "grpo_policy_loss",
    "init_running_stats",
    "kl_penalty",
    "normalize_rewards",
    "quantile_clip",
    "rloo_advantages",
    "sample_diffusion_masks",
    "sandwich_logp",
    "self_normalized_weights",
    "skip_spikes",
    "stabledrl_policy_loss",
    "unconditional_clip",
    "update_running_stats",
    "value_loss",
    "zscore_clip",
)
