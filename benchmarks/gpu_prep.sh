#!/usr/bin/env bash
# Before a GPU session, here (repo root, ../shared beside it): what the device machine lacks, ready to carry.
#   .whl/        wheels its image lacks (pydantic and what it needs, torchinfo; the versions of constraints.txt),
#                ignored by git through .git/info/exclude, carried by every call that runs the suite
#   .devdata/p*  the dataset in three chunks (../shared/tools/split-cifar10-for-device): calls 1 and 2 carry
#                p1 and p2 (command `true`), call 3 carries p3 and .whl and runs benchmarks/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
pins=$(grep -iE '^(pydantic|pydantic_core|annotated-types|typing-inspection|typing_extensions|torchinfo)==' constraints.txt)
# shellcheck disable=SC2086  # one argument per pin
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $pins
ls .whl
[ "${SKIP_DATA:-0}" = 1 ] || ../shared/tools/split-cifar10-for-device
