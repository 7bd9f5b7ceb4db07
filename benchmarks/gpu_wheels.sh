#!/usr/bin/env bash
# Download, on a machine with a package index, the wheels that the torchtitan step of gpu_session.sh needs
# on the GPU machine (Python 3.12, x86-64, torch and triton preinstalled, no network) into .whl/ (ignored by
# git, carried with the working tree). gpu_session.sh installs them with pip --no-index into /tmp/site.
#
#   bash benchmarks/gpu_wheels.sh            # then carry .whl with the tree
#
# Only what that machine lacks: torchtitan 0.3.0 and the packages it imports that are not in its image.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
WHEELS=(
    torchtitan==0.3.0 spmd_types==0.2.3 torch_checkpointing==0.1.1 torchdata==0.11.0
    tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1
    datasets==4.1.1 dill==0.4.0 multiprocess==0.70.16
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
ls -la .whl
du -sh .whl
