#!/bin/sh
# What bench/run.py needs on a Debian or Ubuntu machine, as root: PostgreSQL server
# binaries and pgbench, PgBouncer, and the bench extra (matplotlib, psycopg).
# Debian's packages may start a "main" cluster on port 5432 and PgBouncer on 6432; the
# bench uses neither (it starts its own, on private sockets and free ports).
set -eu
cd "$(dirname "$0")/.."
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    postgresql postgresql-client pgbouncer
python3 -m pip install -e '.[bench]' --config-settings editable_mode=strict
