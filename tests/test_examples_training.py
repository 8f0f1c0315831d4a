"""The training examples: pmap, FSDP shard_map and multi-process.

Each example's step runs for two steps at small sizes and is compared with a
single-device reference written here: gradients of the whole batch with
``jax.grad``, the clip in NumPy (``scale = min(1, c / ||g||)``) and plain SGD
in NumPy. The multi-process example runs end to end in subprocesses.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import stabledrl_jax

# Runs the example and benchmark programs: minutes, not seconds.
pytestmark = [pytest.mark.slow, pytest.mark.examples]

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)
common = importlib.import_module("_common")
train_pmap = importlib.import_module("train_pmap")
train_shard_map = importlib.import_module("train_shard_map")

HIDDEN = 16
BATCH = 32
SEED = 3
LEARNING_RATE = 0.1


def host(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def reference_run(graphdef, params, max_norm, steps, seed=SEED):
  """Whole-batch gradients, NumPy clip and NumPy SGD, one device.

  Returns the final float64 parameters and the pre-clip norm of each step.
  """
  params = host(params)
  norms = []
  for step in range(steps):
    x, y = common.make_batch(seed, step, BATCH)
    loss = lambda p: common.loss_and_accuracy(graphdef, p, x, y)[0]
    f32 = jax.tree.map(lambda v: v.astype(np.float32), params)
    grads = host(jax.grad(loss)(f32))
    norm = np.sqrt(sum(np.sum(g * g) for g in jax.tree.leaves(grads)))
    scale = 1.0 if max_norm is None else min(1.0, max_norm / norm)
    params = jax.tree.map(lambda p, g: p - LEARNING_RATE * scale * g,
                          params, grads)
    norms.append(norm)
  return params, norms


def sgd_with_clip(max_norm, partition_specs=None):
  return optax.chain(
      stabledrl_jax.unconditional_clip(max_norm,
                                       partition_specs=partition_specs),
      optax.sgd(LEARNING_RATE))


# ------------------------------------------------------------------ pmap ---

def run_pmap(tx, steps, graphdef, params):
  num_devices = jax.local_device_count()
  stacked = train_pmap.replicate(params, num_devices)
  opt_state = train_pmap.replicate(tx.init(params), num_devices)
  step = train_pmap.make_train_step(graphdef, tx)
  history = []
  for i in range(steps):
    x, y = common.make_batch(SEED, i, BATCH)
    stacked, opt_state, metrics = step(
        stacked, opt_state, train_pmap.split_batch(x, num_devices),
        train_pmap.split_batch(y, num_devices))
    history.append(metrics)
  return stacked, history


def test_pmap_step_matches_single_device_reference():
  assert jax.local_device_count() == 8
  graphdef, params = common.init_model(HIDDEN, seed=0)
  ref_params, ref_norms = reference_run(graphdef, params, 0.05, steps=2)
  stacked, history = run_pmap(sgd_with_clip(0.05), 2, graphdef, params)
  for i, metrics in enumerate(history):
    # Every device reports the norm of the *averaged* gradient: a clip that
    # psum'ed the replicated mean would report sqrt(8) times more.
    np.testing.assert_allclose(np.asarray(metrics.grad_norm),
                               np.full(8, ref_norms[i]), rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(metrics.loss)))
  assert ref_norms[0] > 0.05  # so both steps really were clipped
  np.testing.assert_array_equal(np.asarray(history[-1].num_clipped), 2)
  for copy in range(8):
    chex.assert_trees_all_close(
        jax.tree.map(lambda p: np.asarray(p[copy], np.float64), stacked),
        ref_params, rtol=1e-5, atol=1e-6)


def test_pmap_no_clip_reports_norm_and_no_clipping():
  graphdef, params = common.init_model(HIDDEN, seed=0)
  tx = optax.chain(optax.identity(), optax.sgd(LEARNING_RATE))
  ref_params, ref_norms = reference_run(graphdef, params, None, steps=2)
  stacked, history = run_pmap(tx, 2, graphdef, params)
  np.testing.assert_allclose(np.asarray(history[1].grad_norm),
                             np.full(8, ref_norms[1]), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(history[1].num_clipped), 0)
  chex.assert_trees_all_close(
      jax.tree.map(lambda p: np.asarray(p[0], np.float64), stacked),
      ref_params, rtol=1e-5, atol=1e-6)


def test_pmap_main_runs_and_prints_summary(capsys):
  history = train_pmap.main(["--steps", "2", "--hidden", str(HIDDEN),
                             "--batch-size", "32", "--max-norm", "1e-3",
                             "--no-progress"])
  out = capsys.readouterr().out
  assert "train_pmap[unconditional, 8 devices]: steps=2" in out
  assert "clip_rate=1.00" in out  # max_norm 1e-3 clips every step
  assert len(history) == 2 and np.isfinite(float(history[-1].loss))


# ------------------------------------------------------------- shard_map ---

def shard_map_setup(tx_fn, mesh_shape=(2, 4)):
  mesh = jax.make_mesh(mesh_shape, (train_shard_map.DATA,
                                    train_shard_map.FSDP),
                       devices=jax.devices()[:mesh_shape[0] * mesh_shape[1]])
  graphdef, params = common.init_model(HIDDEN, seed=0)
  specs = train_shard_map.param_partition_specs(params, mesh_shape[1])
  tx = tx_fn(specs)
  sharded = train_shard_map.put(params, mesh, specs)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init)(sharded)
  opt_specs = jax.tree.map(lambda x: x.sharding.spec, opt_state)
  step = train_shard_map.make_train_step(graphdef, tx, mesh, specs, opt_specs)
  return mesh, graphdef, params, specs, sharded, opt_state, step


def test_param_partition_specs_mix_sharded_and_replicated():
  _, params = common.init_model(HIDDEN, seed=0)
  specs = train_shard_map.param_partition_specs(params, 4)
  assert specs["layer1"]["kernel"] == P("fsdp", None)
  assert specs["head"]["kernel"] == P("fsdp", None)
  assert specs["head"]["bias"] == P()
  # A first dimension of 16 does not divide by 3: replicated.
  assert train_shard_map.param_partition_specs(params, 3)["layer1"][
      "kernel"] == P()


def test_shard_map_gradients_equal_whole_batch_gradients():
  mesh, graphdef, params, specs, sharded, _, _ = shard_map_setup(
      lambda s: sgd_with_clip(1.0, s))
  x, y = common.make_batch(SEED, 0, BATCH)
  xs, ys = train_shard_map.put((x, y), mesh, (train_shard_map.BATCH_SPEC,) * 2)
  grads = train_shard_map.make_grad_fn(graphdef, mesh, specs)(sharded, xs, ys)
  expected = jax.grad(
      lambda p: common.loss_and_accuracy(graphdef, p, x, y)[0])(params)
  chex.assert_trees_all_close(host(grads), host(expected), rtol=1e-5,
                              atol=1e-7)
  assert grads["layer1"]["kernel"].sharding.spec == P("fsdp", None)


@pytest.mark.parametrize("mesh_shape", [(2, 4), (4, 2)])
def test_shard_map_step_matches_single_device_reference(mesh_shape):
  mesh, graphdef, params, _, sharded, opt_state, step = shard_map_setup(
      lambda s: sgd_with_clip(0.05, s), mesh_shape)
  ref_params, ref_norms = reference_run(graphdef, params, 0.05, steps=2)
  for i in range(2):
    x, y = common.make_batch(SEED, i, BATCH)
    xs, ys = train_shard_map.put((x, y), mesh,
                                 (train_shard_map.BATCH_SPEC,) * 2)
    sharded, opt_state, metrics = step(sharded, opt_state, xs, ys)
    # The clip's norm over sharded blocks and replicated leaves equals the
    # norm of the whole gradient (replicated leaves counted once).
    np.testing.assert_allclose(float(metrics.grad_norm), ref_norms[i],
                               rtol=1e-5)
    assert np.isfinite(float(metrics.loss))
  assert int(metrics.num_clipped) == 2
  chex.assert_trees_all_close(host(sharded), ref_params, rtol=1e-5, atol=1e-6)


def test_shard_map_main_runs_start_up_check(capsys):
  history = train_shard_map.main(
      ["--steps", "2", "--mesh", "4x2", "--hidden", str(HIDDEN),
       "--batch-size", "32", "--clip", "conditional", "--no-progress"])
  out = capsys.readouterr().out
  assert "train_shard_map[conditional, mesh 4x2]: steps=2" in out
  assert "norm_check=ok" in out
  assert np.isfinite(float(history[-1].loss))


@pytest.mark.parametrize("text", ["3x3", "2x", "abc", "0x8"])
def test_parse_mesh_rejects_bad_shapes(text):
  with pytest.raises(ValueError, match="mesh"):
    train_shard_map.parse_mesh(text, 8)


def test_parse_mesh_default_and_explicit():
  assert train_shard_map.parse_mesh(None, 8) == (2, 4)
  assert train_shard_map.parse_mesh(None, 3) == (1, 3)
  assert train_shard_map.parse_mesh("1X8", 8) == (1, 8)


# ------------------------------------------------------------- multihost ---

def run_multihost(tmp_path, *flags, timeout=60):
  cmd = [sys.executable, os.path.join(EXAMPLES, "multihost.py"),
         "--num-processes", "2", "--devices-per-process", "2",
         "--hidden", str(HIDDEN), "--batch-size", str(BATCH),
         "--seed", str(SEED), "--no-progress", "--timeout", str(timeout - 10),
         *flags]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                        cwd=tmp_path)


def test_multihost_two_processes_match_one_process(tmp_path):
  metrics_file = tmp_path / "metrics.json"
  result = run_multihost(tmp_path, "--steps", "3", "--max-norm", "0.05",
                         "--metrics-out", str(metrics_file))
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, result.stdout
  assert lines[0].startswith("multihost[unconditional, 2 processes x 2 "
                             "devices]: steps=3")
  assert "norm_check=ok" in lines[0]
  multi = json.loads(metrics_file.read_text())

  # The same 2 x 2 mesh inside this process (4 of its 8 devices).
  args = argparse.Namespace(
      steps=3, max_norm=0.05, clip="unconditional", learning_rate=3e-3,
      batch_size=BATCH, hidden=HIDDEN, seed=SEED)
  mesh = jax.make_mesh((2, 2), (train_shard_map.DATA, train_shard_map.FSDP),
                       devices=jax.devices()[:4])
  single, _ = train_shard_map.train(args, mesh, show_progress=False)
  np.testing.assert_allclose(multi["loss"], [float(m.loss) for m in single],
                             rtol=1e-5)
  np.testing.assert_allclose(multi["grad_norm"],
                             [float(m.grad_norm) for m in single], rtol=1e-5)
  assert multi["num_clipped"] == [1.0, 2.0, 3.0]


def test_multihost_launcher_fails_when_a_worker_fails(tmp_path):
  # 6 examples cannot be split over 4 devices: every worker exits with 1.
  result = run_multihost(tmp_path, "--steps", "2", "--batch-size", "6")
  assert result.returncode != 0
  assert "exited with code 1" in result.stderr


def test_summary_names_max_norm_only_with_a_clip():
  history = [common.StepMetrics(np.float32(1.0), np.float32(0.5),
                                np.float32(2.0), np.int32(1))]
  def line(clip):
    args = argparse.Namespace(clip=clip, max_norm=0.5)
    return common.summary("run", history, common.clip_threshold(args), 1.0)
  assert "(max_norm=0.5)" in line("unconditional")
  assert "max_norm" not in line("none")
