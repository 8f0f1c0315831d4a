"""Compile for a TPU or GPU that is not present, and read the compiled program.

``jax.experimental.topologies.get_topology_desc`` describes the devices of a
TPU slice (with libtpu installed: ``pip install "jax[tpu]==<jax version>"``) or
of a GPU (with the CUDA plugin: ``pip install "jax[cuda12]==<jax version>"``
and a ``GpuTargetConfigProto``, see ``gpu_specs/``). ``jax.jit(f).lower(args)
.compile()`` on ``ShapeDtypeStruct`` arguments placed on such a device runs the
real XLA:TPU or XLA:GPU compiler; nothing executes. ``benchmarks/
setup_compilers.sh`` makes virtual environments with those compilers.

The figures read from a compiled program (:func:`analyze`) are compiler
estimates, not measurements: bytes accessed from ``cost_analysis()`` (None on
XLA:GPU), HBM traffic counted from the optimized HLO (``hlo_traffic``), temp
bytes from ``memory_analysis()``, XLA:TPU's ``optimal_seconds`` corrected for
its −1 s per ``ConcatBitcast``, the summed fusion ``estimated_cycles`` of
XLA:TPU's cost model, and op counts.
"""

import dataclasses
import os
import re
from typing import Any, Optional

# Several processes may compile with libtpu at once (no TPU is opened), and
# the CUDA plugin must register without a GPU driver to check versions with.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

import jax  # pylint: disable=g-import-not-at-top
from jax.sharding import SingleDeviceSharding  # pylint: disable=g-import-not-at-top

import hlo_traffic  # pylint: disable=g-import-not-at-top

_SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_specs")

# target -> (platform, topology name, GPU target config file or None)
TARGETS = {
    "cpu": ("cpu", None, None),
    "tpu-v4": ("tpu", "v4:2x2x1", None),
    "tpu-v5e": ("tpu", "v5e:2x2", None),
    "tpu-v5p": ("tpu", "v5p:2x2x1", None),
    "tpu-v6e": ("tpu", "v6e:2x2", None),
    "gpu-h100": ("cuda", "h100", "h100_sxm.txtpb"),
    "gpu-a100": ("cuda", "a100", "a100_sxm_80.txtpb"),
}


def target_device(target: str) -> jax.Device:
  """The first device of ``target`` (a key of :data:`TARGETS`).

  Raises:
    ValueError: unknown target.
    RuntimeError: the compiler for it is not installed in this environment.
  """
  if target not in TARGETS:
    raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}.")
  platform, topology, spec = TARGETS[target]
  if platform == "cpu":
    return jax.devices("cpu")[0]
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    if platform == "tpu":
      desc = topologies.get_topology_desc(topology_name=topology,
                                          platform="tpu")
    else:
      with open(os.path.join(_SPECS, spec), encoding="utf-8") as f:
        config = f.read()
      # A field newer than the XLA of jax 0.10 fails the whole parse; it
      # describes collectives, which a one-device compile does not use.
      config = re.sub(r"^\s*collective_memory_granularity:.*\n", "", config,
                      flags=re.M)
      desc = topologies.get_topology_desc(
          topology_name=topology, platform="cuda", target_config=config,
          topology="1x1x1")
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        f"cannot compile for {target} in this environment ({e}); run "
        "benchmarks/setup_compilers.sh and use the python of its "
        f"{'tpu' if platform == 'tpu' else 'gpu'} virtual environment") from e
  return desc.devices[0]


def abstract(tree: Any, device: jax.Device) -> Any:
  """``ShapeDtypeStruct``s of ``tree``'s leaves, placed on ``device``."""
  sharding = SingleDeviceSharding(device)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)


@dataclasses.dataclass
class Analysis:
  """Static figures of one compiled program (compiler estimates)."""
  bytes_accessed: Optional[float]  # cost_analysis(); None on XLA:GPU
  hbm_bytes: int                   # counted from the optimized HLO
  temp_bytes: int
  optimal_seconds_raw: Optional[float]  # XLA:TPU only
  optimal_seconds: Optional[float]      # raw + 1 per entry ConcatBitcast
  estimated_cycles: int            # XLA:TPU's cost model, entry computation
  fusions: int
  conditionals: int


def analyze(compiled: Any) -> Analysis:
  """:class:`Analysis` of ``jax.jit(f).lower(...).compile()``'s result."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  text = compiled.as_text()
  raw = None
  corrected = None
  if cost and "optimal_seconds" in cost:
    raw = float(cost["optimal_seconds"])
    corrected = hlo_traffic.corrected_optimal_seconds(cost, text)
  return Analysis(
      bytes_accessed=float(cost["bytes accessed"]) if cost else None,
      hbm_bytes=hlo_traffic.hbm_traffic(text).total_bytes,
      temp_bytes=int(compiled.memory_analysis().temp_size_in_bytes),
      optimal_seconds_raw=raw,
      optimal_seconds=corrected,
      estimated_cycles=hlo_traffic.estimated_cycles(text),
      fusions=hlo_traffic.count_ops(text, "fusion"),
      conditionals=hlo_traffic.count_ops(text, "conditional"),
  )
