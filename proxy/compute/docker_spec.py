"""What the docker backend asks the engine to make: names, labels, and every volume and
container config. Pure: no engine calls (``docker_volume.py`` and ``docker_container.py``
make them).

Per endpoint, under a name that holds the pgwake server's instance id::

    volume    pgwake-<instance>-<endpoint>   PGDATA; labels keep the image and limits
    container pgwake-<instance>-<endpoint>   postgres, host network, one loopback port

pgwake never relies on an image's entrypoint: it runs ``initdb`` and ``postgres`` from the
image's PATH as the image's ``postgres`` user, so the official ``postgres:NN`` images and
the ones ``deploy/docker/build-images.sh`` makes both work. Every container is sandboxed
(``sandbox``): memory and CPU limits, no swap, a pids limit, no capabilities,
``no-new-privileges``, a read-only root file system.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from pgwake.compute import management, postgresql_conf
from pgwake.settings import MAX_CPUS, MIN_CPUS, parse_memory

if TYPE_CHECKING:
    from pgwake.compute import EndpointSpec
    from pgwake.settings import Settings

__all__ = [
    "LABEL_ENDPOINT",
    "LABEL_INSTANCE",
    "LABEL_PORT",
    "PGDATA",
    "basebackup_container",
    "chown_container",
    "compute_container",
    "initdb_container",
    "options_from_volume",
    "resolve_options",
    "volume",
]

LABEL_ENDPOINT: Final = "pgwake.endpoint"
LABEL_INSTANCE: Final = "pgwake.instance"
LABEL_PORT: Final = "pgwake.port"
_LABEL_IMAGE: Final = "pgwake.image"
_LABEL_MEMORY: Final = "pgwake.memory"
_LABEL_CPUS: Final = "pgwake.cpus"

#: Where the volume is mounted: the official images' PGDATA parent (their VOLUME), so no
#: anonymous volume is made beside ours. PGDATA is a subdirectory, as those images advise.
_MOUNT: Final = "/var/lib/postgresql/data"
PGDATA: Final = f"{_MOUNT}/pgdata"
#: The container's private tmpfs: the unix socket and initdb's password file live there.
_CONTAINER_TMP: Final = "/tmp"  # noqa: S108 (inside the container, not this host)
# Kept in the container's own log (docker logs) and rotated by the engine.
_LOG_OPTIONS: Final = {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}}
_PIDS_LIMIT: Final = 1024
# Appended to postgresql.conf at initdb. A container listens on loopback TCP, at the port
# given when it is made (see compute_container's command line).
_CONF: Final = postgresql_conf.render()
# Run by the init container as the image's postgres user. Secrets come in through the
# environment of that short-lived container (removed right after), never its command.
_INIT_SCRIPT: Final = f"""set -eu
umask 077
printf '%s' "$PGWAKE_ADMIN_PASSWORD" > /tmp/pw
initdb -D {PGDATA} -U {management.ADMIN_ROLE} --pwfile=/tmp/pw -E UTF8 --no-locale \
  --auth-local=scram-sha-256 --auth-host=scram-sha-256 >/dev/null
rm -f /tmp/pw
printf '%s' "$PGWAKE_CONF" >> {PGDATA}/postgresql.conf
printf '%s\\n' "$PGWAKE_SETUP_SQL" | postgres --single -D {PGDATA} -F -c listen_addresses= \
  postgres >/dev/null
"""


# -- options -------------------------------------------------------------------------


def _memory_label(value: str) -> str:
    parse_memory(value)
    return value.strip().lower()


def resolve_options(requested: dict[str, str | None], settings: Settings) -> dict[str, str]:
    """``requested`` with the server's defaults filled in; ``ValueError`` for a bad value."""
    unknown = set(requested) - {"image", "memory", "cpus"}
    if unknown:
        raise ValueError(f"docker endpoints take image, memory and cpus, not {unknown}")
    image = requested.get("image") or settings.docker_image
    memory = _memory_label(requested.get("memory") or settings.docker_memory)
    cpus = float(requested.get("cpus") or settings.docker_cpus)
    if not MIN_CPUS <= cpus <= MAX_CPUS:
        raise ValueError(f"cpus must be from {MIN_CPUS:g} to {MAX_CPUS:g}, got {cpus:g}")
    return {"image": image, "memory": memory, "cpus": f"{cpus:g}"}


# -- the volume ----------------------------------------------------------------------


def volume(name: str, endpoint: str, instance: str, options: dict[str, str]) -> dict[str, Any]:
    """The endpoint's named volume, labelled with its image and limits (a wake makes the
    container from them)."""
    return {
        "Name": name,
        "Labels": {
            LABEL_ENDPOINT: endpoint,
            LABEL_INSTANCE: instance,
            _LABEL_IMAGE: options["image"],
            _LABEL_MEMORY: options["memory"],
            _LABEL_CPUS: options["cpus"],
        },
    }


def options_from_volume(volume: dict[str, Any], settings: Settings) -> dict[str, str]:
    """The image and limits a volume was labelled with (the server's defaults for a label
    it lacks)."""
    labels = volume.get("Labels") or {}
    return {
        "image": labels.get(_LABEL_IMAGE, settings.docker_image),
        "memory": labels.get(_LABEL_MEMORY, settings.docker_memory),
        "cpus": labels.get(_LABEL_CPUS, str(settings.docker_cpus)),
    }


def _mounts(name: str) -> list[dict[str, str]]:
    return [{"Type": "volume", "Source": name, "Target": _MOUNT}]


# -- containers ----------------------------------------------------------------------


def _sandbox(options: dict[str, str]) -> dict[str, Any]:
    memory = parse_memory(options["memory"])
    return {
        "Memory": memory,
        "MemorySwap": memory,  # no swap: the limit is the limit
        "NanoCpus": int(float(options["cpus"]) * 1e9),
        "PidsLimit": _PIDS_LIMIT,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "ReadonlyRootfs": True,
        "Tmpfs": {_CONTAINER_TMP: "rw,nosuid,nodev,size=64m"},
        "LogConfig": _LOG_OPTIONS,
    }


def compute_container(
    name: str,
    endpoint: str,
    instance: str,
    options: dict[str, str],
    *,
    port: int,
    stop_timeout: float,
) -> dict[str, Any]:
    """The endpoint's compute: ``postgres`` on the host network, bound to 127.0.0.1:``port``
    only (nothing published), stopped by SIGINT (a fast shutdown)."""
    return {
        "Image": options["image"],
        "User": "postgres",
        "Entrypoint": ["postgres"],
        "Cmd": [
            "-D",
            PGDATA,
            "-p",
            str(port),
            "-k",
            _CONTAINER_TMP,
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        "Env": ["LC_ALL=C"],
        "Labels": {
            LABEL_ENDPOINT: endpoint,
            LABEL_INSTANCE: instance,
            LABEL_PORT: str(port),
        },
        "StopSignal": "SIGINT",
        "StopTimeout": max(1, round(stop_timeout)),
        "HostConfig": {
            **_sandbox(options),
            "NetworkMode": "host",
            "Mounts": _mounts(name),
            "RestartPolicy": {"Name": "no"},
        },
    }


def chown_container(name: str, options: dict[str, str]) -> dict[str, Any]:
    """A fresh volume belongs to root unless the image has the mount point: this one-shot
    container hands it to postgres. Root, but with CAP_CHOWN alone and no network."""
    return {
        "Image": options["image"],
        "User": "0",
        "Entrypoint": ["chown", "postgres:postgres", _MOUNT],
        "Cmd": [],
        "HostConfig": {
            **_sandbox(options),
            "Mounts": _mounts(name),
            "NetworkMode": "none",
            "CapAdd": ["CHOWN"],
        },
    }


def initdb_container(
    name: str, options: dict[str, str], spec: EndpointSpec, admin_password: str
) -> dict[str, Any]:
    """The one-shot container that runs ``initdb`` and, in single-user mode, creates the
    endpoint's role (with its SCRAM verifier) and database. No network."""
    setup_sql = (
        f"CREATE ROLE {management.quote_ident(spec.role)} LOGIN CREATEDB CREATEROLE "
        f"PASSWORD {management.quote_literal(spec.verifier)}\n"
        f"CREATE DATABASE {management.quote_ident(spec.database)} "
        f"OWNER {management.quote_ident(spec.role)}"
    )
    return {
        "Image": options["image"],
        "User": "postgres",
        "Entrypoint": ["sh", "-c", _INIT_SCRIPT],
        "Cmd": [],
        "Env": [
            f"PGWAKE_ADMIN_PASSWORD={admin_password}",
            f"PGWAKE_CONF={_CONF}",
            f"PGWAKE_SETUP_SQL={setup_sql}",
            "LC_ALL=C",
        ],
        "HostConfig": {**_sandbox(options), "Mounts": _mounts(name), "NetworkMode": "none"},
    }


def basebackup_container(
    name: str, options: dict[str, str], source_port: int, admin_password: str
) -> dict[str, Any]:
    """The one-shot container that fills a branch's volume with ``pg_basebackup`` from
    its source, over the source's loopback port."""
    return {
        "Image": options["image"],
        "User": "postgres",
        "Entrypoint": [
            "pg_basebackup",
            "--host=127.0.0.1",
            f"--port={source_port}",
            f"--username={management.ADMIN_ROLE}",
            f"--pgdata={PGDATA}",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-password",
        ],
        "Cmd": [],
        # The secret is in the environment of a container removed right after.
        "Env": [f"PGPASSWORD={admin_password}"],
        "HostConfig": {
            **_sandbox(options),
            "Mounts": _mounts(name),
            "NetworkMode": "host",  # the source listens on loopback only
        },
    }
