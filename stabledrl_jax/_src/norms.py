"""Float32 global norms, exact on one device, under pmap/shard_map and across processes.

Each leaf is squared and summed in (at least) float32 before anything is added
across leaves or devices, so low-precision trees neither overflow (an fp16
tree of 300s) nor lose mass to rounding (a thousand bf16 leaves of 1.0).

Three ways to say how a tree is laid out over devices:

* neither ``axis_name`` nor ``partition_specs``: the tree is whole here (one
  device, a replicated data-parallel gradient after ``pmean``, or global
  ``jax.Array``s under ``jax.jit``, where XLA inserts the reduction itself);
* ``axis_name``: inside ``pmap``/``shard_map`` every leaf is a disjoint block
  split over those axes; one ``psum``;
* ``partition_specs``: a pytree of ``PartitionSpec`` (shard_map's
  ``in_specs``); each leaf is summed over exactly the mesh axes its spec names,
  replicated leaves are counted once, one ``psum`` per distinct set of axes.
"""

from collections.abc import Hashable, Iterator
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from stabledrl_jax._src import distributed
from stabledrl_jax._src.distributed import AxisName


def is_counted(leaf: Any) -> bool:
  """True for leaves that enter a norm: floating or complex arrays/scalars."""
  if isinstance(leaf, (float, complex)):
    return True
  if leaf is None or not hasattr(leaf, "dtype"):
    return False
  return bool(jnp.issubdtype(leaf.dtype, jnp.inexact))


def _sum_of_squares(leaf: jax.Array) -> jax.Array:
  """``sum(|leaf|**2)`` accumulated in float32 (float64 leaves keep float64)."""
  leaf = jnp.asarray(leaf)
  # finfo of a complex dtype describes its real part. Every float narrower
  # than 64 bits (fp8, fp16, bf16, fp32) is accumulated in float32.
  wide = jnp.finfo(leaf.dtype).bits == 64
  real_dtype = jnp.float64 if wide else jnp.float32
  if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
    re = jnp.real(leaf).astype(real_dtype)
    im = jnp.imag(leaf).astype(real_dtype)
    return jnp.sum(re * re + im * im)
  x = leaf.astype(real_dtype)
  return jnp.sum(x * x)


def _spec_axes(spec: PartitionSpec) -> tuple[Hashable, ...]:
  """The mesh axes a ``PartitionSpec`` shards over, sorted, each once."""
  axes = set()
  for entry in spec:
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
      continue
    axes.update(entry if isinstance(entry, tuple) else (entry,))
  return tuple(sorted(axes, key=str))


def leaf_partition_specs(tree: Any, partition_specs: Any) -> list[PartitionSpec]:
  """The ``PartitionSpec`` of each leaf of ``tree``, in ``jax.tree.leaves`` order.

  ``partition_specs`` may be a prefix of ``tree``, as shard_map's ``in_specs``:
  one spec stands for every leaf of the subtree it faces (one ``P()`` for a
  whole replicated subtree).

  Raises:
    ValueError: ``partition_specs`` is not a prefix of ``tree`` (JAX's message,
      which names the key path and the types, follows ours) or one of its
      leaves is not a ``PartitionSpec``.
  """
  is_spec = lambda x: isinstance(x, PartitionSpec)
  for spec in jax.tree.leaves(partition_specs, is_leaf=is_spec):
    if not is_spec(spec):
      raise ValueError(
          f"partition_specs leaves must be PartitionSpec, got {spec!r}.")
  try:
    # A copy of each spec at every leaf of the subtree it faces.
    broadcast = jax.tree.broadcast(partition_specs, tree, is_leaf=is_spec)
  except ValueError as error:
    raise ValueError(
        "partition_specs must be a prefix of the updates' tree (as shard_map's "
        f"in_specs): {error}") from error
  return jax.tree.leaves(broadcast, is_leaf=is_spec)


def check_params_layout(params: Any, partition_specs: Any) -> None:
  """At ``init``: raises when ``partition_specs`` does not match ``params``."""
  if partition_specs is not None and params is not None:
    leaf_partition_specs(params, partition_specs)


def check_layout(axis_name: Optional[AxisName], partition_specs: Any) -> None:
  """Raises when both ``axis_name`` and ``partition_specs`` are given."""
  if axis_name is not None and partition_specs is not None:
    raise ValueError(
        "Give axis_name or partition_specs, not both: got "
        f"axis_name={axis_name!r} and partition_specs={partition_specs!r}.")


def _grouped_sums(tree: Any, partition_specs: Any) -> Iterator[
    tuple[tuple[Hashable, ...], jax.Array]]:
  """Yields (axes, local float32 sum of squares) for each distinct axis set."""
  leaves = jax.tree.leaves(tree)
  specs = leaf_partition_specs(tree, partition_specs)
  groups: dict[tuple[Hashable, ...], list[jax.Array]] = {}
  for leaf, spec in zip(leaves, specs):
    if is_counted(leaf):
      groups.setdefault(_spec_axes(spec), []).append(_sum_of_squares(leaf))
  for axes, sums in groups.items():
    yield axes, _add(sums)


def _add(values: list[jax.Array]) -> jax.Array:
  total = jnp.zeros((), jnp.float32)
  for value in values:
    total = total + value
  return total


def global_norm_squared(
    tree: Any,
    *,
    axis_name: Optional[AxisName] = None,
    partition_specs: Any = None,
) -> jax.Array:
  """Float32 squared L2 norm of the floating leaves of ``tree``.

  Same arguments and semantics as :func:`global_norm`; returns the square so
  that callers needing ``||g||²`` do not take a square root and square again.

  Args:
    tree: a pytree of arrays (inside ``pmap``/``shard_map``, the local blocks).
    axis_name: see :func:`global_norm`.
    partition_specs: see :func:`global_norm`.

  Returns:
    A float32 scalar, ``Σ |x|²`` over every floating leaf and device.

  Raises:
    ValueError: as :func:`global_norm`.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(global_norm_squared({"a": jnp.ones(3), "b": jnp.ones(1)}))
    4.0
  """
  check_layout(axis_name, partition_specs)
  if partition_specs is None:
    counted = [_sum_of_squares(x) for x in jax.tree.leaves(tree)
               if is_counted(x)]
    return distributed.all_sum(_add(counted), axis_name).astype(jnp.float32)
  total = jnp.zeros((), jnp.float32)
  for axes, local in _grouped_sums(tree, partition_specs):
    total = total + distributed.all_sum(local, axes)
  return total.astype(jnp.float32)


def global_norm(
    tree: Any,
    *,
    axis_name: Optional[AxisName] = None,
    partition_specs: Any = None,
) -> jax.Array:
  """Float32 L2 norm of all floating (and complex) leaves of ``tree``.

  Every leaf is squared and summed in float32 (fp16/bf16 are upcast first,
  complex leaves contribute ``|z|²``) before any addition across leaves or
  devices. Integer, bool and None leaves do not count.

  Args:
    tree: a pytree of arrays, e.g. gradients. Inside ``pmap``/``shard_map``,
      the local blocks.
    axis_name: name (or tuple of names) of the mapped axes every leaf is split
      over; the local sum of squares is ``psum``'d once. For data-parallel
      gradients that are *whole* on each device, ``pmean`` them first and pass
      no axis.
    partition_specs: a pytree of ``jax.sharding.PartitionSpec`` with the
      structure of ``tree`` or a prefix of it, exactly as shard_map's
      ``in_specs`` (one ``P()`` may stand for a whole replicated subtree).
      Each leaf is summed over the mesh axes its spec names; a leaf whose spec
      names none is replicated and counted once. One ``psum`` per distinct
      set of axes. Mutually exclusive with ``axis_name``.

  Returns:
    A float32 scalar, identical on every device that took part.

  Raises:
    ValueError: both ``axis_name`` and ``partition_specs`` are given, or
      ``partition_specs`` is not a prefix of ``tree``'s structure.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(global_norm({"w": jnp.full((2,), 3.0), "b": jnp.array([4.0])}))
    5.830951...
    >>> tree = [jnp.full((4,), 300.0, jnp.float16)]  # optax gives inf here
    >>> float(global_norm(tree))
    600.0
  """
  return jnp.sqrt(global_norm_squared(
      tree, axis_name=axis_name, partition_specs=partition_specs))
