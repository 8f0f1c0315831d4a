"""What the clipped AdamW step keeps in memory on TPU, read from XLA's buffer assignment.

``compiled.memory_analysis()`` gives one ``temp_size_in_bytes`` per program;
``clip_overhead.py`` reports it. This script asks what that temp holds. It
compiles the donated AdamW step of ``clip_overhead.py`` (alone and with each
clip) deviceless for TPU, has XLA write its buffer assignment
(``xla_dump_to``), and reads per memory space (``color 0`` is HBM, ``1``
VMEM on v5e, v5p and v6e; ``3`` is v4's CMEM):

* the bytes allocated in each space;
* the HBM ``preallocated-temp`` allocation: its size and what its values are.
  On v4 and v5e most of it holds ``slice-start`` values, the 512-byte state
  of an asynchronous sliced copy of a gradient into on-chip memory, each at
  its own 16 KiB-aligned offset;
* ``memory_analysis()``'s ``temp_size_in_bytes`` and
  ``peak_memory_in_bytes`` next to them (on TPU the peak counts on-chip
  memory too).

Run with the python of the TPU venv of ``setup_compilers.sh``::

    python benchmarks/tpu_memory.py --targets tpu-v4 tpu-v5e tpu-v5p tpu-v6e \\
        --trees gpt-f32 gpt-bf16 --out benchmarks/results/tpu_memory.txt
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_overhead  # pylint: disable=g-import-not-at-top,wrong-import-position

import xla_targets  # pylint: disable=g-import-not-at-top,wrong-import-position

_ALLOCATION = re.compile(r"^allocation \d+: size (\d+)(.*):\s*$")
_VALUE = re.compile(r"^ value: <\d+ ([^ ]+) @\d+> \(size=(\d+),offset=(\d+)\)")


class Allocations(NamedTuple):
  """One program's buffer assignment, summed."""
  bytes_by_color: dict[int, int]    # every allocation, per memory space
  temp_bytes: int                   # HBM preallocated-temp allocation(s)
  temp_values: dict[str, int]       # opcode -> values in it
  temp_value_bytes: dict[str, int]  # opcode -> their own sizes
  largest_temp_value: int           # bytes of the largest value in it
  temp_offsets: int                 # distinct offsets of its values


def parse_buffer_assignment(text: str) -> Allocations:
  """Sums an ``*-buffer-assignment.txt`` dump of XLA (its allocation lines
  and the values listed under each)."""
  by_color: dict[int, int] = collections.Counter()
  temp_bytes = 0
  values: dict[str, int] = collections.Counter()
  value_bytes: dict[str, int] = collections.Counter()
  largest = 0
  offsets = set()
  in_hbm_temp = False
  for line in text.splitlines():
    match = _ALLOCATION.match(line)
    if match:
      size, attributes = int(match.group(1)), match.group(2)
      color = re.search(r"color (\d+)", attributes)
      color = int(color.group(1)) if color else 0
      by_color[color] += size
      in_hbm_temp = color == 0 and "preallocated-temp" in attributes
      if in_hbm_temp:
        temp_bytes += size
      continue
    match = _VALUE.match(line)
    if match and in_hbm_temp:
      opcode = re.sub(r"(\.\d+)?(\{[\d,]*\})?$", "", match.group(1))
      values[opcode] += 1
      value_bytes[opcode] += int(match.group(2))
      largest = max(largest, int(match.group(2)))
      offsets.add(int(match.group(3)))
  return Allocations(dict(by_color), temp_bytes, dict(values),
                     dict(value_bytes), largest, len(offsets))


class Row(NamedTuple):
  target: str
  tree: str
  variant: str
  grad_bytes: int
  allocations: Allocations
  temp_size: int     # memory_analysis().temp_size_in_bytes
  peak: int          # memory_analysis().peak_memory_in_bytes


def compile_with_dump(variant: str, shapes, grad_dtype, device,
                      dump_dir: str) -> tuple[Any, Allocations]:
  """The donated step of ``variant`` compiled with its buffer assignment
  dumped into ``dump_dir`` (empty)."""
  params = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()}
  grads = {k: jax.ShapeDtypeStruct(v, grad_dtype) for k, v in shapes.items()}
  tx = clip_overhead.make_optimizer(variant, 1.0, 1e-4)
  opt_state = jax.eval_shape(tx.init, params)
  args = xla_targets.abstract((params, opt_state, grads), device)
  # A program taken from the persistent compilation cache is not dumped.
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    compiled = clip_overhead.make_step(tx).lower(*args).compile(
        compiler_options={"xla_dump_to": dump_dir})
  finally:
    jax.config.update("jax_enable_compilation_cache", cache)
  dumps = glob.glob(os.path.join(dump_dir, "*jit_step*buffer-assignment.txt"))
  if len(dumps) != 1:
    raise RuntimeError(f"expected one buffer assignment, found {dumps}")
  with open(dumps[0], encoding="utf-8") as f:
    return compiled, parse_buffer_assignment(f.read())


def measure(target: str, tree: str) -> list[Row]:
  device = xla_targets.target_device(target)
  gpt = clip_overhead.gpt_shapes(512, 50304, 12)
  shapes, grad_dtype = clip_overhead.tree_spec(tree, gpt)
  grad_bytes = sum(int(np.prod(s)) for s in shapes.values()) * np.dtype(
      grad_dtype).itemsize
  rows = []
  for variant in clip_overhead.VARIANTS:
    with tempfile.TemporaryDirectory() as dump_dir:
      compiled, allocations = compile_with_dump(variant, shapes, grad_dtype,
                                                device, dump_dir)
    memory = compiled.memory_analysis()
    rows.append(Row(target, tree, variant, grad_bytes, allocations,
                    int(memory.temp_size_in_bytes),
                    int(memory.peak_memory_in_bytes)))
    print(f"{target} {tree} {variant} done", file=sys.stderr, flush=True)
  return rows


def _human(n: int) -> str:
  if n < 1024:
    return f"{n} B"
  return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _pct(x: float, total: int) -> str:
  return f"{100 * x / total:.2f}%"


def format_rows(rows: list[Row]) -> str:
  """A markdown table; byte figures in % of the gradient bytes, the memory
  spaces as the change over AdamW alone."""
  lines = [
      "| target | tree | variant | `temp_size_in_bytes` | HBM temp allocation "
      "| its values: `slice-start` (count, own bytes) | its largest value "
      "| its distinct offsets (allocation / offsets) "
      "| HBM allocated, change | on-chip allocated, change "
      "| `peak_memory_in_bytes`, change |",
      "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  base: dict[tuple[str, str], Row] = {}
  for r in rows:
    if r.variant == "adamw":
      base[(r.target, r.tree)] = r
    b = base[(r.target, r.tree)]
    a, ab = r.allocations, b.allocations
    hbm = a.bytes_by_color.get(0, 0) - ab.bytes_by_color.get(0, 0)
    on_chip = sum(v for k, v in a.bytes_by_color.items() if k in (1, 3)) - sum(
        v for k, v in ab.bytes_by_color.items() if k in (1, 3))
    slices = a.temp_values.get("slice-start", 0)
    lines.append(
        f"| {r.target} | {r.tree} | {r.variant} "
        f"| {_pct(r.temp_size, r.grad_bytes)} "
        f"| {_pct(a.temp_bytes, r.grad_bytes)} "
        f"| {slices} of {sum(a.temp_values.values())} values, "
        f"{a.temp_value_bytes.get('slice-start', 0) / 1024:.0f} KiB "
        f"| {_human(a.largest_temp_value)} "
        f"| {a.temp_offsets} ({_human(a.temp_bytes // max(a.temp_offsets, 1))}) "
        f"| {_pct(hbm, r.grad_bytes)} | {_pct(on_chip, r.grad_bytes)} "
        f"| {_pct(r.peak - b.peak, r.grad_bytes)} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--targets", nargs="+",
                      default=["tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e"],
                      choices=[t for t in xla_targets.TARGETS
                               if t.startswith("tpu")])
  parser.add_argument("--trees", nargs="+", default=["gpt-f32", "gpt-bf16"],
                      choices=clip_overhead.TREES)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  rows = []
  for target in args.targets:
    for tree in args.trees:
      rows += measure(target, tree)
  text = format_rows(rows) + (
      f"\n\njax {jax.__version__}; deviceless XLA:TPU compiles (libtpu); "
      "percentages of the tree's gradient bytes.")
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
