#!/usr/bin/env bash
# The web page's browser test (tests/e2e/test_web_page.py) drives Debian's chromium through
# Playwright (a dev dependency in the lock file). Install chromium where it is missing and this
# user may (root, apt-get); otherwise say how. Without it that one test is skipped, with a reason.
set -uo pipefail

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[BROWSER] Installing chromium for the browser test (apt-get)" >&2
  if apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2; then
    exit 0
  fi
fi
echo "[BROWSER] chromium is not installed, so the browser test will be skipped." >&2
echo "          Install it with: sudo apt-get install chromium" >&2
exit 0
