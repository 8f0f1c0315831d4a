"""Argument checks shared by the transforms and losses.

Each check raises ``ValueError`` naming the argument and the value it got, at
construction time, for values known on the host. Traced values (inside
``jax.jit``) are accepted as they are: they cannot be inspected without a host
sync. A clipping threshold given as a JAX array, traced or not, is a value of
the running step (:func:`check_threshold`).
"""

import math
from collections.abc import Collection
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


def _check_real_scalar(name: str, value: Any, ndim: int, dtype: Any) -> None:
  """Raises unless ``ndim`` and ``dtype`` (``value``'s) are a real scalar's."""
  # jnp.issubdtype knows bfloat16 and the other ml_dtypes.
  if ndim != 0 or not jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(
      dtype, jnp.complexfloating):
    raise ValueError(f"{name} must be a real scalar, got {value!r}.")


def concrete_scalar(name: str, value: Any) -> Optional[float]:
  """Returns ``value`` as a Python float, or None when it is traced.

  Raises:
    ValueError: ``value`` is concrete but not a real scalar.
  """
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    array = np.asarray(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None
  _check_real_scalar(name, value, array.ndim, array.dtype)
  return float(array)


def check_positive(name: str, value: Any, *, float32: bool = False) -> None:
  """Raises unless a concrete ``value`` is finite and > 0.

  With ``float32=True`` the value must be a finite, normal float32 number
  (``>= 1.18e-38``), the precision the clipping transforms compute in:
  ``1e39`` rounds to inf, and subnormals such as ``1e-40`` are flushed to
  zero on CPU (TPUs have none), which would turn ``0 / 0`` into NaN.
  """
  number = concrete_scalar(name, value)
  if number is None:
    return
  if not (math.isfinite(number) and number > 0):
    raise ValueError(f"{name} must be finite and > 0, got {value!r}.")
  if float32:
    with np.errstate(over="ignore", under="ignore"):
      rounded = float(np.float32(number))
    tiny = float(np.finfo(np.float32).tiny)
    if not (math.isfinite(rounded) and rounded >= tiny):
      raise ValueError(
          f"{name} must be a finite float32 number >= {tiny:.3g} (not "
          f"subnormal), got {value!r} (float32: {rounded!r}).")


def check_threshold(name: str, value: Any) -> None:
  """Checks a clipping threshold such as ``max_norm``.

  A Python or NumPy number must be a finite, normal float32 number > 0
  (:func:`check_positive`). A ``jax.Array`` is a value of the running program
  (``optax.inject_hyperparams`` passes its hyperparameters and schedules as
  arrays, jitted or not): only its shape and dtype are checked here, and the
  transforms handle a value ≤ 0, NaN, inf or subnormal when the step runs, eagerly and
  under ``jit`` alike, with no host sync.
  """
  if isinstance(value, jax.Array):
    _check_real_scalar(name, value, value.ndim, value.dtype)
  else:
    check_positive(name, value, float32=True)


def concrete_array(value: Any) -> Optional[np.ndarray]:
  """``value`` as a NumPy array when it is known on this host, else None.

  Tracers (inside ``jit``, ``vmap``, ``shard_map``) and arrays spread over
  other processes cannot be read without a sync, so they are not checked.
  """
  if isinstance(value, jax.core.Tracer) or not getattr(
      value, "is_fully_addressable", True):
    return None
  return np.asarray(value)


def check_selection_mask(name: str, mask: Any) -> None:
  """Raises if a concrete ``mask`` holds a negative or NaN value.

  Masks select: an entry is used where the mask is non-zero (or True) and
  ignored where it is 0 (or False); they are never weights. A negative value
  is almost always a weight passed by mistake, so it is rejected when it can
  be seen (not under ``jit``).
  """
  array = concrete_array(mask)
  if array is None or array.dtype == bool or array.size == 0:
    return
  if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
    raise ValueError(f"{name} must be bool or real 0/1 values, got dtype "
                     f"{array.dtype}.")
  bad = ~(array >= 0)
  if bad.any():
    raise ValueError(
        f"{name} selects entries (0/1 or bool) and must not be negative or "
        f"NaN, got {array[bad].flat[0]!r}.")


def check_choice(name: str, value: Any, choices: Collection[str]) -> None:
  """Raises unless ``value`` is one of ``choices``."""
  if value not in choices:
    raise ValueError(
        f"{name} must be one of {sorted(choices)}, got {value!r}.")


def check_same_shape(name: str, value: Any, ref_name: str, ref: Any) -> None:
  """Raises ``ValueError`` unless ``value`` has the shape of ``ref``."""
  if jnp.shape(value) != jnp.shape(ref):
    raise ValueError(
        f"{name} must have the shape of {ref_name} {jnp.shape(ref)}, got "
        f"shape {jnp.shape(value)}.")


def check_ndim(name: str, value: Any, ndim: int) -> None:
  """Raises ``ValueError`` unless ``value`` has ``ndim`` dimensions."""
  if jnp.ndim(value) != ndim:
    raise ValueError(
        f"{name} must have {ndim} dimension(s), got shape {jnp.shape(value)}.")


def check_int(name: str, value: Any, minimum: int = 1, *,
              static_args_hint: bool = False) -> None:
  """Raises unless ``value`` is a static (Python/NumPy) integer ≥ ``minimum``."""
  if isinstance(value, jax.Array):
    hint = (f" With optax.inject_hyperparams, pass {name!r} in static_args."
            if static_args_hint else "")
    raise ValueError(
        f"{name} must be a static integer, got the array {value!r}.{hint}")
  if (isinstance(value, (bool, np.bool_))
      or not isinstance(value, (int, np.integer)) or value < minimum):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
