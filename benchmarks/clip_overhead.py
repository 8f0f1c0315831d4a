"""What global-norm clipping costs inside a fused AdamW step.

One float32 parameter tree shaped like a small GPT (about 64M parameters in
98 leaves by default) is trained by a jitted step with donated parameters and
optimizer state::

    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

for four optimizers:

* ``adamw``: ``optax.adamw`` alone, the baseline;
* ``unconditional``: ``chain(stabledrl_jax.unconditional_clip, adamw)``;
* ``conditional``: ``chain(stabledrl_jax.conditional_clip, adamw)``;
* ``optax_clip``: ``chain(optax.clip_by_global_norm, adamw)``.

For each, as a ratio to ``adamw``: the bytes XLA's ``cost_analysis()`` says
the compiled step accesses, the temporary buffer bytes of
``memory_analysis()`` (also as a fraction of the gradient bytes), and the
median wall time of interleaved runs (round-robin over the variants, the
starting variant rotating each round, so that slow phases of a shared machine
hit every variant alike). The gradients have a norm far above ``max_norm``:
every step is clipped.

A second table counts the all-reduce ops in the HLO of an unconditional clip
run under ``jax.shard_map`` on a 2-D mesh of CPU devices, with
``partition_specs`` that put the leaves on two distinct axis sets: the norm
needs one all-reduce, whatever the number of leaves and axis sets. Both the
HLO that JAX emits and the HLO after XLA's optimization passes are counted.

Run::

    python benchmarks/clip_overhead.py            # ~64M parameters
    python benchmarks/clip_overhead.py --small    # ~3M parameters, < 60 s
    python benchmarks/clip_overhead.py --out benchmarks/results/clip_overhead.txt

Byte and temp ratios are properties of the compiled program and do not depend
on the machine's load; wall-time ratios do, so compare them within one run.

**Other backends, compiled without the hardware.** ``--target`` names one or
more of ``cpu, tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e, gpu-h100, gpu-a100``. Every
target other than ``cpu`` is compiled ahead of time for a device that is not
there (``xla_targets.py``; the compilers come from the virtual environments of
``setup_compilers.sh``), for three gradient trees (``--trees``): the GPT-shaped
float32 tree, the same with bfloat16 gradients (float32 parameters and
moments), and 1000 small float32 leaves. Each table gives, per variant, the
compiler's estimates: bytes accessed (``cost_analysis()``; XLA:GPU has none),
HBM traffic counted from the optimized HLO's memory spaces (``hlo_traffic.py``
says how), temp bytes, XLA:TPU's ``optimal_seconds`` with its −1 s per
``ConcatBitcast`` custom-call removed, the summed ``estimated_cycles`` of
XLA:TPU's fusions, and the ``fusion``/``conditional`` counts. Nothing runs, so
there is no wall time for these targets::

    /path/to/tpu-venv/bin/python benchmarks/clip_overhead.py \
        --target tpu-v4 tpu-v5e tpu-v5p tpu-v6e --out-dir benchmarks/results
    /path/to/gpu-venv/bin/python benchmarks/clip_overhead.py \
        --target gpu-h100 gpu-a100 --out-dir benchmarks/results

``--target cpu`` with ``--out-dir`` runs the wall-time benchmark above and the
same compile tables for XLA:CPU.
"""

import argparse
import os
import platform
import re
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax

# The all-reduce count needs several devices; on CPU they must be requested
# before the backend starts. The setting only affects the CPU backend.
if (jax.config.jax_num_cpu_devices == -1
    and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", "")):
  jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top
import tqdm  # pylint: disable=g-import-not-at-top
from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

import stabledrl_jax as sdrl  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xla_targets  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = ("adamw", "unconditional", "conditional", "optax_clip")
TREES = ("gpt-f32", "gpt-bf16", "small-leaves")


def gpt_shapes(width: int, vocab: int, layers: int) -> dict[str, tuple[int, ...]]:
  """Leaf shapes of a GPT-like model: 8 leaves per layer, embedding, final norm.

  Args:
    width: model width ``d``.
    vocab: vocabulary size (rows of the embedding).
    layers: number of transformer blocks.

  Returns:
    An ordered dict ``name -> shape`` with ``8 * layers + 2`` entries.
  """
  shapes = {"embed": (vocab, width)}
  for i in range(layers):
    shapes[f"block{i:02d}/ln1_scale"] = (width,)
    shapes[f"block{i:02d}/qkv_kernel"] = (width, 3 * width)
    shapes[f"block{i:02d}/qkv_bias"] = (3 * width,)
    shapes[f"block{i:02d}/out_kernel"] = (width, width)
    shapes[f"block{i:02d}/ln2_scale"] = (width,)
    shapes[f"block{i:02d}/mlp_in_kernel"] = (width, 4 * width)
    shapes[f"block{i:02d}/mlp_in_bias"] = (4 * width,)
    shapes[f"block{i:02d}/mlp_out_kernel"] = (4 * width, width)
  shapes["final_ln_scale"] = (width,)
  return shapes


def make_tree(shapes: dict[str, tuple[int, ...]], seed: int,
              scale: float) -> dict[str, jax.Array]:
  """Float32 normal(0, scale²) leaves with the given shapes."""
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  return {
      name: scale * jax.random.normal(key, shape, jnp.float32)
      for key, (name, shape) in zip(keys, shapes.items())
  }


def make_optimizer(variant: str, max_norm: float,
                   lr: float) -> optax.GradientTransformation:
  """The optimizer of one benchmark variant."""
  adamw = optax.adamw(lr, weight_decay=0.01)
  if variant == "adamw":
    return adamw
  if variant == "unconditional":
    return optax.chain(sdrl.unconditional_clip(max_norm), adamw)
  if variant == "conditional":
    return optax.chain(sdrl.conditional_clip(max_norm), adamw)
  if variant == "optax_clip":
    return optax.chain(optax.clip_by_global_norm(max_norm), adamw)
  raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")


def make_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  """A jitted optimizer step donating ``params`` and ``opt_state``."""
  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return jax.jit(step, donate_argnums=(0, 1))


def count_ops(hlo_text: str, opcode: str) -> int:
  """Number of instructions with the given opcode in HLO text.

  Matches ``opcode(`` as a whole word, so ``conditional`` does not match inside
  names such as ``unconditional_clip``, and an instruction *named*
  ``all-reduce.3`` (followed by ``.3``, not ``(``) is not counted twice.
  """
  return len(re.findall(r"(?<![\w.-])" + re.escape(opcode) + r"\(", hlo_text))


def count_stablehlo_ops(mlir_text: str, op: str) -> int:
  """Number of ``stablehlo.<op>`` operations in StableHLO text."""
  return len(re.findall(r'(?<![\w.])"?stablehlo\.' + re.escape(op) + r'\b"?',
                        mlir_text))


class CompiledStats(NamedTuple):
  """Static figures of one compiled step."""
  bytes_accessed: float
  temp_bytes: int
  num_conditionals: int
  hlo_text: str


def compiled_stats(compiled: Any) -> CompiledStats:
  """Bytes accessed, temp bytes and ``conditional`` count of a compiled step."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per device
    cost = cost[0]
  memory = compiled.memory_analysis()
  text = compiled.as_text()
  return CompiledStats(
      bytes_accessed=float(cost["bytes accessed"]),
      temp_bytes=int(memory.temp_size_in_bytes),
      num_conditionals=count_ops(text, "conditional"),
      hlo_text=text,
  )


class VariantResult(NamedTuple):
  name: str
  stats: CompiledStats
  times: list[float]


def tree_bytes(tree: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def run_step_benchmark(
    shapes: dict[str, tuple[int, ...]],
    *,
    rounds: int,
    warmup: int,
    max_norm: float = 1.0,
    lr: float = 1e-4,
    variants: Sequence[str] = VARIANTS,
    progress: bool = True,
) -> list[VariantResult]:
  """Compiles and times one donated AdamW step per variant.

  Args:
    shapes: leaf shapes of the parameter tree.
    rounds: timed rounds; each round runs every variant once, in an order
      rotated by one each round.
    warmup: untimed rounds before the timed ones.
    max_norm: clipping threshold (the gradients' norm is far above it).
    lr: AdamW learning rate.
    variants: names from ``VARIANTS``; the first is the baseline.
    progress: show a tqdm bar.

  Returns:
    One :class:`VariantResult` per variant, in the order given.
  """
  grads = make_tree(shapes, seed=1, scale=1.0)
  states = {}
  steps = {}
  stats = {}
  for name in variants:
    tx = make_optimizer(name, max_norm, lr)
    params = make_tree(shapes, seed=0, scale=0.02)
    opt_state = tx.init(params)
    step = make_step(tx)
    compiled = step.lower(params, opt_state, grads).compile()
    stats[name] = compiled_stats(compiled)
    steps[name] = compiled
    states[name] = (params, opt_state)
  jax.block_until_ready(states)

  times = {name: [] for name in variants}
  order = list(variants)
  bar = tqdm.tqdm(total=(warmup + rounds) * len(order), desc="timing",
                  disable=not progress, file=sys.stderr, leave=False)
  for r in range(warmup + rounds):
    for name in order:
      params, opt_state = states[name]
      start = time.perf_counter()
      params, opt_state = steps[name](params, opt_state, grads)
      jax.block_until_ready((params, opt_state))
      elapsed = time.perf_counter() - start
      states[name] = (params, opt_state)
      if r >= warmup:
        times[name].append(elapsed)
      bar.update()
    order = order[1:] + order[:1]
  bar.close()
  return [VariantResult(name, stats[name], times[name]) for name in variants]


def shard_map_clip(
    num_leaves: int,
    mesh_shape: tuple[int, int] = (2, 4),
) -> tuple[Callable[..., Any], tuple[Any, ...], list[frozenset[str]]]:
  """An unconditional clip under ``jax.shard_map`` over two axis sets.

  Leaves alternate between ``P("data", None)`` (split over ``{data}``) and
  ``P("data", "model")`` (split over ``{data, model}``).

  Args:
    num_leaves: number of leaves in the gradient tree (≥ 2).
    mesh_shape: shape of the ``("data", "model")`` mesh; its size must not
      exceed the device count.

  Returns:
    ``(jitted_fn, args, axis_sets)``: the jitted shard_map'd update, sharded
    example arguments ``(grads, state)`` and the distinct axis sets used.
  """
  rows, cols = mesh_shape
  mesh = jax.make_mesh(mesh_shape, ("data", "model"),
                       devices=jax.devices()[:rows * cols])
  specs = {
      f"leaf{i:03d}": P("data", None) if i % 2 == 0 else P("data", "model")
      for i in range(num_leaves)
  }
  shape = (2 * rows, 2 * cols)
  grads = {
      name: jax.device_put(
          jnp.full(shape, 0.5 + i, jnp.float32), NamedSharding(mesh, spec))
      for i, (name, spec) in enumerate(specs.items())
  }
  tx = sdrl.unconditional_clip(1.0, partition_specs=specs)
  state = jax.device_put(tx.init(grads), NamedSharding(mesh, P()))

  def local_update(g, s):
    return tx.update(g, s)

  fn = jax.jit(jax.shard_map(
      local_update, mesh=mesh, in_specs=(specs, P()), out_specs=(specs, P())))
  axis_sets = sorted({frozenset(a for a in spec if a is not None)
                      for spec in specs.values()}, key=len)
  return fn, (grads, state), axis_sets


class AllReduceCount(NamedTuple):
  num_leaves: int
  num_axis_sets: int
  stablehlo: int      # stablehlo.all_reduce ops emitted by JAX
  hlo_unoptimized: int  # all-reduce in the HLO before XLA's passes
  hlo_optimized: int  # all-reduce (+ all-reduce-start) after compilation
  replica_groups: list[str]


def count_all_reduces(num_leaves: int,
                      mesh_shape: tuple[int, int] = (2, 4)) -> AllReduceCount:
  """All-reduce ops of :func:`shard_map_clip` before and after XLA's passes."""
  fn, args, axis_sets = shard_map_clip(num_leaves, mesh_shape)
  lowered = fn.lower(*args)
  mlir = lowered.as_text()
  hlo = lowered.as_text(dialect="hlo")
  optimized = lowered.compile().as_text()
  # replica_groups is printed either as {{0,4},{1,5}} or as an iota list
  # such as [2,4]<=[8]; keep the text up to the next ", " attribute separator.
  groups = re.findall(
      r"all-reduce(?:-start)?\(.*?replica_groups=(\{\{.*?\}\}|\S+?)(?:,\s|$)",
      optimized, flags=re.MULTILINE)
  return AllReduceCount(
      num_leaves=num_leaves,
      num_axis_sets=len(axis_sets),
      stablehlo=count_stablehlo_ops(mlir, "all_reduce"),
      hlo_unoptimized=count_ops(hlo, "all-reduce"),
      hlo_optimized=(count_ops(optimized, "all-reduce")
                     + count_ops(optimized, "all-reduce-start")),
      replica_groups=groups,
  )


def _human_bytes(n: int) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.1f} {unit}"
  return f"{n} B"


def format_step_table(results: list[VariantResult], grad_bytes: int) -> str:
  """Markdown table of ratios to the first (baseline) variant."""
  base = results[0]
  base_time = statistics.median(base.times)
  lines = [
      "| variant | bytes accessed (x adamw) | temp bytes | temp bytes (x adamw) "
      "| temp / gradient bytes | median wall time (x adamw) "
      "| per-round ratio, 25-75% | median ms | `conditional` ops |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for res in results:
    med = statistics.median(res.times)
    # Ratio to the baseline's time in the same round: its spread shows how
    # noisy the machine was.
    per_round = [t / b for t, b in zip(res.times, base.times)]
    q25, q75 = np.percentile(per_round, [25, 75])
    byte_ratio = res.stats.bytes_accessed / base.stats.bytes_accessed
    if base.stats.temp_bytes:
      temp_ratio = f"{res.stats.temp_bytes / base.stats.temp_bytes:.4g}"
    else:
      temp_ratio = "n/a"
    lines.append(
        f"| {res.name} | {byte_ratio:.3f} | {_human_bytes(res.stats.temp_bytes)} "
        f"| {temp_ratio} "
        f"| {100 * res.stats.temp_bytes / grad_bytes:.4f}% "
        f"| {med / base_time:.3f} | {q25:.2f}-{q75:.2f} | {1e3 * med:.1f} "
        f"| {res.stats.num_conditionals} |")
  return "\n".join(lines)


def format_allreduce_table(counts: list[AllReduceCount]) -> str:
  lines = [
      "| leaves | distinct axis sets | stablehlo.all_reduce (JAX) "
      "| all-reduce, HLO before XLA passes | all-reduce, compiled HLO |",
      "|---:|---:|---:|---:|---:|",
  ]
  for c in counts:
    lines.append(f"| {c.num_leaves} | {c.num_axis_sets} | {c.stablehlo} "
                 f"| {c.hlo_unoptimized} | {c.hlo_optimized} |")
  return "\n".join(lines)


def tree_spec(tree: str, shapes: dict[str, tuple[int, ...]],
              num_small: int = 1000) -> tuple[dict[str, tuple[int, ...]], Any]:
  """Leaf shapes and gradient dtype of one of :data:`TREES`.

  ``gpt-f32`` and ``gpt-bf16`` use ``shapes``; ``small-leaves`` has
  ``num_small`` leaves of shape ``(64, 64)``. Parameters and AdamW moments are
  float32 in all three.
  """
  if tree == "gpt-f32":
    return shapes, jnp.float32
  if tree == "gpt-bf16":
    return shapes, jnp.bfloat16
  if tree == "small-leaves":
    return {f"leaf{i:04d}": (64, 64) for i in range(num_small)}, jnp.float32
  raise ValueError(f"tree must be one of {TREES}, got {tree!r}.")


def compile_variants(
    device: jax.Device,
    shapes: dict[str, tuple[int, ...]],
    grad_dtype: Any,
    *,
    max_norm: float = 1.0,
    lr: float = 1e-4,
    variants: Sequence[str] = VARIANTS,
) -> list[tuple[str, xla_targets.Analysis]]:
  """Compiles the donated step of each variant for ``device``; nothing runs."""
  params = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()}
  grads = {k: jax.ShapeDtypeStruct(v, grad_dtype) for k, v in shapes.items()}
  out = []
  for name in variants:
    tx = make_optimizer(name, max_norm, lr)
    opt_state = jax.eval_shape(tx.init, params)
    args = xla_targets.abstract((params, opt_state, grads), device)
    compiled = make_step(tx).lower(*args).compile()
    out.append((name, xla_targets.analyze(compiled)))
  return out


def _ratio(x: Optional[float], base: Optional[float], fmt: str = ".3f") -> str:
  if x is None or not base:
    return "n/a"
  return format(x / base, fmt)


def format_compile_table(results: list[tuple[str, xla_targets.Analysis]],
                         grad_bytes: int) -> str:
  """Markdown table of one target's compiled variants; ratios to the first."""
  _, base = results[0]
  lines = [
      "| variant | bytes accessed (x adamw) | HBM traffic (gradient sizes) "
      "| HBM traffic (x adamw) | extra HBM vs adamw (gradient reads) "
      "| temp / gradient bytes | optimal_seconds, corrected (ms) "
      "| optimal_seconds (x adamw) | fusion estimated_cycles (x adamw) "
      "| fusions | `conditional` ops |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, a in results:
    opt = ("n/a" if a.optimal_seconds is None
           else f"{1e3 * a.optimal_seconds:.3f}")
    cycles = (_ratio(a.estimated_cycles, base.estimated_cycles)
              if base.estimated_cycles else "n/a")
    lines.append(
        f"| {name} | {_ratio(a.bytes_accessed, base.bytes_accessed)} "
        f"| {a.hbm_bytes / grad_bytes:.3f} "
        f"| {_ratio(a.hbm_bytes, base.hbm_bytes)} "
        f"| {(a.hbm_bytes - base.hbm_bytes) / grad_bytes:.3f} "
        f"| {100 * a.temp_bytes / grad_bytes:.2f}% | {opt} "
        f"| {_ratio(a.optimal_seconds, base.optimal_seconds)} | {cycles} "
        f"| {a.fusions} | {a.conditionals} |")
  return "\n".join(lines)


def target_report(target: str, args: argparse.Namespace,
                  out_path: Optional[str] = None) -> str:
  """Compile tables of every tree in ``args.trees`` for one target.

  With ``out_path``, the tables done so far are written there after each tree.
  """
  device = xla_targets.target_device(target)
  gpt = gpt_shapes(args.width, args.vocab, args.layers)
  report = [f"# Clip overhead compiled for {target} ({device.device_kind})", ""]
  for tree in args.trees:
    shapes, grad_dtype = tree_spec(tree, gpt, args.num_small)
    num_params = sum(int(np.prod(s)) for s in shapes.values())
    grad_bytes = num_params * jnp.dtype(grad_dtype).itemsize
    start = time.perf_counter()
    results = compile_variants(device, shapes, grad_dtype,
                               max_norm=args.max_norm)
    report += [
        f"## {tree}: {num_params / 1e6:.2f}M parameters in {len(shapes)} "
        f"leaves, {jnp.dtype(grad_dtype).name} gradients "
        f"({grad_bytes / 2**20:.1f} MiB)",
        "",
        format_compile_table(results, grad_bytes),
        "",
        f"adamw alone: {results[0][1].hbm_bytes / 2**20:.1f} MiB of HBM "
        "traffic, bytes accessed "
        + ("n/a" if results[0][1].bytes_accessed is None else
           f"{results[0][1].bytes_accessed / 2**20:.1f} MiB")
        + ", raw optimal_seconds per variant: "
        + ", ".join("n/a" if a.optimal_seconds_raw is None else
                    f"{a.optimal_seconds_raw:.4f}" for _, a in results)
        + f"; compiled in {time.perf_counter() - start:.0f} s.",
        "",
    ]
    print(f"{target} {tree} done", file=sys.stderr, flush=True)
    if out_path:
      _write(out_path, "\n".join(report))
  report += [
      "Compiler estimates from a program compiled for a device that is not "
      "present; nothing ran. "
      + ("XLA:GPU has no cost_analysis(): its bytes accessed are n/a and the "
         "HBM traffic counts every array operand and output of the ops the "
         "entry computation runs. " if target.startswith("gpu") else "")
      + f"jax {jax.__version__}, optax {optax.__version__}.",
  ]
  return "\n".join(report)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true",
                      help="~3M parameters, fewer rounds: finishes in < 60 s")
  parser.add_argument("--width", type=int, default=None,
                      help="model width (default 512; 128 with --small)")
  parser.add_argument("--vocab", type=int, default=None,
                      help="embedding rows (default 50304; 8192 with --small)")
  parser.add_argument("--layers", type=int, default=12,
                      help="blocks; the tree has 8 * layers + 2 leaves")
  parser.add_argument("--rounds", type=int, default=None,
                      help="timed round-robin rounds (default 15; 10 with --small)")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed rounds first")
  parser.add_argument("--max-norm", type=float, default=1.0)
  parser.add_argument("--allreduce-leaves", type=int, nargs="+",
                      default=[10, 100],
                      help="leaf counts for the shard_map all-reduce table")
  parser.add_argument("--out", type=str, default=None,
                      help="also write the tables to this file")
  parser.add_argument("--target", nargs="+", default=None,
                      choices=sorted(xla_targets.TARGETS),
                      help="compile for these backends (see the module doc)")
  parser.add_argument("--trees", nargs="+", default=list(TREES),
                      choices=TREES, help="gradient trees for --target")
  parser.add_argument("--num-small", type=int, default=1000,
                      help="leaves of the small-leaves tree")
  parser.add_argument("--out-dir", type=str, default=None,
                      help="with --target: write clip_overhead_<target>.txt "
                      "here")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if args.width is None:
    args.width = 128 if args.small else 512
  if args.vocab is None:
    args.vocab = 8192 if args.small else 50304
  if args.rounds is None:
    args.rounds = 10 if args.small else 15
  return args


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Runs the benchmark, prints the markdown report and returns it."""
  args = parse_args(argv)
  if args.target:
    texts = []
    for target in args.target:
      path = None
      if args.out_dir:
        path = os.path.join(args.out_dir, f"clip_overhead_{target}.txt")
      text = target_report(target, args, path)
      if target == "cpu":
        text = wall_time_report(args) + "\n\n" + text
      texts.append(text)
      print(text, flush=True)
      if path:
        _write(path, text)
    return "\n\n".join(texts)
  text = wall_time_report(args)
  print(text)
  if args.out:
    _write(args.out, text)
  return text


def _write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text + "\n")


def wall_time_report(args: argparse.Namespace) -> str:
  """The XLA:CPU wall-time benchmark and all-reduce count, as markdown."""
  start = time.perf_counter()
  shapes = gpt_shapes(args.width, args.vocab, args.layers)
  num_params = sum(int(np.prod(s)) for s in shapes.values())
  grad_bytes = 4 * num_params
  load_before = os.getloadavg()
  results = run_step_benchmark(shapes, rounds=args.rounds, warmup=args.warmup,
                               max_norm=args.max_norm,
                               progress=not args.no_progress)
  load_after = os.getloadavg()
  counts = []
  if jax.device_count() >= 8:
    counts = [count_all_reduces(n) for n in args.allreduce_leaves]
  elapsed = time.perf_counter() - start

  report = [
      f"## Clip overhead in a donated AdamW step "
      f"({num_params / 1e6:.1f}M float32 parameters, {len(shapes)} leaves)",
      "",
      format_step_table(results, grad_bytes),
      "",
      f"Gradient bytes: {grad_bytes / 2**20:.0f} MiB; adamw alone accesses "
      f"{results[0].stats.bytes_accessed / grad_bytes:.2f}x that and has "
      f"{results[0].stats.temp_bytes} temp bytes. Wall time: median of "
      f"{args.rounds} interleaved rounds after {args.warmup} warm-up rounds.",
      "",
  ]
  if counts:
    report += [
        "## All-reduces of `unconditional_clip(partition_specs=...)` under "
        "shard_map (2x4 CPU mesh)",
        "",
        format_allreduce_table(counts),
        "",
        "Replica groups in the compiled HLO "
        f"({counts[-1].num_leaves} leaves): "
        + ", ".join(f"`{g}`" for g in counts[-1].replica_groups),
        "",
    ]
  else:
    report += ["(all-reduce table skipped: fewer than 8 devices)", ""]
  report += [
      f"jax {jax.__version__}, optax {optax.__version__}, "
      f"backend {jax.default_backend()}, {jax.device_count()} devices, "
      f"{os.cpu_count()} CPU cores ({platform.machine()}), "
      f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after "
      f"timing; total run time {elapsed:.0f} s.",
  ]
  return "\n".join(report)


if __name__ == "__main__":
  main()
