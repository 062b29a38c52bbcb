#!/usr/bin/env bash
# Builds the dashboard (web/) into web/dist, which mlq serves at /.
# Installs Node.js from Debian's packages when it is missing, and the npm
# packages when package-lock.json changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/../web"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! command -v npm >/dev/null; then
    echo "web: Node.js not found; installing it from Debian's packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi

stamp=node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
    echo "web: installing npm packages"
    npm ci --no-audit --no-fund --loglevel=error
fi

# Rebuild only when a source changed since the last build.
if [ ! -f dist/index.html ] || [ -n "$(find src index.html vite.config.ts package-lock.json -newer dist/index.html -print -quit)" ]; then
    echo "web: building the dashboard"
    npm run --silent build
fi
