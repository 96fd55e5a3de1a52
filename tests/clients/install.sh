#!/usr/bin/env bash
# Installs the clients that tests/integration/test_client_matrix.py drives, beyond the
# Python ones pip brings: pgjdbc (Debian's libpostgresql-jdbc-java) and a JDK to compile
# the Java helper, node + npm and node-postgres (tests/clients/node), psql and pgbench.
#
# Usage: bash tests/clients/install.sh     (as root, no standard input; safe to run again)
# Installs only what is missing; `npm ci` runs every time so node_modules matches the lock.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

apt_packages=()
[ -f /usr/share/java/postgresql.jar ] || apt_packages+=(libpostgresql-jdbc-java)
command -v javac >/dev/null 2>&1 || apt_packages+=(default-jdk-headless)
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_packages+=(npm)
command -v psql >/dev/null 2>&1 || apt_packages+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || apt_packages+=(postgresql-contrib)

if ((${#apt_packages[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "install.sh: need root to apt-get install ${apt_packages[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" </dev/null
fi

(cd node && npm ci --no-audit --no-fund --loglevel=error </dev/null)
