#!/usr/bin/env bash
# The README's first command: set everything up, then train the lesson's baseline CNN (the `cnn` recipe) on the real
# Fashion-MNIST for 3 epochs with `miniai-train`, and print its test accuracy and wall time. Its files go to
# runs/quickstart (replaced on each run). Extra arguments go to miniai-train (e.g. --epochs 5; see miniai-train --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/miniai-train cnn --epochs 3 --out runs/quickstart --overwrite "$@"
