#!/usr/bin/env bash
# schemathesis (PyPI), for testing the API against its OpenAPI document:
# in its own virtual environment in the build cache.
set -euo pipefail
version=4.32.5
venv="${BUILD_CACHE:-$HOME/.cache/mlq}/schemathesis"
if [ -x "$venv/bin/schemathesis" ] && "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    exit 0
fi
echo "schemathesis: installing $version into $venv"
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
