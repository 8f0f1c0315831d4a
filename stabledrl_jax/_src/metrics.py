"""Logging: pulls the clip and skip statistics out of any optimizer state.

Our transforms keep their norms, thresholds and counters in their states
(:class:`stabledrl_jax.ClipState` and friends). Those states sit wherever the
optimizer puts them: inside an ``optax.chain`` tuple, an
``optax.inject_hyperparams`` state, ``optax.MultiSteps``, the wrapped optimizer
of :func:`stabledrl_jax.skip_spikes`, a ``flax.nnx.Optimizer`` (whose state
wraps every array in a ``Variable``, and whose ``nnx.State`` turns named tuples
into plain mappings), or a framework's trainer holding such an optimizer.
:func:`clip_metrics` walks the whole state and returns one flat dict of
scalars for a metrics logger.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from stabledrl_jax._src import adaptive
from stabledrl_jax._src import clipping


class _Kind(NamedTuple):
  """How to recognise one state type and which metrics it reports."""
  prefix: str
  fields: tuple[str, ...]  # the state NamedTuple's ``_fields``
  # metric name -> function of the state's fields (a mapping of arrays).
  metrics: dict[str, Callable[[Mapping[str, jax.Array]], jax.Array]]


def _field(name: str, dtype: Optional[jnp.dtype] = None
           ) -> Callable[[Mapping[str, jax.Array]], jax.Array]:
  def get(fields: Mapping[str, jax.Array]) -> jax.Array:
    value = fields[name]
    return value if dtype is None else value.astype(dtype)
  return get


_CLIP_METRICS = {
    "global_norm": _field("global_norm"),
    "scale": _field("scale"),
    "num_clipped": _field("num_clipped"),
    "num_nonfinite": _field("num_nonfinite"),
}

_KINDS = (
    _Kind("clip", clipping.ClipState._fields, _CLIP_METRICS),
    _Kind("zscore_clip", adaptive.ZScoreClipState._fields, {
        **_CLIP_METRICS,
        "threshold": _field("threshold"),
        "norm_mean": _field("mean"),
        "norm_std": lambda fields: jnp.sqrt(fields["var"]),
    }),
    _Kind("quantile_clip", adaptive.QuantileClipState._fields, {
        **_CLIP_METRICS,
        "threshold": _field("threshold"),
    }),
    _Kind("skip_spikes", adaptive.SkipSpikesState._fields, {
        "global_norm": _field("global_norm"),
        "threshold": _field("threshold"),
        "skipped": _field("skipped", jnp.int32),
        "num_skipped": _field("num_skipped"),
        "num_nonfinite": _field("num_nonfinite"),
        "consecutive_skips": _field("consecutive_skips"),
    }),
)

# Fields a state may lose when it is turned into a mapping: nnx.State drops
# empty subtrees (an optimizer without state, an empty hyperparams dict).
_OPTIONAL_FIELDS = frozenset({"inner_state", "hyperparams_states"})
_INJECT_FIELDS = ("count", "hyperparams", "hyperparams_states", "inner_state")
_INJECT_TYPES = (optax.InjectHyperparamsState,
                 optax.InjectStatefulHyperparamsState)


def _unwrap(value: Any) -> jax.Array:
  """The array inside ``value`` (a ``flax.nnx.Variable`` holds exactly one)."""
  leaves = jax.tree.leaves(value)
  if len(leaves) != 1:
    raise TypeError(
        f"clip_metrics expected one array in a state field, got {value!r}.")
  return jnp.asarray(leaves[0])


def _as_fields(node: Any, fields: tuple[str, ...]) -> Optional[dict[str, Any]]:
  """``node``'s fields if it is a named tuple of these fields or a mapping
  with exactly them (optional fields may be missing); else None."""
  if isinstance(node, tuple) and getattr(node, "_fields", None) == fields:
    return dict(zip(fields, node))
  if isinstance(node, Mapping):
    keys = set(node.keys())
    if all(isinstance(k, str) for k in keys) and (
        set(fields) - _OPTIONAL_FIELDS <= keys <= set(fields)):
      return {k: node[k] for k in keys}
  return None


def _children(node: Any) -> list[Any]:
  """The direct pytree children of ``node`` (empty for a leaf)."""
  leaves, treedef = jax.tree_util.tree_flatten(
      node, is_leaf=lambda x: x is not node)
  if jax.tree_util.treedef_is_leaf(treedef):
    return []
  return leaves


def _find(node: Any, found: list[tuple[str, Any]]) -> None:
  """Appends ``(prefix, metrics dict)`` for every state in ``node``,
  depth-first, outer states before the ones they wrap."""
  for kind in _KINDS:
    fields = _as_fields(node, kind.fields)
    if fields is not None:
      values = {k: _unwrap(v) for k, v in fields.items() if k != "inner_state"}
      found.append((kind.prefix,
                    {name: get(values) for name, get in kind.metrics.items()}))
      if "inner_state" in fields:
        _find(fields["inner_state"], found)
      return
  if isinstance(node, _INJECT_TYPES):
    fields = node._asdict()
  else:
    fields = _as_fields(node, _INJECT_FIELDS)
  if fields is not None and isinstance(fields["hyperparams"], Mapping):
    scalars = {}
    for name, value in fields["hyperparams"].items():
      value = _unwrap(value)
      if value.ndim == 0:
        scalars[name] = value
    found.append(("hyperparams", scalars))
    if "inner_state" in fields:
      _find(fields["inner_state"], found)
    return
  if hasattr(node, "opt_state") and not isinstance(node, (tuple, Mapping)):
    # An optimizer object (e.g. flax.nnx.Optimizer) or a trainer exposing its
    # optimizer's state.
    _find(node.opt_state, found)
    return
  if hasattr(node, "optimizer") and not isinstance(node, (tuple, Mapping)):
    _find(node.optimizer, found)
    return
  for child in _children(node):
    _find(child, found)


def clip_metrics(opt_state: Any) -> dict[str, jax.Array]:
  """Flat dict of the norms, thresholds and counters of our transforms.

  Finds every state of :func:`unconditional_clip`/:func:`conditional_clip`
  (:class:`ClipState`), :func:`zscore_clip`, :func:`quantile_clip` and
  :func:`skip_spikes` anywhere in ``opt_state``: in ``optax.chain`` tuples,
  ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optax.multi_transform``,
  inside :func:`skip_spikes`, in a ``flax.nnx.Optimizer`` (pass the optimizer,
  its ``opt_state`` or ``nnx.state(optimizer)``: there named tuples become
  mappings and are recognised by their field names), or an object with an
  ``optimizer`` attribute holding one (a trainer). The walk follows the
  state's static structure only, so it runs under ``jax.jit``.

  Metric names per state:

  * :class:`ClipState`: ``global_norm`` (pre-clip), ``scale`` (applied),
    ``num_clipped``, ``num_nonfinite``.
  * :class:`ZScoreClipState`: those four, ``threshold``, ``norm_mean`` and
    ``norm_std`` (the running μ and σ of the norm).
  * :class:`QuantileClipState`: the four of :class:`ClipState` and
    ``threshold``.
  * :class:`SkipSpikesState`: ``global_norm`` (of the incoming update),
    ``threshold``, ``skipped`` (int32 0/1: the last step was skipped),
    ``num_skipped``, ``num_nonfinite``, ``consecutive_skips``.

  Keys: with exactly one of our states the names are used as they are
  (``"global_norm"``, ...). With several, each key is ``"<kind>/<name>"``,
  kind being ``clip``, ``zscore_clip``, ``quantile_clip`` or ``skip_spikes``;
  when a kind occurs more than once it is numbered in the order found
  (depth-first, a wrapper before what it wraps, a chain left to right):
  ``"clip_0/global_norm"``, ``"clip_1/global_norm"``.

  Scalar hyperparameters injected with ``optax.inject_hyperparams`` are
  reported as ``"hyperparams/<name>"`` (``"hyperparams/learning_rate"``), or
  ``"hyperparams_<i>/<name>"`` when several injected states exist, whatever
  transform they belong to; their presence never changes the other keys.

  Values keep their dtypes (float32 norms, int32 counters) and shapes (a state
  replicated by ``jax.pmap`` has a leading device axis).

  Args:
    opt_state: any optimizer state, or a ``flax.nnx.Optimizer``.

  Returns:
    A dict from key to array, sorted by key; empty when no state is found.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from stabledrl_jax import clip_metrics, skip_spikes, unconditional_clip
    >>> tx = optax.chain(unconditional_clip(1.0), optax.sgd(0.1))
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> _, state = tx.update(params, tx.init(params), params)
    >>> {k: round(v.item(), 6) for k, v in clip_metrics(state).items()}
    {'global_norm': 5.0, 'num_clipped': 1, 'num_nonfinite': 0, 'scale': 0.2}
    >>> tx = skip_spikes(optax.chain(
    ...     unconditional_clip(1.0),
    ...     optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)), max_norm=9.0)
    >>> _, state = tx.update(params, tx.init(params), params)
    >>> sorted(clip_metrics(state))  # doctest: +NORMALIZE_WHITESPACE
    ['clip/global_norm', 'clip/num_clipped', 'clip/num_nonfinite',
     'clip/scale', 'hyperparams/learning_rate',
     'skip_spikes/consecutive_skips', 'skip_spikes/global_norm',
     'skip_spikes/num_nonfinite', 'skip_spikes/num_skipped',
     'skip_spikes/skipped', 'skip_spikes/threshold']
  """
  found: list[tuple[str, Any]] = []
  _find(opt_state, found)
  states = [(p, m) for p, m in found if p != "hyperparams"]
  injected = [(p, m) for p, m in found if p == "hyperparams"]
  metrics: dict[str, jax.Array] = {}
  if len(states) == 1:
    metrics.update(states[0][1])
  else:
    _add_prefixed(metrics, states)
  _add_prefixed(metrics, injected)
  return dict(sorted(metrics.items()))


def _add_prefixed(metrics: dict[str, jax.Array],
                  groups: list[tuple[str, dict[str, jax.Array]]]) -> None:
  """Adds ``"<prefix>/<name>"`` keys, numbering prefixes that repeat."""
  totals: dict[str, int] = {}
  for prefix, _ in groups:
    totals[prefix] = totals.get(prefix, 0) + 1
  seen: dict[str, int] = {}
  for prefix, values in groups:
    if totals[prefix] > 1:
      index = seen.get(prefix, 0)
      seen[prefix] = index + 1
      prefix = f"{prefix}_{index}"
    for name, value in values.items():
      metrics[f"{prefix}/{name}"] = value
