r"""Toy diffusion-LM RL study: GRPO's conditional clip versus StableDRL.

A tiny masked-diffusion language model (``flax.nnx``, 2-layer bidirectional
transformer, d=128, ~400k parameters) learns to sort 5 digits. It is
warm-started by masked-diffusion supervised training, stopped while the task
is still far from solved, then fine-tuned by RL with group sampling:

* rollouts: 16 prompts x G = 8 completions, drawn by iterative
  confidence-based unmasking with temperature sampling;
* reward: the fraction of completion positions equal to the sorted prompt;
* advantages: :func:`stabledrl_jax.group_advantages` (group mean and std);
* sequence log-likelihoods: the masked-diffusion ELBO
  (:func:`stabledrl_jax.diffusion_elbo`) estimated with a few Monte Carlo
  masks (``--num-mc``, :func:`stabledrl_jax.sample_diffusion_masks`), the
  noisy estimate a real diffusion LM has to use; the importance log-ratio is
  ``ELBO_new - ELBO_old``;
* several optimizer steps per rollout batch (``--inner-steps``), with
  ``optax.chain(unconditional_clip(c), optax.adam(lr))`` for both methods.

The two methods differ only in the policy loss:

* ``grpo``: :func:`stabledrl_jax.grpo_policy_loss` on the ``[B]`` sequence
  log-likelihoods, the sequence-level conditional clip
  ``-min(r A, clip(r, 1 - eps, 1 + eps) A)`` averaged with the fixed ``1/G``
  weight per completion;
* ``stabledrl``: :func:`stabledrl_jax.stabledrl_policy_loss` (ratio capped at
  5 whatever the sign of the advantage, self-normalised within each group).

Noise knobs (``--masks``, ``--num-mc``, ``--logratio-noise``) set how noisy the
ratio is: with ``--masks independent`` the old and new ELBOs use fresh masks
(estimator noise of several nats); with ``--masks coupled`` they share masks
(no estimator noise) and ``--logratio-noise SIGMA`` adds Gaussian noise to the
log-ratio. ``--sweep-sigma`` / ``--sweep-mc`` run a grid of noise levels.
``--sweep-estimators`` runs the rows of ``ESTIMATOR_ROWS``: M = 2 masks drawn
independently, as complementary pairs, or shared between the old and the new
ELBO; the reference's per-token-mean ELBO; and StableDRL's sandwich gradient
(:func:`stabledrl_jax.diffusion_eubo`, :func:`stabledrl_jax.sandwich_logp`).

The model, the sampler and one RL step live in the ``dllm`` package next to
this script; this file holds the command line, the worker pool and the
sweeps. Runs are spread over ``--workers`` single-threaded processes (one per
core).

Usage::

  python examples/dllm_rl.py --out examples/results/dllm_rl
  python examples/dllm_rl.py --quick --out /tmp/dllm_quick
  python examples/dllm_rl.py --seeds 3 --sweep-sigma 0,0.3,1,3 --out examples/results/dllm_rl
  python examples/dllm_rl.py --seeds 3 --sweep-mc 1,4,16 --out examples/results/dllm_rl
  python examples/dllm_rl.py --seeds 3 --steps 40 --methods stabledrl \
      --sweep-estimators independent,complementary,shared,mean,mean-sandwich \
      --out examples/results/dllm_rl
  python examples/dllm_rl.py --table --out examples/results/dllm_rl
  python examples/dllm_rl.py --replot --out examples/results/dllm_rl

Outputs ``DIR/results.json``, ``DIR/reward.png`` and ``DIR/grad_norm.png``
(or ``DIR/sweep_<name>.json`` and ``DIR/sweep_<name>.png`` for a sweep, plus
``DIR/sweep_estimators_curves.png`` for the estimator rows). ``--replot``
redraws every PNG from the JSON files; ``--table`` prints the estimator rows
as a markdown table.

References:
  Zhong et al., `Stabilizing Reinforcement Learning for Diffusion Language
  Models <https://arxiv.org/abs/2603.06743>`_, 2026.
  Shao et al., `DeepSeekMath (GRPO) <https://arxiv.org/abs/2402.03300>`_, 2024.
  Sahoo et al., `Simple and Effective Masked Diffusion Language Models
  <https://arxiv.org/abs/2406.07524>`_, 2024.
  Nie et al., `Large Language Diffusion Models (LLaDA)
  <https://arxiv.org/abs/2502.09992>`_, 2025.
  Wang et al., `SPG: Sandwiched Policy Gradient for Masked Diffusion
  Language Models <https://arxiv.org/abs/2510.09541>`_, 2025.
  Gong et al., `DiffuCoder <https://arxiv.org/abs/2506.20639>`_, 2025
  (coupled, complementary masks).
"""

import os

SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"

if __name__ == "__main__" and "XLA_FLAGS" not in os.environ:
  # Eigen's thread pool off in each process, so that two worker processes
  # on two cores oversubscribe them less (XLA may still use a thread or two).
  # Set before JAX starts; spawned workers inherit it.
  os.environ["XLA_FLAGS"] = SINGLE_THREAD_XLA_FLAGS

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import dataclasses
import json
import multiprocessing
import queue
import tempfile
import time
from concurrent import futures
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dllm import plots
from dllm.config import MASK_MODES
from dllm.config import METHODS
from dllm.config import Config
from dllm.model import make_model
from dllm.model import num_params
from dllm.model import warm_start
from dllm.rl_step import make_optimizer
from dllm.rl_step import make_rl_step
from dllm.sampler import LogitsFn

# The estimator rows (--sweep-estimators): M = 2 masks per ELBO, each row one
# change to the Config defaults. "independent": fresh masks for the old and
# the new ELBO; "complementary": fresh complementary pairs (t and 1 - t);
# "shared": the new ELBO reuses the old ELBO's masks (common random numbers);
# "mean": the StableDRL/SPG reference weighting (mean log-likelihood of the
# masked tokens instead of the 1/t-weighted sum); "mean-sandwich": that ELBO
# for the ratio, the gradient through sandwich_logp (EUBO mixed in for A <= 0).
ESTIMATOR_ROWS = {
    "independent": {"num_mc": 2},
    "complementary": {"num_mc": 2, "coupling": "complementary"},
    "shared": {"num_mc": 2, "masks": "coupled"},
    "mean": {"num_mc": 2, "weighting": "mean"},
    "mean-sandwich": {"num_mc": 2, "weighting": "mean", "seq_logp": "sandwich"},
}


def collapse_stats(reward_curve) -> tuple:
  """``(final, best_window, collapsed)`` by the 10%-window rule.

  ``final`` is the mean reward over the last 10% of steps, ``best_window`` the
  best mean over any window of that length; ``collapsed`` is
  ``final < best_window / 2``.
  """
  curve = np.asarray(reward_curve, np.float64)
  window = max(1, int(round(0.1 * len(curve))))
  means = np.convolve(curve, np.ones(window) / window, mode="valid")
  final = float(means[-1])
  best = float(means.max())
  return final, best, bool(final < 0.5 * best)


_STEPS = {}


def cached_rl_step(apply: LogitsFn, cfg: Config, method: str):
  """:func:`make_rl_step`, built (and compiled) once per configuration."""
  key = (id(apply), cfg, method)
  if key not in _STEPS:
    _STEPS[key] = (apply, make_rl_step(apply, cfg, method))
  return _STEPS[key][1]


def run_one(cfg: Config, method: str, seed: int, params, apply: LogitsFn,
            progress: Optional[Callable[[int], None]] = None) -> dict:
  """One RL run from the warm-start ``params``; returns its record."""
  step = cached_rl_step(apply, cfg, method)
  opt_state = make_optimizer(cfg).init(params)
  key = jax.random.key(seed)
  history = []
  start = time.perf_counter()
  for i in range(cfg.rl_steps):
    params, opt_state, metrics = step(params, opt_state,
                                      jax.random.fold_in(key, i))
    history.append(jax.device_get(metrics))
    if progress is not None:
      progress(1)
  seconds = time.perf_counter() - start
  curve = lambda name: [float(h[name]) for h in history]
  rewards, norms = curve("reward"), curve("grad_norm")
  final, best, collapsed = collapse_stats(rewards)
  finite = np.asarray(norms)[np.isfinite(norms)]
  median = float(np.median(finite)) if finite.size else float("nan")
  worst = float(finite.max()) if finite.size else float("nan")
  return {
      "method": method,
      "seed": seed,
      "masks": cfg.masks,
      "coupling": cfg.coupling,
      "num_mc": cfg.num_mc,
      "weighting": cfg.weighting,
      "seq_logp": cfg.seq_logp,
      "logratio_noise": cfg.logratio_noise,
      "final_reward": final,
      "best_window_reward": best,
      "collapsed": collapsed,
      "max_grad_norm": worst,
      "median_grad_norm": median,
      "spike_over_median": worst / median if median > 0 else float("nan"),
      "num_nonfinite": int(history[-1]["num_nonfinite"]),
      "num_clipped": int(history[-1]["num_clipped"]),
      "optimizer_steps": cfg.rl_steps * cfg.inner_steps,
      "seconds": seconds,
      "reward_curve": rewards,
      "grad_norm_curve": norms,
      "max_ratio_curve": [float(np.exp(min(v, 20.0)))
                          for v in curve("max_log_ratio")],
      "max_log_ratio_curve": curve("max_log_ratio"),
      "bypass_fraction_curve": curve("bypass_fraction"),
      "logratio_std_curve": curve("logratio_std"),
  }


# ------------------------------------------------------------------- workers


_PROGRESS = None


def _init_worker(progress_queue):
  global _PROGRESS
  _PROGRESS = progress_queue


_APPLY = {}


def _worker(job: dict) -> dict:
  """Runs one job in a worker process: rebuilds the model, loads params."""
  cfg = Config(**job["config"])
  arch = (cfg.length, cfg.vocab, cfg.d_model, cfg.num_heads, cfg.num_layers,
          cfg.mlp_dim, cfg.warm_seed)
  if arch not in _APPLY:
    _APPLY[arch] = make_model(cfg, cfg.warm_seed)[0]
  apply = _APPLY[arch]
  params = jax.tree.map(jnp.asarray, job["params"])
  return run_one(cfg, job["method"], job["seed"], params, apply,
                 _PROGRESS.put)


def run_jobs(jobs: list, params, workers: int, desc: str) -> list:
  """Runs ``(cfg, method, seed)`` jobs; ``workers > 1`` uses processes."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  total = sum(cfg.rl_steps for cfg, _, _ in jobs)
  host_params = jax.tree.map(np.asarray, params)
  bar = tqdm(total=total, desc=desc, unit="step", smoothing=0.05)
  if workers <= 1:
    apply, _ = make_model(jobs[0][0], jobs[0][0].warm_seed)
    records = []
    for cfg, method, seed in jobs:
      records.append(run_one(cfg, method, seed, params, apply, bar.update))
    bar.close()
    return records
  ctx = multiprocessing.get_context("spawn")
  manager = ctx.Manager()
  progress = manager.Queue()
  payloads = [{"config": dataclasses.asdict(cfg), "method": method,
               "seed": seed, "params": host_params}
              for cfg, method, seed in jobs]
  with futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                   initializer=_init_worker,
                                   initargs=(progress,)) as pool:
    pending = [pool.submit(_worker, p) for p in payloads]
    while not all(f.done() for f in pending):
      try:
        bar.update(progress.get(timeout=0.5))
      except queue.Empty:
        pass
    records = [f.result() for f in pending]
  while not progress.empty():
    bar.update(progress.get())
  bar.close()
  manager.shutdown()
  return records


def summarize(records: list, warm_reward: float) -> dict:
  """Per-method table: seeds, collapsed, final reward, worst spike."""
  table = {}
  for method in METHODS:
    runs = [r for r in records if r["method"] == method]
    if not runs:
      continue
    finals = np.asarray([r["final_reward"] for r in runs])
    table[method] = {
        "seeds": len(runs),
        "collapsed": int(sum(r["collapsed"] for r in runs)),
        "final_reward_mean": float(finals.mean()),
        "final_reward_sd": float(finals.std(ddof=1)) if len(runs) > 1 else 0.0,
        "below_warm_start": int(np.sum(finals < warm_reward)),
        "final_minus_warm_start_mean": float(finals.mean() - warm_reward),
        "spike_over_median_per_seed": [r["spike_over_median"] for r in runs],
        "worst_spike_over_median": float(
            max(r["spike_over_median"] for r in runs)),
        "max_grad_norm": float(max(r["max_grad_norm"] for r in runs)),
        "max_log_ratio": float(max(max(r["max_log_ratio_curve"])
                                   for r in runs)),
        "mean_bypass_fraction": float(np.mean(
            [np.mean(r["bypass_fraction_curve"]) for r in runs])),
        "mean_logratio_std_first_step": float(
            np.mean([r["logratio_std_curve"][0] for r in runs])),
        "logratio_std_first_step_per_seed": [r["logratio_std_curve"][0]
                                             for r in runs],
        "median_logratio_std": float(np.mean(
            [np.median(r["logratio_std_curve"]) for r in runs])),
        "num_nonfinite": int(sum(r["num_nonfinite"] for r in runs)),
    }
  return table


# The committed study's directory, relative to the repository root.
STUDY_DIR = "examples/results/dllm_rl"


def parse_args(argv=None):
  """Command-line flags; defaults are the committed study."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=None,
                      help=f"output directory (default: {STUDY_DIR}; with "
                      "--quick, a new temporary directory, so that a smoke "
                      "run never overwrites the committed study)")
  parser.add_argument("--quick", action="store_true",
                      help="a few steps, 1 seed per method (smoke run)")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--steps", type=int, default=Config.rl_steps)
  parser.add_argument("--warm-steps", type=int, default=Config.warm_steps)
  parser.add_argument("--num-mc", type=int, default=Config.num_mc,
                      help="Monte Carlo masks per ELBO estimate")
  parser.add_argument("--masks", choices=MASK_MODES, default=Config.masks,
                      help="independent: old/new ELBOs use fresh masks; "
                      "coupled: shared masks (no estimator noise)")
  parser.add_argument("--logratio-noise", type=float,
                      default=Config.logratio_noise,
                      help="std of Gaussian noise added to the log-ratio")
  parser.add_argument("--inner-steps", type=int, default=Config.inner_steps)
  parser.add_argument("--max-norm", type=float, default=Config.max_norm)
  parser.add_argument("--lr", type=float, default=Config.lr)
  parser.add_argument("--sweep-sigma", default=None,
                      help="comma-separated injected noise levels, run with "
                      "coupled masks; writes sweep_sigma.{json,png}")
  parser.add_argument("--sweep-mc", default=None,
                      help="comma-separated MC mask counts, run with "
                      "independent masks; writes sweep_mc.{json,png}")
  parser.add_argument("--sweep-estimators", default=None,
                      help="comma-separated rows of ESTIMATOR_ROWS "
                      f"({', '.join(ESTIMATOR_ROWS)}); writes "
                      "sweep_estimators.{json,png}")
  parser.add_argument("--replot", action="store_true",
                      help="redraw the PNGs of --out from its JSON files "
                      "and exit (no training)")
  parser.add_argument("--table", action="store_true",
                      help="print the estimator study of --out as a markdown "
                      "table and exit (no training)")
  parser.add_argument("--workers", type=int, default=2,
                      help="worker processes (1 = run in this process)")
  args = parser.parse_args(argv)
  if args.out is None:
    runs = args.quick and not (args.replot or args.table)
    args.out = tempfile.mkdtemp(prefix="dllm_rl_quick_") if runs else STUDY_DIR
  return args


def _table_row(name: str, runs: list, warm_reward: float, steps: int) -> str:
  """One markdown row of :func:`estimator_table` from the first ``steps``."""
  finals, spikes, norms, first, medians = [], [], [], [], []
  for r in runs:
    finals.append(collapse_stats(r["reward_curve"][:steps])[0])
    curve = np.asarray(r["grad_norm_curve"][:steps])
    curve = curve[np.isfinite(curve)]
    spikes.append(curve.max() / np.median(curve))
    norms.append(np.median(curve))
    first.append(r["logratio_std_curve"][0])
    medians.append(np.median(r["logratio_std_curve"][:steps]))
  finals = np.asarray(finals)
  sd = finals.std(ddof=1) if len(finals) > 1 else 0.0
  return (f"| {name} | {len(runs)} | {np.mean(first):.2f} "
          f"({min(first):.2f}–{max(first):.2f}) | {np.mean(medians):.2f} | "
          f"{finals.mean():.3f} ± {sd:.3f} | "
          f"{finals.mean() - warm_reward:+.3f} | "
          f"{int(np.sum(finals < warm_reward))}/{len(runs)} | "
          f"{max(spikes):.1f}× ({', '.join(f'{v:.1f}' for v in spikes)}) | "
          f"{np.median(norms):.2f} |")


def estimator_table(out: str, method: str = "stabledrl") -> str:
  """The estimator study as a markdown table, from the JSON files in ``out``.

  One row per ``sweep_estimators.json`` row; first, when ``results.json`` is
  there, its M = 1 independent-mask runs of the same seeds cut to the same
  number of RL steps (the curves are saved whole, so the cut is exact).
  Columns: seeds; the log-ratio std at the first optimizer step (mean over
  seeds, range); the median over the run of the per-step log-ratio std; the
  final reward (last 10% of the steps) against the warm start; the worst
  pre-clip-norm spike over the run's median (max over seeds, then each seed);
  the median pre-clip norm (median over seeds).
  """
  with open(os.path.join(out, "sweep_estimators.json")) as f:
    sweep = json.load(f)
  steps = sweep["config"]["rl_steps"]
  warm = sweep["warm_start_reward"]
  runs = [r for r in sweep["runs"] if r["method"] == method]
  lines = [
      f"| {method}, {steps} RL steps | seeds | log-ratio std at step 0 | "
      "median log-ratio std | final reward | vs warm start | seeds below "
      "warm start | worst spike / median (per seed) | median pre-clip norm |",
      "|---|---|---|---|---|---|---|---|---|"]
  seeds = sorted({r["seed"] for r in runs})
  baseline = os.path.join(out, "results.json")
  if os.path.exists(baseline):
    with open(baseline) as f:
      base = json.load(f)
    if base["warm_start_reward"] != warm:
      raise ValueError("results.json and sweep_estimators.json have "
                       "different warm starts.")
    old = [r for r in base["runs"]
           if r["method"] == method and r["seed"] in seeds]
    if old:
      lines.append(_table_row(
          f"independent, M = {base['config']['num_mc']} (results.json, first "
          f"{steps} steps)", old, warm, steps))
  for row in sweep["config"]["sweep_values"]:
    lines.append(_table_row(row, [r for r in runs if r["row"] == row], warm,
                            steps))
  return "\n".join(lines)


def replot(out: str) -> None:
  """Redraws every PNG of ``out`` from the JSON files a run wrote there."""
  fields = {f.name for f in dataclasses.fields(Config)}
  found = False
  for name, field in (("results", None), ("sweep_sigma", "logratio_noise"),
                      ("sweep_mc", "num_mc"), ("sweep_estimators", "row")):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
      continue
    found = True
    with open(path) as f:
      saved = json.load(f)
    if field is None:
      cfg = Config(**{k: v for k, v in saved["config"].items() if k in fields})
      plots.plot_curves(saved["runs"], saved["warm_start_reward"], cfg, out)
    else:
      plots.plot_sweep(saved["runs"], field, saved["warm_start_reward"],
                       os.path.join(out, f"{name}.png"))
      if field == "row":
        plots.plot_rows(saved["runs"], saved["warm_start_reward"],
                        os.path.join(out, f"{name}_curves.png"))
    print(f"redrew the plots of {path}")
  if not found:
    raise SystemExit(f"--replot: no results.json or sweep_*.json in {out!r}")


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.replot:
    replot(args.out)
    return {}
  if args.table:
    print(estimator_table(args.out))
    return {}
  methods = tuple(m for m in args.methods.split(",") if m)
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"--methods must name {METHODS}, got {m!r}.")
  seeds, steps, warm_steps = args.seeds, args.steps, args.warm_steps
  if args.quick:
    seeds, steps = 1, min(steps, 8)
  cfg = Config(rl_steps=steps, warm_steps=warm_steps, num_mc=args.num_mc,
               masks=args.masks, logratio_noise=args.logratio_noise,
               inner_steps=args.inner_steps, max_norm=args.max_norm,
               lr=args.lr)

  labels = None
  if args.sweep_sigma:
    name, field = "sigma", "logratio_noise"
    conditions = [dataclasses.replace(cfg, masks="coupled",
                                      logratio_noise=float(v))
                  for v in args.sweep_sigma.split(",")]
  elif args.sweep_mc:
    name, field = "mc", "num_mc"
    conditions = [dataclasses.replace(cfg, masks="independent", num_mc=int(v))
                  for v in args.sweep_mc.split(",")]
  elif args.sweep_estimators:
    name, field = "estimators", "row"
    labels = [v for v in args.sweep_estimators.split(",") if v]
    for label in labels:
      if label not in ESTIMATOR_ROWS:
        raise ValueError(f"--sweep-estimators must name rows of "
                         f"{tuple(ESTIMATOR_ROWS)}, got {label!r}.")
    conditions = [dataclasses.replace(cfg, **ESTIMATOR_ROWS[v])
                  for v in labels]
  else:
    name, field, conditions = None, None, [cfg]
  labels = labels or [None] * len(conditions)

  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  apply, params, warm_reward = warm_start(cfg)
  print(f"model: {num_params(params)} parameters; warm start "
        f"({cfg.warm_steps} steps) reward {warm_reward:.3f}")

  # Seed-major order, so that both workers move through the conditions
  # together. GRPO takes its ratio and gradient from one estimate: it has no
  # sandwich row.
  jobs, job_labels = [], []
  for s in range(seeds):
    for c, label in zip(conditions, labels):
      for m in methods:
        if c.seq_logp == "sandwich" and m != "stabledrl":
          continue
        jobs.append((c, m, s))
        job_labels.append(label)
  records = run_jobs(jobs, params, args.workers,
                     desc=f"{len(jobs)} RL runs")
  if field == "row":
    for record, label in zip(records, job_labels):
      record["row"] = label
  seconds = time.perf_counter() - start
  result = {
      # A sweep records the settings it forced (e.g. coupled masks) and the
      # swept values; the other fields are shared by every run.
      "config": dict(dataclasses.asdict(conditions[0]), seeds=seeds,
                     methods=methods, num_params=num_params(params),
                     workers=args.workers, sweep=name,
                     sweep_values=(labels if field == "row" else
                                   [getattr(c, field) for c in conditions])
                     if field else None,
                     rows={v: ESTIMATOR_ROWS[v] for v in labels}
                     if field == "row" else None),
      "warm_start_reward": warm_reward,
      "wall_seconds": seconds,
  }
  if name is None:
    result["summary"] = summarize(records, warm_reward)
    result["runs"] = records
    path = os.path.join(args.out, "results.json")
    plots.plot_curves(records, warm_reward, cfg, args.out)
    print(json.dumps(result["summary"], indent=1))
  else:
    levels = plots.sweep_levels(records, field)
    result["summary"] = {
        plots.level_name(level): summarize(
            [r for r in records if r[field] == level], warm_reward)
        for level in levels}
    result["runs"] = records
    path = os.path.join(args.out, f"sweep_{name}.json")
    plots.plot_sweep(records, field, warm_reward,
                     os.path.join(args.out, f"sweep_{name}.png"))
    if field == "row":
      plots.plot_rows(records, warm_reward,
                      os.path.join(args.out, f"sweep_{name}_curves.png"))
    for level, table in result["summary"].items():
      print(f"{field}={level}: " + "; ".join(
          f"{m}: final {t['final_reward_mean']:.3f}±{t['final_reward_sd']:.3f}"
          f", collapsed {t['collapsed']}/{t['seeds']}, spike "
          f"{t['worst_spike_over_median']:.1f}x" for m, t in table.items()))
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path} ({seconds:.0f} s)")
  return result


if __name__ == "__main__":
  main()
