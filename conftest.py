"""Runs the whole suite with 8 CPU devices.

The device count must be fixed before JAX starts its backend, so it is set
here, before any test module imports JAX. Single-device tests are unaffected:
unsharded arrays live on the first device. Multi-process tests start their own
worker processes with their own device counts.
"""

import jax

jax.config.update("jax_num_cpu_devices", 8)
