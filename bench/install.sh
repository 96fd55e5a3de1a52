#!/bin/sh
# What bench/run.py needs on a Debian or Ubuntu machine, as root: PostgreSQL server
# binaries and pgbench, PgBouncer, and the bench extra (matplotlib, psycopg).
#
# Debian's packages start what they install: a "main" cluster on port 5432 and PgBouncer on
# 6432, pgwake's own port. The bench uses neither (it starts its own, on private sockets and
# free ports), so nothing is started: while apt-get runs, a policy-rc.d answers 101 ("action
# forbidden", invoke-rc.d's convention) to every service start, and the pgbouncer service
# is then stopped and disabled, in case an earlier install started it.
set -eu
cd "$(dirname "$0")/.."

policy=${POLICY_RC_D:-/usr/sbin/policy-rc.d}
saved="$policy.pgwake-bench"
restore_policy() {
    if [ -e "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
}
if [ -e "$policy" ]; then mv -f "$policy" "$saved"; fi
trap restore_policy EXIT
trap 'exit 130' INT TERM
printf '#!/bin/sh\n# bench/install.sh: start no service while packages install.\nexit 101\n' >"$policy"
chmod 755 "$policy"

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    postgresql postgresql-client pgbouncer
trap - EXIT
restore_policy

# An earlier install (or a reboot) may have started PgBouncer on 6432: stop it for good.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now pgbouncer.service >/dev/null 2>&1 || true
else
    service pgbouncer stop >/dev/null 2>&1 || true
    update-rc.d pgbouncer disable >/dev/null 2>&1 || true
fi

python3 -m pip install -e '.[bench]' --config-settings editable_mode=strict
