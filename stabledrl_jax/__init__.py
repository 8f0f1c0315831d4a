"""stabledrl_jax: stable reinforcement-learning fine-tuning for JAX and optax.

Gradient-side clipping that is exact on any number of devices, and the
StableDRL objective (unconditional ratio capping, self-normalized weights).
"""

from stabledrl_jax.adaptive import QuantileClipState
from stabledrl_jax.adaptive import SkipSpikesState
from stabledrl_jax.adaptive import ZScoreClipState
from stabledrl_jax.adaptive import quantile_clip
from stabledrl_jax.adaptive import skip_spikes
from stabledrl_jax.adaptive import zscore_clip
from stabledrl_jax.clipping import ClipState
from stabledrl_jax.clipping import conditional_clip
from stabledrl_jax.clipping import unconditional_clip
from stabledrl_jax.norms import global_norm
from stabledrl_jax.norms import global_norm_squared
from stabledrl_jax.objectives import self_normalized_weights
from stabledrl_jax.objectives import stabledrl_policy_loss

__version__ = "0.1.0"

__all__ = (
    "ClipState",
    "QuantileClipState",
    "SkipSpikesState",
    "ZScoreClipState",
    "conditional_clip",
    "global_norm",
    "global_norm_squared",
    "quantile_clip",
    "self_normalized_weights",
    "skip_spikes",
    "stabledrl_policy_loss",
    "unconditional_clip",
    "zscore_clip",
)
