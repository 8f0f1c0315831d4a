"""Type aliases: the Literal ones list exactly the accepted mode strings, and
the public signatures are annotated with them."""

import inspect
import typing

import pytest

import stabledrl_jax
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


def public_functions():
  names = [n for n in stabledrl_jax.__all__
           if inspect.isfunction(getattr(stabledrl_jax, n))]
  assert "unconditional_clip" in names and "kl_penalty" in names
  return [getattr(stabledrl_jax, n) for n in names]


@pytest.mark.parametrize("fn", public_functions(), ids=lambda f: f.__name__)
def test_public_signature_is_annotated(fn):
  signature = inspect.signature(fn)
  assert signature.return_annotation is not inspect.Signature.empty
  hints = typing.get_type_hints(fn)
  for name, param in signature.parameters.items():
    assert name in hints, f"{fn.__name__}({name}) has no annotation"
    assert hints[name] is not str, f"{fn.__name__}({name}) is a bare str"
    if isinstance(param.default, str):
      # A mode string: its Literal alias, which lists the default.
      assert typing.get_origin(hints[name]) is typing.Literal, (fn, name)
      assert param.default in typing.get_args(hints[name]), (fn, name)
