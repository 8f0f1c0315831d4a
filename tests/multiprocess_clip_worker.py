"""One worker of the multi-process clipping test (see test_multiprocess.py).

Run as ``python multiprocess_clip_worker.py PROCESS_ID NUM_PROCESSES PORT OUT``.
Each process owns 2 CPU devices; together they form a 2-D mesh. The worker
clips a tree split over all processes and process 0 writes the gathered
updates and states to ``OUT`` (an ``.npz`` file).
"""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import stabledrl_jax as sdrl

SPECS = {
    "rows": P("data"),
    "cols": P(None, "model"),
    "both": P("data", "model"),
    "flat": P(("data", "model")),
    "replicated": P(),
}
SHAPES = {"rows": (4, 3), "cols": (4, 6), "both": (4, 2), "flat": (8,),
          "replicated": (4,)}
MAX_NORM = 2.0


def full_tree():
  """The same tree on every process (and in the parent test)."""
  rng = np.random.default_rng(0)
  return {k: (rng.normal(size=s) * 3.0).astype(np.float32)
          for k, s in SHAPES.items()}


def global_arrays(tree, mesh, specs):
  def make(name):
    sharding = NamedSharding(mesh, specs[name])
    value = tree[name]
    return jax.make_array_from_callback(value.shape, sharding,
                                        lambda index: value[index])
  return {name: make(name) for name in tree}


def run(clip, mesh, specs, layout):
  tree = full_tree()
  tx = clip(MAX_NORM, **layout)
  state = tx.init(tree)
  state_specs = jax.tree.map(lambda _: P(), state)
  step = jax.jit(jax.shard_map(tx.update, mesh=mesh,
                               in_specs=(specs, state_specs),
                               out_specs=(specs, state_specs)))
  out, state = step(global_arrays(tree, mesh, specs), state)
  out = multihost_utils.process_allgather(out, tiled=True)
  return out, jax.tree.map(np.asarray, state)


def main():
  process_id, num_processes, port, out_path = sys.argv[1:5]
  jax.config.update("jax_num_cpu_devices", 2)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=int(num_processes),
                             process_id=int(process_id))
  assert jax.device_count() == 2 * int(num_processes)
  results = {}
  mesh_2d = jax.make_mesh((2, jax.device_count() // 2), ("data", "model"))
  mesh_1d = jax.make_mesh((jax.device_count(),), ("x",))
  for clip in (sdrl.unconditional_clip, sdrl.conditional_clip):
    name = clip.__name__
    cases = {
        "specs": (mesh_2d, SPECS, {"partition_specs": SPECS}),
        "axis": (mesh_1d, {k: P("x") for k in SHAPES}, {"axis_name": "x"}),
    }
    for case, (mesh, specs, layout) in cases.items():
      out, state = run(clip, mesh, specs, layout)
      for leaf, value in out.items():
        results[f"{name}/{case}/update/{leaf}"] = np.asarray(value)
      for field, value in state._asdict().items():
        results[f"{name}/{case}/state/{field}"] = value
  if jax.process_index() == 0:
    np.savez(out_path, **results)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
