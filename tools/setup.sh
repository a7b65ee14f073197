#!/usr/bin/env bash
# Set up everything miniai needs on a Debian/Ubuntu machine, from a fresh clone:
# Debian's Fashion-MNIST package, a virtual environment in .venv with a pinned PyTorch,
# and miniai itself, editable, with its development extras (nbdev, pytest, Jupyter).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Note: no apt-get here; miniai will use MINIAI_DATA, its cache, or the Hugging Face hub for Fashion-MNIST." >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pin PyTorch: an unpinned `pip install torch` may pull a different, multi-GB build.
case "$(uname -m)" in
  aarch64|arm64) torch_pins="torch==2.9.1 torchvision==0.24.1" ;;
  *)             torch_pins="torch==2.14.1 torchvision==0.29.1" ;;
esac
.venv/bin/python -m pip install -q $torch_pins
.venv/bin/python -m pip install -q -e ".[dev]"
echo "miniai is set up in .venv (activate it with: . .venv/bin/activate)"
