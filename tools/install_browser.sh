#!/usr/bin/env bash
# Chromium and its WebDriver for the browser test (tests/tools/test_web.py), from the system's
# packages (Debian: chromium, chromium-driver). Does nothing when both are already on PATH; run as
# root or with sudo. Part of the README's test command (and so of .ci/run).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver >/dev/null
