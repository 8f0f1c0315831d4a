"""One process of the orbax round-trip test (see test_orbax_checkpoint.py).

Run as ``python orbax_resume_worker.py MODE CKPT_DIR OUT START STOP``:

* ``MODE=fresh``: initialise, train steps ``[START, STOP)``, save params and
  optimizer state with orbax to ``CKPT_DIR``.
* ``MODE=resume``: restore them from ``CKPT_DIR`` (the optimizer's ``init``
  gives the target structure), train steps ``[START, STOP)``.

Either way the final params and state leaves go to ``OUT`` (``.npz``).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import stabledrl_jax as sdrl

SPIKE_STEPS = (6, 23)  # gradient x 1000
NAN_STEPS = (9, 27)


def make_tx() -> optax.GradientTransformation:
  """Every state we define, with statistics active within a few steps."""
  return sdrl.skip_spikes(
      optax.chain(
          sdrl.zscore_clip(warmup_steps=3, z_thresh=1.5),
          sdrl.quantile_clip(quantile=0.5, history=8, min_history=3),
          sdrl.unconditional_clip(2.0),
          sdrl.conditional_clip(1.5),
          optax.adamw(0.05, weight_decay=0.01)),
      z_thresh=3.0, window=8, min_history=4, max_consecutive=2)


def init_params() -> dict:
  key = jax.random.key(0)
  return {"w": jax.random.normal(key, (5, 3)),
          "b": jnp.zeros((3,), jnp.bfloat16)}


def grads_at(params: dict, step: jax.Array) -> dict:
  """A quadratic pull plus step-dependent noise, a spike or NaN on some steps."""
  noise = jax.random.normal(jax.random.fold_in(jax.random.key(1), step), (5, 3))
  g = {"w": params["w"] - 1.0 + noise,
       "b": (params["b"].astype(jnp.float32) + 0.5).astype(jnp.bfloat16)}
  factor = jnp.where(jnp.isin(step, jnp.array(SPIKE_STEPS)), 1000.0, 1.0)
  factor = jnp.where(jnp.isin(step, jnp.array(NAN_STEPS)), jnp.nan, factor)
  return jax.tree.map(lambda x: (x * factor).astype(x.dtype), g)


TX = make_tx()


@jax.jit
def train_step(params, opt_state, step):
  updates, opt_state = TX.update(grads_at(params, step), opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def train(params, opt_state, start: int, stop: int):
  for step in range(start, stop):
    params, opt_state = train_step(params, opt_state, jnp.int32(step))
  return params, opt_state


def leaves(params, opt_state) -> dict:
  """Every leaf of ``(params, opt_state)``, keyed by its path, as its raw
  bytes (``uint8``; ``.npz`` cannot hold bfloat16) and its dtype's name
  (key + ``":dtype"``)."""
  flat = jax.tree_util.tree_flatten_with_path((params, opt_state))[0]
  out = {}
  for path, leaf in flat:
    leaf = np.asarray(leaf)
    out[jax.tree_util.keystr(path)] = np.frombuffer(leaf.tobytes(), np.uint8)
    out[jax.tree_util.keystr(path) + ":dtype"] = np.array(leaf.dtype.name)
  return out


def main(mode: str, ckpt_dir: str, out: str, start: int, stop: int) -> None:
  params = init_params()
  opt_state = TX.init(params)
  checkpointer = ocp.StandardCheckpointer()
  if mode == "resume":
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          {"params": params, "opt_state": opt_state})
    restored = checkpointer.restore(ckpt_dir, target)
    params, opt_state = restored["params"], restored["opt_state"]
  params, opt_state = train(params, opt_state, start, stop)
  if mode == "fresh":
    checkpointer.save(ckpt_dir, {"params": params, "opt_state": opt_state})
    checkpointer.wait_until_finished()
  np.savez(out, **leaves(params, opt_state))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
       int(sys.argv[5]))
