"""Type aliases shared by the library's signatures.

One place for the small aliases the public functions are annotated with: array
inputs, mapped axis names, pytrees of updates and the ``Literal`` type of every
mode string an argument accepts. The ``Literal`` aliases list exactly the
strings the functions check for; passing anything else raises ``ValueError``
at run time, and a type checker flags it before.
"""

from collections.abc import Hashable
from typing import Any, Literal, Union

import jax

ArrayLike = jax.typing.ArrayLike
"""Anything ``jnp.asarray`` accepts: a ``jax.Array``, NumPy array or scalar."""

AxisName = Union[Hashable, tuple[Hashable, ...]]
"""A mapped axis name (``pmap``/``shard_map``), or a tuple of such names."""

Scalar = Union[float, jax.Array]
"""A scalar hyperparameter: a Python number or a (possibly traced) 0-d array,
e.g. from ``optax.inject_hyperparams``."""

Updates = Any
"""A pytree of gradients or updates, as optax's ``Updates``."""

PyTree = Any
"""A pytree of arrays (nested tuples, lists, dicts and registered nodes)."""

NonFinitePolicy = Literal["zero", "propagate"]
"""``nonfinite=`` of the clipping transforms."""

LossAggregation = Literal["token-mean", "seq-mean-token-mean",
                          "seq-mean-token-sum", "seq-mean-token-sum-norm"]
"""``loss_agg=`` of the token-level losses (policy, value, entropy)."""

RatioLevel = Literal["token", "sequence"]
"""``ratio_level=`` of ``grpo_policy_loss``: PPO/GRPO or GSPO ratios."""

KLKind = Literal["k1", "k2", "k3"]
"""``kind=`` of ``kl_penalty``: Schulman's k1, k2 and k3 estimators."""

AdvantageScale = Literal["group", "batch", "none"]
"""``scale=`` of ``group_advantages``: divide by the group std, the batch std,
or nothing."""

MaskCoupling = Literal["independent", "complementary"]
"""``coupling=`` of the diffusion mask sampler."""

ElboWeighting = Literal["mean", "inverse_t"]
"""``weighting=`` of the diffusion ELBO estimator."""
