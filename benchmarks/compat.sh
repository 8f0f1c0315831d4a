#!/usr/bin/env bash
# Runs some of the test suite against a given jax version in a throw-away venv.
#   bash benchmarks/compat.sh JAX_VERSION FLAX_VERSION OUT_FILE [pytest args...]
# e.g. bash benchmarks/compat.sh 0.6.2 0.11.0 benchmarks/results/compat-jax-0.6.2.txt \
#        tests/test_clipping.py tests/test_adaptive.py
# The package is installed without its extras, so the library's own minimum
# versions are what is tested; the test tools are installed next to it.
set -uo pipefail
jax_version="$1"; flax_version="$2"; out="$3"; shift 3
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "jax==$jax_version" "jaxlib==$jax_version" \
  "flax==$flax_version" "optax==0.2.4" "chex==0.1.89" pytest hypothesis \
  matplotlib tqdm >/dev/null
"$venv/bin/pip" install -q --no-deps -e . >/dev/null
{
  echo "jax $jax_version, flax $flax_version, optax 0.2.4, chex 0.1.89"
  echo "pytest $*"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tail -n 15
} | tee "$out"
rm -rf "$(dirname "$venv")"
