"""FSDP-style training with ``jax.shard_map`` on a 2-D ``data × fsdp`` mesh.

The batch is split over every device (both mesh axes). Parameters are laid out
FSDP-style:

* 2-D kernels whose first dimension divides by the ``fsdp`` size are sharded
  over ``fsdp`` (``PartitionSpec("fsdp", None)``) and replicated over ``data``;
* biases (and any kernel that does not divide) are replicated everywhere
  (``PartitionSpec()``).

Inside the step each device all-gathers the sharded kernels over ``fsdp`` when
it uses them and computes the loss of its slice of the batch, ``pmean``'ed
over both axes into the global-batch loss. Under ``shard_map``'s replication
checking (``check_vma=True``) reverse-mode autodiff then does what FSDP does by
hand: the all-gather transposes to a reduce-scatter over ``fsdp`` and the
implicit broadcast of replicated values to a sum over the data-parallel
devices, so each device receives exactly its block of the global-batch
gradient (its shard for sharded kernels, the whole mean for replicated
leaves).

The gradient blocks are then clipped and applied, inside ``shard_map``, by
``optax.chain(unconditional_clip(max_norm, partition_specs=param_specs),
adamw)``. ``partition_specs`` tells the norm which leaves are split over which
axes: sharded leaves are summed over ``fsdp``, replicated ones are counted
once (summing them over the mesh too would over-count them by the number of
devices). At start-up the script asserts, once, that the norm the clip used
equals a float64 NumPy norm of the gathered gradients (rtol 1e-6).

Run::

  python examples/train_shard_map.py --steps 200 --mesh 2x4 --max-norm 0.5

On a CPU-only machine the script asks JAX for 8 CPU devices (unless you set a
device count yourself).
"""

import argparse
import sys
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import _common

DATA, FSDP = "data", "fsdp"
BATCH_SPEC = P((DATA, FSDP))  # the batch dimension is split over all devices


def param_partition_specs(params: dict, fsdp_size: int) -> dict:
  """``P("fsdp", None)`` for 2-D leaves whose first dimension divides by
  ``fsdp_size``, ``P()`` (replicated) for every other leaf."""
  def spec(x):
    if x.ndim == 2 and x.shape[0] % fsdp_size == 0:
      return P(FSDP, None)
    return P()
  return jax.tree.map(spec, params)


def gather_params(params: dict, param_specs: dict) -> dict:
  """Inside ``shard_map``: all-gathers every dimension sharded over ``fsdp``."""
  def gather(x, spec):
    for dim, entry in enumerate(spec):
      if entry == FSDP:
        x = jax.lax.all_gather(x, FSDP, axis=dim, tiled=True)
    return x
  return jax.tree.map(gather, params, param_specs,
                      is_leaf=lambda s: isinstance(s, P))


def local_loss(graphdef, params, param_specs, x, y):
  """Global-batch (loss, accuracy) from the local blocks and batch slice."""
  full = gather_params(params, param_specs)
  loss, accuracy = _common.loss_and_accuracy(graphdef, full, x, y)
  # Every device holds the same number of examples, so the global mean is
  # the mean of the local means.
  return jax.lax.pmean(loss, (DATA, FSDP)), jax.lax.pmean(accuracy,
                                                          (DATA, FSDP))


def make_grad_fn(graphdef, mesh: jax.sharding.Mesh,
                 param_specs: dict) -> Callable:
  """``grads(params, x, y)``: gradients laid out like the parameters."""
  def local(params, x, y):
    grad_fn = jax.grad(local_loss, argnums=1, has_aux=True)
    grads, _ = grad_fn(graphdef, params, param_specs, x, y)
    return grads
  return jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(param_specs, BATCH_SPEC, BATCH_SPEC),
      out_specs=param_specs, check_vma=True))


def make_train_step(graphdef, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, param_specs: dict,
                    opt_specs: Any) -> Callable:
  """The jitted ``shard_map`` training step.

  Args:
    graphdef: the model graph from :func:`_common.init_model`.
    tx: the optimizer, built with ``partition_specs=param_specs``.
    mesh: a ``data × fsdp`` mesh.
    param_specs: the parameters' ``PartitionSpec`` tree.
    opt_specs: the optimizer state's ``PartitionSpec`` tree.

  Returns:
    ``step(params, opt_state, x, y) -> (params, opt_state, metrics)`` on global
    arrays laid out by ``param_specs``/``opt_specs`` (``x [B, F]``, ``y [B]``
    split over all devices); ``metrics`` is a replicated
    :class:`_common.StepMetrics`. ``params`` and ``opt_state`` are donated.
  """
  def local_step(params, opt_state, x, y):
    grad_fn = jax.value_and_grad(local_loss, argnums=1, has_aux=True)
    (loss, accuracy), grads = grad_fn(graphdef, params, param_specs, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = _common.step_metrics(loss, accuracy, grads, opt_state,
                                   partition_specs=param_specs)
    return params, opt_state, metrics

  step = jax.shard_map(
      local_step, mesh=mesh,
      in_specs=(param_specs, opt_specs, BATCH_SPEC, BATCH_SPEC),
      out_specs=(param_specs, opt_specs, P()), check_vma=True)
  return jax.jit(step, donate_argnums=(0, 1))


def put(tree: Any, mesh: jax.sharding.Mesh, specs: Any) -> Any:
  """``device_put`` with a ``NamedSharding`` per leaf (the same host value on
  every process)."""
  return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)),
                      tree, specs, is_leaf=lambda s: isinstance(s, P))


def gathered_norm(grads: Any) -> float:
  """L2 norm (NumPy, float64) of the gradients gathered whole on this host."""
  gathered = multihost_utils.process_allgather(grads, tiled=True)
  return float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2)
                           for g in jax.tree.leaves(gathered))))


def parse_mesh(text: Optional[str], num_devices: int) -> tuple[int, int]:
  """``"2x4"`` → ``(2, 4)``; None → ``(2, D/2)`` (``(1, D)`` for odd D)."""
  if text is None:
    return (2, num_devices // 2) if num_devices % 2 == 0 else (1, num_devices)
  try:
    data, fsdp = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"mesh must look like DATAxFSDP, got {text!r}") from None
  if data < 1 or fsdp < 1 or data * fsdp != num_devices:
    raise ValueError(f"mesh {text!r} needs data*fsdp == {num_devices} "
                     "devices")
  return data, fsdp


def train(args: argparse.Namespace, mesh: jax.sharding.Mesh, *,
          show_progress: bool = True
          ) -> tuple[list[_common.StepMetrics], float]:
  """Builds model and optimizer on ``mesh``, checks the norm, trains.

  Returns the per-step metrics (host numpy scalars) and the seconds spent in
  the training loop.

  Raises:
    AssertionError: the clip's norm differs from the gathered-gradient norm.
  """
  if args.batch_size % mesh.size:
    raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of "
                     f"the {mesh.size} devices")
  graphdef, host_params = _common.init_model(args.hidden, args.seed)
  param_specs = param_partition_specs(host_params, mesh.shape[FSDP])
  params = put(host_params, mesh, param_specs)
  tx = _common.make_optimizer(args.clip, args.max_norm, args.learning_rate,
                              partition_specs=param_specs)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init)(params)
  opt_specs = jax.tree.map(lambda x: x.sharding.spec, opt_state)
  step = make_train_step(graphdef, tx, mesh, param_specs, opt_specs)

  def batch(i):
    x, y = _common.make_batch(args.seed, i, args.batch_size)
    return put((x, y), mesh, (BATCH_SPEC, BATCH_SPEC))

  # Start-up check (once): the norm the clip computes from the local blocks
  # with partition_specs equals the norm of the gathered gradients.
  x, y = batch(0)
  expected = gathered_norm(make_grad_fn(graphdef, mesh, param_specs)(
      params, x, y))

  history = []
  start = time.perf_counter()
  bar = tqdm(range(args.steps), disable=not show_progress,
             desc=f"shard_map {mesh.shape[DATA]}x{mesh.shape[FSDP]}")
  for i in bar:
    if i:
      x, y = batch(i)
    params, opt_state, metrics = step(params, opt_state, x, y)
    metrics = jax.tree.map(np.asarray, metrics)
    if i == 0:
      np.testing.assert_allclose(
          metrics.grad_norm, expected, rtol=1e-6,
          err_msg="in-shard_map norm != norm of the gathered gradients")
    history.append(metrics)
    bar.set_postfix(_common.progress_fields(metrics, i + 1), refresh=False)
  return history, time.perf_counter() - start


def main(argv: Optional[list[str]] = None) -> list[_common.StepMetrics]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  _common.add_training_flags(parser)
  parser.add_argument("--mesh", default=None,
                      help="DATAxFSDP, e.g. 2x4 (default: 2 x devices/2)")
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps must be ≥ 1, got {args.steps}")
  _common.use_cpu_devices(8)
  shape = parse_mesh(args.mesh, jax.device_count())
  mesh = jax.make_mesh(shape, (DATA, FSDP))
  history, seconds = train(args, mesh, show_progress=not args.no_progress)
  print(_common.summary(
      f"train_shard_map[{args.clip}, mesh {shape[0]}x{shape[1]}]", history,
      _common.clip_threshold(args), seconds) + " norm_check=ok")
  return history


if __name__ == "__main__":
  main(sys.argv[1:])
