"""Sequence log-likelihood estimators for masked-diffusion language models.

A masked-diffusion LM (LLaDA, MDLM) has no exact sequence likelihood; RL
fine-tuning uses Monte Carlo estimates from ``M`` random maskings of each
completion. The estimators here take the model's outputs on those maskings:

* ``token_logp [M, B, T]``: ``log p(true token at i | the input with sample
  m's masked positions replaced by MASK)``, for every position (only the
  masked completion positions are read);
* ``masks``: a :class:`DiffusionMasks` from :func:`sample_diffusion_masks`
  (or built by hand), saying which positions each sample masked and at which
  masking rate ``t``;
* ``completion_mask [B, T]``: 0/1 (or bool) selection of the completion
  tokens (1) among prompt and padding positions (0).

They return one float32 value per sequence, ``[B]``, ready for
:func:`stabledrl_policy_loss` or :func:`grpo_policy_loss`. Gradients flow
through ``token_logp`` only. Everything is per sequence, so the estimators
need no collective: under ``shard_map`` each device evaluates its own rows.

References:
  Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
  Models <https://arxiv.org/abs/2603.06743>`_, 2026 (code:
  JianyuanZhong/StableDRL, ``networks/llada_svpo.py``).
  Wang et al., `SPG: Sandwiched Policy Gradient for Masked Diffusion Language
  Models <https://arxiv.org/abs/2510.09541>`_, 2025.
  Nie et al., `Large Language Diffusion Models (LLaDA)
  <https://arxiv.org/abs/2502.09992>`_, 2025.
  Sahoo et al., `Simple and Effective Masked Diffusion Language Models (MDLM)
  <https://arxiv.org/abs/2406.07524>`_, 2024.
  Gong et al., `DiffuCoder: Understanding and Improving Masked Diffusion
  Models for Code Generation <https://arxiv.org/abs/2506.20639>`_, 2025
  (coupled sampling).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from stabledrl_jax._src import validation
from stabledrl_jax._src.reductions import float_dtype
from stabledrl_jax._src.reductions import safe_divide
from stabledrl_jax._src.reductions import valid_mask
from stabledrl_jax._src.typing import ElboWeighting
from stabledrl_jax._src.typing import MaskCoupling
from stabledrl_jax._src.typing import Scalar
from stabledrl_jax._src.validation import check_int
from stabledrl_jax._src.validation import check_ndim
from stabledrl_jax._src.validation import check_same_shape

COUPLINGS = ("independent", "complementary")
ELBO_WEIGHTINGS = ("mean", "inverse_t")
# The reference's guard on divisors: max(x, 1e-8).
_TINY = 1e-8


class DiffusionMasks(NamedTuple):
  """Random maskings of a batch of completions, ``M`` samples per sequence.

  Attributes:
    masked: ``[M, B, T]`` bool, True where sample ``m`` replaced the token of
      sequence ``b`` at position ``t`` by MASK.
    t: ``[M, B]`` float32 masking rate of each sample (the probability with
      which each completion token was masked).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from stabledrl_jax import sample_diffusion_masks
    >>> masks = sample_diffusion_masks(jax.random.key(0), jnp.ones((2, 5)), 4)
    >>> masks.masked.shape, masks.t.shape
    ((4, 2, 5), (4, 2))
  """
  masked: jax.Array
  t: jax.Array


def sample_diffusion_masks(
    key: jax.Array,
    completion_mask: jax.typing.ArrayLike,
    num_samples: int,
    *,
    coupling: MaskCoupling = "independent",
    t_min: Scalar = 1e-3,
    t_max: Scalar = 1.0,
) -> DiffusionMasks:
  """Samples ``num_samples`` maskings of each completion (forward process).

  * ``"independent"``: for each sample and sequence ``t ~ U(t_min, t_max)``,
    and each completion token is masked with probability ``t``,
    independently.
  * ``"complementary"``: samples come in pairs ``(2k, 2k + 1)``; sample
    ``2k`` is drawn as above and sample ``2k + 1`` masks exactly the
    completion tokens that ``2k`` left visible, with rate ``1 − t``. Every
    completion token is then masked in exactly one sample of each pair, so
    each token's log-likelihood is read once per pair: the variance
    reduction of DiffuCoder's coupled GRPO.

  Positions where ``completion_mask`` is 0 (prompt, padding) are never
  masked.

  Args:
    key: a ``jax.random`` key.
    completion_mask: ``[B, T]`` 0/1 (or bool) selection of completion tokens.
    num_samples: static number ``M`` ≥ 1 of maskings per sequence; even for
      ``"complementary"``.
    coupling: ``"independent"`` or ``"complementary"``.
    t_min: lowest masking rate, in ``[0, t_max]``.
    t_max: highest masking rate, in ``[t_min, 1]``.

  Returns:
    A :class:`DiffusionMasks` with ``masked [M, B, T]`` and ``t [M, B]``.

  Raises:
    ValueError: ``completion_mask`` not 2-D or holding a negative value,
      ``num_samples`` not a positive int (or odd with ``"complementary"``),
      unknown ``coupling``, ``t_min``/``t_max`` not
      ``0 ≤ t_min ≤ t_max ≤ 1``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from stabledrl_jax import sample_diffusion_masks
    >>> completion = jnp.array([[0, 1, 1, 1, 0]])  # one prompt token, padding
    >>> masks = sample_diffusion_masks(jax.random.key(0), completion, 2,
    ...                                coupling="complementary")
    >>> masks.masked.sum(axis=0).astype(int)  # each completion token once
    Array([[0, 1, 1, 1, 0]], dtype=int32)
    >>> bool(jnp.allclose(masks.t.sum(axis=0), 1.0))  # rates t and 1 − t
    True
  """
  validation.check_choice("coupling", coupling, COUPLINGS)
  check_int("num_samples", num_samples)
  if coupling == "complementary" and num_samples % 2:
    raise ValueError(
        "num_samples must be even with coupling='complementary' (samples "
        f"come in pairs), got num_samples={num_samples}.")
  low = validation.concrete_scalar("t_min", t_min)
  high = validation.concrete_scalar("t_max", t_max)
  if low is not None and not 0 <= low <= 1:
    raise ValueError(f"t_min must be in [0, 1], got {t_min!r}.")
  if high is not None and not 0 <= high <= 1:
    raise ValueError(f"t_max must be in [0, 1], got {t_max!r}.")
  if low is not None and high is not None and low > high:
    raise ValueError(
        f"t_min must be <= t_max, got t_min={t_min!r} and t_max={t_max!r}.")
  completion_mask = jnp.asarray(completion_mask)
  check_ndim("completion_mask", completion_mask, 2)
  completion = valid_mask(completion_mask, completion_mask,
                          name="completion_mask")
  draws = num_samples // 2 if coupling == "complementary" else num_samples
  key_t, key_u = jax.random.split(key)
  t = jax.random.uniform(key_t, (draws,) + completion.shape[:1], jnp.float32,
                         minval=t_min, maxval=t_max)
  u = jax.random.uniform(key_u, (draws,) + completion.shape, jnp.float32)
  masked = (u < t[..., None]) & completion
  if coupling == "complementary":
    masked = jnp.stack([masked, completion & ~masked], axis=1)
    masked = masked.reshape((num_samples,) + completion.shape)
    t = jnp.stack([t, 1 - t], axis=1).reshape(num_samples, -1)
  return DiffusionMasks(masked=masked, t=t)


def _check_inputs(token_logp: jax.typing.ArrayLike, masks: DiffusionMasks,
                  completion_mask: jax.typing.ArrayLike
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Checks the estimators' inputs.

  Returns:
    Float ``token_logp``, the ``[M, B, T]`` bool selection of masked
    completion tokens and the ``[B, T]`` bool completion selection.
  """
  token_logp = jnp.asarray(token_logp)
  check_ndim("token_logp", token_logp, 3)
  if not (isinstance(masks, tuple) and len(masks) == 2):
    raise ValueError(
        "masks must be a DiffusionMasks(masked, t), got "
        f"{type(masks).__name__}.")
  masked, t = masks
  check_same_shape("masks.masked", masked, "token_logp", token_logp)
  if jnp.shape(t) != token_logp.shape[:2]:
    raise ValueError(
        f"masks.t must have shape [M, B] = {token_logp.shape[:2]}, got shape "
        f"{jnp.shape(t)}.")
  if jnp.shape(completion_mask) != token_logp.shape[1:]:
    raise ValueError(
        f"completion_mask must have shape [B, T] = {token_logp.shape[1:]}, "
        f"got shape {jnp.shape(completion_mask)}.")
  completion = valid_mask(completion_mask, completion_mask,
                          name="completion_mask")
  selected = valid_mask(masked, masked, name="masks.masked") & completion
  return token_logp.astype(float_dtype(token_logp)), selected, completion


def diffusion_elbo(
    token_logp: jax.typing.ArrayLike,
    masks: DiffusionMasks,
    completion_mask: jax.typing.ArrayLike,
    *,
    weighting: ElboWeighting = "mean",
) -> jax.Array:
  """Monte Carlo evidence lower bound (ELBO) of each sequence's log-likelihood.

  With ``m = masked ∧ completion`` for each sample:

  * ``"mean"``: per sample ``Σ_i m_i logp_i / max(Σ_i m_i, 1e-8)`` — the mean
    log-likelihood of the masked completion tokens, 0 when none is masked —
    then the mean over samples. This is the StableDRL / SPG reference.
  * ``"inverse_t"``: per sample ``Σ_i m_i logp_i / t``, then the mean over
    samples: the LLaDA/MDLM bound, unbiased for a lower bound on
    ``log p(completion | prompt)`` when ``t ~ U(0, 1)``. A sample with
    ``t = 0`` masks nothing and contributes 0.

  Args:
    token_logp: ``[M, B, T]`` log-probabilities of the true tokens under each
      masking (values at unmasked positions are ignored, even if NaN).
    masks: :class:`DiffusionMasks` with ``masked [M, B, T]``, ``t [M, B]``.
    completion_mask: ``[B, T]`` 0/1 (or bool) selection of completion tokens.
    weighting: ``"mean"`` or ``"inverse_t"``.

  Returns:
    ``[B]`` float32 (or wider) estimates; gradients flow through
    ``token_logp``.

  Raises:
    ValueError: shapes that do not match ``[M, B, T]`` / ``[M, B]`` /
      ``[B, T]``, a concrete negative mask value, unknown ``weighting``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import DiffusionMasks, diffusion_elbo
    >>> logp = jnp.log(jnp.array([[[0.5, 0.25, 0.5]], [[0.5, 0.5, 0.5]]]))
    >>> masks = DiffusionMasks(
    ...     masked=jnp.array([[[True, True, False]], [[False, False, True]]]),
    ...     t=jnp.array([[0.5], [0.25]]))
    >>> completion = jnp.ones((1, 3))
    >>> # Sample 0: (log .5 + log .25) / 2; sample 1: log .5.
    >>> round(float(diffusion_elbo(logp, masks, completion)[0]), 4)
    -0.8664
    >>> # Sample 0: (log .5 + log .25) / 0.5; sample 1: log .5 / 0.25.
    >>> round(float(diffusion_elbo(logp, masks, completion,
    ...                            weighting="inverse_t")[0]), 4)
    -3.4657
  """
  validation.check_choice("weighting", weighting, ELBO_WEIGHTINGS)
  token_logp, selected, _ = _check_inputs(token_logp, masks, completion_mask)
  total = jnp.sum(jnp.where(selected, token_logp, 0), axis=-1)
  if weighting == "mean":
    count = jnp.sum(selected, axis=-1).astype(total.dtype)
    per_sample = total / jnp.maximum(count, _TINY)
  else:
    # t is the sampled mask rate, not a function of the parameters.
    t = jax.lax.stop_gradient(jnp.asarray(masks[1]).astype(total.dtype))
    per_sample = safe_divide(total, t)
  return jnp.mean(per_sample, axis=0)


def diffusion_eubo(
    token_logp: jax.typing.ArrayLike,
    masks: DiffusionMasks,
    completion_mask: jax.typing.ArrayLike,
    *,
    beta: Scalar = 1.5,
) -> jax.Array:
  """SPG's evidence upper bound (EUBO) of each sequence's log-likelihood.

  With ``m = masked ∧ completion`` and each sample's empirical masking rate
  ``t̂ = Σ_i m_i / max(Σ_i c_i, 1e-8)`` (``c`` the completion mask), per
  token ``a_i = mean over samples of p_i^β m_i / max(t̂, 1e-8)`` where
  ``p_i^β = exp(β logp_i)``; the result is the mean of ``log a_i`` over the
  tokens with ``a_i > 0`` (those masked in at least one sample; 0 when there
  is none), divided by ``β``. This is the bound as the StableDRL/SPG code
  computes it.

  ``log a_i`` is evaluated as a log-sum-exp over samples, so a token whose
  ``p^β`` underflows float32 (``β logp < −103``) keeps its (very negative)
  term; the reference, which forms ``p^β`` directly, drops such a token from
  the mean. The two agree wherever ``p^β`` is representable.

  Args:
    token_logp: ``[M, B, T]`` log-probabilities of the true tokens under each
      masking (values at unmasked positions are ignored, even if NaN).
    masks: :class:`DiffusionMasks` (only ``masked`` is used).
    completion_mask: ``[B, T]`` 0/1 (or bool) selection of completion tokens.
    beta: the bound's exponent ``β``; finite and > 0 (the reference uses 1.5).

  Returns:
    ``[B]`` float32 (or wider) estimates; gradients flow through
    ``token_logp``.

  Raises:
    ValueError: shapes that do not match, a concrete negative mask value,
      ``beta`` not finite and > 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import DiffusionMasks, diffusion_eubo
    >>> logp = jnp.log(jnp.array([[[0.25, 0.5]], [[0.25, 0.5]]]))
    >>> masks = DiffusionMasks(masked=jnp.array([[[True, False]],
    ...                                          [[True, True]]]),
    ...                        t=jnp.array([[0.5], [1.0]]))
    >>> # β = 1, t̂ = 1/2 and 1: a_0 = (.25 / .5 + .25 / 1) / 2 = .375,
    >>> # a_1 = (0 + .5 / 1) / 2 = .25; the result is (log .375 + log .25) / 2.
    >>> eubo = diffusion_eubo(logp, masks, jnp.ones((1, 2)), beta=1.0)
    >>> round(float(eubo[0]), 4)
    -1.1836

  References:
    Wang et al., `SPG: Sandwiched Policy Gradient for Masked Diffusion
    Language Models <https://arxiv.org/abs/2510.09541>`_, 2025.
  """
  validation.check_positive("beta", beta)
  token_logp, selected, completion = _check_inputs(
      token_logp, masks, completion_mask)
  dtype = token_logp.dtype
  num_masked = jnp.sum(selected, axis=-1).astype(dtype)  # [M, B]
  num_completion = jnp.sum(completion, axis=-1).astype(dtype)  # [B]
  t_hat = num_masked / jnp.maximum(num_completion, _TINY)
  log_t_hat = jnp.log(jnp.maximum(t_hat, _TINY))
  # log of each sample's term p^β m / t̂ where masked, -inf elsewhere.
  log_term = jnp.where(selected, beta * token_logp - log_t_hat[..., None],
                       -jnp.inf)
  peak = jax.lax.stop_gradient(jnp.max(log_term, axis=0))
  peak = jnp.where(jnp.isfinite(peak), peak, 0)
  total = jnp.sum(jnp.where(selected, jnp.exp(log_term - peak), 0), axis=0)
  present = total > 0
  num_samples = token_logp.shape[0]
  log_a = peak + jnp.log(jnp.where(present, total, 1)) - jnp.log(
      jnp.asarray(num_samples, dtype))
  summed = jnp.sum(jnp.where(present, log_a, 0), axis=-1)
  count = jnp.sum(present, axis=-1).astype(dtype)
  return summed / jnp.maximum(count, _TINY) / beta


def sandwich_logp(
    elbo: jax.typing.ArrayLike,
    eubo: jax.typing.ArrayLike,
    advantages: jax.typing.ArrayLike,
    *,
    mix: Scalar = 0.5,
) -> jax.Array:
  """SPG's sandwiched log-likelihood: the lower bound for A > 0, a mix else.

  ``elbo`` where ``A > 0``, else ``mix · eubo + (1 − mix) · elbo``. Raising a
  lower bound of the likelihood of a good completion raises the likelihood;
  lowering an *upper* bound is what lowers the likelihood of a bad one, so the
  gradient of a ``A ≤ 0`` sequence goes (partly) through the EUBO. ``mix=1``
  is the reference's ``logp_estimation="eubo"``, ``mix=0`` its ``"elbo"``,
  ``mix=0.5`` its default ``"mix"``.

  Args:
    elbo: ``[B]`` lower-bound estimates (e.g. :func:`diffusion_elbo`).
    eubo: ``[B]`` upper-bound estimates (e.g. :func:`diffusion_eubo`).
    advantages: ``[B]`` advantages; only their sign is used.
    mix: weight of the EUBO for ``A ≤ 0``, in ``[0, 1]``.

  Returns:
    ``[B]`` log-likelihood estimates; gradients flow through ``elbo`` and
    ``eubo``.

  Raises:
    ValueError: inputs not all of the same 1-D shape, ``mix`` outside
      ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import sandwich_logp
    >>> sandwich_logp(jnp.array([-2.0, -2.0]), jnp.array([-1.0, -1.0]),
    ...               jnp.array([1.0, -1.0]))
    Array([-2. , -1.5], dtype=float32)

  References:
    Wang et al., `SPG: Sandwiched Policy Gradient for Masked Diffusion
    Language Models <https://arxiv.org/abs/2510.09541>`_, 2025.
  """
  number = validation.concrete_scalar("mix", mix)
  if number is not None and not 0 <= number <= 1:
    raise ValueError(f"mix must be in [0, 1], got {mix!r}.")
  elbo = jnp.asarray(elbo)
  check_ndim("elbo", elbo, 1)
  check_same_shape("eubo", eubo, "elbo", elbo)
  check_same_shape("advantages", advantages, "elbo", elbo)
  dtype = jnp.promote_types(float_dtype(elbo), jnp.result_type(eubo))
  elbo = elbo.astype(dtype)
  mixed = mix * jnp.asarray(eubo).astype(dtype) + (1 - mix) * elbo
  return jnp.where(jnp.asarray(advantages) > 0, elbo, mixed)
