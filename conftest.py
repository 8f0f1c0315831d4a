"""Runs the whole suite with 8 CPU devices and a persistent compilation cache.

The device count must be fixed before JAX starts its backend, so it is set
here, before any test module imports JAX. Single-device tests are unaffected:
unsharded arrays live on the first device. Multi-process tests start their own
worker processes with their own device counts.

Most of the suite's time is XLA compiling small programs, so compiled programs
are kept on disk, in ``.jax_cache/`` (or ``$JAX_COMPILATION_CACHE_DIR``): a
second run compiles only what changed. JAX's cache key covers the program, the
jax/jaxlib versions and the compile options, so a stale entry is never used.
"""

import os

import jax

jax.config.update("jax_num_cpu_devices", 8)
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  jax.config.update("jax_compilation_cache_dir", os.path.join(
      os.path.dirname(os.path.abspath(__file__)), ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
