#!/usr/bin/env bash
# Makes sure a Postgres server answers on 127.0.0.1:5432: installs it from
# Debian's packages on a fresh machine, and starts the cluster if it is down.
set -euo pipefail

host=${PGHOST_CHECK:-127.0.0.1}
port=${PGPORT_CHECK:-5432}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

ready() { pg_isready -q -h "$host" -p "$port" 2>/dev/null; }

if ready; then
    exit 0
fi

if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "postgres: not installed; installing it from Debian's packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    # A fresh cluster asks for passwords on TCP. For this local development
    # server, trust loopback connections, as mlq's default URL expects.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        $sudo sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    done
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
echo "postgres: starting cluster $version/main"
$sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for _ in $(seq 1 30); do
    ready && break
    sleep 1
done
if ! ready; then
    echo "postgres: the server did not come up on $host:$port" >&2
    exit 1
fi

# mlq connects as the current user by default, as libpq does.
user=$(id -un)
if ! psql -h "$host" -p "$port" -U postgres -d postgres -Atc \
        "SELECT 1 FROM pg_roles WHERE rolname = '$user'" | grep -q 1; then
    psql -h "$host" -p "$port" -U postgres -d postgres -qc "CREATE ROLE \"$user\" SUPERUSER LOGIN"
fi
