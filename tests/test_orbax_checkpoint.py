"""Every optimizer state we define survives an orbax save and a fresh-process
resume bit for bit."""

import os
import subprocess
import sys

import numpy as np
import orbax_resume_worker as worker  # (tests/ is on sys.path)
import pytest

import stabledrl_jax as sdrl

# Minutes on two cores (checkpoint, then resume in a fresh process): out of the quick loop.
pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
SPLIT, TOTAL = 15, 32


def _run_worker(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(HERE), env.get("PYTHONPATH", "")])
  proc = subprocess.run(
      [sys.executable, os.path.join(HERE, "orbax_resume_worker.py"),
       *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_resume_in_fresh_process_is_bit_identical(tmp_path):
  ckpt = tmp_path / "ckpt"
  _run_worker("fresh", ckpt, tmp_path / "first.npz", 0, SPLIT)
  _run_worker("resume", ckpt, tmp_path / "resumed.npz", SPLIT, TOTAL)

  params = worker.init_params()
  params, opt_state = worker.train(params, worker.TX.init(params), 0, TOTAL)
  expected = worker.leaves(params, opt_state)
  resumed = dict(np.load(tmp_path / "resumed.npz"))

  assert set(resumed) == set(expected)
  for path, value in expected.items():  # bytes and dtype names
    np.testing.assert_array_equal(resumed[path], value, err_msg=path)

  # The run exercises every state: spikes skipped, steps clipped, NaN steps
  # zeroed; skips, clip counts and Adam's moments on both sides of the
  # checkpoint.
  m = {k: int(v) for k, v in sdrl.clip_metrics(opt_state).items()
       if v.dtype == np.int32}
  assert m["skip_spikes/num_nonfinite"] == len(worker.NAN_STEPS)
  assert m["skip_spikes/num_skipped"] >= len(worker.SPIKE_STEPS) + len(
      worker.NAN_STEPS)
  for kind in ("zscore_clip", "quantile_clip", "clip_0", "clip_1"):
    assert m[f"{kind}/num_clipped"] > 0, kind
  first = dict(np.load(tmp_path / "first.npz"))
  counters = [p for p in expected if p.endswith("num_clipped")]
  assert len(counters) == 4, counters
  grown = 0
  for path in counters:  # every clip's count is non-zero in the checkpoint
    before = int(np.frombuffer(first[path].tobytes(), np.int32)[0])
    after = int(np.frombuffer(expected[path].tobytes(), np.int32)[0])
    assert 0 < before <= after, (path, before, after)
    grown += after - before
  assert grown > 0  # and the resumed run keeps clipping
  changed = [p for p in expected if not np.array_equal(first[p], expected[p])]
  assert any("num_skipped" in p for p in changed)
  assert any("inner_state" in p and "mu" in p for p in changed)
  assert "[0]['b']:dtype" in expected and "bfloat16" == str(
      expected["[0]['b']:dtype"])
