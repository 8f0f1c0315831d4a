"""Tests of examples/quickstart.py and of the pieces of benchmarks/clip_overhead.py.

The root conftest gives this process 8 CPU devices, so the quickstart runs its
data-parallel path and the benchmark's shard_map all-reduce count runs on a
2x4 mesh.
"""

import importlib.util
import os
import re
import sys

import chex
import jax
import numpy as np
import pytest

import stabledrl_jax as sdrl

# Runs the example and benchmark programs: minutes, not seconds.
pytestmark = [pytest.mark.slow, pytest.mark.examples]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))  # the examples' _common


def _load(relative_path, name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, relative_path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


quickstart = _load(os.path.join("examples", "quickstart.py"), "quickstart")
bench = _load(os.path.join("benchmarks", "clip_overhead.py"), "clip_overhead")

# ~1.3M float32 parameters in 18 leaves: big enough that the clip's scalar
# temporaries are far below 1% of the gradient bytes, small enough to compile
# in a few seconds.
MEDIUM_SHAPES = bench.gpt_shapes(width=128, vocab=8192, layers=2)
TINY_SHAPES = bench.gpt_shapes(width=8, vocab=32, layers=1)


# ---------------------------------------------------------------- quickstart


def _quickstart(capsys, *flags):
  summary = quickstart.main(
      ["--steps", "30", "--log-every", "10", "--hidden", "32",
       "--no-progress", *flags])
  return summary, capsys.readouterr().out


def test_quickstart_trains_on_every_device_and_reports(capsys):
  summary, out = _quickstart(capsys)
  assert summary["devices"] == jax.local_device_count() == 8
  assert summary["steps"] == 30
  assert summary["final_loss"] < 0.5 * summary["first_loss"]
  assert summary["num_nonfinite"] == 0
  assert np.isfinite(summary["last_pre_clip_norm"])
  logged = re.findall(
      r"step\s+(\d+)\s+loss ([\d.]+)\s+pre-clip norm ([\d.]+)\s+clip rate (\d+)%",
      out)
  assert [int(s) for s, *_ in logged] == [10, 20, 30]
  # The last logged norm is the one the clip state holds at the end.
  np.testing.assert_allclose(
      float(logged[-1][2]), summary["last_pre_clip_norm"], rtol=1e-3)
  summary_lines = [line for line in out.splitlines() if line.startswith("done:")]
  assert len(summary_lines) == 1
  assert "30 steps on 8" in summary_lines[0]


def test_quickstart_clip_rate_follows_max_norm(capsys):
  never, out_never = _quickstart(capsys, "--max-norm", "1e9")
  always, out_always = _quickstart(capsys, "--max-norm", "1e-6")
  assert never["num_clipped"] == 0
  assert always["num_clipped"] == 30
  assert re.findall(r"clip rate (\d+)%", out_never) == ["0", "0", "0"]
  assert re.findall(r"clip rate (\d+)%", out_always) == ["100", "100", "100"]


def test_quickstart_is_deterministic(capsys):
  first, _ = _quickstart(capsys, "--seed", "3")
  second, _ = _quickstart(capsys, "--seed", "3")
  other, _ = _quickstart(capsys, "--seed", "4")
  assert first["final_loss"] == second["final_loss"]
  assert first["final_loss"] != other["final_loss"]


# ---------------------------------------------------------- benchmark pieces


def test_gpt_shapes_layout():
  shapes = bench.gpt_shapes(width=512, vocab=50304, layers=12)
  assert len(shapes) == 8 * 12 + 2
  # Per block: 2 norm scales (512 each), qkv 512x1536 + bias 1536,
  # out 512x512, mlp 512x2048 + bias 2048 + 2048x512.
  per_block = 2 * 512 + 512 * 1536 + 1536 + 512 * 512 + 512 * 2048 + 2048 \
      + 2048 * 512
  expected = 50304 * 512 + 12 * per_block + 512
  assert sum(int(np.prod(s)) for s in shapes.values()) == expected


def test_count_ops_matches_whole_opcodes_only():
  text = "\n".join([
      "%all-reduce.3 = f32[] all-reduce(f32[] %a), replica_groups={{0,1}}",
      "%x = f32[] add(f32[] %all-reduce.3, f32[] %b)",
      "%ars = f32[] all-reduce-start(f32[] %c), replica_groups=[2,4]<=[8]",
      "%ard = f32[] all-reduce-done(f32[] %ars)",
      '%f = f32[] fusion(%x), metadata={op_name="jit(step)/unconditional_clip"}',
      "%c.1 = (f32[], f32[]) conditional(pred[] %p, %t, %t)",
  ])
  assert bench.count_ops(text, "all-reduce") == 1
  assert bench.count_ops(text, "all-reduce-start") == 1
  assert bench.count_ops(text, "conditional") == 1
  assert bench.count_ops(text, "unconditional") == 0
  mlir = ('%0 = "stablehlo.all_reduce"(%a) ...\n'
          "%1 = stablehlo.all_reduce %b ...\n%2 = stablehlo.all_gather %c")
  assert bench.count_stablehlo_ops(mlir, "all_reduce") == 2


@pytest.fixture(scope="module")
def medium_stats():
  grads = bench.make_tree(MEDIUM_SHAPES, seed=1, scale=1.0)
  params = bench.make_tree(MEDIUM_SHAPES, seed=0, scale=0.02)
  stats = {}
  for name in bench.VARIANTS:
    tx = bench.make_optimizer(name, max_norm=1.0, lr=1e-4)
    compiled = bench.make_step(tx).lower(
        params, tx.init(params), grads).compile()
    stats[name] = bench.compiled_stats(compiled)
  return stats, bench.tree_bytes(grads)


def test_unconditional_step_has_no_conditional(medium_stats):
  stats, _ = medium_stats
  assert stats["adamw"].num_conditionals == 0
  assert stats["unconditional"].num_conditionals == 0
  assert stats["optax_clip"].num_conditionals == 0
  assert stats["conditional"].num_conditionals == 1


def test_unconditional_clip_fuses_into_adamw(medium_stats):
  stats, grad_bytes = medium_stats
  base = stats["adamw"]
  uncond = stats["unconditional"]
  # One extra read of the gradients at most (AdamW alone moves ~10x them).
  assert uncond.bytes_accessed <= 1.11 * base.bytes_accessed
  assert uncond.temp_bytes <= 0.01 * grad_bytes
  # The measurement can tell a materialised clip apart: the branch and
  # optax's clip write a gradient-sized temporary and re-read it.
  for name in ("conditional", "optax_clip"):
    assert stats[name].bytes_accessed >= 1.4 * base.bytes_accessed
    assert stats[name].temp_bytes >= grad_bytes


def test_benchmark_variants_compute_the_same_step():
  grads = bench.make_tree(TINY_SHAPES, seed=1, scale=1.0)
  g = np.concatenate([np.ravel(np.asarray(x, np.float64))
                      for x in jax.tree.leaves(grads)])
  max_norm = 0.5 * float(np.sqrt(np.sum(g * g)))  # every variant clips
  results = {}
  for name in bench.VARIANTS:
    tx = bench.make_optimizer(name, max_norm=max_norm, lr=1e-2)
    params = bench.make_tree(TINY_SHAPES, seed=0, scale=0.02)
    results[name], _ = bench.make_step(tx)(params, tx.init(params), grads)
  chex.assert_trees_all_close(results["unconditional"], results["optax_clip"],
                              rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(results["conditional"], results["optax_clip"],
                              rtol=1e-6, atol=1e-7)
  # AdamW's first step nearly cancels a uniform rescaling, so check that the
  # clip really acted on these gradients through its own state.
  clip = sdrl.unconditional_clip(max_norm)
  _, state = clip.update(grads, clip.init(grads))
  np.testing.assert_allclose(float(state.scale), 0.5, rtol=1e-6)


def test_run_step_benchmark_times_every_variant_interleaved():
  results = bench.run_step_benchmark(TINY_SHAPES, rounds=3, warmup=1,
                                     progress=False)
  assert [r.name for r in results] == list(bench.VARIANTS)
  for r in results:
    assert len(r.times) == 3
    assert all(t > 0 for t in r.times)


@pytest.mark.parametrize("num_leaves", [2, 7, 100])
def test_one_all_reduce_for_two_axis_sets(num_leaves):
  counts = bench.count_all_reduces(num_leaves)
  assert counts.num_axis_sets == 2
  assert counts.stablehlo == 1
  assert counts.hlo_unoptimized == 1
  assert counts.hlo_optimized == 1
  # Leaves split over {data} only are counted on model index 0, then one
  # all-reduce runs over all 8 devices.
  group_sizes = [len(re.findall(r"\d+", groups.split("},{")[0]))
                 for groups in counts.replica_groups]
  assert group_sizes == [8]


def test_shard_map_clip_matches_numpy():
  fn, (grads, state), _ = bench.shard_map_clip(6)
  updates, new_state = fn(grads, state)
  g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
  norm = np.sqrt(sum(np.sum(v * v) for v in g.values()))
  scale = min(1.0, 1.0 / norm)
  np.testing.assert_allclose(float(new_state.global_norm), norm, rtol=1e-6)
  for k in g:
    np.testing.assert_allclose(np.asarray(updates[k]), g[k] * scale,
                               rtol=1e-6)


def test_benchmark_main_writes_the_tables(tmp_path, capsys):
  out = tmp_path / "table.md"
  text = bench.main(["--width", "8", "--vocab", "32", "--layers", "1",
                     "--rounds", "1", "--warmup", "0",
                     "--allreduce-leaves", "4", "--no-progress",
                     "--out", str(out)])
  assert out.read_text() == text + "\n"
  assert capsys.readouterr().out.strip() == text.strip()
  rows = [line for line in text.splitlines() if line.startswith("| ")]
  names = [r.split("|")[1].strip() for r in rows]
  for name in bench.VARIANTS:
    assert name in names
  assert re.search(r"^\| 4 \| 2 \| 1 \| 1 \| 1 \|$", text, re.MULTILINE)


@pytest.mark.parametrize("example", sorted(
    name for name in os.listdir(os.path.join(ROOT, "examples"))
    if name.endswith(".py")))
def test_examples_use_the_public_api_only(example):
  # The examples are documentation: they use nothing but the public API.
  with open(os.path.join(ROOT, "examples", example)) as f:
    source = f.read()
  assert not re.search(r"from stabledrl_jax[. ]", source)
  assert not re.search(r"import stabledrl_jax\.", source)
  names = ["stabledrl_jax"] + re.findall(r"import stabledrl_jax as (\w+)",
                                         source)
  used = set(re.findall(r"\b(?:%s)\.(\w+)" % "|".join(names), source))
  if "import stabledrl_jax" in source:
    assert used, "imports stabledrl_jax but uses none of it"
  assert used <= set(sdrl.__all__), used - set(sdrl.__all__)
