#!/usr/bin/env bash
# Installs Debian's headless Chromium for the workbook's end-to-end tests (Playwright drives it via
# executable_path=/usr/bin/chromium). Idempotent: does nothing when it is already there.
# Never runs `playwright install`: no browser downloads from outside the Debian archive.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_test_browser: need root (or sudo) to apt-get install chromium; browser tests will be skipped" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
test -x /usr/bin/chromium && echo "install_test_browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium installed)"
