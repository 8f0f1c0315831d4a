#!/usr/bin/env bash
# Creates throw-away virtual environments holding the real XLA:TPU and XLA:GPU
# compilers, pinned to the jax version of the current Python environment, so
# that benchmarks/clip_overhead.py and benchmarks/train_step_share.py can
# compile for TPUs and GPUs on a machine without them (deviceless AOT
# compilation).
#
#   bash benchmarks/setup_compilers.sh VENV_ROOT [tpu] [gpu]
#
# VENV_ROOT/tpu gets jax[tpu]==<jax> (brings libtpu), VENV_ROOT/gpu gets
# jax[cuda12]==<jax> (the CUDA plugin with XLA:GPU and the CUDA libraries it
# links; a download of several GiB). Both also get optax, flax, numpy, tqdm and
# this package (editable). Keep VENV_ROOT outside the repository.
# PYTHON (default: python3) is the interpreter whose jax version is pinned.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 VENV_ROOT [tpu] [gpu]" >&2
  exit 2
fi
root=$1
shift
which_ones=("$@")
if [[ ${#which_ones[@]} -eq 0 ]]; then
  which_ones=(tpu gpu)
fi
python=${PYTHON:-python3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jax_version=$("$python" -c 'import jax; print(jax.__version__)')
optax_version=$("$python" -c 'import optax; print(optax.__version__)')
flax_version=$("$python" -c 'import flax; print(flax.__version__)')
echo "pinning jax==$jax_version optax==$optax_version flax==$flax_version"

for kind in "${which_ones[@]}"; do
  case $kind in
    tpu) extra=tpu ;;
    gpu) extra=cuda12 ;;
    *) echo "unknown compiler '$kind' (tpu or gpu)" >&2; exit 2 ;;
  esac
  venv=$root/$kind
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "jax[$extra]==$jax_version" \
    "optax==$optax_version" "flax==$flax_version" numpy tqdm
  "$venv/bin/pip" install -q --no-deps -e "$repo"
  "$venv/bin/python" -c 'import jax; print(jax.__version__)'
done
