"""The Literal aliases list exactly the mode strings the functions accept."""

import typing

import pytest

from stabledrl_jax._src import advantages
from stabledrl_jax._src import clipping
from stabledrl_jax._src import diffusion
from stabledrl_jax._src import objectives
from stabledrl_jax._src import typing as sdrl_typing


@pytest.mark.parametrize("alias, accepted", [
    (sdrl_typing.NonFinitePolicy, clipping.NONFINITE_POLICIES),
    (sdrl_typing.LossAggregation, objectives.LOSS_AGGREGATIONS),
    (sdrl_typing.RatioLevel, objectives.RATIO_LEVELS),
    (sdrl_typing.KLKind, objectives.KL_KINDS),
    (sdrl_typing.AdvantageScale, advantages.ADVANTAGE_SCALES),
    (sdrl_typing.MaskCoupling, diffusion.COUPLINGS),
    (sdrl_typing.ElboWeighting, diffusion.ELBO_WEIGHTINGS),
])
def test_literal_alias_matches_the_accepted_strings(alias, accepted):
  assert set(typing.get_args(alias)) == set(accepted)
  assert len(typing.get_args(alias)) == len(accepted)
