"""Data-parallel training with ``jax.pmap`` and ``unconditional_clip``.

Every local device holds a full copy of the parameters and a slice of the
batch. Per step and per device: gradients of the local slice, then
``jax.lax.pmean`` over the devices (every copy now holds the same mean
gradient), then ``optax.chain(unconditional_clip(max_norm), adamw)``. The clip
takes **no** ``axis_name``: after the ``pmean`` the gradient is whole and
replicated, not split, so its local norm is already the global norm (adding a
``psum`` here would over-count it by the number of devices).

On a CPU-only machine the script asks JAX for 8 CPU devices (unless you set a
device count yourself), so data parallelism runs anywhere; on a GPU/TPU host it
uses all local accelerators.

Run::

  python examples/train_pmap.py --steps 200 --max-norm 0.5 --clip unconditional

It shows a progress bar with the loss, the pre-clip gradient norm (read with
``stabledrl_jax.clip_metrics``) and the fraction of steps clipped so far, then one summary line.
"""

import argparse
import functools
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import _common

AXIS = "devices"


def make_train_step(graphdef, tx: optax.GradientTransformation):
  """The per-device step, ``pmap``'ed over ``AXIS``.

  Args:
    graphdef: the model graph from :func:`_common.init_model`.
    tx: the optimizer, e.g. ``chain(unconditional_clip(c), adamw(lr))``.

  Returns:
    ``step(params, opt_state, x, y) -> (params, opt_state, metrics)`` where
    every argument has a leading device axis ``[D, ...]`` (``x [D, B/D, F]``,
    ``y [D, B/D]``) and ``metrics`` is a :class:`_common.StepMetrics` of
    ``[D]`` identical values.
  """
  @functools.partial(jax.pmap, axis_name=AXIS)
  def step(params, opt_state, x, y):
    grad_fn = jax.value_and_grad(_common.loss_and_accuracy, argnums=1,
                                 has_aux=True)
    (loss, accuracy), grads = grad_fn(graphdef, params, x, y)
    # Each device has the full gradient of its own slice: average them.
    grads = jax.lax.pmean(grads, AXIS)
    loss, accuracy = jax.lax.pmean((loss, accuracy), AXIS)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = _common.step_metrics(loss, accuracy, grads, opt_state)
    return params, opt_state, metrics

  return step


def replicate(tree: Any, num_devices: int) -> Any:
  """Stacks ``num_devices`` copies of every leaf along a new leading axis."""
  return jax.tree.map(
      lambda x: jnp.broadcast_to(x, (num_devices,) + jnp.shape(x)), tree)


def split_batch(x: jax.Array, num_devices: int) -> jax.Array:
  """``[B, ...]`` → ``[num_devices, B / num_devices, ...]``."""
  return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  _common.add_training_flags(parser)
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps must be ≥ 1, got {args.steps}")
  return args


def main(argv: Optional[list[str]] = None) -> list[_common.StepMetrics]:
  args = parse_args(argv)
  _common.use_cpu_devices(8)
  num_devices = jax.local_device_count()
  if args.batch_size % num_devices:
    raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of "
                     f"the {num_devices} local devices")

  graphdef, params = _common.init_model(args.hidden, args.seed)
  tx = _common.make_optimizer(args.clip, args.max_norm, args.learning_rate)
  params = replicate(params, num_devices)
  opt_state = replicate(tx.init(jax.tree.map(lambda p: p[0], params)),
                        num_devices)
  step = make_train_step(graphdef, tx)

  history = []
  start = time.perf_counter()
  bar = tqdm(range(args.steps), disable=args.no_progress,
             desc=f"pmap x{num_devices}")
  for i in bar:
    x, y = _common.make_batch(args.seed, i, args.batch_size)
    params, opt_state, metrics = step(params, opt_state,
                                      split_batch(x, num_devices),
                                      split_batch(y, num_devices))
    metrics = jax.tree.map(lambda m: np.asarray(m[0]), metrics)
    history.append(metrics)
    bar.set_postfix(_common.progress_fields(metrics, i + 1), refresh=False)
  seconds = time.perf_counter() - start
  print(_common.summary(f"train_pmap[{args.clip}, {num_devices} devices]",
                        history, _common.clip_threshold(args), seconds))
  return history


if __name__ == "__main__":
  main(sys.argv[1:])
