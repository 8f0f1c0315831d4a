"""The FSDP ``shard_map`` training step across processes with ``jax.distributed``.

Each process owns a few devices; ``jax.make_mesh`` builds one global
``data × fsdp`` mesh over all of them (``data`` = number of processes,
``fsdp`` = devices per process), and the step of ``train_shard_map.py`` runs
unchanged on it: the gradient clip's ``psum`` over ``fsdp`` and the gradient
reductions over ``data`` now cross process boundaries. Every process builds the
same parameters and the same global batch from the seed and ``device_put``s
them with a ``NamedSharding`` (each process supplies the blocks its devices
own). The start-up check compares the clip's norm with the norm of the
gradients gathered from all processes.

Try it on one machine (CPU, gloo collectives over loopback)::

  python examples/multihost.py --num-processes 2

The launcher picks a free port on 127.0.0.1, starts 2 worker processes of this
script with 2 CPU devices each, waits for them (``--timeout``), kills them all
if one fails, on timeout or on Ctrl-C, and process 0 prints one summary line.
Each worker calls::

  jax.distributed.initialize(coordinator_address="127.0.0.1:PORT",
                             num_processes=N, process_id=i)

On a TPU pod slice or a GPU cluster (SLURM, Open MPI, Kubernetes, ...) start
the script once per host with your usual launcher and ``--cluster``. The one
line that changes is the call above, which becomes::

  jax.distributed.initialize()

with no arguments: JAX reads the coordinator, process count and process id
from the environment, and the mesh spans every accelerator of the job.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

import jax

import _common
import train_shard_map


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  _common.add_training_flags(parser)
  parser.add_argument("--num-processes", type=int, default=2,
                      help="local worker processes to launch")
  parser.add_argument("--devices-per-process", type=int, default=2,
                      help="CPU devices of each local worker")
  parser.add_argument("--timeout", type=float, default=120.0,
                      help="seconds before the launcher kills the workers")
  parser.add_argument("--cluster", action="store_true",
                      help="one process per host of a TPU pod / GPU cluster: "
                      "jax.distributed.initialize() with no arguments")
  parser.add_argument("--metrics-out", default=None,
                      help="process 0 writes per-step metrics (JSON) here")
  # Set by the launcher for its workers.
  parser.add_argument("--process-id", type=int, default=None,
                      help=argparse.SUPPRESS)
  parser.add_argument("--coordinator", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps must be ≥ 1, got {args.steps}")
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num-processes and --devices-per-process must be ≥ 1, got "
                 f"{args.num_processes} and {args.devices_per_process}")
  return args


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free right now."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def launch(args: argparse.Namespace, argv: list[str]) -> None:
  """Runs ``args.num_processes`` local workers; raises if any fails.

  Workers write their progress bars to this process's stderr; their stdout
  goes to temporary files. On success only process 0's summary line is
  echoed (gloo's connection messages share that stream); when a worker fails,
  its whole stdout is.
  """
  coordinator = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  script = os.path.abspath(__file__)
  workers, outputs = [], []
  # A SIGTERM to the launcher unwinds like Ctrl-C, through the cleanup below.
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  try:
    for i in range(args.num_processes):
      cmd = [sys.executable, script, *argv, "--process-id", str(i),
             "--coordinator", coordinator]
      outputs.append(tempfile.TemporaryFile("w+"))
      workers.append(subprocess.Popen(cmd, env=env, stdout=outputs[-1]))
    deadline = time.monotonic() + args.timeout
    while True:
      codes = [w.poll() for w in workers]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        _echo(outputs[failed[0][0]])
        raise SystemExit(f"worker {failed[0][0]} exited with code "
                         f"{failed[0][1]}; stopping the others")
      if all(c == 0 for c in codes):
        if not _echo(outputs[0], summary_only=True):
          raise SystemExit("process 0 finished without a summary line")
        return
      if time.monotonic() > deadline:
        raise SystemExit(f"workers did not finish in {args.timeout:g} s")
      time.sleep(0.05)
  finally:  # also on Ctrl-C: never leave a worker behind
    for w in workers:
      if w.poll() is None:
        w.kill()
      w.wait()
    for f in outputs:
      f.close()


SUMMARY_PREFIX = "multihost["


def _echo(output, summary_only: bool = False) -> bool:
  """Prints a worker's captured stdout; True if it held a summary line.

  Gloo's C++ side writes connection messages to the same stream, unbuffered,
  so they can land mid-line; ``summary_only`` keeps just the summary line,
  cut from where it starts.
  """
  output.seek(0)
  found = False
  for line in output:
    if SUMMARY_PREFIX in line:
      found = True
      if summary_only:
        print(line[line.index(SUMMARY_PREFIX):], end="", flush=True)
    if not summary_only and not line.startswith("[Gloo]"):
      print(line, end="", flush=True)
  return found


def run_worker(args: argparse.Namespace) -> None:
  """One process of the job: joins it, trains, process 0 reports."""
  if args.cluster:
    jax.distributed.initialize()
  else:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", args.devices_per_process)
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes,
                               process_id=args.process_id)
  try:
    shape = (jax.process_count(), jax.local_device_count())
    mesh = jax.make_mesh(shape, (train_shard_map.DATA, train_shard_map.FSDP))
    first = jax.process_index() == 0
    history, seconds = train_shard_map.train(
        args, mesh, show_progress=first and not args.no_progress)
    if first:
      print(_common.summary(
          f"{SUMMARY_PREFIX}{args.clip}, {shape[0]} processes x {shape[1]} "
          "devices]", history, _common.clip_threshold(args), seconds)
          + " norm_check=ok", flush=True)
      if args.metrics_out:
        with open(args.metrics_out, "w") as f:
          json.dump({name: [float(getattr(m, name)) for m in history]
                     for name in _common.StepMetrics._fields}, f)
  finally:
    jax.distributed.shutdown()


def main(argv: Optional[list[str]] = None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.cluster or args.process_id is not None:
    run_worker(args)
  else:
    launch(args, argv)


if __name__ == "__main__":
  main()
