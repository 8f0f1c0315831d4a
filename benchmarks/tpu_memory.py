"""What the clipped AdamW step keeps in memory on TPU, read from XLA's buffer assignment.

``compiled.memory_analysis()`` gives one ``temp_size_in_bytes`` per program;
``clip_overhead.py`` reports it. This script asks what that temp holds. It
compiles the donated AdamW step of ``clip_overhead.py`` (alone and with each
clip) deviceless for TPU, has XLA write its buffer assignment
(``xla_dump_to``), and reads:

* the bytes allocated in each memory space ("color"; 0 is the default
  space, HBM; the dump's memory-usage report names the others, listed under
  the table);
* the default space's ``preallocated-temp`` allocation: its size, the names
  of the values in it (``slice-start`` is the state of an asynchronous
  sliced copy), the largest value and the number of distinct offsets;
* ``memory_analysis()``'s ``temp_size_in_bytes`` and
  ``peak_memory_in_bytes`` next to them.

Run with the python of the TPU venv of ``setup_compilers.sh``::

    python benchmarks/tpu_memory.py --targets tpu-v4 tpu-v5e tpu-v5p tpu-v6e \\
        --trees gpt-f32 gpt-bf16 small-leaves --out tpu_memory.txt
"""

import argparse
import collections
import glob
import importlib.metadata
import os
import re
import sys
import tempfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_overhead  # pylint: disable=g-import-not-at-top,wrong-import-position

import xla_targets  # pylint: disable=g-import-not-at-top,wrong-import-position

_ALLOCATION = re.compile(r"^allocation (\d+): size (\d+)(.*):\s*$")
_VALUE = re.compile(
    r"^ value: <\d+ (\S+)(?: \(phi\))? @\d+> \(size=(\d+),offset=(\d+)\)")
_SPACE = re.compile(r"^Memory Space: (\S+) \(color=(\d+)\)")


class Allocations(NamedTuple):
  """One program's buffer assignment, summed."""
  bytes_by_color: dict[int, int]    # every allocation, per memory space
  temp_bytes: int                   # the default space's preallocated temps
  temp_values: dict[str, int]       # value name prefix -> values in them
  temp_value_bytes: dict[str, int]  # value name prefix -> their own bytes
  largest_temp_value: int           # bytes of the largest value in them
  temp_offsets: int                 # distinct (allocation, offset) pairs


def parse_buffer_assignment(text: str) -> Allocations:
  """Sums an XLA ``*-buffer-assignment.txt`` dump.

  Raises:
    ValueError: a ``value:`` line in a format this parser does not know.
  """
  by_color: dict[int, int] = collections.Counter()
  temp_bytes = 0
  values: dict[str, int] = collections.Counter()
  value_bytes: dict[str, int] = collections.Counter()
  largest = 0
  offsets: set[tuple[int, int]] = set()
  in_hbm_temp, allocation = False, -1
  for line in text.splitlines():
    match = _ALLOCATION.match(line)
    if match:
      allocation, size = int(match.group(1)), int(match.group(2))
      color = re.search(r"color (\d+)", match.group(3))
      color = int(color.group(1)) if color else 0
      by_color[color] += size
      in_hbm_temp = color == 0 and "preallocated-temp" in match.group(3)
      if in_hbm_temp:
        temp_bytes += size
      continue
    if not line.startswith(" value:"):
      continue
    match = _VALUE.match(line)
    if not match:
      raise ValueError(f"unknown buffer-assignment value line: {line!r}")
    if in_hbm_temp:
      # "slice-start.4{0}", "fusion.3.clone" -> "slice-start", "fusion".
      prefix = re.split(r"[.{]", match.group(1))[0]
      size = int(match.group(2))
      values[prefix] += 1
      value_bytes[prefix] += size
      largest = max(largest, size)
      offsets.add((allocation, int(match.group(3))))
  return Allocations(dict(by_color), temp_bytes, dict(values),
                     dict(value_bytes), largest, len(offsets))


def parse_memory_spaces(report: str) -> dict[int, str]:
  """``color -> name`` from an XLA ``*-memory-usage-report.txt`` dump."""
  return {int(m.group(2)): m.group(1)
          for m in map(_SPACE.match, report.splitlines()) if m}


class Row(NamedTuple):
  """One compiled step: its buffer assignment and ``memory_analysis()``."""
  target: str
  tree: str
  variant: str
  grad_bytes: int
  allocations: Allocations
  spaces: dict[int, str]  # color -> memory space name
  temp_size: int          # memory_analysis().temp_size_in_bytes
  peak: int               # memory_analysis().peak_memory_in_bytes


def _one_dump(dump_dir: str, suffix: str) -> str:
  paths = glob.glob(os.path.join(dump_dir, f"*jit_step*{suffix}"))
  if len(paths) != 1:
    raise RuntimeError(f"expected one *{suffix} dump, found {paths}")
  with open(paths[0], encoding="utf-8") as f:
    return f.read()


def compile_with_dump(variant: str, shapes, grad_dtype, device, dump_dir: str
                      ) -> tuple[Any, Allocations, dict[int, str]]:
  """The donated step of ``variant``, compiled with its dumps in ``dump_dir``.

  Returns the compiled step, its buffer assignment and its memory spaces.
  """
  params = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()}
  grads = {k: jax.ShapeDtypeStruct(v, grad_dtype) for k, v in shapes.items()}
  tx = clip_overhead.make_optimizer(variant, 1.0, 1e-4)
  opt_state = jax.eval_shape(tx.init, params)
  args = xla_targets.abstract((params, opt_state, grads), device)
  # A program taken from a compilation cache is not dumped: run this in a
  # process without JAX's persistent cache.
  compiled = clip_overhead.make_step(tx).lower(*args).compile(
      compiler_options={"xla_dump_to": dump_dir})
  return (compiled,
          parse_buffer_assignment(_one_dump(dump_dir, "buffer-assignment.txt")),
          parse_memory_spaces(_one_dump(dump_dir, "memory-usage-report.txt")))


def measure(target: str, tree: str) -> list[Row]:
  """One row per variant of ``clip_overhead.py`` for a target and a tree."""
  device = xla_targets.target_device(target)
  gpt = clip_overhead.gpt_shapes(512, 50304, 12)
  shapes, grad_dtype = clip_overhead.tree_spec(tree, gpt)
  grad_bytes = sum(int(np.prod(s)) for s in shapes.values()) * np.dtype(
      grad_dtype).itemsize
  rows = []
  for variant in clip_overhead.VARIANTS:
    with tempfile.TemporaryDirectory() as dump_dir:
      compiled, allocations, spaces = compile_with_dump(
          variant, shapes, grad_dtype, device, dump_dir)
    memory = compiled.memory_analysis()
    rows.append(Row(target, tree, variant, grad_bytes, allocations, spaces,
                    int(memory.temp_size_in_bytes),
                    int(memory.peak_memory_in_bytes)))
    print(f"{target} {tree} {variant} done", file=sys.stderr, flush=True)
  return rows


def _human(n: float) -> str:
  if n < 1024:
    return f"{n:.0f} B"
  return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _pct(x: float, total: int) -> str:
  return f"{100 * x / total:.2f}%"


def format_rows(rows: list[Row]) -> str:
  """A markdown table, in % of the gradient bytes, and the memory spaces."""
  lines = [
      "| target | tree | variant | `temp_size_in_bytes` | HBM temp allocation "
      "| its values: `slice-start` (count, own bytes) | its largest value "
      "| its distinct offsets (allocation / offsets) "
      "| default space (HBM), change | other spaces, change "
      "| `peak_memory_in_bytes`, change |",
      "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  base: dict[tuple[str, str], Row] = {}
  spaces: dict[str, dict[int, str]] = collections.defaultdict(dict)
  for r in rows:
    if r.variant == "adamw":
      base[(r.target, r.tree)] = r
    b = base[(r.target, r.tree)]
    a, ab = r.allocations, b.allocations
    hbm = a.bytes_by_color.get(0, 0) - ab.bytes_by_color.get(0, 0)
    other = (sum(a.bytes_by_color.values()) - a.bytes_by_color.get(0, 0)) - (
        sum(ab.bytes_by_color.values()) - ab.bytes_by_color.get(0, 0))
    spaces[r.target].update(r.spaces)
    lines.append(
        f"| {r.target} | {r.tree} | {r.variant} "
        f"| {_pct(r.temp_size, r.grad_bytes)} "
        f"| {_pct(a.temp_bytes, r.grad_bytes)} "
        f"| {a.temp_values.get('slice-start', 0)} of "
        f"{sum(a.temp_values.values())} values, "
        f"{_human(a.temp_value_bytes.get('slice-start', 0))} "
        f"| {_human(a.largest_temp_value)} "
        f"| {a.temp_offsets} ({_human(a.temp_bytes / max(a.temp_offsets, 1))}) "
        f"| {_pct(hbm, r.grad_bytes)} | {_pct(other, r.grad_bytes)} "
        f"| {_pct(r.peak - b.peak, r.grad_bytes)} |")
  lines.append("\nChanges are over AdamW alone. Memory spaces (color: name, "
               "from the memory-usage report):")
  for target, names in spaces.items():
    lines.append(f"- {target}: " + ", ".join(
        f"{color}: {name}" for color, name in sorted(names.items())))
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--targets", nargs="+",
                      default=["tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e"],
                      choices=[t for t in xla_targets.TARGETS
                               if t.startswith("tpu")])
  parser.add_argument("--trees", nargs="+", default=list(clip_overhead.TREES),
                      choices=clip_overhead.TREES)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  rows = []
  for target in args.targets:
    for tree in args.trees:
      rows += measure(target, tree)
  text = format_rows(rows) + (
      f"\n\njax {jax.__version__}, optax {optax.__version__}, libtpu "
      f"{importlib.metadata.version('libtpu')}; deviceless XLA:TPU compiles; "
      "percentages of the tree's gradient bytes.")
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
