"""Clipping across 2 processes x 2 CPU devices (jax.distributed, gloo).

The workers run ``multiprocess_clip_worker.py``; this test launches them on a
free loopback port with a timeout, always kills them, and compares their
gathered results with the single-process answer.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

import stabledrl_jax as sdrl

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
import multiprocess_clip_worker as worker  # pylint: disable=g-import-not-at-top

# Minutes on two cores (launches jax.distributed worker processes): out of the quick loop, in CI.
pytestmark = pytest.mark.slow

NUM_PROCESSES = 2
TIMEOUT_S = 240


def free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
  out = tmp_path_factory.mktemp("multiprocess") / "results.npz"
  port = free_port()
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(HERE.parent), env.get("PYTHONPATH", "")])
  logs = [out.with_name(f"worker{i}.log") for i in range(NUM_PROCESSES)]
  procs, codes = [], None
  try:
    for i, log in enumerate(logs):
      with open(log, "w") as log_file:  # the child keeps its own handle
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "multiprocess_clip_worker.py"), str(i),
             str(NUM_PROCESSES), str(port), str(out)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S  # one deadline for all workers
    codes = [p.wait(timeout=max(deadline - time.monotonic(), 0.1))
             for p in procs]
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  if codes is None or any(codes):
    reason = "timed out" if codes is None else f"exit codes {codes}"
    pytest.fail(f"workers {reason}:\n" + "\n".join(
        log.read_text()[-3000:] for log in logs if log.exists()))
  return dict(np.load(out))


@pytest.mark.parametrize("clip", [sdrl.unconditional_clip,
                                  sdrl.conditional_clip])
@pytest.mark.parametrize("case", ["specs", "axis"])
def test_two_processes_equal_single_process(worker_results, clip, case):
  tree = worker.full_tree()
  tx = clip(worker.MAX_NORM)
  ref_out, ref_state = jax.jit(tx.update)(tree, tx.init(tree))
  prefix = f"{clip.__name__}/{case}"
  out = {k: worker_results[f"{prefix}/update/{k}"] for k in tree}
  chex.assert_trees_all_close(out, ref_out, rtol=1e-6)
  for field, value in ref_state._asdict().items():
    np.testing.assert_allclose(worker_results[f"{prefix}/state/{field}"],
                               np.asarray(value), rtol=1e-6)
  # The tree is large enough to be clipped: the test exercises the scale.
  assert float(ref_state.global_norm) > worker.MAX_NORM
