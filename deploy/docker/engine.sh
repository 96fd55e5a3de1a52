#!/usr/bin/env bash
# Start or stop a Docker engine for CI and local runs of pgwake's Docker backend.
#
#   deploy/docker/engine.sh up      install docker.io if dockerd is missing, start dockerd unless an
#                                   engine already answers, wait until `docker info` works
#   deploy/docker/engine.sh down    stop dockerd, but only if `up` started it (see PIDFILE)
#   deploy/docker/engine.sh status  exit 0 if an engine answers, 1 if not
#
# Rule: `down` never stops an engine this script did not start. `up` writes PIDFILE only when it
# launched dockerd itself, and `down` acts only on that pid, and only while it is still a dockerd.
# Runs as root with no standard input (CI); a machine without systemd is the expected case.
#
# Environment (all optional):
#   PGWAKE_DOCKERD_PIDFILE   default /run/pgwake-ci-dockerd.pid
#   PGWAKE_DOCKERD_LOG       default /var/log/pgwake-ci-dockerd.log
#   PGWAKE_DOCKERD_WAIT      seconds to wait for the engine to answer, default 60
#   PGWAKE_DOCKERD_ARGS      extra dockerd arguments, word-split (e.g. "--storage-driver=vfs")
set -euo pipefail

PIDFILE=${PGWAKE_DOCKERD_PIDFILE:-/run/pgwake-ci-dockerd.pid}
LOG=${PGWAKE_DOCKERD_LOG:-/var/log/pgwake-ci-dockerd.log}
WAIT=${PGWAKE_DOCKERD_WAIT:-60}
STOP_WAIT=30

log() { printf 'engine.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

engine_answers() { docker info >/dev/null 2>&1; }

# Our pid, if PIDFILE names a live dockerd; nothing otherwise.
our_pid() {
    local pid
    [[ -r $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] || return 1
    printf '%s\n' "$pid"
}

install_docker() {
    [[ $(id -u) -eq 0 ]] || die "dockerd is missing and installing docker.io needs root"
    log "dockerd not found; installing docker.io with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends docker.io </dev/null
}

cmd_up() {
    command -v dockerd >/dev/null || install_docker
    # The client comes with docker.io; a separately installed one on PATH is fine too.
    command -v docker >/dev/null || die "no docker client on PATH after installing docker.io"

    if engine_answers; then
        log "an engine already answers; leaving it alone"
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || die "no engine answers and starting dockerd needs root"
    if pid=$(our_pid); then
        log "dockerd $pid (ours) is running but not answering yet; waiting for it"
    else
        mkdir -p "$(dirname "$LOG")" "$(dirname "$PIDFILE")"
        log "starting dockerd, log $LOG"
        # setsid: the engine must outlive this script and not get the CI shell's signals.
        # dockerd starts its own containerd when none is running.
        # shellcheck disable=SC2086  # PGWAKE_DOCKERD_ARGS is meant to be word-split
        setsid dockerd ${PGWAKE_DOCKERD_ARGS:-} </dev/null >>"$LOG" 2>&1 &
        pid=$!
        printf '%s\n' "$pid" >"$PIDFILE"
    fi

    local deadline=$((SECONDS + WAIT))
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            log "dockerd exited; last lines of $LOG:"
            tail -n 30 "$LOG" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "dockerd $pid did not answer within ${WAIT}s; last lines of $LOG:"
            tail -n 30 "$LOG" >&2 || true
            exit 1
        fi
        sleep 1
    done
    log "engine up: dockerd pid $pid, $(docker info --format \
        'server {{.ServerVersion}}, storage {{.Driver}}, cgroup {{.CgroupDriver}} v{{.CgroupVersion}}')"
}

cmd_down() {
    local pid
    if ! pid=$(our_pid); then
        log "no dockerd started by engine.sh is running; nothing to stop"
        rm -f "$PIDFILE"
        return 0
    fi
    log "stopping dockerd $pid"
    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_WAIT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "dockerd $pid still running after ${STOP_WAIT}s; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 1
    done
    rm -f "$PIDFILE"
}

cmd_status() {
    if engine_answers; then
        log "an engine answers$(pid=$(our_pid) && printf ' (dockerd %s, started by engine.sh)' "$pid")"
    else
        log "no engine answers"
        return 1
    fi
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
    printf 'usage: %s up|down|status\n' "$0" >&2
    exit 2
    ;;
esac
