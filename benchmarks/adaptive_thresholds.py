"""The threshold each clipping rule sets on one synthetic gradient-norm trace.

The trace imitates what RL fine-tuning logs: a norm that starts high and
decays (so a fixed threshold tuned for late training over-suppresses early),
log-normal jitter, isolated spikes of 5-30x, a short burst, NaN steps, and a
lasting jump of the level late in the run (a regime change that an adaptive
rule must follow rather than fight).

Four rules see the same trace (one jitted ``lax.scan`` each):

* ``fixed``: ``unconditional_clip(--fixed-max-norm)``;
* ``z-score``: ``zscore_clip()`` with its defaults (ZClip);
* ``quantile``: ``quantile_clip()`` with its defaults (AutoClip);
* ``skip``: ``skip_spikes(optax.identity(), z_thresh=--skip-z)``, which
  drops whole steps instead of scaling them.

The top panel draws the raw norm and each rule's threshold (the largest norm
a step may have and pass unchanged); the bottom panel the norm each rule hands
to the optimizer. A table on stdout counts clipped/skipped steps, gives the
mean fraction of the norm kept on ordinary (non-spike) steps, and counts the
finite spikes passed on at more than twice the level.

Run (from the repository root; the committed output)::

    python benchmarks/adaptive_thresholds.py \
        > benchmarks/results/adaptive_thresholds.txt
    python benchmarks/adaptive_thresholds.py --steps 800 --seed 1 \\
        --out /tmp/thresholds.png
"""

import argparse
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import stabledrl_jax as sdrl

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "results", "adaptive_thresholds.png")


class Trace(NamedTuple):
  norms: np.ndarray     # [steps] raw global norm (NaN/inf allowed)
  level: np.ndarray     # [steps] the underlying level, before jitter/spikes
  is_spike: np.ndarray  # [steps] bool, injected spike or non-finite step


def make_trace(steps: int, seed: int, shift_at: float) -> Trace:
  """A decaying norm with jitter, spikes, a burst, NaNs and a level shift."""
  rng = np.random.default_rng(seed)
  t = np.arange(steps)
  level = 1.0 + 3.0 * np.exp(-t / (0.15 * steps))
  level = np.where(t >= int(shift_at * steps), 2.0 * level, level)
  norms = level * np.exp(0.12 * rng.normal(size=steps))
  is_spike = np.zeros(steps, bool)
  spikes = rng.choice(np.arange(30, steps), size=max(steps // 60, 1),
                      replace=False)
  norms[spikes] *= rng.uniform(5.0, 30.0, size=spikes.size)
  is_spike[spikes] = True
  burst = int(0.55 * steps)
  norms[burst:burst + 4] *= 8.0
  is_spike[burst:burst + 4] = True
  for frac in (0.3, 0.75):
    norms[int(frac * steps)] = np.nan
    is_spike[int(frac * steps)] = True
  return Trace(norms, level, is_spike)


def run_rule(tx, norms: np.ndarray, dim: int = 8):
  """Scans ``tx`` over gradients of the given norms.

  Returns:
    (passed norm [steps], threshold [steps], skipped [steps] bool).
  """
  direction = jnp.ones((dim,), jnp.float32) / np.sqrt(dim)
  grads0 = {"w": direction}

  def step(state, g):
    out, state = tx.update({"w": g * direction}, state, grads0)
    passed = sdrl.global_norm(out)
    threshold = getattr(state, "threshold", None)
    if threshold is None:  # ClipState: the fixed threshold
      threshold = jnp.asarray(np.inf, jnp.float32)
    skipped = getattr(state, "skipped", jnp.zeros((), jnp.bool_))
    return state, (passed, threshold, skipped)

  scan = jax.jit(lambda s, xs: jax.lax.scan(step, s, xs)[1])
  passed, threshold, skipped = scan(tx.init(grads0),
                                    jnp.asarray(norms, jnp.float32))
  return np.array(passed), np.array(threshold), np.array(skipped)


def print_details(trace: Trace, results, shift: int) -> None:
  """The figures the docs quote beyond the table: how long ``z-score``
  clips ordinary steps after the jump, how far above the level the quantile
  threshold sits, and when ``skip`` skipped or let spikes through."""
  steps = np.arange(trace.norms.size)
  finite = np.isfinite(trace.norms)
  passed, _, _ = results["z-score"]
  ordinary = finite & ~trace.is_spike
  scaled = ordinary & (passed < np.where(finite, trace.norms, 1.0) *
                       (1 - 1e-6))
  late = scaled & (steps >= shift)
  print(f"z-score: {late.sum()} ordinary steps scaled down from step {shift}"
        f" on, the last at step {steps[late].max() if late.any() else None}")
  _, threshold, _ = results["quantile"]
  ratio = threshold / trace.level
  early = np.isfinite(ratio) & (steps < 90)
  middle = np.isfinite(ratio) & (steps >= 90) & (steps < shift)
  print(f"quantile threshold / level: median {np.median(ratio[early]):.2f} "
        f"over steps 0-89; median {np.median(ratio[middle]):.2f}, max "
        f"{ratio[middle].max():.2f} over steps 90-{shift - 1}")
  passed, _, skipped = results["skip"]
  after = skipped & (steps >= shift)
  through = finite & trace.is_spike & (passed > 2.0 * trace.level)
  print(f"skip: {after.sum()} skips from step {shift} on, "
        f"{(after & (steps < shift + 80)).sum()} of them before step "
        f"{shift + 80}; spikes through at steps {steps[through].tolist()}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--shift-at", type=float, default=0.7,
                      help="fraction of the run where the level doubles")
  parser.add_argument("--fixed-max-norm", type=float, default=2.0)
  parser.add_argument("--skip-z", type=float, default=3.0)
  parser.add_argument("--out", default=DEFAULT_OUT, help="PNG path")
  args = parser.parse_args()

  trace = make_trace(args.steps, args.seed, args.shift_at)
  rules = {
      "fixed": sdrl.unconditional_clip(args.fixed_max_norm),
      "z-score": sdrl.zscore_clip(),
      "quantile": sdrl.quantile_clip(),
      "skip": sdrl.skip_spikes(optax.identity(), z_thresh=args.skip_z),
  }
  results = {name: run_rule(tx, trace.norms) for name, tx in rules.items()}
  passed, _, skipped = results["fixed"]
  results["fixed"] = (passed, np.full(args.steps, args.fixed_max_norm),
                      skipped)

  finite = np.isfinite(trace.norms)
  ordinary = finite & ~trace.is_spike
  shift = int(args.shift_at * args.steps)
  early = ordinary & (np.arange(args.steps) < int(0.15 * args.steps))
  late = ordinary & (np.arange(args.steps) >= shift)
  spikes = finite & trace.is_spike
  print(f"{args.steps} steps, {spikes.sum()} finite spikes, "
        f"{(~finite).sum()} NaN steps, level doubles at step {shift}")
  print("kept = mean fraction of the raw norm passed on on ordinary steps; "
        "spikes through = finite spikes passed on at > 2x the level")
  header = ("rule", "clipped", "skipped", "kept early", "kept after shift",
            "spikes through")
  print(f"{header[0]:9s} {header[1]:>8s} {header[2]:>8s} {header[3]:>11s} "
        f"{header[4]:>17s} {header[5]:>15s}")
  for name, (passed, _, skipped) in results.items():
    raw = np.where(finite, trace.norms, 1.0)
    scaled_down = finite & ~skipped & (passed < raw * (1 - 1e-6))
    kept = passed / raw
    through = spikes & (passed > 2.0 * trace.level)
    print(f"{name:9s} {scaled_down.sum():8d} {skipped.sum():8d} "
          f"{kept[early].mean():11.3f} {kept[late].mean():17.3f} "
          f"{through.sum():15d}")
  print_details(trace, results, shift)

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  steps = np.arange(args.steps)
  colors = {"fixed": "tab:red", "z-score": "tab:blue",
            "quantile": "tab:green", "skip": "tab:purple"}
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
  top.plot(steps, trace.norms, color="0.6", lw=0.8, label="raw norm")
  nan_steps = steps[~finite]
  for s in nan_steps:
    top.axvline(s, color="0.3", ls=":", lw=0.8)
  for name, (_, threshold, _) in results.items():
    shown = np.where(np.isfinite(threshold), threshold, np.nan)
    top.plot(steps, shown, color=colors[name], lw=1.3,
             label=f"{name} threshold")
  skipped = results["skip"][2] & finite
  top.scatter(steps[skipped], trace.norms[skipped], marker="x", s=25,
              color=colors["skip"], label="skipped by skip_spikes", zorder=3)
  top.set_yscale("log")
  top.set_ylabel("global norm")
  top.set_title("Thresholds on one synthetic norm trace (dotted: NaN steps)")
  top.legend(loc="upper right", fontsize=8, ncol=3)
  for name, (passed, _, _) in results.items():
    bottom.plot(steps, passed, color=colors[name], lw=1.0, label=name)
  bottom.set_yscale("symlog", linthresh=0.5)
  bottom.set_ylabel("norm passed to the optimizer")
  bottom.set_xlabel("step")
  bottom.legend(loc="upper right", fontsize=8, ncol=4)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(f"wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
  main()
