"""The docker compute backend against a real engine: wake, suspend, limits, adoption."""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import time
from collections.abc import Iterator

import asyncpg
import docker
import psycopg
import pytest

from pgwake.compute.postgresql_conf import COMMON_SETTINGS
from tests.docker.conftest import POSTGRES_IMAGES, DockerPgwake
from tests.integration.pgwake_fixture import PASSWORD, wait_for

pytestmark = pytest.mark.docker


def _query(server: DockerPgwake, endpoint: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(server.dsn(endpoint), autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def test_psql_and_asyncpg_wake_a_suspended_docker_endpoint_once(
    dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    uri = dpgwake.create_docker("cold")
    dpgwake.start()
    assert dpgwake.state("cold") == "suspended"
    assert dpgwake.containers(engine, "cold") == []  # created on the first wake

    out = subprocess.run(
        ["psql", uri, "-Atc", "SELECT current_user, current_setting('server_version_num')"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    user, version = out.stdout.strip().split("|")
    assert user == "app"
    assert version.startswith("17")

    async def via_asyncpg() -> int:
        conn = await asyncpg.connect(**dpgwake.asyncpg_kwargs("cold"))
        try:
            return int(await conn.fetchval("SELECT 41 + 1"))
        finally:
            await conn.close()

    assert asyncio.run(via_asyncpg()) == 42
    assert dpgwake.container_starts(engine, "cold") == 1
    assert dpgwake.metric("pgwake_wakes_total", endpoint="cold", outcome="success") == 1
    assert len(dpgwake.containers(engine, "cold")) == 1
    # The compute runs with what pgwake's postgresql.conf block says.
    assert dpgwake.compute_settings("cold", COMMON_SETTINGS) == COMMON_SETTINGS


def test_100_concurrent_connects_start_one_container(
    dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    dpgwake.create_docker("crowd")
    dpgwake.start()

    async def one(i: int) -> int:
        conn = await asyncpg.connect(**dpgwake.asyncpg_kwargs("crowd"), timeout=60)
        try:
            return int(await conn.fetchval("SELECT $1::int", i))
        finally:
            await conn.close()

    async def crowd() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(100)))

    assert asyncio.run(crowd()) == list(range(100))
    assert dpgwake.container_starts(engine, "crowd") == 1
    assert dpgwake.metric("pgwake_wakes_total", endpoint="crowd", outcome="success") == 1
    assert len(dpgwake.containers(engine, "crowd")) == 1


def test_idle_suspend_is_a_clean_stop_and_20_cycles_lose_nothing(
    dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    dpgwake.create_docker("cycles", idle_timeout=0.5)
    dpgwake.start()
    _query(dpgwake, "cycles", "CREATE TABLE t (n int PRIMARY KEY)")
    for n in range(20):
        dpgwake.wait_state("cycles", "suspended")
        container = dpgwake.container(engine, "cycles")
        assert container.status == "exited"
        assert container.attrs["State"]["ExitCode"] == 0
        assert container.attrs["State"]["OOMKilled"] is False
        _query(dpgwake, "cycles", f"INSERT INTO t VALUES ({n})")
    dpgwake.wait_state("cycles", "suspended")
    logs = dpgwake.container(engine, "cycles").logs().decode(errors="replace")
    assert logs.count("received fast shutdown request") >= 20
    assert logs.count("database system is shut down") >= 20
    rows = _query(dpgwake, "cycles", "SELECT n FROM t ORDER BY n")
    assert [r[0] for r in rows] == list(range(20))
    assert len(dpgwake.containers(engine, "cycles")) == 1  # the same container each time


def test_postgres_13_15_17_and_a_local_endpoint_in_one_server(
    shared_dpgwake: DockerPgwake,
) -> None:
    for major, image in POSTGRES_IMAGES.items():
        shared_dpgwake.create_docker(f"pg{major}", image=image)
    shared_dpgwake.create("plain")
    for major in POSTGRES_IMAGES:
        version = _query(shared_dpgwake, f"pg{major}", "SHOW server_version_num")[0][0]
        assert str(version).startswith(str(major)), (major, version)
    assert _query(shared_dpgwake, "plain", "SELECT 1") == [(1,)]
    listing = shared_dpgwake.cli("endpoint", "list").stdout
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows["pg13"][2] == "docker"
    assert rows["plain"][2] == "local"
    got = shared_dpgwake.cli("endpoint", "get", "pg15").stdout
    assert "backend: docker" in got
    assert "pgwake-postgres:15" in got
    metrics = shared_dpgwake.metrics()
    assert metrics["pgwake_endpoint_info", (("backend", "docker"), ("endpoint", "pg15"))] == 1
    assert metrics["pgwake_endpoint_info", (("backend", "local"), ("endpoint", "plain"))] == 1
    assert metrics["pgwake_wake_duration_seconds_count", (("backend", "docker"),)] >= 3
    assert metrics["pgwake_wake_duration_seconds_count", (("backend", "local"),)] >= 1
    assert "backend=docker" in shared_dpgwake.log_text()


def test_the_container_is_sandboxed_with_the_limits_asked_for(
    shared_dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    shared_dpgwake.create_docker("boxed", memory="256m", cpus="0.5")
    assert _query(shared_dpgwake, "boxed", "SELECT 1") == [(1,)]
    attrs = shared_dpgwake.container(engine, "boxed").attrs
    host = attrs["HostConfig"]
    assert host["Memory"] == 256 * 2**20
    assert host["MemorySwap"] == 256 * 2**20  # no swap beyond the limit
    assert host["NanoCpus"] == 500_000_000
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "host"
    assert not host.get("PortBindings")
    assert host["Privileged"] is False
    assert attrs["Config"]["User"] == "postgres"
    assert "listen_addresses=127.0.0.1" in attrs["Config"]["Cmd"]
    assert attrs["Config"]["Labels"]["pgwake.endpoint"] == "boxed"
    assert attrs["Config"]["Labels"]["pgwake.instance"] == shared_dpgwake.instance
    # The data lives on the endpoint's named volume, which outlives the container.
    mounts = attrs["Mounts"]
    assert [m["Type"] for m in mounts] == ["volume"]
    assert mounts[0]["Name"] == f"pgwake-{shared_dpgwake.instance}-boxed"
    # Postgres listens on loopback only.
    port = int(attrs["Config"]["Labels"]["pgwake.port"])
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True)
    assert f"127.0.0.1:{port} " in listening.stdout
    assert f"0.0.0.0:{port} " not in listening.stdout
    assert f"*:{port} " not in listening.stdout


def test_a_compute_killed_by_its_memory_limit_recovers_with_every_row(
    shared_dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    shared_dpgwake.create_docker("hungry", memory="128m")
    _query(
        shared_dpgwake,
        "hungry",
        "CREATE TABLE kept AS SELECT g AS n FROM generate_series(1, 1000) g",
    )
    with (
        psycopg.connect(shared_dpgwake.dsn("hungry"), autocommit=True) as conn,
        pytest.raises(psycopg.OperationalError) as failure,
    ):
        # An in-memory sort of ~2 GB: the kernel kills a process of the container.
        conn.execute(
            "SET work_mem = '4GB'; SELECT count(*) FROM (SELECT g, repeat(md5(g::text), 30) AS pad"
            " FROM generate_series(1, 2000000) g ORDER BY pad) s"
        )
    message = str(failure.value)
    assert "closed the connection unexpectedly" in message or "terminat" in message, message
    wait_for(lambda: "event=compute_oom" in shared_dpgwake.log_text(), timeout=10)

    def reads_back() -> bool:
        try:
            return _query(shared_dpgwake, "hungry", "SELECT count(*) FROM kept") == [(1000,)]
        except psycopg.OperationalError:
            return False  # crash recovery still running: 57P03 from Postgres

    wait_for(reads_back, timeout=60, interval=0.2)


def test_kill_9_of_pgwake_adopts_the_running_container(
    dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    dpgwake.create_docker("kept", idle_timeout=2)
    dpgwake.start()
    assert _query(dpgwake, "kept", "SELECT 1") == [(1,)]
    container_id = dpgwake.container(engine, "kept").id
    dpgwake.kill9()
    assert dpgwake.container(engine, "kept").status == "running"
    dpgwake.start()
    assert "endpoint=kept from=suspended to=running trigger=adopt" in dpgwake.log_text()
    assert _query(dpgwake, "kept", "SELECT 2") == [(2,)]
    assert dpgwake.container_starts(engine, "kept") == 1  # adopted, not started again
    dpgwake.wait_state("kept", "suspended", timeout=30)  # the idle timer was re-armed
    container = dpgwake.container(engine, "kept")
    assert container.id == container_id
    assert container.attrs["State"]["ExitCode"] == 0
    assert len(dpgwake.containers(engine, "kept")) == 1


def test_delete_removes_the_container_and_the_volume(
    shared_dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    shared_dpgwake.create_docker("doomed")
    assert _query(shared_dpgwake, "doomed", "SELECT 1") == [(1,)]
    shared_dpgwake.cli("endpoint", "delete", "doomed")
    assert shared_dpgwake.containers(engine, "doomed") == []
    volumes = engine.volumes.list(filters={"label": "pgwake.endpoint=doomed"})
    assert [
        v for v in volumes if v.attrs["Labels"]["pgwake.instance"] == shared_dpgwake.instance
    ] == []


def test_a_missing_image_is_refused_at_create(shared_dpgwake: DockerPgwake) -> None:
    result = shared_dpgwake.cli(
        "endpoint",
        "create",
        "noimage",
        "--backend",
        "docker",
        "--image",
        "pgwake-absent:0",
        check=False,
    )
    assert result.returncode == 1
    assert "image pgwake-absent:0 is not on the Docker engine" in result.stderr
    assert "noimage" not in shared_dpgwake.cli("endpoint", "list").stdout


def test_local_endpoints_refuse_docker_options(shared_dpgwake: DockerPgwake) -> None:
    result = shared_dpgwake.cli("endpoint", "create", "mixed", "--memory", "256m", check=False)
    assert result.returncode == 1
    assert "local endpoints take no memory" in result.stderr


def test_wake_latency_is_logged_with_the_backend(shared_dpgwake: DockerPgwake) -> None:
    shared_dpgwake.create_docker("timed")
    started = time.monotonic()
    assert _query(shared_dpgwake, "timed", "SELECT 1") == [(1,)]
    assert time.monotonic() - started < 30
    lines = [
        line
        for line in shared_dpgwake.log_text().splitlines()
        if "endpoint=timed from=starting to=running" in line
    ]
    assert len(lines) == 1
    assert "backend=docker" in lines[0]
    assert PASSWORD not in shared_dpgwake.log_text()


# Laid out like the official postgres:17 image (no registry here to pull it from): root by
# default, an entrypoint script of its own, PGDATA and a VOLUME on the data path. pgwake
# must need none of it, and must not leave an anonymous volume behind.
_OFFICIAL_LIKE = b"""
FROM pgwake-postgres:17
USER root
ENV PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
STOPSIGNAL SIGINT
ENTRYPOINT ["sh", "-c", "echo 'the image entrypoint ran' >&2; exit 3", "entrypoint"]
CMD ["postgres"]
"""


@pytest.fixture(scope="module")
def official_like_image(engine: docker.DockerClient) -> Iterator[str]:
    tag = "pgwake-test-official-like:17"
    engine.images.build(fileobj=io.BytesIO(_OFFICIAL_LIKE), tag=tag, rm=True)
    yield tag
    engine.images.remove(tag, force=True)


def test_an_image_laid_out_like_the_official_one_works_without_its_entrypoint(
    dpgwake: DockerPgwake, engine: docker.DockerClient, official_like_image: str
) -> None:
    volumes_before = {v.name for v in engine.volumes.list()}
    dpgwake.create_docker("official", image=official_like_image, idle_timeout=0.5)
    dpgwake.start()
    _query(dpgwake, "official", "CREATE TABLE t AS SELECT 1 AS n")
    dpgwake.wait_state("official", "suspended")
    assert _query(dpgwake, "official", "SELECT n FROM t") == [(1,)]
    container = dpgwake.container(engine, "official")
    assert container.attrs["Config"]["User"] == "postgres"  # not the image's root
    assert "the image entrypoint ran" not in container.logs().decode(errors="replace")
    dpgwake.cli("endpoint", "delete", "official")
    assert dpgwake.containers(engine, "official") == []
    assert {v.name for v in engine.volumes.list()} == volumes_before


def test_an_image_gone_before_the_first_wake_gives_57p03_then_recovers(
    shared_dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    # An operator prunes the image after the endpoint was made (its container is made on
    # the first wake): the client is told why, and the endpoint works once it is back.
    tag = "pgwake-test-vanishing:17"
    engine.images.get(POSTGRES_IMAGES[17]).tag(tag)
    try:
        shared_dpgwake.create_docker("vanishing", image=tag)
        engine.images.remove(tag)  # the untag only: the image stays under its own name

        async def attempt() -> None:
            conn = await asyncpg.connect(**shared_dpgwake.asyncpg_kwargs("vanishing"))
            await conn.close()

        with pytest.raises(asyncpg.PostgresError) as caught:
            asyncio.run(attempt())
        error = caught.value  # asyncpg keeps the server's fields
        assert error.sqlstate == "57P03"
        assert error.as_dict()["message"] == 'endpoint "vanishing" could not start'
        assert f"image {tag} is not on the Docker engine" in (error.detail or "")
        assert "try to start it again" in (error.hint or "")
        assert shared_dpgwake.state("vanishing") == "failed"

        engine.images.get(POSTGRES_IMAGES[17]).tag(tag)
        # "failed" is left by the next connect after the back-off (1 s after one failure).
        time.sleep(1.5)
        assert _query(shared_dpgwake, "vanishing", "SELECT 1") == [(1,)]
        assert shared_dpgwake.state("vanishing") == "running"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(tag)


def test_a_branch_of_a_docker_endpoint_is_a_copy_with_the_same_image_and_limits(
    shared_dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    shared_dpgwake.create_docker("trunk", image=POSTGRES_IMAGES[15], memory="300m", cpus="0.5")
    _query(shared_dpgwake, "trunk", "CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
    out = shared_dpgwake.cli("endpoint", "branch", "trunk", "twig").stdout
    assert "a branch of trunk" in out
    # The branch has the source's rows and its own life from then on.
    assert _query(shared_dpgwake, "twig", "SELECT count(*), max(n) FROM t") == [(1000, 1000)]
    _query(shared_dpgwake, "twig", "INSERT INTO t VALUES (1001)")
    assert _query(shared_dpgwake, "trunk", "SELECT count(*) FROM t") == [(1000,)]
    version = _query(shared_dpgwake, "twig", "SHOW server_version_num")[0][0]
    assert str(version).startswith("15")
    host = shared_dpgwake.container(engine, "twig").attrs["HostConfig"]
    assert (host["Memory"], host["NanoCpus"]) == (300 * 2**20, 500_000_000)
    assert shared_dpgwake.container(engine, "twig").attrs["Config"]["User"] == "postgres"
    assert "backend: docker" in shared_dpgwake.cli("endpoint", "get", "twig").stdout
    # No helper container is left behind; delete takes the branch's volume too.
    assert len(shared_dpgwake.containers(engine, "twig")) == 1  # the compute's own
    shared_dpgwake.cli("endpoint", "delete", "twig")
    assert not any(v.name.endswith("-twig") for v in engine.volumes.list())
    assert _query(shared_dpgwake, "trunk", "SELECT count(*) FROM t") == [(1000,)]
