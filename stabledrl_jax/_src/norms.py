"""Float32 global norms, exact on one device, under pmap/shard_map and across processes.

Each leaf's sum of squares (on TPU, for most leaves, its norm; small float32
matrices of one shape share one, up to eight) is accumulated in at least
float32 before anything else is added across leaves or devices, so
low-precision trees neither overflow (an fp16
tree of 300s) nor lose mass to rounding (a thousand bf16 leaves of 1.0).

Three ways to say how a tree is laid out over devices:

* neither ``axis_name`` nor ``partition_specs``: the tree is whole here (one
  device, a replicated data-parallel gradient after ``pmean``, or global
  ``jax.Array``s under ``jax.jit``, where XLA inserts the reduction itself);
* ``axis_name``: inside ``pmap``/``shard_map`` every leaf is a disjoint block
  split over those axes; one ``psum``;
* ``partition_specs``: a pytree of ``PartitionSpec`` (shard_map's
  ``in_specs``); each leaf is summed over exactly the mesh axes its spec names,
  a leaf replicated over some of the named axes is counted only at index 0
  of those axes, so one ``psum`` over all named axes counts it once.
"""

from collections.abc import Callable, Hashable
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from stabledrl_jax._src import distributed
from stabledrl_jax._src.typing import AxisName
from stabledrl_jax._src.typing import PyTree


def is_counted(leaf: Any) -> bool:
  """True for leaves that enter a norm: floating or complex arrays/scalars."""
  if isinstance(leaf, (float, complex)):
    return True
  if leaf is None or not hasattr(leaf, "dtype"):
    return False
  return bool(jnp.issubdtype(leaf.dtype, jnp.inexact))


# Two sums per leaf, filled in the same pass: ``Σ x²`` and ``Σ (x·2⁻⁸⁸)²``.
# The first is the answer whenever it is finite; it overflows only when the
# norm exceeds ~1.8e19, and then the second, whose terms never overflow (at
# most (2¹²⁸·2⁻⁸⁸)² = 2⁸⁰, finite for 2⁴⁷ elements), holds the norm at scale
# 2⁻⁸⁸. Elements below 2²⁵ underflow in the second sum but add less than
# n·2⁵⁰ to a square above 2¹²⁸: nothing at float32 precision. The scaled-sum
# idea is the one of BLAS's nrm2 (J. L. Blue, "A portable Fortran program to
# find the Euclidean norm of a vector", ACM TOMS 4(1), 1978), with a fixed
# power-of-two scale so that the sums can be added across leaves and devices
# as they are: one psum, no pmax of a scale first.
_LOG2_DOWN = -88


def _sum_dtype(x: jax.Array) -> jnp.dtype:
  """Float64 leaves (x64 mode) are summed in float64, the rest in float32."""
  return jnp.float64 if jnp.finfo(x.dtype).bits == 64 else jnp.float32


def _scale_factor(dtype: jnp.dtype) -> jax.Array:
  """``2⁻⁸⁸`` behind an optimization barrier.

  XLA would otherwise rewrite ``(x * c) * (x * c)`` as ``(x * x) * (c * c)``,
  where ``x * x`` overflows again and ``c * c`` is 0 in float32.
  """
  return jax.lax.optimization_barrier(jnp.asarray(2.0**_LOG2_DOWN, dtype))


def _add(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]
         ) -> tuple[jax.Array, ...]:
  return tuple(p + q for p, q in zip(a, b))


def _pairwise_sum(values: list[Any], add: Callable[[Any, Any], Any]) -> Any:
  """``values`` added as a balanced tree of ``add``s (one value at least).

  A linear chain ``((v0 + v1) + v2) + ...`` lets XLA:TPU run every leaf's
  reduction before the first add and keep all their partial results alive;
  with a balanced tree each add consumes two results as soon as they exist.
  """
  while len(values) > 1:
    pairs = [add(values[i], values[i + 1])
             for i in range(0, len(values) - 1, 2)]
    values = pairs + values[len(pairs) * 2:]
  return values[0]


def _variadic_sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Both sums of ``x`` from one variadic reduce (a tuple output)."""
  dtype = _sum_dtype(x)
  x = x.astype(dtype)
  scaled = x * _scale_factor(dtype)
  zero = jnp.zeros((), dtype)
  plain, small = jax.lax.reduce((x * x, scaled * scaled), (zero, zero), _add,
                                tuple(range(x.ndim)))
  return plain.astype(jnp.float32), small.astype(jnp.float32)


def _paired_sums(*xs: jax.Array) -> jax.Array:
  """Both sums over ``xs`` (one leaf at least, all of one shape and dtype) as
  a ``[2]`` vector: each broadcast to ``(2, *shape)`` and scaled by
  ``[1, 2⁻⁸⁸]`` along the new axis, their squares added element by element,
  then one single-output reduction."""
  dtype = _sum_dtype(xs[0])
  shape = (2, *xs[0].shape)
  first = jax.lax.broadcasted_iota(jnp.int32, shape, 0) == 0
  scale = jnp.where(first, jnp.ones((), dtype), _scale_factor(dtype))

  def squared(x: jax.Array) -> jax.Array:
    pair = jnp.broadcast_to(x.astype(dtype), shape) * scale
    return pair * pair

  squares = squared(xs[0])
  for x in xs[1:]:
    squares = squares + squared(x)
  return jnp.sum(squares, axis=tuple(range(1, len(shape)))
                 ).astype(jnp.float32)


# The most leaves of one shape and dtype that share a paired reduce, the
# group size of the results in ``benchmarks/results/norm_tpu_square.txt``.
_GROUP = 8


def _same_shape_groups(leaves: list[jax.Array]) -> list[list[jax.Array]]:
  """``leaves`` grouped by shape and dtype, ``_GROUP`` at most in a group,
  in the order they come.

  A group's squares are added element by element before its reduction, a
  float32 summation order of its own: eager calls, which sum each leaf in a
  program of its own, may differ from a jitted norm in the last bits.
  """
  by_layout: dict[tuple[Any, ...], list[jax.Array]] = {}
  for x in leaves:
    by_layout.setdefault((x.shape, x.dtype), []).append(x)
  return [xs[i:i + _GROUP] for xs in by_layout.values()
          for i in range(0, len(xs), _GROUP)]


def _sums_of_pairs(leaves: list[jax.Array]) -> jax.Array:
  """``[Σ x², Σ (x·2⁻⁸⁸)²]`` over ``leaves``: one paired reduce per group of
  up to ``_GROUP`` same-shaped leaves (:func:`_paired_sums`)."""
  if not leaves:
    return jnp.zeros((2,), jnp.float32)
  return _pairwise_sum([_paired_sums(*xs)
                        for xs in _same_shape_groups(leaves)], jnp.add)


def _sums_of_variadics(leaves: list[jax.Array]) -> jax.Array:
  """``[Σ x², Σ (x·2⁻⁸⁸)²]`` over ``leaves``, one variadic reduce per leaf."""
  if not leaves:
    return jnp.zeros((2,), jnp.float32)
  return jnp.stack(_pairwise_sum([_variadic_sums(x) for x in leaves], _add))


def _complex_sums(x: jax.Array) -> jax.Array:
  """Both sums of ``x`` as the parts of one complex sum (a single output)."""
  dtype = _sum_dtype(x)
  x = x.astype(dtype)
  scaled = x * _scale_factor(dtype)
  return jnp.sum(jax.lax.complex(x * x, scaled * scaled))


def _sums_of_complex(leaves: list[jax.Array]) -> jax.Array:
  """``[Σ x², Σ (x·2⁻⁸⁸)²]`` over ``leaves``, one complex reduce per leaf.

  Measured with XLA:GPU (H100, ``benchmarks/clip_overhead.py``): with 1000
  small leaves the step's temp is 1.75% of the gradient bytes (AdamW alone
  1.57%, the variadic form 3.42%); for the GPT-shaped trees it is optax's.
  """
  if not leaves:
    return jnp.zeros((2,), jnp.float32)
  total = _pairwise_sum([_complex_sums(x) for x in leaves], jnp.add)
  return jnp.stack([jnp.real(total), jnp.imag(total)]).astype(jnp.float32)


# ``jax.enable_x64`` (jax 0.8 and later) scopes float64 to a part of a trace,
# autodiff included; older jax's experimental version does not survive
# autodiff, so there the CPU keeps the variadic form.
_FLOAT64_IN_TRACE = hasattr(jax, "enable_x64")


@jax.custom_jvp
def _float64_sums(*leaves: jax.Array) -> jax.Array:
  """``[Σ x², Σ (x·2⁻⁸⁸)²]`` over ``leaves`` from one float64 sum per leaf.

  A float64 sum of squares holds the square of every float32 tree (at most
  ~1.2e77 per element): one accumulator instead of two; the scaled sum is
  the float64 total times 2⁻¹⁷⁶ (a normal float64 number).
  """
  with jax.enable_x64(True):
    total = _pairwise_sum(
        [jnp.sum(jnp.square(x.astype(jnp.float64))) for x in leaves], jnp.add)
    scale = jnp.asarray(2.0**_LOG2_DOWN, jnp.float32).astype(jnp.float64)
    scaled = total * scale * scale
  return jnp.stack([total.astype(jnp.float32), scaled.astype(jnp.float32)])


def _sum_tangents(leaves: tuple[jax.Array, ...],
                  tangents: tuple[jax.Array, ...]) -> jax.Array:
  """The float32 tangent of ``[Σ x², Σ (x·2⁻⁸⁸)²]`` over ``leaves``:
  ``[Σ 2x·dx, Σ 2(x·2⁻⁸⁸)(dx·2⁻⁸⁸)]``."""
  scale = _scale_factor(jnp.float32)
  plain, scaled = [], []
  for x, dx in zip(leaves, tangents):
    dtype = _sum_dtype(x)
    x, dx = x.astype(dtype), dx.astype(dtype)
    # 2 * (x * dx), not (2 * x) * dx: 2x overflows for |x| above half of
    # float32's maximum, and inf times a zero cotangent is NaN.
    plain.append(jnp.sum(2 * (x * dx)).astype(jnp.float32))
    scaled.append(
        jnp.sum(2 * ((x * scale.astype(dtype)) * (dx * scale.astype(dtype)))
                ).astype(jnp.float32))
  return jnp.stack([_pairwise_sum(plain, jnp.add),
                    _pairwise_sum(scaled, jnp.add)])


@_float64_sums.defjvp
def _float64_sums_jvp(leaves: tuple[jax.Array, ...],
                      tangents: tuple[jax.Array, ...]
                      ) -> tuple[jax.Array, jax.Array]:
  """Tangents in float32 (no float64 outside the sums' own trace)."""
  return _float64_sums(*leaves), _sum_tangents(leaves, tangents)


def _sums_in_float64(leaves: list[jax.Array]) -> jax.Array:
  """:func:`_float64_sums` of ``leaves`` (zeros for none)."""
  if not leaves:
    return jnp.zeros((2,), jnp.float32)
  return _float64_sums(*leaves)


def _sums_for_cpu(leaves: list[jax.Array]) -> jax.Array:
  """:func:`_sums_in_float64` for matrices and higher ranks,
  :func:`_sums_of_variadics` for vectors and scalars.

  XLA:CPU vectorizes a single-accumulator sum but runs the two-operand reduce
  of :func:`_sums_of_variadics` one element at a time: in the donated AdamW
  step of ``benchmarks/clip_overhead.py`` (GPT-shaped float32 tree) the clip
  costs 1.18x AdamW's wall time this way and 1.41x with the variadic form
  alone (``benchmarks/results/clip_overhead.txt`` and ``variadic/``), with
  the same bytes accessed. Several float64 vector sums in one program are
  compiled through a materialized float64 square (temp twice their bytes),
  so vectors, which are small in practice, keep the variadic form; so does
  every leaf on jax without ``jax.enable_x64``.
  """
  if not _FLOAT64_IN_TRACE:
    return _sums_of_variadics(leaves)
  matrices = [x for x in leaves if x.ndim >= 2]
  total = _sums_in_float64(matrices)
  if len(matrices) < len(leaves):
    total = total + _sums_of_variadics([x for x in leaves if x.ndim < 2])
  return total


def _exponent_scales(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(2⁻ᴱ, 2ᴱ)`` for non-negative ``x`` of exponent ``E`` (``x = m·2ᴱ``,
  ``1 ≤ m < 2``), read from ``x``'s exponent bits.

  ``E`` is clipped to the normal range less its top, ``[1 - bias, bias - 1]``
  (``[-126, 126]`` in float32), so that both factors are normal numbers:
  ``x·2⁻ᴱ`` lies in ``[0, 4)`` for every finite ``x``, and is inf or NaN with
  ``x``.
  """
  info = jnp.finfo(x.dtype)
  ints = jnp.int64 if info.bits == 64 else jnp.int32
  unit = 1 << info.nmant  # 1 in the exponent field
  twice_bias = 2 * (info.maxexp - 1) * unit  # the field of 2⁰, doubled
  field = jax.lax.bitcast_convert_type(x, ints) & (((1 << info.nexp) - 1)
                                                   * unit)
  down = jnp.clip(twice_bias - field, unit, twice_bias - unit)
  return (jax.lax.bitcast_convert_type(down, x.dtype),
          jax.lax.bitcast_convert_type(twice_bias - down, x.dtype))


def _hypot(a: jax.Array, b: jax.Array) -> jax.Array:
  """``√(a² + b²)`` of non-negative ``a`` and ``b`` (float32 or float64):
  no overflow below the dtype's maximum, no underflow that changes it.

  Both are multiplied by ``2⁻ᴱ``, ``E`` the larger one's exponent
  (:func:`_exponent_scales`): exact, and it brings a normal larger one into
  ``[1, 4)``, where squaring is safe; the root is multiplied back by ``2ᴱ``.
  No division: with it XLA:TPU estimates fewer fusion cycles for the clip
  than for optax's (``benchmarks/results/norm_tpu.txt``). A chain of 25,000
  combines (a TPU reduce runs each lane as one) stays within 2e-5 of the
  norm: ``(a·2⁻ᴱ)²`` rounds both ways, where the textbook ``big·√(1 + r²)``,
  ``r = small/big``, rounds ``1 + r²`` down and ends 3.6e-4 low. inf gives
  inf, NaN gives NaN.
  """
  down, up = _exponent_scales(jnp.maximum(a, b))
  a, b = a * down, b * down
  return jnp.sqrt(a * a + b * b) * up


def _leaf_norm(x: jax.Array) -> jax.Array:
  """``‖x‖`` as a float32 scalar: one single-output reduce of ``|x|`` whose
  combiner is :func:`_hypot`."""
  dtype = _sum_dtype(x)
  norm = jax.lax.reduce(jnp.abs(x.astype(dtype)), jnp.zeros((), dtype),
                        _hypot, tuple(range(x.ndim)))
  return norm.astype(jnp.float32)


@jax.custom_jvp
def _hypot_sums(*leaves: jax.Array) -> jax.Array:
  """``[Σ x², Σ (x·2⁻⁸⁸)²]`` over ``leaves``, from each leaf's norm.

  Each leaf's norm ``n`` is one single-output reduce of ``|x|`` whose
  combiner is :func:`_hypot` (the float32 accumulator holds a norm, never a
  square, so nothing overflows). The leaves then add ``n²`` and
  ``(n·2⁻⁸⁸)²`` in two balanced trees of float32 scalars: five scalar ops
  per leaf (a tree of :func:`_hypot` over the norms takes about sixteen),
  and XLA:TPU charges each in bytes accessed (1000 vectors:
  ``benchmarks/results/norm_tpu_small.txt``).
  """
  leaf_norms = [_leaf_norm(x) for x in leaves]
  scale = _scale_factor(jnp.float32)
  plain = _pairwise_sum([n * n for n in leaf_norms], jnp.add)
  scaled = _pairwise_sum([(n * scale) * (n * scale) for n in leaf_norms],
                         jnp.add)
  return jnp.stack([plain, scaled])


@_hypot_sums.defjvp
def _hypot_sums_jvp(leaves: tuple[jax.Array, ...],
                    tangents: tuple[jax.Array, ...]
                    ) -> tuple[jax.Array, jax.Array]:
  """JAX differentiates no reduce with a combiner of its own: the tangents
  of the sums themselves."""
  return _hypot_sums(*leaves), _sum_tangents(leaves, tangents)


# Float32 matrices below this many elements take paired reduces on TPU.
_SMALL_LEAF = 1 << 16


def _sums_for_tpu(leaves: list[jax.Array]) -> jax.Array:
  """Per leaf, the form XLA:TPU compiles best (``benchmarks/norm_tpu.py``).

  * float32 (and float64) matrices and higher ranks under 64K elements,
    :func:`_sums_of_pairs`: paired reductions of sibling leaves fuse together
    (1000 leaves of 16x64 to 16x128: fusion cycles 1.065x AdamW alone's on
    v5e, 1.95x with one hypot reduce per leaf), and up to eight of one shape
    and dtype share a reduce (1000 leaves of 64x64: bytes accessed below
    optax's on v4-v6e, 1.0% and 0.9% above on v5p and v6e with one reduce
    per leaf, ``norm_tpu_square.txt``). Under plain ``jax.jit`` XLA lays a
    group's leaves out alike before adding them: same-shaped matrices split
    differently over the devices may cost collectives (``shard_map`` with
    ``partition_specs`` adds each device's own blocks);
  * every other leaf (larger ones, vectors and scalars, bfloat16 and float16
    at any size), :func:`_hypot_sums`, one single-output reduce per leaf:
    on the GPT-shaped float32 tree it keeps the temp at 0, XLA:TPU's fusion
    cycles below optax's and its bytes accessed at most 0.35% above optax's
    on v4, v5e, v5p and v6e, where
    the variadic form of the two sums cost up to 13.7% more (v5e) and paired
    vectors a temp of 8.0% of the gradient bytes (v5e; ``norm_tpu.txt``).
  """
  paired: list[jax.Array] = []
  rest: list[jax.Array] = []
  for x in leaves:
    small_matrix = (jnp.finfo(x.dtype).bits >= 32 and x.ndim >= 2
                    and x.size < _SMALL_LEAF)
    (paired if small_matrix else rest).append(x)
  total = _hypot_sums(*rest) if rest else jnp.zeros((2,), jnp.float32)
  if paired:
    total = total + _sums_of_pairs(paired)
  return total


def _platform_sums(*leaves: jax.Array) -> jax.Array:
  """:func:`_sums_for_tpu` on TPU, :func:`_sums_of_complex` on CUDA GPUs,
  :func:`_sums_for_cpu` on CPU, :func:`_sums_of_variadics` elsewhere.

  The form is chosen when the program is lowered. TPUs have no float64.
  The float32 forms add the same float32 terms; the CPU's float64 sums may
  differ from them in the last bits and keep squares below float32's range.
  """
  return jax.lax.platform_dependent(
      *leaves, tpu=lambda *x: _sums_for_tpu(list(x)),
      cuda=lambda *x: _sums_of_complex(list(x)),
      cpu=lambda *x: _sums_for_cpu(list(x)),
      default=lambda *x: _sums_of_variadics(list(x)))


# Eager calls: one small program per leaf shape and dtype, compiled once.
_eager_leaf_sums = jax.jit(_platform_sums)


def _local_sums(leaves: list[jax.Array]) -> jax.Array:
  """``[Σ x², Σ (x·2⁻⁸⁸)²]`` over real ``leaves``, a float32 ``[2]`` vector.

  Every leaf is read once. Under a trace all leaves go into the caller's
  program together, so that the compiler can fuse their reductions; eagerly
  each leaf is summed by a jitted program of its own (XLA's compile time
  grows faster than linearly with the number of reductions in one program).
  """
  if not leaves:
    return jnp.zeros((2,), jnp.float32)
  if any(isinstance(x, jax.core.Tracer) for x in leaves):
    return _platform_sums(*leaves)
  return _pairwise_sum([_eager_leaf_sums(x) for x in leaves], jnp.add)


def _real_leaves(leaves: list[Any]) -> list[jax.Array]:
  """The counted ``leaves`` as real arrays (a complex leaf: both parts)."""
  out = []
  for leaf in leaves:
    if not is_counted(leaf):
      continue
    leaf = jnp.asarray(leaf)
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
      out += [jnp.real(leaf), jnp.imag(leaf)]
    else:
      out.append(leaf)
  return out


def _norm_from_sums(plain: jax.Array, scaled: jax.Array) -> jax.Array:
  """The norm from the summed ``Σ x²`` and ``Σ (x·2⁻⁸⁸)²``."""
  overflowed = plain == jnp.inf
  # Each square root sees 1 where its result is not taken, so that the
  # gradient of the other one is not 0 * inf = NaN (the scaled sum is 0 for
  # small norms). The outer where keeps a NaN of ``plain``: a NaN element.
  from_scaled = jnp.sqrt(jnp.where(overflowed, scaled, 1.0)) * 2.0**-_LOG2_DOWN
  from_plain = jnp.sqrt(jnp.where(overflowed, 1.0, plain))
  return jnp.where(overflowed, from_scaled, from_plain)


def _spec_axes(spec: PartitionSpec) -> tuple[Hashable, ...]:
  """The mesh axes a ``PartitionSpec`` shards over, sorted, each once."""
  axes: set[Hashable] = set()
  for entry in spec:
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
      continue
    axes.update(entry if isinstance(entry, tuple) else (entry,))
  return tuple(sorted(axes, key=str))


def leaf_partition_specs(tree: PyTree,
                         partition_specs: PyTree) -> list[PartitionSpec]:
  """The ``PartitionSpec`` of each leaf of ``tree``, in ``jax.tree.leaves`` order.

  ``partition_specs`` may be a prefix of ``tree``, as shard_map's ``in_specs``:
  one spec stands for every leaf of the subtree it faces (one ``P()`` for a
  whole replicated subtree).

  Raises:
    ValueError: ``partition_specs`` is not a prefix of ``tree`` (JAX's message
      follows ours; recent jax names the key path and the types) or one of
      its leaves is not a ``PartitionSpec``.
  """
  is_spec = lambda x: isinstance(x, PartitionSpec)
  for spec in jax.tree.leaves(partition_specs, is_leaf=is_spec):
    if not is_spec(spec):
      raise ValueError(
          f"partition_specs leaves must be PartitionSpec, got {spec!r}.")
  try:
    # A copy of each spec at every leaf of the subtree it faces (what
    # jax.tree.broadcast does in newer jax; tree_map takes a prefix too).
    broadcast = jax.tree_util.tree_map(
        lambda spec, subtree: jax.tree.map(lambda _: spec, subtree),
        partition_specs, tree, is_leaf=is_spec)
  except ValueError as error:
    raise ValueError(
        "partition_specs must be a prefix of the updates' tree (as shard_map's "
        f"in_specs): {error}") from error
  return jax.tree.leaves(broadcast, is_leaf=is_spec)


def check_params_layout(params: Optional[PyTree],
                        partition_specs: Optional[PyTree]) -> None:
  """At ``init``: raises when ``partition_specs`` does not match ``params``."""
  if partition_specs is not None and params is not None:
    leaf_partition_specs(params, partition_specs)


def check_layout(axis_name: Optional[AxisName],
                 partition_specs: Optional[PyTree]) -> None:
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


def _summed(tree: PyTree, axis_name: Optional[AxisName],
            partition_specs: Optional[PyTree]) -> tuple[jax.Array, jax.Array]:
  """``(Σ x², Σ (x·2⁻⁸⁸)²)`` of ``tree`` over all devices, one ``psum``.

  With ``partition_specs``, each device counts a leaf only if it is at index
  0 of every named mesh axis the leaf is replicated over, so a single
  ``psum`` over all the named axes counts every element exactly once.
  """
  check_layout(axis_name, partition_specs)
  if partition_specs is None:
    local = _local_sums(_real_leaves(jax.tree.leaves(tree)))
    # One [2] vector, so that JAX emits one all-reduce, not one per sum.
    total = distributed.all_sum(local, axis_name)
    return total[0], total[1]
  leaves = jax.tree.leaves(tree)
  specs = leaf_partition_specs(tree, partition_specs)
  groups: dict[tuple[Hashable, ...], list[Any]] = {}
  for leaf, spec in zip(leaves, specs):
    if is_counted(leaf):
      groups.setdefault(_spec_axes(spec), []).append(leaf)
  named = tuple(sorted({a for axes in groups for a in axes}, key=str))
  per_axes = [jnp.zeros((2,), jnp.float32)] if not groups else []
  for axes, group in groups.items():
    replicated = tuple(a for a in named if a not in axes)
    group_sums = _local_sums(_real_leaves(group))
    if replicated:
      first = _is_first(replicated)
      group_sums = jnp.where(first, group_sums, 0.0)
    per_axes.append(group_sums)
  total = distributed.all_sum(_pairwise_sum(per_axes, jnp.add), named)
  return total[0], total[1]


def global_norm_squared(
    tree: PyTree,
    *,
    axis_name: Optional[AxisName] = None,
    partition_specs: Optional[PyTree] = None,
) -> jax.Array:
  """Float32 squared L2 norm of the floating leaves of ``tree``.

  Same arguments and semantics as :func:`global_norm`, from the same sums:
  the float32 sum of squares itself (on TPU, leaves other than small float32
  matrices add the square of their accumulated norm, equal to about 1e-5).
  The square of a norm above ~1.8e19 does not fit in float32 and is ``inf``
  here although every element is finite;
  :func:`global_norm` of the same tree is finite and exact. Test finiteness
  on the norm, not on its square.

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
    >>> from stabledrl_jax import global_norm_squared
    >>> float(global_norm_squared({"a": jnp.ones(3), "b": jnp.ones(1)}))
    4.0
    >>> float(global_norm_squared([jnp.float32(2e19)]))  # norm 2e19 is finite
    inf
  """
  # The plain sum overflows exactly when the square of the norm does.
  plain, _ = _summed(tree, axis_name, partition_specs)
  return plain


def global_norm(
    tree: PyTree,
    *,
    axis_name: Optional[AxisName] = None,
    partition_specs: Optional[PyTree] = None,
) -> jax.Array:
  """Float32 L2 norm of all floating (and complex) leaves of ``tree``.

  Every leaf is squared and summed in at least float32 (fp16/bf16 are upcast
  first, complex leaves contribute ``|z|²``; on CPU, with jax 0.8 or later,
  leaves of rank 2 and more are summed in float64; on TPU, every leaf but
  float32 matrices under 64K elements accumulates its float32 norm with an
  overflow-free ``hypot``) before any addition across leaves or devices. Integer, bool and
  None leaves do not count. The same pass over the data also sums the squares scaled by
  2⁻⁸⁸, so the norm of a finite tree is finite and exact even when its square
  overflows float32 (norms above ~1.8e19, up to float32's maximum): it is inf
  or NaN only for an inf or NaN element, or a norm above float32's maximum
  (~3.4e38). Squares below float32's normal range
  (elements below ~1e-19) may add nothing, so norms below ~1e-18 may be
  rounded down or 0. The norm is differentiable: its gradient is
  ``x / ‖x‖``, also past 1.8e19 (NaN for an all-zero tree, where it is
  undefined).

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
      Each leaf is summed over the mesh axes its spec names; a leaf
      replicated over some named axes is counted only on the devices at
      index 0 of those axes, so one ``psum`` over every named axis counts each
      element once, however many axis sets the specs use. Mutually exclusive
      with ``axis_name``.

  Returns:
    A float32 scalar, identical on every device that took part.

  Raises:
    ValueError: both ``axis_name`` and ``partition_specs`` are given, or
      ``partition_specs`` is not a prefix of ``tree``'s structure.

  Examples:
    >>> import jax.numpy as jnp
    >>> from stabledrl_jax import global_norm
    >>> float(global_norm({"w": jnp.full((2,), 3.0), "b": jnp.array([4.0])}))
    5.830951...
    >>> tree = [jnp.full((4,), 300.0, jnp.float16)]  # optax gives inf here
    >>> float(global_norm(tree))
    600.0
    >>> x = jnp.float32(2e19)  # its square overflows float32
    >>> float(global_norm([x])) == float(x)
    True
  """
  return _norm_from_sums(*_summed(tree, axis_name, partition_specs))
