"""Static figures read from an optimized (compiled) HLO module's text.

``compiled.as_text()`` after ``jax.jit(f).lower(...).compile()`` is the
scheduled program XLA runs. This module reads, from that text alone:

* **HBM traffic**: for each instruction that the entry computation executes
  (recursing into the computations of ``conditional``, ``call`` and ``while``,
  never into fused computations), the bytes of its array operands plus the
  bytes of its array outputs that live in device memory (HBM). An array lives
  in HBM unless its layout names another memory space: XLA:TPU prints
  ``S(1)`` (VMEM) and other ``S(n)`` in the layout, ``f32[1024]{0:T(1024)S(1)}``;
  no ``S(n)``, or ``S(0)``, is HBM. A prefetch or eviction (``copy-start`` or
  ``slice-start`` between HBM and another memory space) moves the copied
  bytes once, counted at the start (a slice only its slice);
  ``-done`` halves of asynchronous pairs count nothing. Pure bookkeeping
  (``parameter``, ``get-tuple-element``, ``tuple``, ``bitcast``, ``constant``,
  ``after-all``, ``opt-barrier``) moves nothing. For a ``conditional`` the
  costliest branch is counted (in the benchmarks every step clips, which is
  the costly branch); a ``while`` body counts once (the trip count is not read).
  On GPU and CPU no memory space is printed, so every array counts: that is
  "operands + outputs of the ops the entry computation runs".
* the sum of the ``estimated_cycles`` XLA:TPU's cost model writes into each
  fusion's ``backend_config`` (same traversal);
* counts of ``fusion`` and ``conditional`` ops.

Limits: an op that reads part of an operand (a slice fused into a consumer) or
updates a buffer in place (``dynamic-update-slice``) is charged the whole
buffer, so the count is an upper bound for such ops; the optimizer steps
measured here have none in the update itself.
"""

import dataclasses
import re

# Element sizes in bits of HLO primitive types.
_BITS = {
    "pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8,
    "s16": 16, "u16": 16, "s32": 32, "u32": 32, "s64": 64, "u64": 64,
    "f16": 16, "bf16": 16, "f32": 32, "f64": 64, "c64": 64, "c128": 128,
    "f8e4m3fn": 8, "f8e5m2": 8, "f8e4m3": 8, "f8e3m4": 8, "f8e4m3b11fnuz": 8,
    "f8e4m3fnuz": 8, "f8e5m2fnuz": 8, "f8e8m0fnu": 8, "f4e2m1fn": 4,
    "token": 0,
}

_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^{}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_NO_TRAFFIC = frozenset({
    "parameter", "get-tuple-element", "tuple", "bitcast", "constant",
    "after-all", "opt-barrier", "partition-id", "replica-id",
})


@dataclasses.dataclass(frozen=True)
class Array:
  """One array of an HLO shape: its size in bytes and memory space."""
  nbytes: int
  memory_space: int


def parse_shape(text: str) -> list[Array]:
  """The arrays of an HLO shape string (a tuple gives several).

  Args:
    text: e.g. ``"(f32[8,128]{1,0:T(8,128)S(1)}, s32[])"``.

  Returns:
    One :class:`Array` per array in the shape, in order.
  """
  arrays = []
  for dtype, dims, layout in _ARRAY.findall(text):
    if dtype not in _BITS:
      continue
    count = 1
    for d in dims.split(","):
      if d:
        count *= int(d)
    space = _MEMORY_SPACE.search(layout or "")
    arrays.append(Array(nbytes=(count * _BITS[dtype] + 7) // 8,
                        memory_space=int(space.group(1)) if space else 0))
  return arrays


@dataclasses.dataclass
class Instruction:
  name: str
  shape: list[Array]
  opcode: str
  operands: list[str]
  attributes: str


_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")


def _split_operands(rest: str) -> tuple[str, str]:
  """Splits ``a, b), attr=...`` at the parenthesis closing the operand list."""
  depth = 1
  for i, ch in enumerate(rest):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
      if depth == 0:
        return rest[:i], rest[i + 1:]
  return rest, ""


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
  """Computations of an HLO module: ``{name: instructions}`` and the entry's name."""
  computations: dict[str, list[Instruction]] = {}
  entry = None
  current = None
  for line in text.splitlines():
    stripped = line.strip()
    header = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{$", stripped)
    if header and "=" not in stripped.split("(")[0]:
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
      continue
    if stripped == "}":
      current = None
      continue
    if current is None:
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode, rest = match.groups()
    operand_text, attributes = _split_operands(rest)
    operands = re.findall(r"%([\w.\-]+)", operand_text)
    computations[current].append(
        Instruction(name, parse_shape(shape), opcode, operands, attributes))
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return computations, entry


@dataclasses.dataclass
class Traffic:
  """What one computation (and what it calls) moves and costs."""
  hbm_bytes: int = 0
  estimated_cycles: int = 0
  fusions: int = 0
  conditionals: int = 0

  def add(self, other: "Traffic") -> None:
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _hbm(arrays: list[Array]) -> int:
  return sum(a.nbytes for a in arrays if a.memory_space == 0)


def _called(attributes: str, key: str) -> list[str]:
  found = re.search(key + r"=\{?([^}]*?)\}?(?:,\s[a-z_]+=|$)", attributes)
  if not found:
    return []
  return re.findall(r"%?([\w.\-]+)", found.group(1))


def computation_traffic(computations: dict[str, list[Instruction]],
                        name: str) -> Traffic:
  """:class:`Traffic` of one computation, recursing into control flow."""
  shapes = {i.name: i.shape for i in computations[name]}
  total = Traffic()
  for inst in computations[name]:
    op = inst.opcode
    if op in _NO_TRAFFIC or op.endswith("-done"):
      continue
    if op == "conditional":
      total.conditionals += 1
      branches = (_called(inst.attributes, "branch_computations")
                  or _called(inst.attributes, "true_computation")
                  + _called(inst.attributes, "false_computation"))
      costs = [computation_traffic(computations, b) for b in branches
               if b in computations]
      if costs:
        total.add(max(costs, key=lambda t: t.hbm_bytes))
      continue
    if op in ("while", "call"):
      for key in ("body", "condition", "to_apply"):
        for callee in _called(inst.attributes, key):
          if callee in computations:
            total.add(computation_traffic(computations, callee))
      continue
    operand_arrays = [a for o in inst.operands for a in shapes.get(o, [])]
    if op in ("copy-start", "slice-start"):
      # A prefetch (HBM -> on chip) or eviction (on chip -> HBM) moves the
      # copied bytes once; a copy within HBM reads and writes them. The
      # shape is (destination, source, context) for copy-start and
      # ((source), destination, context) for slice-start.
      src = operand_arrays[0]
      dst = inst.shape[0] if op == "copy-start" else inst.shape[1]
      total.hbm_bytes += dst.nbytes * ((src.memory_space == 0)
                                       + (dst.memory_space == 0))
      continue
    if op == "fusion":
      total.fusions += 1
    cycles = re.search(r'"estimated_cycles":"(\d+)"', inst.attributes)
    if cycles:
      total.estimated_cycles += int(cycles.group(1))
    total.hbm_bytes += _hbm(operand_arrays) + _hbm(inst.shape)
  return total


def module_traffic(hlo_text: str) -> Traffic:
  """:class:`Traffic` of the entry computation of an optimized HLO module.

  Args:
    hlo_text: ``compiled.as_text()``.

  Returns:
    HBM bytes moved, summed fusion ``estimated_cycles`` and op counts.
  """
  computations, entry = parse_module(hlo_text)
  return computation_traffic(computations, entry)

