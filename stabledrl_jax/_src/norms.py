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


# Blue's scaled sum of squares (J. L. Blue, "A portable Fortran program to
# find the Euclidean norm of a vector", ACM TOMS 4(1), 1978; the scheme of
# LAPACK 3.10's nrm2, E. Anderson, "Algorithm 978: Safe scaling in the Level 1
# BLAS", ACM TOMS 44(1), 2017). Every element falls in one of three bins by
# its magnitude and is squared after a fixed power-of-two scaling, so no
# square overflows or leaves the normal range:
#
#   bin    |x| in              accumulates         each term in
#   big    (2**44, inf]        (x * 2**-88)**2     (2**-88, 2**80]
#   mid    [2**-60, 2**44]     x**2                [2**-120, 2**88]
#   small  [0, 2**-60)         (x * 2**88)**2      [0, 2**56), normal if > 0
#
# One pass over the data, no maximum to find first, and the three sums stay
# finite for up to 2**39 elements: they can be added across leaves and summed
# over devices with one psum. NaN compares false with both thresholds, so it
# lands in the mid bin and makes it NaN; inf lands in the big bin.
_BIG = 2.0**44
_SMALL = 2.0**-60
_DOWN = 2.0**-88
_UP = 2.0**88
# Below this root of the mid sum, the norm is combined in the small bin's
# scale (where 2**-30 * 2**88 stays finite), so that the small bin keeps its
# precision; above it the small bin's terms are negligible or normal.
_MID_FLOOR = 2.0**-30


def _real_bins(x: jax.Array) -> jax.Array:
  """``[3]`` float32 sums (big, mid, small) of a real array's scaled squares."""
  info = jnp.finfo(x.dtype)
  # A dtype whose largest value squares finitely and whose smallest subnormal
  # squares to a normal float32 (fp16, fp8) needs the mid bin only.
  has_big = float(info.max) > _BIG
  has_small = float(info.smallest_subnormal) < _SMALL
  # Float64 leaves (x64 mode) are accumulated in float64, the rest in float32.
  dtype = jnp.float64 if info.bits == 64 else jnp.float32
  x = x.astype(dtype)
  zero = jnp.zeros((), dtype)
  magnitude = jnp.abs(x)
  big = magnitude > _BIG if has_big else None
  small = magnitude < _SMALL if has_small else None
  mid = x
  if big is not None:
    mid = jnp.where(big, zero, mid)
  if small is not None:
    mid = jnp.where(small, zero, mid)
  terms = [None if big is None else jnp.where(big, x * _DOWN, zero),
           mid,
           None if small is None else jnp.where(small, x * _UP, zero)]
  present = [t for t in terms if t is not None]
  dims = tuple(range(x.ndim))
  # One variadic reduce: every bin is filled in the same pass over ``x``.
  sums = jax.lax.reduce(
      tuple(t * t for t in present), tuple(zero for _ in present),
      lambda a, b: tuple(p + q for p, q in zip(a, b)), dims)
  sums = iter(sums)
  return jnp.stack([jnp.zeros((), jnp.float32) if t is None
                    else next(sums).astype(jnp.float32) for t in terms])


def _leaf_bins(leaf: Any) -> jax.Array:
  """``[3]`` float32 scaled sums of ``|leaf|**2`` (see :func:`_real_bins`)."""
  leaf = jnp.asarray(leaf)
  if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
    return _real_bins(jnp.real(leaf)) + _real_bins(jnp.imag(leaf))
  return _real_bins(leaf)


def _pairwise_sum(values: list[jax.Array]) -> jax.Array:
  """Sum of ``values`` as a balanced tree of adds (zeros when empty).

  A linear chain ``((v0 + v1) + v2) + ...`` lets XLA:TPU run every leaf's
  reduction before the first add and keep all their partial results alive;
  with a balanced tree each add consumes two results as soon as they exist.
  """
  if not values:
    return jnp.zeros((3,), jnp.float32)
  while len(values) > 1:
    pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
    values = pairs + values[len(pairs) * 2:]
  return values[0]


def _scaled_root(bins: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(root, unit)`` with ``||g|| = root * unit`` from the summed bins.

  ``root`` is the square root of the sum of squares in the scale of the
  largest non-empty bin and ``unit`` the power of two that undoes the scale,
  so ``root`` is finite whenever every element is and ``root * unit``
  overflows only when the norm itself exceeds float32's range.
  """
  big, mid, small = jnp.sqrt(bins[0]), jnp.sqrt(bins[1]), jnp.sqrt(bins[2])
  # The bins' roots are combined with hypot in the scale of the largest
  # non-empty bin; a smaller bin is negligible there unless it matters (see
  # the table above). Only roots are rescaled, never squares: XLA rewrites
  # (s * c) * (s * c) as (s * s) * (c * c), and c * c = 2**-176 is 0 in
  # float32.
  use_big = big > 0
  use_mid = ~use_big & (mid >= _MID_FLOOR)
  in_big = jnp.hypot(big, mid * _DOWN)
  in_mid = jnp.hypot(mid, small * _DOWN)
  # (The minimum keeps the branch finite where it is not used.)
  in_small = jnp.hypot(jnp.minimum(mid, _MID_FLOOR) * _UP, small)
  root = jnp.where(use_big, in_big, jnp.where(use_mid, in_mid, in_small))
  unit = jnp.where(use_big, jnp.float32(_UP),
                   jnp.where(use_mid, jnp.float32(1.0), jnp.float32(_DOWN)))
  return root, unit


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


def _is_first(axes: tuple[Hashable, ...]) -> jax.Array:
  """True on the devices at index 0 along every one of ``axes``."""
  first = jnp.bool_(True)
  for axis in axes:
    first = first & (jax.lax.axis_index(axis) == 0)
  return first


def _summed_bins(tree: Any, axis_name: Optional[AxisName],
                 partition_specs: Any) -> jax.Array:
  """The ``[3]`` scaled sums of squares of ``tree`` over all devices.

  With ``partition_specs``, each device counts a leaf only if it is at index
  0 of every named mesh axis the leaf is replicated over, so a single
  ``psum`` over all the named axes counts every element exactly once.
  """
  check_layout(axis_name, partition_specs)
  if partition_specs is None:
    local = _pairwise_sum([_leaf_bins(x) for x in jax.tree.leaves(tree)
                           if is_counted(x)])
    return distributed.all_sum(local, axis_name)
  leaves = jax.tree.leaves(tree)
  specs = leaf_partition_specs(tree, partition_specs)
  groups: dict[tuple[Hashable, ...], list[jax.Array]] = {}
  for leaf, spec in zip(leaves, specs):
    if is_counted(leaf):
      groups.setdefault(_spec_axes(spec), []).append(_leaf_bins(leaf))
  named = tuple(sorted({a for axes in groups for a in axes}, key=str))
  local = []
  for axes, bins in groups.items():
    replicated = tuple(a for a in named if a not in axes)
    total = _pairwise_sum(bins)
    local.append(jnp.where(_is_first(replicated), total, 0.0)
                 if replicated else total)
  return distributed.all_sum(_pairwise_sum(local), named)


def global_norm_squared(
    tree: Any,
    *,
    axis_name: Optional[AxisName] = None,
    partition_specs: Any = None,
) -> jax.Array:
  """Float32 squared L2 norm of the floating leaves of ``tree``.

  Same arguments and semantics as :func:`global_norm`, computed from the same
  overflow-safe sums, then squared. The square of a norm above ~1.8e19 does
  not fit in float32 and is ``inf`` here (and that of a norm below ~1e-19 is
  subnormal or 0), although every element is finite; :func:`global_norm` of
  the same tree is finite and exact. Test finiteness on the norm, not on its
  square.

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
    >>> float(global_norm_squared([jnp.float32(2e19)]))  # norm 2e19 is finite
    inf
  """
  bins = _summed_bins(tree, axis_name, partition_specs)
  root, unit = _scaled_root(bins)
  # With the big and small bins empty the mid sum is the answer itself, and
  # squaring its root would round it.
  mid_only = (bins[0] == 0) & (bins[2] == 0)
  return jnp.where(mid_only, bins[1], jnp.square(root * unit))


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
  root, unit = _scaled_root(
      _summed_bins(tree, axis_name, partition_specs))
  return root * unit
