"""Every knob of one run of the toy diffusion-LM study."""

import dataclasses

METHODS = ("grpo", "stabledrl")
MASK_MODES = ("independent", "coupled")
COUPLINGS = ("independent", "complementary")
WEIGHTINGS = ("inverse_t", "mean")
SEQUENCE_LOGPS = ("elbo", "sandwich")


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
  # Sequence log-likelihood estimate (stabledrl_jax.diffusion_elbo) and the
  # noise of the importance ratio. `masks`: "independent" draws fresh masks
  # for the old and the new ELBO, "coupled" reuses the old ELBO's masks
  # (common random numbers). `coupling`: how the `num_mc` masks of one
  # estimate are drawn (stabledrl_jax.sample_diffusion_masks).
  masks: str = "independent"
  coupling: str = "independent"
  num_mc: int = 1
  weighting: str = "inverse_t"
  logratio_noise: float = 0.0
  # "elbo": the gradient flows through the ELBO; "sandwich" (StableDRL only):
  # through stabledrl_jax.sandwich_logp (ELBO for A > 0, a mix of the EUBO and
  # the ELBO otherwise), the importance ratio still from the ELBO.
  seq_logp: str = "elbo"
  eubo_beta: float = 1.5
  eubo_mix: float = 0.5

  def __post_init__(self):
    for name, choices in (("masks", MASK_MODES), ("coupling", COUPLINGS),
                          ("weighting", WEIGHTINGS),
                          ("seq_logp", SEQUENCE_LOGPS)):
      if getattr(self, name) not in choices:
        raise ValueError(f"{name} must be one of {choices}, got "
                         f"{getattr(self, name)!r}.")
    if self.coupling == "complementary" and self.num_mc % 2:
      raise ValueError("num_mc must be even with coupling='complementary', "
                       f"got {self.num_mc!r}.")
    for name in ("length", "vocab", "d_model", "num_heads", "num_layers",
                 "mlp_dim", "warm_batch", "eval_prompts", "rl_steps",
                 "num_prompts", "group_size", "inner_steps", "unmask_steps",
                 "num_mc"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}.")
    if self.warm_steps < 0:
      raise ValueError(f"warm_steps must be >= 0, got {self.warm_steps!r}.")
    for name in ("lr", "warm_lr", "max_norm", "clip_eps", "max_ratio",
                 "temperature", "eubo_beta"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}.")
    if not 0 < self.t_min < 1:
      raise ValueError(f"t_min must be in (0, 1), got {self.t_min!r}.")
    if not self.logratio_noise >= 0:
      raise ValueError(
          f"logratio_noise must be >= 0, got {self.logratio_noise!r}.")
    if not 0 <= self.eubo_mix <= 1:
      raise ValueError(f"eubo_mix must be in [0, 1], got {self.eubo_mix!r}.")
    if self.unmask_steps > self.length:
      raise ValueError(f"unmask_steps must be <= length ({self.length}), got "
                       f"{self.unmask_steps!r}.")

  @property
  def mask_id(self) -> int:
    return self.vocab

  @property
  def batch(self) -> int:
    return self.num_prompts * self.group_size
