"""The study's figures: reward and gradient-norm curves, sweep summaries."""

import os

import numpy as np

from .config import METHODS
from .config import Config

COLORS = {"grpo": "tab:red", "stabledrl": "tab:blue"}


def plot_curves(records: list, warm_reward: float, cfg: Config, out: str):
  """``reward.png`` and ``grad_norm.png``: every seed of both methods."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  noise = (f"{cfg.masks} masks, M={cfg.num_mc}, "
           f"injected sigma={cfg.logratio_noise:g}")
  for name, key, ylabel in (
      ("reward.png", "reward_curve", "mean rollout reward"),
      ("grad_norm.png", "grad_norm_curve", "pre-clip global grad norm")):
    fig, ax = plt.subplots(figsize=(7, 4))
    for method in METHODS:
      runs = [r for r in records if r["method"] == method]
      for i, r in enumerate(runs):
        ax.plot(r[key], color=COLORS[method], alpha=0.6, lw=0.9,
                label=method if i == 0 else None)
    if key == "reward_curve":
      ax.axhline(warm_reward, color="k", ls="--", lw=1, label="warm start")
      ax.set_ylim(0, 1)
    else:
      ax.set_yscale("log")
      ax.axhline(cfg.max_norm, color="k", ls="--", lw=1, label="clip c")
    ax.set_xlabel("RL step (rollout batch)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"sort-{cfg.length} toy dLLM, {noise}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=120)
    plt.close(fig)


def sweep_levels(records: list, field: str) -> list:
  """The swept values: numbers sorted, row names in the order they ran."""
  values = list(dict.fromkeys(r[field] for r in records))
  return values if isinstance(values[0], str) else sorted(values)


def level_name(level) -> str:
  """``0.3`` → ``"0.3"``, ``4`` → ``"4"``, a row name unchanged."""
  return level if isinstance(level, str) else f"{level:g}"


def plot_sweep(records: list, field: str, warm_reward: float, path: str):
  """Final reward, pre-clip norms and failure counts against the noise.

  The third panel counts, per method and noise level, the seeds flagged by
  the 10%-window collapse rule (solid) and the seeds whose final reward ended
  below the warm start (hatched): a run that falls from its first step has no
  earlier peak for the rule to compare with.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  levels = sweep_levels(records, field)
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
  for k, method in enumerate(METHODS):
    shift = (k - 0.5) * 0.08
    label = method
    for j, level in enumerate(levels):
      runs = [r for r in records
              if r["method"] == method and r[field] == level]
      if not runs:
        continue
      finals = [r["final_reward"] for r in runs]
      x = np.full(len(runs), j + shift)
      axes[0].scatter(x, finals, color=COLORS[method], s=14, label=label)
      label = None
      sd = np.std(finals, ddof=1) if len(finals) > 1 else 0.0  # as tables
      axes[0].errorbar(j + shift, np.mean(finals), yerr=sd,
                       color=COLORS[method], capsize=3, fmt="_")
      axes[1].scatter(x, [r["max_grad_norm"] for r in runs],
                      color=COLORS[method], s=14)
      axes[1].scatter(x, [r["median_grad_norm"] for r in runs],
                      facecolors="none", edgecolors=COLORS[method], s=14)
      below = sum(r["final_reward"] < warm_reward for r in runs)
      bar_x = j + (k - 0.5) * 0.2
      axes[2].bar(bar_x - 0.04, sum(r["collapsed"] for r in runs),
                  width=0.08, color=COLORS[method])
      axes[2].bar(bar_x + 0.04, below, width=0.08, color="white",
                  edgecolor=COLORS[method], hatch="///")
  axes[0].axhline(warm_reward, color="k", ls="--", lw=1, label="warm start")
  axes[0].set_ylabel("final reward (last 10%)")
  axes[1].set_yscale("log")
  axes[1].set_ylabel("pre-clip norm: max (filled), median (open)")
  axes[2].set_ylabel("seeds: collapsed (solid), below warm start (hatched)",
                     fontsize=8)
  axes[2].set_ylim(0, max(1, max(
      sum(1 for r in records if r["method"] == m and r[field] == level)
      for m in METHODS for level in levels)) + 0.3)
  axes[2].yaxis.get_major_locator().set_params(integer=True)
  for ax in axes:
    if field == "row":
      ax.set_xticks(range(len(levels)), levels, fontsize=8, rotation=20,
                    ha="right")
    else:
      ax.set_xticks(range(len(levels)), [level_name(v) for v in levels])
    ax.set_xlabel(field)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_rows(records: list, warm_reward: float, path: str):
  """Reward and pre-clip norm curves of every seed, one colour per row."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = sweep_levels(records, "row")
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  for j, row in enumerate(rows):
    color = plt.get_cmap("tab10")(j)
    runs = [r for r in records if r["row"] == row]
    for i, r in enumerate(runs):
      label = f"{row} ({r['method']})" if i == 0 else None
      axes[0].plot(r["reward_curve"], color=color, alpha=0.6, lw=0.9,
                   label=label)
      axes[1].plot(r["grad_norm_curve"], color=color, alpha=0.6, lw=0.9)
  axes[0].axhline(warm_reward, color="k", ls="--", lw=1, label="warm start")
  axes[0].set_ylim(0, 1)
  axes[0].set_ylabel("mean rollout reward")
  axes[1].set_yscale("log")
  axes[1].set_ylabel("pre-clip global grad norm")
  for ax in axes:
    ax.set_xlabel("RL step (rollout batch)")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
