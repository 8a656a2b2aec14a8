#!/usr/bin/env bash
# Installs what the console's browser tests need: Debian's Chromium (driven by Playwright through
# executable_path; Playwright's own browser download is never used) and CJK fonts so that Chinese
# pages render in screenshots.  Does nothing when /usr/bin/chromium is already there.
# Outside CI a failed install only warns (the browser tests then skip); in CI (CI=true) it fails.
set -uo pipefail

if [ -x /usr/bin/chromium ] && [ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ]; then
  exit 0
fi

give_up() {
  echo "install-browser: $1; the console's browser tests need /usr/bin/chromium" >&2
  case "${CI:-}" in
    1|true|yes) exit 1 ;;
    *) exit 0 ;;
  esac
}

command -v apt-get >/dev/null 2>&1 || give_up "apt-get is not available"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || give_up "not root and no sudo"
  SUDO="sudo"
fi
echo "installing chromium and fonts-noto-cjk for the console's browser tests"
$SUDO apt-get update -qq || give_up "apt-get update failed"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  chromium fonts-noto-cjk || give_up "apt-get install failed"
