#!/usr/bin/env bash
# Installs what the console's browser tests need: Debian's Chromium (driven by Playwright through
# executable_path; Playwright's own browser download is never used) and CJK fonts so that Chinese
# pages render in screenshots.  Does nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: /usr/bin/chromium is missing and apt-get is not available;" \
       "install Chromium and CJK fonts by hand to run the browser tests" >&2
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing chromium and fonts-noto-cjk for the console's browser tests"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  chromium fonts-noto-cjk
