"""HBM traffic, op counts and cycle estimates read from optimized HLO text.

XLA:TPU's ``cost_analysis()["bytes accessed"]`` counts on-chip (VMEM/CMEM)
traffic too and charges a prefetched buffer several times, and XLA:GPU's
``cost_analysis()`` is None for deviceless compiles, so neither says how many
bytes cross the HBM bus. This module counts them from the text of a compiled
program (``compiled.as_text()``):

* Every instruction of the entry computation that does work (fusions,
  reductions, custom calls, collectives, copies, ...) reads its operands and
  writes its outputs. An array lives in HBM when its layout carries no memory
  space annotation or ``S(0)``; ``S(1)`` (VMEM), ``S(2)`` (semaphores/SMEM)
  and the rest are on chip, so an operand or output there moves no HBM bytes.
* A ``copy-start`` or ``slice-start`` (asynchronous copy or slice) moves its
  destination's bytes once: a prefetch (HBM -> on chip) or an eviction (on
  chip -> HBM) counts once, an on-chip copy not at all. ``*-done``,
  ``get-tuple-element``, ``tuple``, ``bitcast``, ``parameter`` and
  ``constant`` move nothing.
* A ``conditional`` is charged its most expensive branch; a ``while`` or
  ``call`` its body once (the trip count is not known from the text).

Sizes are logical (elements times element size; tile padding is ignored) and
each operand is charged whole, even when a fusion reads only a slice of it.
On GPU, where no memory spaces are printed, the same count is the bytes of
the operands and outputs of the entry computation's ops.

Example::

    from benchmarks import hlo_traffic
    text = jax.jit(step).lower(*args).compile().as_text()
    report = hlo_traffic.hbm_traffic(text)
    report.total_bytes, report.by_opcode
"""

import collections
import re
from typing import NamedTuple, Optional

ELEMENT_BYTES = {
    "pred": 1, "s2": 1, "u2": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1,
    "f8e5m2fnuz": 1, "f8e4m3": 1, "f8e3m4": 1, "f4e2m1fn": 1, "f8e8m0fnu": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8,
    "c128": 16,
}

# Opcodes that name, forward or wait for buffers without moving their bytes.
FREE_OPCODES = frozenset({
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast",
    "copy-done", "all-reduce-done", "all-gather-done", "collective-permute-done",
    "async-done", "async-update", "send-done", "recv-done", "after-all",
    "partition-id", "replica-id", "iota", "opt-barrier", "add-dependency",
})

_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_INSTRUCTION = re.compile(
    r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s*(?:\([^)]*\)|.*)\s*"
                          r"->\s*.*\{\s*$")


class Array(NamedTuple):
  """One array of a (possibly tuple) HLO shape."""
  dtype: str
  dims: tuple[int, ...]
  memory_space: int

  @property
  def num_bytes(self) -> int:
    size = ELEMENT_BYTES.get(self.dtype, 0)
    for d in self.dims:
      size *= d
    return size

  @property
  def in_hbm(self) -> bool:
    return self.memory_space == 0


class Instruction(NamedTuple):
  """One HLO instruction; ``shape`` flattens nested tuples."""
  name: str
  shape: tuple[Array, ...]
  opcode: str
  operands: tuple[str, ...]
  attributes: str
  elements: tuple[tuple[Array, ...], ...] = ()  # per top-level tuple element
  is_root: bool = False


class TrafficReport(NamedTuple):
  """HBM bytes of a compiled program.

  Attributes:
    total_bytes: bytes read from and written to HBM.
    by_opcode: the same split by opcode (``fusion``, ``copy-start``, ...).
    instructions: ``(name, opcode, bytes)`` for every instruction charged.
  """
  total_bytes: int
  by_opcode: dict[str, int]
  instructions: list[tuple[str, str, int]]


def parse_shape(text: str) -> tuple[Array, ...]:
  """The arrays of an HLO shape string such as ``(f32[8]{0:S(1)}, s32[])``."""
  arrays = []
  for dtype, dims, layout in _ARRAY.findall(text):
    if dtype not in ELEMENT_BYTES:
      continue
    space = re.search(r"S\((\d+)\)", layout or "")
    arrays.append(Array(dtype, tuple(int(d) for d in dims.split(",") if d),
                        int(space.group(1)) if space else 0))
  return tuple(arrays)


def _top_level_elements(text: str) -> tuple[tuple[Array, ...], ...]:
  """The arrays of each top-level element of a tuple shape (one for an array)."""
  text = text.strip()
  if not text.startswith("("):
    return (parse_shape(text),)
  elements, depth, begin = [], 0, 1
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if (ch == "," and depth == 1) or depth == 0:
      elements.append(parse_shape(text[begin:i]))
      begin = i + 1
    if depth == 0:
      break
  return tuple(elements)


def _split_operands(text: str) -> tuple[str, str]:
  """Splits ``a, b), attrs`` at the parenthesis closing the operand list."""
  depth = 1
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
      if depth == 0:
        return text[:i], text[i + 1:]
  return text, ""


def parse_computations(hlo_text: str) -> tuple[dict[str, list[Instruction]],
                                                 Optional[str]]:
  """All computations of an HLO module: ``{name: instructions}``, entry name."""
  computations: dict[str, list[Instruction]] = {}
  entry = None
  current = None
  for line in hlo_text.splitlines():
    stripped = line.strip()
    if current is None:
      header = _COMPUTATION.match(line)
      if header and not stripped.startswith("HloModule"):
        current = header.group(2)
        computations[current] = []
        if header.group(1):
          entry = current
      continue
    if stripped == "}":
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    root, name, shape_text, opcode, rest = match.groups()
    operand_text, attributes = _split_operands(rest)
    operands = tuple(re.findall(r"%([\w.\-]+)", operand_text))
    computations[current].append(
        Instruction(name, parse_shape(shape_text), opcode, operands,
                    attributes, _top_level_elements(shape_text),
                    bool(root)))
  return computations, entry


def _hbm_bytes(arrays: tuple[Array, ...]) -> int:
  return sum(a.num_bytes for a in arrays if a.in_hbm)


def _called(attributes: str, key: str) -> list[str]:
  """Computation names that an attribute names.

  E.g. ``body=%b`` or ``branch_computations={%a, %b}``.
  """
  match = re.search(key + r"=\{([^}]*)\}", attributes)
  if match:
    return re.findall(r"%?([\w.\-]+)", match.group(1))
  match = re.search(key + r"=%?([\w.\-]+)", attributes)
  return [match.group(1)] if match else []


def _computation_traffic(name: str, computations: dict[str, list[Instruction]],
                         charged: list[tuple[str, str, int]]) -> int:
  shapes = {ins.name: ins.shape for ins in computations.get(name, [])}
  total = 0
  for ins in computations.get(name, []):
    if ins.opcode in FREE_OPCODES or ins.opcode.endswith("-done"):
      continue
    if ins.opcode == "conditional":
      branches = (_called(ins.attributes, "branch_computations")
                  or _called(ins.attributes, "true_computation")
                  + _called(ins.attributes, "false_computation"))
      costs = []
      for branch in branches:
        sub: list[tuple[str, str, int]] = []
        costs.append((_computation_traffic(branch, computations, sub), sub))
      if costs:
        cost, sub = max(costs, key=lambda c: c[0])
        charged.extend(sub)
        total += cost
      continue
    if ins.opcode in ("while", "call"):
      for sub_name in (_called(ins.attributes, "body")
                       + _called(ins.attributes, "to_apply")):
        total += _computation_traffic(sub_name, computations, charged)
      continue
    operand_arrays = [a for op in ins.operands for a in shapes.get(op, ())]
    if ins.opcode in ("copy-start", "slice-start"):
      # Asynchronous copies and slices: the bytes of the destination move
      # once, when the source or the destination is in HBM. A copy-start's
      # shape is (destination, source, context), a slice-start's
      # ((source), destination, context).
      dest = ins.shape[0] if ins.opcode == "copy-start" else ins.shape[-2]
      touches_hbm = dest.in_hbm or any(a.in_hbm for a in operand_arrays)
      moved = dest.num_bytes if touches_hbm else 0
    else:
      moved = _hbm_bytes(tuple(operand_arrays)) + _hbm_bytes(ins.shape)
    if moved:
      charged.append((ins.name, ins.opcode, moved))
      total += moved
  return total


def hbm_traffic(hlo_text: str) -> TrafficReport:
  """HBM bytes read and written by the entry computation of compiled HLO.

  Args:
    hlo_text: ``compiled.as_text()`` of a jitted function.

  Returns:
    A :class:`TrafficReport`.
  """
  computations, entry = parse_computations(hlo_text)
  if entry is None:
    raise ValueError("hlo_text has no ENTRY computation.")
  charged: list[tuple[str, str, int]] = []
  total = _computation_traffic(entry, computations, charged)
  by_opcode: dict[str, int] = collections.defaultdict(int)
  for _, opcode, moved in charged:
    by_opcode[opcode] += moved
  return TrafficReport(total, dict(by_opcode), charged)


def count_ops(hlo_text: str, opcode: str) -> int:
  """Number of instructions with ``opcode`` (``all-reduce`` counts ``-start``).

  Matches ``opcode(`` as a whole word, so ``conditional`` does not match
  inside ``unconditional_clip`` and ``all-reduce.3`` (a name) is not counted.
  """
  pattern = r"(?<![\w.\-])" + re.escape(opcode) + r"(?:-start)?\("
  return len(re.findall(pattern, hlo_text))


def entry_opcode_counts(hlo_text: str) -> dict[str, int]:
  """How many instructions of each opcode the entry computation holds."""
  computations, entry = parse_computations(hlo_text)
  return dict(collections.Counter(i.opcode for i in computations[entry]))


def scalar_op_tiles(hlo_text: str) -> int:
  """Operands plus results of the entry computation's ops on scalars.

  XLA:TPU runs ops whose result and operands are all rank-0 arrays (the adds
  that combine per-leaf sums, say) outside its fusions and charges each
  operand and the result as one 128-element tile, 512 bytes, in ``bytes
  accessed``, whatever the dtype (``pred`` too: the differences in
  ``results/norm_tpu_scalar_ops.txt`` match to the byte). Fusions,
  control flow, ``-done`` ops and ops that move no bytes are not counted.
  """
  computations, entry = parse_computations(hlo_text)
  shapes = {ins.name: ins.shape for ins in computations[entry]}
  is_scalar = lambda shape: len(shape) == 1 and not shape[0].dims
  skipped = FREE_OPCODES | {"fusion", "conditional", "while", "call"}
  tiles = 0
  for ins in computations[entry]:
    if (ins.opcode in skipped or ins.opcode.endswith("-done")
        or not is_scalar(ins.shape)):
      continue
    if all(is_scalar(shapes.get(name, ())) for name in ins.operands):
      tiles += 1 + len(ins.operands)
  return tiles


def _cycles(name: str, computations: dict[str, list[Instruction]]) -> int:
  total = 0
  for ins in computations.get(name, []):
    if ins.opcode == "conditional":
      branches = (_called(ins.attributes, "branch_computations")
                  or _called(ins.attributes, "true_computation")
                  + _called(ins.attributes, "false_computation"))
      # The branch that moves the most HBM bytes, as in the traffic count.
      costs = [(_computation_traffic(b, computations, []),
                _cycles(b, computations)) for b in branches]
      total += max(costs, default=(0, 0))[1]
      continue
    match = re.search(r'"estimated_cycles":"(\d+)"', ins.attributes)
    if match:
      total += int(match.group(1))
  return total


def estimated_cycles(hlo_text: str) -> int:
  """Sum of XLA:TPU's ``estimated_cycles`` over the entry computation's ops.

  XLA:TPU writes its cost model's cycle estimate of each fusion (and of some
  other ops) into the op's ``backend_config``; 0 for other backends. A
  ``conditional`` adds the branch that :func:`hbm_traffic` charges.
  """
  computations, entry = parse_computations(hlo_text)
  return _cycles(entry, computations)


def fusion_cycles(hlo_text: str) -> list[tuple[str, int, str]]:
  """``(name, estimated_cycles, output shape)`` per entry instruction, largest first."""
  computations, entry = parse_computations(hlo_text)
  rows = []
  for ins in computations[entry]:
    match = re.search(r'"estimated_cycles":"(\d+)"', ins.attributes)
    if match:
      shape = ", ".join(f"{a.dtype}{list(a.dims)}" for a in ins.shape)
      rows.append((ins.name, int(match.group(1)), shape))
  return sorted(rows, key=lambda r: -r[1])


class MatmulFusions(NamedTuple):
  """What the entry computation's matmul fusions also do.

  Attributes:
    matmuls: fusions with a ``dot`` or ``convolution`` inside.
    writing_outputs: those with a non-scalar output that is an output of the
      program (e.g. new parameters or optimizer state written by the
      matmul's epilogue).
    with_scalar_reduction: those with a ``reduce`` inside and a float32
      scalar output (a full reduction, such as a sum of squares, fused into
      the matmul).
  """
  matmuls: int
  writing_outputs: int
  with_scalar_reduction: int


# Opcodes whose result is their operand's buffer, unchanged.
_FORWARDING = frozenset({"bitcast", "copy", "copy-start", "copy-done"})


def _opcodes_called(name: str,
                    computations: dict[str, list[Instruction]]) -> set[str]:
  opcodes: set[str] = set()
  for ins in computations.get(name, []):
    opcodes.add(ins.opcode)
    for called in _called(ins.attributes, "calls"):
      opcodes |= _opcodes_called(called, computations)
  return opcodes


def _program_outputs(instructions: list[Instruction]
                     ) -> dict[str, set[Optional[int]]]:
  """Instructions whose result reaches the root, with the tuple elements.

  Follows tuples, get-tuple-elements and forwarding ops back from the root
  instruction; ``None`` stands for the whole result. A get-tuple-element
  whose own result is needed only in part is counted whole.
  """
  by_name = {ins.name: ins for ins in instructions}
  reached: dict[str, set[Optional[int]]] = collections.defaultdict(set)
  stack: list[tuple[str, Optional[int]]] = [
      (ins.name, None) for ins in instructions if ins.is_root]
  while stack:
    name, index = stack.pop()
    ins = by_name.get(name)
    if ins is None or index in reached[name]:
      continue
    reached[name].add(index)
    if ins.opcode == "get-tuple-element":
      k = re.search(r"index=(\d+)", ins.attributes)
      stack.append((ins.operands[0], int(k.group(1)) if k else None))
    elif ins.opcode == "tuple":
      operands = (ins.operands if index is None
                  else ins.operands[index:index + 1])
      stack.extend((operand, None) for operand in operands)
    elif ins.opcode == "opt-barrier":  # the operand's tuple, as it is
      stack.extend((operand, index) for operand in ins.operands)
    elif ins.opcode in _FORWARDING:
      stack.extend((operand, None) for operand in ins.operands)
  return reached


def matmul_fusions(hlo_text: str) -> MatmulFusions:
  """Counts the entry computation's matmul fusions and what they also do.

  XLA:TPU can fuse an elementwise consumer of a matmul (an optimizer update)
  or a full reduction of its result (a sum of squares) into the matmul's
  fusion, so that the result is never written to HBM and read back. Only
  the entry computation is searched (not loop bodies).
  """
  computations, entry = parse_computations(hlo_text)
  outputs = _program_outputs(computations[entry])
  matmuls = writing = reductions = 0
  for ins in computations[entry]:
    if ins.opcode != "fusion":
      continue
    opcodes: set[str] = set()
    for called in _called(ins.attributes, "calls"):
      opcodes |= _opcodes_called(called, computations)
    if not opcodes & {"dot", "convolution"}:
      continue
    matmuls += 1
    written = [array for index in outputs.get(ins.name, ())
               for element in (ins.elements if index is None
                               else ins.elements[index:index + 1])
               for array in element]
    writing += any(array.dims for array in written)
    reductions += "reduce" in opcodes and any(
        array.dtype == "f32" and not array.dims for array in ins.shape)
  return MatmulFusions(matmuls, writing, reductions)


def corrected_optimal_seconds(cost: dict, hlo_text: str) -> float:
  """XLA:TPU's ``optimal_seconds`` without its -1 s per ``ConcatBitcast``.

  On v4 and v5e the cost analysis charges each ``ConcatBitcast`` custom call
  of the entry computation -1 second (the raw figure is minus their count plus
  a few milliseconds); those inside a ``conditional``'s branches are not
  charged, so only the entry computation's are added back.
  """
  computations, entry = parse_computations(hlo_text)
  count = sum('custom_call_target="ConcatBitcast"' in ins.attributes
              for ins in computations[entry])
  return float(cost.get("optimal_seconds", 0.0)) + count
