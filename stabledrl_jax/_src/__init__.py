"""Implementation of stabledrl_jax; the public API is re-exported by the package."""
