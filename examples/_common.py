"""The task, model and optimizer shared by the training examples.

A synthetic classification problem: inputs ``x ~ N(0, I)`` of width
``NUM_FEATURES``, labels given by a fixed random two-layer "teacher" network.
The student is a small ``flax.nnx`` MLP whose parameters are handled as a plain
dict of arrays (``nnx.split`` + ``nnx.to_pure_dict``), so they can be
sharded, averaged and fed to optax like any pytree.

Every batch is a pure function of ``(seed, step)``: runs are reproducible and
every process of a multi-process run can build the same global batch.
"""

import argparse
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import stabledrl_jax

NUM_FEATURES = 16
NUM_CLASSES = 4
CLIP_CHOICES = ("unconditional", "conditional", "none")


def use_cpu_devices(count: int) -> None:
  """Asks for ``count`` CPU devices when JAX will run on the CPU.

  Call before the first JAX operation. Does nothing when the user already
  chose a device count (``jax_num_cpu_devices`` or ``XLA_FLAGS``) or asked for
  a platform other than the CPU, or when the backend is already running; on a
  machine with an accelerator JAX uses the accelerator and the extra CPU
  devices stay idle.
  """
  platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
  if platforms and "cpu" not in platforms.split(","):
    return
  if jax.config.jax_num_cpu_devices != -1:
    return
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # the backend started before this call
    pass


class MLP(nnx.Module):
  """``Linear → gelu → Linear → gelu → Linear``; outputs ``[B, num_outputs]``."""

  def __init__(self, num_inputs: int, hidden: int, num_outputs: int, *,
               rngs: nnx.Rngs):
    self.layer1 = nnx.Linear(num_inputs, hidden, rngs=rngs)
    self.layer2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, num_outputs, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.gelu(self.layer1(x))
    x = jax.nn.gelu(self.layer2(x))
    return self.head(x)


def init_model(hidden: int, seed: int) -> tuple[nnx.GraphDef, dict]:
  """Builds the student; returns its graph and a dict of float32 parameters."""
  graphdef, state = nnx.split(
      MLP(NUM_FEATURES, hidden, NUM_CLASSES, rngs=nnx.Rngs(seed)))
  return graphdef, nnx.to_pure_dict(state)


def make_batch(seed: int, step: int, batch_size: int) -> tuple[jax.Array,
                                                                jax.Array]:
  """The global batch of ``step``: ``x [B, NUM_FEATURES]``, int32 ``y [B]``."""
  teacher = jax.random.normal(
      jax.random.key(10_000 + seed), (NUM_FEATURES, 32)) / NUM_FEATURES**0.5
  readout = jax.random.normal(jax.random.key(20_000 + seed), (32, NUM_CLASSES))
  key = jax.random.fold_in(jax.random.key(seed), step)
  x = jax.random.normal(key, (batch_size, NUM_FEATURES))
  y = jnp.argmax(jnp.tanh(x @ teacher) @ readout, axis=-1).astype(jnp.int32)
  return x, y


def loss_and_accuracy(graphdef: nnx.GraphDef, params: dict, x: jax.Array,
                      y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean softmax cross-entropy and accuracy of ``params`` on ``(x, y)``."""
  logits = nnx.merge(graphdef, params)(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
  return loss, accuracy


def make_optimizer(clip: str, max_norm: float, learning_rate: float, *,
                   partition_specs: Any = None) -> optax.GradientTransformation:
  """``chain(<clip>, adamw)``; ``clip="none"`` puts ``optax.identity()`` first."""
  if clip == "unconditional":
    first = stabledrl_jax.unconditional_clip(
        max_norm, partition_specs=partition_specs)
  elif clip == "conditional":
    first = stabledrl_jax.conditional_clip(
        max_norm, partition_specs=partition_specs)
  elif clip == "none":
    first = optax.identity()
  else:
    raise ValueError(f"clip must be one of {CLIP_CHOICES}, got {clip!r}.")
  return optax.chain(first, optax.adamw(learning_rate, weight_decay=1e-4))


class StepMetrics(NamedTuple):
  """What one step reports (scalars, the same on every device)."""
  loss: jax.Array
  accuracy: jax.Array
  grad_norm: jax.Array  # pre-clip global norm
  num_clipped: jax.Array  # steps clipped so far (0 without a clip)


def step_metrics(loss: jax.Array, accuracy: jax.Array, grads: Any,
                 opt_state: Any, *,
                 partition_specs: Optional[Any] = None) -> StepMetrics:
  """Reads the pre-clip norm and clip count with
  :func:`stabledrl_jax.clip_metrics` (without a clip: computes the norm)."""
  clip = stabledrl_jax.clip_metrics(opt_state)
  if clip:
    return StepMetrics(loss, accuracy, clip["global_norm"],
                       clip["num_clipped"])
  norm = stabledrl_jax.global_norm(grads, partition_specs=partition_specs)
  return StepMetrics(loss, accuracy, norm, jnp.zeros((), jnp.int32))


def progress_fields(metrics: StepMetrics, steps: int) -> dict[str, str]:
  """Progress-bar fields: loss, pre-clip norm, fraction of steps clipped."""
  return {"loss": f"{float(metrics.loss):.4f}",
          "norm": f"{float(metrics.grad_norm):.3f}",
          "clip_rate": f"{int(metrics.num_clipped) / steps:.2f}"}


def clip_threshold(args: argparse.Namespace) -> Optional[float]:
  """``--max-norm``, or None when ``--clip none`` uses no clip."""
  return None if args.clip == "none" else args.max_norm


def summary(name: str, history: list[StepMetrics],
            max_norm: Optional[float], seconds: float) -> str:
  """One line: first/last loss, accuracy, norms, clip rate, time (and the
  clip's ``max_norm`` when there is one)."""
  first, last = history[0], history[-1]
  norms = [float(m.grad_norm) for m in history]
  clip_rate = int(last.num_clipped) / len(history)
  return (f"{name}: steps={len(history)} loss {float(first.loss):.4f} -> "
          f"{float(last.loss):.4f} accuracy={float(last.accuracy):.3f} "
          f"grad_norm median={sorted(norms)[len(norms) // 2]:.3f} "
          f"max={max(norms):.3f} clip_rate={clip_rate:.2f} "
          + ("" if max_norm is None else f"(max_norm={max_norm:g}) ")
          + f"time={seconds:.1f}s")


def add_training_flags(parser: argparse.ArgumentParser) -> None:
  """The flags every training example takes."""
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--max-norm", type=float, default=0.5)
  parser.add_argument("--clip", choices=CLIP_CHOICES,
                      default="unconditional")
  parser.add_argument("--learning-rate", type=float, default=3e-3)
  parser.add_argument("--batch-size", type=int, default=256,
                      help="global batch; a multiple of the device count")
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-progress", action="store_true")
