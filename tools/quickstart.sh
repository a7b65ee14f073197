#!/usr/bin/env bash
# The README's first command: set everything up, then train the lesson's baseline CNN on the real
# Fashion-MNIST for a few epochs, with a progress bar, and print its test accuracy and wall time.
# Extra arguments go to tools/train_baseline.py (e.g. --epochs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python tools/train_baseline.py "$@"
