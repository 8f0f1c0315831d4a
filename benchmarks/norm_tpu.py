"""The clip in a donated AdamW step, compiled by XLA:TPU without a TPU.

Needs libtpu (``pip install "jax[tpu]"``); compiles deviceless for TPU
topologies with ``jax.experimental.topologies`` and reads the compiled
programs: temp bytes (``memory_analysis``), HBM traffic counted from the
optimized HLO (:mod:`benchmarks.hlo_traffic`), XLA:TPU's ``bytes accessed``
and the sum of its fusions' ``estimated_cycles``, and the number of
``conditional`` ops. Ratios are to AdamW alone; temp is also given as a
fraction of the gradient bytes. Trees: ``gpt`` (the float32 GPT-shaped tree of
``clip_overhead.py``), ``gpt-bf16`` (the same with bfloat16 gradients),
``gpt-w768`` and ``gpt-w768-bf16`` (the same trees at GPT-2-small's width,
768),
``small`` (1000 small float32 matrices of mixed shapes), ``small-square``
(1000 float32 matrices of 64x64) and ``small-vectors`` (1000 small float32
vectors). Variants: AdamW alone, with our
clip, the conditional clip or optax's in front, and twenty-two more of ours:

* ``ours-propagate``: ``nonfinite="propagate"`` (no per-element select for
  non-finite steps; the norm is the released one);
* ``ours-variadic-f32``: the TPU form before the hypot reduce took the float32
  leaves: one variadic (two-output) reduce per float32 leaf of 64K elements
  or more, paired reductions for smaller float32 leaves of any rank;
* ``ours-paired-vectors``: the released form, but float32 vectors under 64K
  elements reduced in pairs, one paired reduce per vector;
* ``ours-grouped-vectors``: the same, up to eight vectors of the same shape
  in one paired reduce, as the released form does with small matrices;
* ``ours-hypot-all``: the hypot reduce for every leaf, small matrices too;
* ``ours-pair-each``: one paired reduce per small float32 matrix, where the
  released form reduces up to eight of the same shape at once;
* ``ours-plain-f32``: a reference, not overflow-safe: one float32 sum of
  squares per float32 leaf of 64K elements or more (optax's single-output
  sum), added as our balanced tree;
* ``ours-hypot-tree``: the released reduces, but the leaves' norms combined
  into one by a balanced tree of ``hypot``s (the form before the two
  balanced trees of their squares);
* ``ours-stacked``: the same, the leaves' norms stacked into one vector and
  reduced at once in place of that tree;
* ``ours-linear``: the same, the leaves' norms combined as a linear chain
  (the order in which optax adds its sums);
* ``ours-hypot-pair-reduces``: the tree of ``ours-hypot-tree``, each node
  two norms stacked and reduced with the ``hypot`` combiner (one ``map`` op
  per node);
* ``ours-chained-pairs``: the released reduces and squares, added in pairs
  of adjacent leaves whose sums are chained in leaf order;
* ``ours-grouped-hypot-vectors``: up to eight small vectors of one shape
  combined element by element with ``hypot`` and reduced once, one norm
  for the group;
* ``ours-windowed-hypot-vectors``: the same, but only vectors within a run
  of twelve consecutive leaves grouped;
* ``ours-vector-sums``: the released reduces, each norm ``n`` multiplied by
  the vector ``[1, 2⁻⁸⁸]`` and squared, the ``[2]`` vectors added in one
  balanced tree (vector ops in place of the five scalar ops per leaf);
* ``ours-stacked-pairs``: the same, each leaf's ``[n, n·2⁻⁸⁸]`` stacked
  from two scalars, then squared;
* ``ours-adjacent-hypot-vectors``: up to eight small vectors of one shape
  that are neighbours in the tree's order (a LayerNorm's scale and bias,
  or two LayerNorms' scales)
  share one hypot reduce and one norm;
* ``ours-interleaved-halves``: the released reduces and squares, but the
  balanced trees add the first half of the leaves interleaved with the
  second (leaf ``i`` next to leaf ``i + ⌈n/2⌉``);
* ``ours-shape-groups``: every hypot-reduced leaf of one shape and dtype
  (large matrices too) combined element by element with ``hypot`` and
  reduced once: one reduce and one norm per shape and dtype (eight in the
  GPT trees, where the released form has one per leaf, 98);
* ``ours-complex``: the released paired reduces for small float32 matrices,
  and for every other leaf the complex form of CUDA GPUs: one sum of
  ``complex(x², (x·2⁻⁸⁸)²)``, so that the leaves combine with one complex
  add each (XLA:TPU splits it into two float32 adds) and no other op on
  scalars;
* ``ours-ordered``: the same complex sums added as a linear chain in which
  each leaf's reduce waits for the running total
  (``lax.optimization_barrier`` on the leaf and the total), so that no two
  leaves' partial sums are alive at once whatever the scheduler prefers;
* ``ours-written-norms``: the released reduces, each leaf's norm written
  into its own element of one float32 vector (an in-place update per
  leaf in place of its ops on scalars), the vector then combined by one
  ``hypot`` reduce.

Two more columns: the peak memory above AdamW alone's, as a fraction of the
gradient bytes (it counts on-chip memory on some generations), and the entry
computation's asynchronous copies (``copy-start``: the prefetches and
evictions of XLA's memory-space assignment) with the HBM bytes they move
(with a conditional's costliest branch, as ``hlo_traffic`` charges it).
``--entry-ops`` adds a table of XLA:TPU's raw bytes accessed, the entry
computation's count of the named ops and the bytes XLA:TPU charges for its
ops on scalars (512 per operand and result).

Run::

    ALLOW_MULTIPLE_LIBTPU_LOAD=1 python benchmarks/norm_tpu.py \\
        --targets v5e v5p --trees gpt gpt-bf16 small
"""

import argparse
import importlib.metadata
import itertools
import os
import sys
from typing import Any
from unittest import mock

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top
from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import stabledrl_jax as sdrl  # pylint: disable=g-import-not-at-top
from benchmarks import clip_overhead  # pylint: disable=g-import-not-at-top
from benchmarks import hlo_traffic  # pylint: disable=g-import-not-at-top
from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top

TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1",
              "v6e": "v6e:2x2"}
VARIANTS = ("adamw", "ours", "conditional", "optax", "ours-propagate",
            "ours-variadic-f32", "ours-paired-vectors", "ours-hypot-all",
            "ours-plain-f32", "ours-hypot-tree", "ours-stacked",
            "ours-linear", "ours-pair-each", "ours-grouped-vectors",
            "ours-chained-pairs", "ours-grouped-hypot-vectors",
            "ours-windowed-hypot-vectors", "ours-vector-sums",
            "ours-stacked-pairs", "ours-adjacent-hypot-vectors",
            "ours-interleaved-halves", "ours-shape-groups",
            "ours-hypot-pair-reduces", "ours-complex", "ours-ordered",
            "ours-written-norms")


def gpt_shapes(width: int = 512, vocab: int = 50304,
               layers: int = 12) -> dict[str, tuple[int, ...]]:
  """The GPT-shaped tree of ``clip_overhead.py``: ``8 * layers + 2`` leaves."""
  return clip_overhead.gpt_shapes(width, vocab, layers)


def small_shapes(num_leaves: int = 1000) -> dict[str, tuple[int, ...]]:
  """``num_leaves`` small matrices of 1K to 2K elements, mixed shapes."""
  return {f"leaf{i:04d}": (16, 64 + 16 * (i % 5)) for i in range(num_leaves)}


def small_vector_shapes(num_leaves: int = 1000
                        ) -> dict[str, tuple[int, ...]]:
  """``num_leaves`` vectors of 1K to 2K elements."""
  return {f"leaf{i:04d}": (1024 + 256 * (i % 5),) for i in range(num_leaves)}


def square_shapes(num_leaves: int = 1000) -> dict[str, tuple[int, ...]]:
  """``num_leaves`` matrices of 64x64, the small-leaves tree of
  ``clip_overhead.py``."""
  return {f"leaf{i:04d}": (64, 64) for i in range(num_leaves)}


def tree_spec(name: str) -> tuple[dict[str, tuple[int, ...]], Any]:
  """Leaf shapes and gradient dtype of a named tree."""
  if name == "gpt":
    return gpt_shapes(), jnp.float32
  if name == "gpt-bf16":
    return gpt_shapes(), jnp.bfloat16
  if name == "gpt-w768":
    return gpt_shapes(width=768), jnp.float32
  if name == "gpt-w768-bf16":
    return gpt_shapes(width=768), jnp.bfloat16
  if name == "small":
    return small_shapes(), jnp.float32
  if name == "small-vectors":
    return small_vector_shapes(), jnp.float32
  if name == "small-square":
    return square_shapes(), jnp.float32
  raise ValueError(f"unknown tree {name!r}")


# The released TPU form (the variants patch ``norms._sums_for_tpu``).
_RELEASED = norms._sums_for_tpu


def _split(leaves: list[jax.Array], takes) -> tuple[list, list]:
  """``leaves`` for which ``takes(leaf)`` holds, and the others."""
  taken, others = [], []
  for x in leaves:
    (taken if takes(x) else others).append(x)
  return taken, others


def _wide(x: jax.Array) -> bool:
  return jnp.finfo(x.dtype).bits >= 32


def _variadic_for_float32(leaves: list[jax.Array]) -> jax.Array:
  """The earlier TPU form: variadic reduces for float32 leaves of 64K
  elements or more, paired ones for the smaller float32 leaves, the hypot
  reduce for 16-bit floats."""
  large, rest = _split(leaves,
                       lambda x: _wide(x) and x.size >= norms._SMALL_LEAF)
  paired, narrow = _split(rest, _wide)
  total = norms._sums_of_variadics(large)
  if narrow:
    total = total + norms._hypot_sums(*narrow)
  if paired:
    total = total + norms._pairwise_sum(
        [norms._paired_sums(x) for x in paired], jnp.add)
  return total


def _paired_vectors(leaves: list[jax.Array]) -> jax.Array:
  """The released TPU form with small float32 vectors paired too, one
  paired reduce per vector."""
  vectors, rest = _split(
      leaves, lambda x: _wide(x) and x.ndim < 2 and x.size < norms._SMALL_LEAF)
  total = _RELEASED(rest)
  if vectors:
    total = total + norms._pairwise_sum(
        [norms._paired_sums(x) for x in vectors], jnp.add)
  return total


def _plain_for_float32(leaves: list[jax.Array]) -> jax.Array:
  """A reference, not overflow-safe: the TPU form with one float32 sum of
  squares per large float32 leaf; their scaled sum is derived from it (0
  unless the plain sum is inf, and then inf too)."""
  large, rest = _split(leaves,
                       lambda x: _wide(x) and x.size >= norms._SMALL_LEAF)
  total = _RELEASED(rest)
  if large:
    plain = norms._pairwise_sum(
        [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in large], jnp.add)
    scale = norms._scale_factor(jnp.float32)
    total = total + jnp.stack([plain, plain * scale * scale])
  return total


def _grouped_vectors(leaves: list[jax.Array]) -> jax.Array:
  """The released TPU form with small float32 vectors paired too, up to
  eight of the same shape in one reduce, like the small matrices."""
  vectors, rest = _split(
      leaves, lambda x: _wide(x) and x.ndim < 2 and x.size < norms._SMALL_LEAF)
  total = _RELEASED(rest)
  if vectors:
    total = total + norms._sums_of_pairs(vectors)
  return total


def _pair_each(leaves: list[jax.Array]) -> jax.Array:
  """The released TPU form, but one paired reduce per small float32 matrix
  (before same-shaped ones shared a reduce)."""
  paired, rest = _split(leaves, lambda x: _wide(x) and x.ndim >= 2
                        and x.size < norms._SMALL_LEAF)
  total = (norms._hypot_sums(*rest) if rest
           else jnp.zeros((2,), jnp.float32))
  if paired:
    total = total + norms._pairwise_sum(
        [norms._paired_sums(x) for x in paired], jnp.add)
  return total


def _hypot_for_all(leaves: list[jax.Array]) -> jax.Array:
  """The hypot reduce for every leaf."""
  return norms._hypot_sums(*leaves) if leaves else jnp.zeros((2,), jnp.float32)


def _with_paired_matrices(leaves: list[jax.Array], sums_of) -> jax.Array:
  """The released TPU form's paired reduces for small float32 matrices,
  and ``sums_of(others)``, a ``[2]`` vector, for the other leaves."""
  paired, rest = _split(leaves, lambda x: _wide(x) and x.ndim >= 2
                        and x.size < norms._SMALL_LEAF)
  total = sums_of(rest) if rest else jnp.zeros((2,), jnp.float32)
  if paired:
    total = total + norms._sums_of_pairs(paired)
  return total


def _combined(leaves: list[jax.Array], combine) -> jax.Array:
  """The released TPU form, but the hypot-reduced leaves' norms (float32
  scalars) combined into one norm ``n`` by ``combine``; the ``[2]`` sums
  are ``[n², (n·2⁻⁸⁸)²]``."""
  def sums_of(rest: list[jax.Array]) -> jax.Array:
    norm = combine([norms._leaf_norm(x) for x in rest])
    scaled = norm * norms._scale_factor(jnp.float32)
    return jnp.stack([norm * norm, scaled * scaled])
  return _with_paired_matrices(leaves, sums_of)


def _hypot_tree(leaves: list[jax.Array]) -> jax.Array:
  """The leaves' norms combined by a balanced tree of ``hypot``s."""
  return _combined(leaves, lambda ns: norms._pairwise_sum(ns, norms._hypot))


def _stacked_norm(ns: list[jax.Array]) -> jax.Array:
  """The norm of the float32 norms ``ns``: stacked, one ``hypot`` reduce."""
  return jax.lax.reduce(jnp.stack(ns), jnp.zeros((), jnp.float32),
                        norms._hypot, (0,))


def _hypot_pair_reduces(leaves: list[jax.Array]) -> jax.Array:
  """The leaves' norms combined by a balanced tree whose every node stacks
  two norms and reduces them with the ``hypot`` combiner (XLA:TPU lowers
  each node to one ``map``)."""
  return _combined(leaves, lambda ns: norms._pairwise_sum(
      ns, lambda a, b: _stacked_norm([a, b])))


def _complex_sums(leaves: list[jax.Array]) -> jax.Array:
  """The released paired reduces for small float32 matrices, one complex
  sum per other leaf."""
  return _with_paired_matrices(leaves, norms._sums_of_complex)


def _ordered_complex_sums(leaves: list[jax.Array]) -> jax.Array:
  """The complex sums of :func:`_complex_sums`, chained in leaf order, each
  leaf's reduce made to wait for the running total."""
  def sums_of(rest: list[jax.Array]) -> jax.Array:
    total = norms._complex_sums(rest[0])
    for x in rest[1:]:
      x, total = jax.lax.optimization_barrier((x, total))
      total = total + norms._complex_sums(x)
    return jnp.stack([jnp.real(total), jnp.imag(total)]).astype(jnp.float32)
  return _with_paired_matrices(leaves, sums_of)


def _written_norms(leaves: list[jax.Array]) -> jax.Array:
  """The leaves' norms written one by one into a float32 vector, which one
  ``hypot`` reduce then combines."""
  def combine(ns: list[jax.Array]) -> jax.Array:
    vector = jnp.zeros((len(ns),), jnp.float32)
    for i, n in enumerate(ns):
      vector = vector.at[i].set(n)
    return jax.lax.reduce(vector, jnp.zeros((), jnp.float32), norms._hypot,
                          (0,))
  return _combined(leaves, combine)


def _stacked(leaves: list[jax.Array]) -> jax.Array:
  """The leaves' norms stacked into one vector and reduced at once."""
  return _combined(leaves, _stacked_norm)


def _linear(leaves: list[jax.Array]) -> jax.Array:
  """The leaves' norms combined as a chain ``((n0 ⊕ n1) ⊕ n2) ⊕ …``."""
  def chain(ns):
    total = ns[0]
    for n in ns[1:]:
      total = norms._hypot(total, n)
    return total
  return _combined(leaves, chain)


def _with_norms(leaves: list[jax.Array], norms_of, add_up) -> jax.Array:
  """The released TPU form's paired small matrices, and for the other leaves
  the float32 norms ``norms_of(leaves)`` whose squares and scaled squares
  ``add_up`` adds into the two sums."""
  def sums_of(rest: list[jax.Array]) -> jax.Array:
    leaf_norms = norms_of(rest)
    scale = norms._scale_factor(jnp.float32)
    return jnp.stack([add_up([n * n for n in leaf_norms]),
                      add_up([(n * scale) * (n * scale)
                              for n in leaf_norms])])
  return _with_paired_matrices(leaves, sums_of)


def _balanced(terms: list[jax.Array]) -> jax.Array:
  return norms._pairwise_sum(terms, jnp.add)


def _chained(terms: list[jax.Array]) -> jax.Array:
  """``terms`` added in pairs of neighbours, the pairs chained in order."""
  runs = [norms._pairwise_sum(terms[i:i + 2], jnp.add)
          for i in range(0, len(terms), 2)]
  total = runs[0]
  for run in runs[1:]:
    total = total + run
  return total


def _each_leaf(leaves: list[jax.Array]) -> list[jax.Array]:
  return [norms._leaf_norm(x) for x in leaves]


def _chained_pairs(leaves: list[jax.Array]) -> jax.Array:
  """The released TPU form, but the hypot-reduced leaves' squared norms added
  in pairs of adjacent leaves, and the pairs' sums chained in leaf order."""
  return _with_norms(leaves, _each_leaf, _chained)


def _group_norm(xs: list[jax.Array]) -> jax.Array:
  """``‖(x₁, …, x_k)‖`` of same-shaped leaves: their ``|x|`` combined
  element by element with ``hypot``, then one reduce with that combiner."""
  dtype = norms._sum_dtype(xs[0])
  magnitude = jnp.abs(xs[0].astype(dtype))
  for x in xs[1:]:
    magnitude = norms._hypot(magnitude, jnp.abs(x.astype(dtype)))
  return jax.lax.reduce(magnitude, jnp.zeros((), dtype), norms._hypot,
                        tuple(range(magnitude.ndim))).astype(jnp.float32)


def _vectors_grouped(leaves: list[jax.Array]) -> list[jax.Array]:
  """The norms of ``leaves`` other than small vectors, then one norm per
  group of up to eight small vectors (or scalars) of one shape and dtype."""
  vectors, others = _split(
      leaves, lambda x: x.ndim < 2 and x.size < norms._SMALL_LEAF)
  return _each_leaf(others) + [_group_norm(xs)
                               for xs in norms._same_shape_groups(vectors)]


def _grouped_hypot_vectors(leaves: list[jax.Array]) -> jax.Array:
  """The released TPU form, but up to eight small vectors (or scalars) of
  one shape and dtype share one hypot reduce and one norm, after the norms
  of the other hypot-reduced leaves."""
  return _with_norms(leaves, _vectors_grouped, _balanced)


def _windowed_hypot_vectors(leaves: list[jax.Array]) -> jax.Array:
  """The same, but small vectors grouped only within each run of twelve
  consecutive hypot-reduced leaves."""
  def windowed(rest: list[jax.Array]) -> list[jax.Array]:
    return [n for i in range(0, len(rest), 12)
            for n in _vectors_grouped(rest[i:i + 12])]
  return _with_norms(leaves, windowed, _balanced)


def _adjacent_hypot_vectors(leaves: list[jax.Array]) -> jax.Array:
  """The released TPU form, but each run of up to eight neighbouring small
  vectors (or scalars) of one shape and dtype shares one hypot reduce."""
  def adjacent(rest: list[jax.Array]) -> list[jax.Array]:
    runs: list[list[jax.Array]] = []
    for x in rest:
      joins = (runs and x.ndim < 2 and x.size < norms._SMALL_LEAF
               and len(runs[-1]) < norms._GROUP
               and (runs[-1][-1].shape, runs[-1][-1].dtype)
               == (x.shape, x.dtype))
      if joins:
        runs[-1].append(x)
      else:
        runs.append([x])
    return [_group_norm(xs) for xs in runs]
  return _with_norms(leaves, adjacent, _balanced)


def _interleaved_halves(leaves: list[jax.Array]) -> jax.Array:
  """The released TPU form, but the hypot-reduced leaves' terms taken in the
  order ``t₀, t_h, t₁, t_{h+1}, …`` (``h = ⌈n/2⌉``) before the two balanced
  trees add them."""
  def add_up(terms: list[jax.Array]) -> jax.Array:
    half = (len(terms) + 1) // 2
    order = [t for pair in itertools.zip_longest(terms[:half], terms[half:])
             for t in pair if t is not None]
    return _balanced(order)
  return _with_norms(leaves, _each_leaf, add_up)


def _vector_sums(leaves: list[jax.Array]) -> jax.Array:
  """The released TPU form's reduces, but each hypot-reduced leaf's norm
  ``n`` becomes the ``[2]`` vector ``(n·[1, 2⁻⁸⁸])²``, and those vectors
  are added in one balanced tree."""
  def add_up(leaf_norms: list[jax.Array]) -> jax.Array:
    pair = jnp.stack([jnp.ones((), jnp.float32),
                      norms._scale_factor(jnp.float32)])
    return _balanced([(n * pair) * (n * pair) for n in leaf_norms])
  return _with_paired_matrices(leaves, lambda rest: add_up(_each_leaf(rest)))


def _stacked_pairs(leaves: list[jax.Array]) -> jax.Array:
  """The same, each ``[2]`` vector stacked from ``n`` and ``n·2⁻⁸⁸`` and
  then squared."""
  def add_up(leaf_norms: list[jax.Array]) -> jax.Array:
    scale = norms._scale_factor(jnp.float32)
    pairs = [jnp.stack([n, n * scale]) for n in leaf_norms]
    return _balanced([v * v for v in pairs])
  return _with_paired_matrices(leaves, lambda rest: add_up(_each_leaf(rest)))


def _shape_groups(leaves: list[jax.Array]) -> jax.Array:
  """The released TPU form, but all hypot-reduced leaves of one shape and
  dtype share one hypot reduce and one norm."""
  def per_shape(rest: list[jax.Array]) -> list[jax.Array]:
    by_layout: dict[tuple[Any, ...], list[jax.Array]] = {}
    for x in rest:
      by_layout.setdefault((x.shape, x.dtype), []).append(x)
    return [_group_norm(xs) for xs in by_layout.values()]
  return _with_norms(leaves, per_shape, _balanced)


_FORMS = {"ours-variadic-f32": _variadic_for_float32,
          "ours-paired-vectors": _paired_vectors,
          "ours-hypot-all": _hypot_for_all,
          "ours-plain-f32": _plain_for_float32,
          "ours-hypot-tree": _hypot_tree,
          "ours-stacked": _stacked,
          "ours-linear": _linear,
          "ours-pair-each": _pair_each,
          "ours-grouped-vectors": _grouped_vectors,
          "ours-chained-pairs": _chained_pairs,
          "ours-grouped-hypot-vectors": _grouped_hypot_vectors,
          "ours-windowed-hypot-vectors": _windowed_hypot_vectors,
          "ours-vector-sums": _vector_sums,
          "ours-stacked-pairs": _stacked_pairs,
          "ours-adjacent-hypot-vectors": _adjacent_hypot_vectors,
          "ours-interleaved-halves": _interleaved_halves,
          "ours-shape-groups": _shape_groups,
          "ours-hypot-pair-reduces": _hypot_pair_reduces,
          "ours-complex": _complex_sums,
          "ours-ordered": _ordered_complex_sums,
          "ours-written-norms": _written_norms}


def make_optimizer(variant: str) -> optax.GradientTransformation:
  adamw = optax.adamw(1e-4, weight_decay=0.01)
  if variant == "adamw":
    return adamw
  if variant == "ours" or variant in _FORMS:
    return optax.chain(sdrl.unconditional_clip(1.0), adamw)
  if variant == "ours-propagate":
    return optax.chain(sdrl.unconditional_clip(1.0, nonfinite="propagate"),
                       adamw)
  if variant == "conditional":
    return optax.chain(sdrl.conditional_clip(1.0), adamw)
  if variant == "optax":
    return optax.chain(optax.clip_by_global_norm(1.0), adamw)
  raise ValueError(f"unknown variant {variant!r}")


def compile_step(variant: str, shapes, grad_dtype, device) -> Any:
  """Deviceless compile of a donated AdamW step on one TPU device."""
  sharding = NamedSharding(Mesh(np.array([device]), ("d",)), P())
  struct = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,
                                                     sharding=sharding)
  params = {k: struct(s, jnp.float32) for k, s in shapes.items()}
  grads = {k: struct(s, grad_dtype) for k, s in shapes.items()}
  tx = make_optimizer(variant)
  state = jax.tree.map(lambda s: struct(s.shape, s.dtype),
                       jax.eval_shape(tx.init, params))

  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  form = _FORMS.get(variant, _RELEASED)
  with mock.patch.object(norms, "_sums_for_tpu", form):
    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads)
  return lowered.compile()


def measure(target: str, tree: str,
            variants=VARIANTS) -> list[dict[str, Any]]:
  """One row per variant for a target and a tree."""
  topology = topologies.get_topology_desc(
      platform="tpu", topology_name=TOPOLOGIES[target])
  shapes, grad_dtype = tree_spec(tree)
  grad_bytes = sum(int(np.prod(s)) for s in shapes.values()) * np.dtype(
      grad_dtype).itemsize
  rows = []
  for variant in variants:
    compiled = compile_step(variant, shapes, grad_dtype, topology.devices[0])
    text = compiled.as_text()
    cost = compiled.cost_analysis()
    traffic = hlo_traffic.hbm_traffic(text)
    entry_ops = hlo_traffic.entry_opcode_counts(text)
    rows.append({
        "target": target, "tree": tree, "variant": variant,
        "grad_bytes": grad_bytes,
        "temp": compiled.memory_analysis().temp_size_in_bytes,
        "peak": compiled.memory_analysis().peak_memory_in_bytes,
        "hbm": traffic.total_bytes,
        "entry_ops": entry_ops,
        "scalar_tiles": hlo_traffic.scalar_op_tiles(text),
        "copies": entry_ops.get("copy-start", 0),
        "copy_hbm": traffic.by_opcode.get("copy-start", 0),
        "bytes_accessed": float(cost["bytes accessed"]),
        "cycles": hlo_traffic.estimated_cycles(text),
        "conditionals": hlo_traffic.count_ops(text, "conditional"),
        "fusions": hlo_traffic.count_ops(text, "fusion"),
    })
    print(rows[-1], file=sys.stderr, flush=True)
  return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
  lines = ["| target | tree | variant | temp / grad bytes | HBM traffic "
           "(x adamw) | extra HBM / grad bytes | bytes accessed (x adamw) "
           "| estimated cycles (x adamw) | `conditional` | fusions "
           "| peak over adamw / grad bytes | `copy-start` | their HBM bytes "
           "/ grad bytes |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  base = {}
  for r in rows:
    if r["variant"] == "adamw":
      base[(r["target"], r["tree"])] = r
    b = base[(r["target"], r["tree"])]
    lines.append(
        f"| {r['target']} | {r['tree']} | {r['variant']} "
        f"| {100 * r['temp'] / r['grad_bytes']:.2f}% "
        f"| {r['hbm'] / b['hbm']:.3f} "
        f"| {(r['hbm'] - b['hbm']) / r['grad_bytes']:.3f} "
        f"| {r['bytes_accessed'] / b['bytes_accessed']:.3f} "
        f"| {r['cycles'] / b['cycles']:.3f} "
        f"| {r['conditionals']} | {r['fusions']} "
        f"| {100 * (r['peak'] - b['peak']) / r['grad_bytes']:.2f}% "
        f"| {r['copies']} | {r['copy_hbm'] / r['grad_bytes']:.3f} |")
  return "\n".join(lines)


def format_entry_ops(rows: list[dict[str, Any]], opcodes: list[str]) -> str:
  """Per row, XLA:TPU's bytes accessed, the entry computation's count of
  each of ``opcodes`` (ops left outside the fusions, each charged in bytes
  accessed) and the bytes of its scalar ops at 512 per operand and result
  (:func:`hlo_traffic.scalar_op_tiles`)."""
  lines = ["| target | tree | variant | bytes accessed | "
           + " | ".join(f"`{op}`" for op in opcodes)
           + " | scalar-op bytes |",
           "|---|---|---|---:|" + "---:|" * (len(opcodes) + 1)]
  for r in rows:
    counts = " | ".join(str(r["entry_ops"].get(op, 0)) for op in opcodes)
    lines.append(f"| {r['target']} | {r['tree']} | {r['variant']} "
                 f"| {r['bytes_accessed']:.0f} | {counts} "
                 f"| {512 * r['scalar_tiles']} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--targets", nargs="+", default=["v5e", "v5p"],
                      choices=sorted(TOPOLOGIES))
  parser.add_argument("--trees", nargs="+", default=["gpt", "gpt-bf16",
                                                      "small"],
                      choices=["gpt", "gpt-bf16", "gpt-w768",
                               "gpt-w768-bf16", "small", "small-square",
                               "small-vectors"])
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                      choices=VARIANTS)
  parser.add_argument("--entry-ops", nargs="+", default=None,
                      metavar="OPCODE",
                      help="also list bytes accessed and how many of these "
                      "ops each entry computation has, e.g. add multiply")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  rows = []
  for target in args.targets:
    for tree in args.trees:
      rows += measure(target, tree, args.variants)
      print(f"done {target} {tree}", file=sys.stderr, flush=True)
  text = format_rows(rows)
  if args.entry_ops:
    text += "\n\n" + format_entry_ops(rows, args.entry_ops)
  text += (
      f"\n\njax {jax.__version__}, optax {optax.__version__}, deviceless "
      f"XLA:TPU compiles (libtpu {importlib.metadata.version('libtpu')}).")
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
