"""Quickstart: data-parallel training with an unconditional gradient clip.

A small ``flax.nnx`` MLP learns a synthetic regression task (targets come
from a fixed random "teacher" network) on every local device with
``jax.shard_map``. The recipe for plain data parallelism:

1. each device computes the gradient of its own slice of the batch;
2. ``jax.lax.pmean`` averages the gradients, so every device holds the same
   full gradient;
3. ``optax.chain(sdrl.unconditional_clip(max_norm), optax.adamw(lr))`` clips
   that replicated gradient (no ``axis_name``: nothing is split) and updates
   the replicated parameters.

The clip's state (:class:`stabledrl_jax.ClipState`) carries the pre-clip
global norm and a count of clipped steps; the loop reads them with
:func:`stabledrl_jax.clip_metrics` (a flat dict, wherever the state sits in
the optimizer) and prints them as it goes.
On a CPU-only machine the script asks JAX for 8 CPU devices (unless you set a
count yourself), so the data-parallel code path runs anywhere.

Run::

    python examples/quickstart.py
    python examples/quickstart.py --steps 500 --max-norm 1.0 --lr 1e-3
"""

import argparse
import sys
import time
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
import tqdm
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import stabledrl_jax as sdrl

import _common

NUM_CPU_DEVICES = 8


class Teacher(NamedTuple):
  """A fixed random network that defines the targets."""
  w1: jax.Array  # [num_inputs, 32]
  w2: jax.Array  # [32, num_outputs]


def make_teacher(key: jax.Array, num_inputs: int, num_outputs: int) -> Teacher:
  k1, k2 = jax.random.split(key)
  return Teacher(
      w1=jax.random.normal(k1, (num_inputs, 32)) / jnp.sqrt(num_inputs),
      w2=jax.random.normal(k2, (32, num_outputs)) / jnp.sqrt(32.0),
  )


def make_batch(teacher: Teacher, key: jax.Array, batch_size: int):
  """Gaussian inputs ``x [batch_size, num_inputs]``, targets ``y [batch_size, num_outputs]``."""
  x = jax.random.normal(key, (batch_size, teacher.w1.shape[0]))
  y = jnp.tanh(x @ teacher.w1) @ teacher.w2
  return x, y


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description="Train a small flax.nnx MLP data-parallel with "
      "optax.chain(stabledrl_jax.unconditional_clip, optax.adamw).")
  parser.add_argument("--steps", type=int, default=300,
                      help="optimizer steps (default 300)")
  parser.add_argument("--max-norm", type=float, default=2.0,
                      help="global-norm clipping threshold (default 2.0)")
  parser.add_argument("--lr", type=float, default=3e-3,
                      help="AdamW learning rate (default 3e-3)")
  parser.add_argument("--batch-per-device", type=int, default=32,
                      help="examples per device per step (default 32)")
  parser.add_argument("--hidden", type=int, default=128,
                      help="MLP width (default 128)")
  parser.add_argument("--log-every", type=int, default=50,
                      help="print a line every this many steps (default 50)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-progress", action="store_true",
                      help="hide the progress bar")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Trains, prints progress and a summary line; returns the final figures."""
  args = parse_args(argv)
  _common.use_cpu_devices(NUM_CPU_DEVICES)
  start = time.perf_counter()

  num_inputs, num_outputs = 16, 4
  devices = jax.local_devices()
  mesh = jax.make_mesh((len(devices),), ("data",), devices=devices)
  batch_size = args.batch_per_device * len(devices)

  data_key, model_key, teacher_key = jax.random.split(
      jax.random.key(args.seed), 3)
  teacher = make_teacher(teacher_key, num_inputs, num_outputs)
  model = _common.MLP(num_inputs, args.hidden, num_outputs,
              rngs=nnx.Rngs(model_key))
  graphdef, params = nnx.split(model, nnx.Param)

  tx = optax.chain(
      sdrl.unconditional_clip(args.max_norm),
      optax.adamw(args.lr, weight_decay=1e-4),
  )
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(params, replicated)
  opt_state = jax.device_put(tx.init(params), replicated)

  def loss_fn(params, x, y):
    pred = nnx.merge(graphdef, params)(x)
    return jnp.mean(jnp.sum((pred - y) ** 2, axis=-1))  # squared error

  def local_step(params, opt_state, x, y):
    # x, y: this device's [batch_per_device, ...] slice of the batch.
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    # Data parallelism: every device holds a *different full* gradient.
    # Average first; the clip then sees the replicated global-batch gradient.
    grads = jax.lax.pmean(grads, "data")
    loss = jax.lax.pmean(loss, "data")
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  train_step = jax.jit(
      jax.shard_map(
          local_step, mesh=mesh,
          in_specs=(P(), P(), P("data"), P("data")),
          out_specs=(P(), P(), P())),
      donate_argnums=(0, 1))

  batch_sharding = NamedSharding(mesh, P("data"))
  sample = jax.jit(lambda key: make_batch(teacher, key, batch_size),
                   out_shardings=(batch_sharding, batch_sharding))

  first_loss = None
  window_start = 0
  clipped_before = 0
  bar = tqdm.tqdm(range(args.steps), desc="train", disable=args.no_progress,
                  file=sys.stderr, dynamic_ncols=True)
  for step in bar:
    x, y = sample(jax.random.fold_in(data_key, step))
    params, opt_state, loss = train_step(params, opt_state, x, y)
    last = step + 1 == args.steps
    if first_loss is None:
      first_loss = float(loss)
    if (step + 1) % args.log_every == 0 or last:
      stats = sdrl.clip_metrics(opt_state)  # the ClipState's scalars, by name
      clipped = int(stats["num_clipped"])
      rate = (clipped - clipped_before) / (step + 1 - window_start)
      line = (f"step {step + 1:5d}  loss {float(loss):.4f}  "
              f"pre-clip norm {float(stats['global_norm']):.3f}  "
              f"clip rate {rate:.0%}")
      bar.set_postfix(loss=f"{float(loss):.3f}",
                      norm=f"{float(stats['global_norm']):.2f}")
      tqdm.tqdm.write(line, file=sys.stdout)
      window_start, clipped_before = step + 1, clipped

  eval_x, eval_y = make_batch(teacher, jax.random.key(args.seed + 1), 4096)
  eval_pred = nnx.merge(graphdef, jax.device_get(params))(eval_x)
  # Fraction of the targets' variance the model explains on fresh data.
  explained = float(1.0 - jnp.mean((eval_pred - eval_y) ** 2) / jnp.var(eval_y))
  stats = sdrl.clip_metrics(opt_state)
  elapsed = time.perf_counter() - start
  summary = {
      "steps": args.steps,
      "devices": len(devices),
      "first_loss": first_loss,
      "final_loss": float(loss),
      "explained_variance": explained,
      "num_clipped": int(stats["num_clipped"]),
      "num_nonfinite": int(stats["num_nonfinite"]),
      "last_pre_clip_norm": float(stats["global_norm"]),
      "seconds": elapsed,
  }
  print(f"done: {args.steps} steps on {len(devices)} {devices[0].platform} "
        f"devices, loss {first_loss:.3f} -> {float(loss):.3f}, held-out "
        f"explained variance {explained:.1%}, clipped {summary['num_clipped']}/"
        f"{args.steps} steps, {summary['num_nonfinite']} non-finite, "
        f"{elapsed:.1f} s")
  return summary


if __name__ == "__main__":
  main()
