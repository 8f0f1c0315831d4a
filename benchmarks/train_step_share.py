"""The clip's share of a whole training step, compiled for TPUs and GPUs.

A GPT-2-small-shaped ``flax.nnx`` model (124M parameters: vocabulary 50257,
width 768, 12 blocks of 12 heads, context 1024, tied embedding; float32
parameters, bfloat16 activations and matmuls) is trained by one jitted step
with donated parameters and optimizer state::

    grads = jax.grad(loss)(params, tokens)        # forward + backward
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

for the four optimizers of ``clip_overhead.py`` (AdamW alone,
``unconditional_clip``, ``conditional_clip``, ``optax.clip_by_global_norm``,
each chained before AdamW) on a batch of 8 sequences of 1024 tokens. Each
target's step is compiled without the hardware (``xla_targets.py``) and
read statically: HBM traffic counted from the optimized HLO, XLA:TPU's
``optimal_seconds`` (corrected for its −1 s per ``ConcatBitcast``) and the
temp bytes. The clip's share is ``(variant − adamw) / variant`` of each:
what the clip adds to the step, as a fraction of the whole step. It also
counts the matmul fusions that write part of the step's outputs (the
optimizer update fused into the matmul that produces the gradient) and those
with a reduction to a scalar, such as a sum of squares, fused in
(``hlo_traffic.matmul_fusions``). These are compiler estimates; nothing runs
and there is no wall time.

Run (in an environment with the compilers, see ``setup_compilers.sh``)::

    python benchmarks/train_step_share.py --target tpu-v5e tpu-v4 \\
        --out-dir benchmarks/results
    python benchmarks/train_step_share.py --target cpu --small   # a quick check

``--tpu-form NAME`` compiles our clip with one of ``norm_tpu.py``'s forms of
the norm in place of the released one (a diagnostic; with ``--out-dir`` the
file is ``train_step_share_<target>-NAME.txt``).
"""

import argparse
import contextlib
import os
import sys
import time
from typing import Any, Optional, Sequence
from unittest import mock

import jax
import jax.numpy as jnp
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_overhead  # pylint: disable=g-import-not-at-top,wrong-import-position

import hlo_traffic  # pylint: disable=g-import-not-at-top,wrong-import-position
import xla_targets  # pylint: disable=g-import-not-at-top,wrong-import-position


class Block(nnx.Module):
  """Pre-norm transformer block: causal self-attention and a GELU MLP."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    dense = lambda i, o: nnx.Linear(i, o, dtype=jnp.bfloat16,
                                    param_dtype=jnp.float32, rngs=rngs)
    self.heads = heads
    self.ln1 = nnx.LayerNorm(width, dtype=jnp.bfloat16, rngs=rngs)
    self.qkv = dense(width, 3 * width)
    self.out = dense(width, width)
    self.ln2 = nnx.LayerNorm(width, dtype=jnp.bfloat16, rngs=rngs)
    self.mlp_in = dense(width, 4 * width)
    self.mlp_out = dense(4 * width, width)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
    split = lambda y: y.reshape(b, t, self.heads, d // self.heads)
    att = jax.nn.dot_product_attention(split(q), split(k), split(v),
                                       is_causal=True)
    x = x + self.out(att.reshape(b, t, d))
    return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln2(x))))


class GPT(nnx.Module):
  """GPT-2-shaped decoder with a tied embedding; ``[B, T]`` ids -> logits."""

  def __init__(self, vocab: int, width: int, layers: int, heads: int,
               context: int, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, width, dtype=jnp.bfloat16,
                           param_dtype=jnp.float32, rngs=rngs)
    self.pos = nnx.Param(jnp.zeros((context, width), jnp.float32))
    self.blocks = nnx.List([Block(width, heads, rngs=rngs)
                            for _ in range(layers)])
    self.ln_f = nnx.LayerNorm(width, dtype=jnp.bfloat16, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.pos[:tokens.shape[1]].astype(jnp.bfloat16)
    for block in self.blocks:
      x = block(x)
    return self.embed.attend(self.ln_f(x))


def make_train_step(graphdef: Any, tx: optax.GradientTransformation):
  """Jitted next-token training step donating parameters and state."""

  def loss_fn(params, tokens):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, tokens[:, 1:]).mean()

  def step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


# A variant's name, its static figures and its matmul fusions.
Result = tuple[str, xla_targets.Analysis, hlo_traffic.MatmulFusions]


def compile_steps(target: str, args: argparse.Namespace,
                  out_path: Optional[str] = None
                  ) -> tuple[int, list[Result]]:
  """Compiles the step of every variant for ``target``; nothing runs.

  With ``out_path``, the table so far is written there after each variant;
  with ``args.hlo_dir``, each variant's optimized HLO as
  ``<target>_<variant>.hlo``.
  """
  begin = time.perf_counter()
  device = xla_targets.target_device(target)
  model = nnx.eval_shape(lambda: GPT(args.vocab, args.width, args.layers,
                                     args.heads, args.context,
                                     rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  tokens = jax.ShapeDtypeStruct((args.batch, args.context + 1), jnp.int32)
  results = []
  for name in args.variants:
    tx = clip_overhead.make_optimizer(name, max_norm=1.0, lr=3e-4)
    opt_state = jax.eval_shape(tx.init, params)
    step_args = xla_targets.abstract((params, opt_state, tokens), device)
    start = time.perf_counter()
    compiled = make_train_step(graphdef, tx).lower(*step_args).compile()
    text = compiled.as_text()
    results.append((name, xla_targets.analyze(compiled),
                    hlo_traffic.matmul_fusions(text)))
    if args.hlo_dir:
      _write(os.path.join(args.hlo_dir, f"{target}_{name}.hlo"), text)
    print(f"{target} {name}: compiled in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    if out_path:
      _write(out_path, report(target, args, num_params, results, begin))
  return num_params, results


def report(target: str, args: argparse.Namespace, num_params: int,
           results: list[Result], start: float) -> str:
  """Markdown report of one target."""
  return "\n".join([
      f"# Whole training step compiled for {target}: GPT-2-shaped model, "
      f"{num_params / 1e6:.1f}M parameters, batch {args.batch}x"
      f"{args.context} tokens, bfloat16 activations"
      + (f"; our norm in norm_tpu.py's `{args.tpu_form}` form"
         if args.tpu_form and target.startswith("tpu") else ""),
      "",
      format_table(results),
      "",
      "The clip's share is (variant - adamw) / variant. Compiler estimates "
      "of a program compiled for a device that is not present; nothing ran"
      + ("; XLA:GPU has no optimal_seconds" if target.startswith("gpu")
         else "")
      + f". jax {jax.__version__}, optax {optax.__version__}; compiled in "
      f"{time.perf_counter() - start:.0f} s.",
  ])


def _write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text + "\n")


def _share(x: Optional[float], base: Optional[float]) -> str:
  if x is None or base is None or not x:
    return "n/a"
  return f"{100 * (x - base) / x:.2f}%"


def format_table(results: list[Result]) -> str:
  """Markdown: absolute figures and the clip's share of the step."""
  _, base, _ = results[0]
  lines = [
      "| variant | HBM traffic (GiB) | clip's share of HBM traffic "
      "| optimal_seconds, corrected (ms) | clip's share of optimal_seconds "
      "| temp (MiB) | temp minus adamw's (MiB) | fusion estimated_cycles "
      "(x adamw) | `conditional` ops | matmul fusions "
      "| writing step outputs | with a reduction to a scalar |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, a, matmuls in results:
    opt = ("n/a" if a.optimal_seconds is None
           else f"{1e3 * a.optimal_seconds:.2f}")
    cycles = (f"{a.estimated_cycles / base.estimated_cycles:.3f}"
              if base.estimated_cycles else "n/a")
    lines.append(
        f"| {name} | {a.hbm_bytes / 2**30:.3f} "
        f"| {_share(a.hbm_bytes, base.hbm_bytes)} | {opt} "
        f"| {_share(a.optimal_seconds, base.optimal_seconds)} "
        f"| {a.temp_bytes / 2**20:.1f} "
        f"| {(a.temp_bytes - base.temp_bytes) / 2**20:+.1f} | {cycles} "
        f"| {a.conditionals} | {matmuls.matmuls} "
        f"| {matmuls.writing_outputs} | {matmuls.with_scalar_reduction} |")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--target", nargs="+", default=["cpu"],
                      choices=sorted(xla_targets.TARGETS))
  parser.add_argument("--variants", nargs="+",
                      default=list(clip_overhead.VARIANTS),
                      choices=clip_overhead.VARIANTS,
                      help="the first is the baseline (adamw)")
  parser.add_argument("--small", action="store_true",
                      help="a 2-block, width-64 model on 2x64 tokens")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--context", type=int, default=1024)
  parser.add_argument("--vocab", type=int, default=50257)
  parser.add_argument("--width", type=int, default=768)
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--out-dir", type=str, default=None,
                      help="write train_step_share_<target>.txt here")
  parser.add_argument("--hlo-dir", type=str, default=None,
                      help="also write each optimized program here")
  parser.add_argument("--tpu-form", type=str, default=None,
                      help="compile our clip with this TPU form of "
                      "norm_tpu.py's variants (e.g. ours-linear) in place of "
                      "the released one; a diagnostic")
  args = parser.parse_args(argv)
  if args.small:
    args.batch, args.context, args.vocab = 2, 64, 512
    args.width, args.layers, args.heads = 64, 2, 4
  return args


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Compiles every target, prints the markdown report and returns it."""
  args = parse_args(argv)
  with contextlib.ExitStack() as stack:
    if args.tpu_form:
      stack.enter_context(_tpu_form(args.tpu_form))
    return _compile_and_report(args)


def _tpu_form(name: str) -> contextlib.AbstractContextManager[Any]:
  """Patches the library's TPU form of the norm with ``norm_tpu.py``'s."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  from benchmarks import norm_tpu  # pylint: disable=g-import-not-at-top
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  if name not in norm_tpu._FORMS:  # pylint: disable=protected-access
    raise ValueError(f"--tpu-form must be one of "
                     f"{sorted(norm_tpu._FORMS)}, got {name!r}")  # pylint: disable=protected-access
  return mock.patch.object(norms, "_sums_for_tpu", norm_tpu._FORMS[name])  # pylint: disable=protected-access


def _compile_and_report(args: argparse.Namespace) -> str:
  texts = []
  for target in args.target:
    start = time.perf_counter()
    path = None
    if args.out_dir:
      form = f"-{args.tpu_form}" if args.tpu_form else ""
      path = os.path.join(args.out_dir,
                          f"train_step_share_{target}{form}.txt")
    num_params, results = compile_steps(target, args, path)
    text = report(target, args, num_params, results, start)
    print(text, flush=True)
    texts.append(text)
  return "\n\n".join(texts)


if __name__ == "__main__":
  main()
