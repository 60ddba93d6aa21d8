#!/usr/bin/env bash
# Install what is missing into the repo: uv in ./.tools (no global installs), then the locked
# workspace in ./.venv. Prints the path of uv on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

UV="$(command -v uv || true)"
if [ -z "$UV" ]; then
  if [ ! -x .tools/bin/uv ]; then
    echo "[BOOTSTRAP] Installing uv into .tools" >&2
    python3 -m venv .tools >&2
    .tools/bin/pip install --quiet --disable-pip-version-check "uv>=0.5" >&2
  fi
  UV="$PWD/.tools/bin/uv"
fi
"$UV" sync --frozen --quiet >&2
echo "$UV"
