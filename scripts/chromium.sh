#!/usr/bin/env bash
# The browser for the dashboard's end-to-end tests: Debian's chromium.
# (Playwright's own browser download does not work on these machines.)
set -euo pipefail
command -v chromium >/dev/null && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "chromium: not installed; installing it from Debian's packages"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
