"""The HTTP control plane against a live ``pgwake serve``: contract, scoped tokens, the
reaper, branching under writes, parallel creates."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import stat
import time
from collections.abc import Iterator

import asyncpg
import httpx
import psycopg
import pytest
import uvloop

from tests.integration.pgwake_fixture import (
    ADMIN_TOKEN,
    PASSWORD,
    Pgwake,
    postgres_pids_under,
    serve,
    wait_for,
    wait_for_async,
)

GENERATED_NAME = re.compile(r"^[a-z]+-[a-z]+-[0-9a-z]{6}$")


@pytest.fixture(scope="module")
def server() -> Iterator[Pgwake]:
    with serve() as pgwake:
        yield pgwake


def _client(server: Pgwake, token: str | None = ADMIN_TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(base_url=server.api_url, headers=headers, timeout=60)


@pytest.fixture
def admin(server: Pgwake) -> Iterator[httpx.Client]:
    with _client(server) as client:
        yield client


def _error(response: httpx.Response, status: int) -> str:
    """The stable error code of a JSON error response with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return str(body["error"]["code"])


def _compute_pids(server: Pgwake, name: str) -> list[int]:
    return postgres_pids_under(server.compute_dir(name))


# -- the contract ------------------------------------------------------------------------


def test_create_shows_the_password_once_and_its_uri_wakes_the_endpoint(
    server: Pgwake, admin: httpx.Client
) -> None:
    first, second = (admin.post("/v1/endpoints", json={}) for _ in range(2))
    assert first.status_code == second.status_code == 201
    one, two = first.json(), second.json()
    for created in (one, two):
        assert GENERATED_NAME.match(created["name"]), created["name"]
        assert created["state"] == "suspended"
        assert len(created["password"]) >= 16
        assert f"app.{created['name']}:{created['password']}@" in created["connection_uri"]
    assert one["name"] != two["name"]
    assert one["password"] != two["password"]

    with psycopg.connect(one["connection_uri"], connect_timeout=60) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)

    async def via_asyncpg() -> str:
        conn = await asyncpg.connect(two["connection_uri"], timeout=60)
        try:
            return str(await conn.fetchval("select current_database()"))
        finally:
            await conn.close()

    assert uvloop.run(via_asyncpg()) == "app"
    for created in (one, two):
        shown = admin.get(f"/v1/endpoints/{created['name']}").json()
        assert shown["state"] == "running"
        assert "password" not in shown
        assert created["password"] not in shown["connection_uri"]


def test_list_get_suspend_wake_delete(server: Pgwake, admin: httpx.Client) -> None:
    created = admin.post(
        "/v1/endpoints",
        json={"name": "round-trip", "password": PASSWORD, "idle_timeout_seconds": 600},
    )
    assert created.status_code == 201, created.text
    assert created.json()["idle_timeout_seconds"] == 600
    listed = admin.get("/v1/endpoints").json()["endpoints"]
    assert "round-trip" in [e["name"] for e in listed]
    assert admin.get("/v1/endpoints/round-trip").json()["state"] == "suspended"

    woken = admin.post("/v1/endpoints/round-trip/wake")
    assert woken.status_code == 200
    assert woken.json()["state"] == "running"
    assert _compute_pids(server, "round-trip")
    with psycopg.connect(server.dsn("round-trip"), connect_timeout=60) as conn:
        conn.execute("create table kept (v int)")
        conn.execute("insert into kept values (42)")
        conn.commit()

    suspended = admin.post("/v1/endpoints/round-trip/suspend")
    assert suspended.status_code == 200
    assert suspended.json()["state"] == "suspended"
    assert not _compute_pids(server, "round-trip")

    assert admin.post("/v1/endpoints/round-trip/wake").json()["state"] == "running"
    with psycopg.connect(server.dsn("round-trip"), connect_timeout=60) as conn:
        assert conn.execute("select v from kept").fetchone() == (42,)

    deleted = admin.delete("/v1/endpoints/round-trip")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert not server.compute_dir("round-trip").exists()
    assert not _compute_pids(server, "round-trip")
    assert _error(admin.get("/v1/endpoints/round-trip"), 404) == "endpoint_not_found"
    assert _error(admin.delete("/v1/endpoints/round-trip"), 404) == "endpoint_not_found"
    listed = admin.get("/v1/endpoints").json()["endpoints"]
    assert "round-trip" not in [e["name"] for e in listed]


def test_errors_are_json_with_stable_codes(server: Pgwake, admin: httpx.Client) -> None:
    assert _error(admin.get("/v1/endpoints/no-such-thing"), 404) == "endpoint_not_found"
    assert _error(admin.post("/v1/endpoints/no-such-thing/wake"), 404) == "endpoint_not_found"
    assert admin.post("/v1/endpoints", json={"name": "taken"}).status_code == 201
    assert _error(admin.post("/v1/endpoints", json={"name": "taken"}), 409) == "endpoint_exists"

    with _client(server, token=None) as anonymous:
        response = anonymous.get("/v1/endpoints")
        assert _error(response, 401) == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert _error(anonymous.post("/v1/endpoints", json={}), 401) == "unauthorized"
    with _client(server, token="not-a-token") as stranger:
        assert _error(stranger.get("/v1/endpoints/taken"), 401) == "unauthorized"
    basic = admin.get("/v1/endpoints", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
    assert _error(basic, 401) == "unauthorized"

    for body in (
        {"ttl_seconds": -1},
        {"ttl_seconds": 11 * 365 * 24 * 3600},
        {"surprise": True},
        {"allowed_cidrs": ["10.0.0.0/33"]},
        {"name": "Not_A_Label"},
        ["not", "an", "object"],
    ):
        response = admin.post("/v1/endpoints", json=body)
        assert _error(response, 422) == "invalid_request", body
        assert "Traceback" not in response.text
    malformed = admin.post(
        "/v1/endpoints", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert _error(malformed, 422) == "invalid_request"
    ttl = admin.post("/v1/endpoints", json={"ttl_seconds": 0}).json()["error"]["message"]
    assert ttl == "ttl_seconds: Input should be greater than or equal to 1"
    assert _error(admin.get("/v1/endpoints/Bad_Name"), 422) == "invalid_request"
    assert _error(admin.get("/v1/nothing-here"), 404) == "not_found"
    assert _error(admin.put("/v1/endpoints/taken"), 405) == "method_not_allowed"
    too_big = admin.post(
        "/v1/endpoints",
        content=b" " * 100_000,
        headers={"content-type": "application/json"},
    )
    assert _error(too_big, 413) == "payload_too_large"
    assert admin.delete("/v1/endpoints/taken").status_code == 204


def test_health_readiness_metrics_and_openapi(server: Pgwake) -> None:
    with _client(server, token=None) as anonymous:
        health = anonymous.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = anonymous.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        metrics = anonymous.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "pgwake_endpoints_created_total" in metrics.text
        openapi = anonymous.get("/openapi.json")
    assert openapi.status_code == 200
    spec = openapi.json()
    assert spec["info"]["title"] == "pgwake"
    assert set(spec["paths"]) >= {
        "/v1/endpoints",
        "/v1/endpoints/{name}",
        "/v1/endpoints/{name}/suspend",
        "/v1/endpoints/{name}/wake",
        "/v1/endpoints/{name}/branches",
        "/v1/tokens",
        "/v1/tokens/{token_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    create = spec["paths"]["/v1/endpoints"]["post"]
    assert {"201", "401", "403", "409", "422"} <= set(create["responses"])
    assert spec["components"]["schemas"]["EndpointCreate"]["additionalProperties"] is False
    assert "event=listening" in server.log_text()
    assert f"api=127.0.0.1:{server.api_port}" in server.log_text()


# -- refused values: each request is an attack, and nothing may come of it -----------------


def _endpoint_names(admin: httpx.Client) -> set[str]:
    return {e["name"] for e in admin.get("/v1/endpoints").json()["endpoints"]}


@contextlib.contextmanager
def _makes_no_endpoint(admin: httpx.Client) -> Iterator[None]:
    """Fail when the block leaves a new endpoint behind; delete any it made, so that one
    attack that got through cannot spoil the next."""
    before = _endpoint_names(admin)
    try:
        yield
    finally:
        made = _endpoint_names(admin) - before
        for name in made:
            admin.delete(f"/v1/endpoints/{name}")
    assert not made, f"endpoints were made: {made}"


def _token_count(server: Pgwake) -> int:
    path = server.state_dir / "catalog.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as catalog:
        return int(catalog.execute("select count(*) from tokens").fetchone()[0])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # A string or a boolean is not a number, even when it looks like one.
        ("ttl_seconds", "10"),
        ("ttl_seconds", True),
        ("idle_timeout_seconds", "300"),
        ("idle_timeout_seconds", True),
        ("delete_after_idle_seconds", "60"),
        ("delete_after_idle_seconds", True),
        ("cpus", "1"),
        ("cpus", True),
        # Numbers under the minimums.
        ("idle_timeout_seconds", 1e-9),
        ("idle_timeout_seconds", 0.05),
        ("ttl_seconds", 0.5),
        ("delete_after_idle_seconds", 0.001),
        ("cpus", 1e-9),
    ],
)
def test_create_refuses_a_number_it_would_have_to_coerce_or_is_too_small(
    admin: httpx.Client, field: str, value: object
) -> None:
    with _makes_no_endpoint(admin):
        response = admin.post("/v1/endpoints", json={"name": "coerced", field: value})
        assert _error(response, 422) == "invalid_request"
        assert response.json()["error"]["message"].startswith(f"{field}: "), response.text
    assert _error(admin.get("/v1/endpoints/coerced"), 404) == "endpoint_not_found"


def test_refused_values_get_messages_a_person_understands(admin: httpx.Client) -> None:
    def message(body: dict[str, object]) -> str:
        with _makes_no_endpoint(admin):
            response = admin.post("/v1/endpoints", json=body)
            assert _error(response, 422) == "invalid_request"
        return str(response.json()["error"]["message"])

    assert message({"ttl_seconds": "10"}) == "ttl_seconds: must be a JSON number, not a string"
    assert message({"ttl_seconds": True}) == "ttl_seconds: must be a JSON number, not a boolean"
    assert message({"idle_timeout_seconds": 1e-9}) == (
        "idle_timeout_seconds: Input should be greater than or equal to 0.1"
    )
    assert message({"ttl_seconds": 0.5}) == (
        "ttl_seconds: Input should be greater than or equal to 1"
    )


@pytest.mark.parametrize("value", ["10", True, 0.5])
def test_branch_refuses_a_ttl_it_would_have_to_coerce_or_is_too_small(
    admin: httpx.Client, value: object
) -> None:
    source = admin.post("/v1/endpoints", json={"name": "branch-source"})
    assert source.status_code == 201, source.text
    try:
        with _makes_no_endpoint(admin):
            response = admin.post(
                "/v1/endpoints/branch-source/branches", json={"ttl_seconds": value}
            )
            assert _error(response, 422) == "invalid_request"
            assert response.json()["error"]["message"].startswith("ttl_seconds: "), response.text
        assert admin.get("/v1/endpoints/branch-source").json()["state"] == "suspended"
    finally:
        admin.delete("/v1/endpoints/branch-source")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_endpoints", "2"),
        ("max_endpoints", True),
        ("max_endpoints", 2.0),
        ("max_endpoints", 0),
        ("max_ttl_seconds", "3600"),
        ("max_ttl_seconds", True),
        ("max_ttl_seconds", 0.5),
    ],
)
def test_token_refuses_a_quota_it_would_have_to_coerce_or_is_too_small(
    server: Pgwake, admin: httpx.Client, field: str, value: object
) -> None:
    before = _token_count(server)
    response = admin.post("/v1/tokens", json={"label": "coerced", field: value})
    assert _error(response, 422) == "invalid_request"
    assert response.json()["error"]["message"].startswith(f"{field}: "), response.text
    assert "token" not in response.json()
    assert _token_count(server) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        # Each would reach another route once %2F is decoded: suspend "one-segment" (or
        # answer 405), wake it, branch it, or look for a route that does not exist.
        ("GET", "/v1/endpoints/one-segment%2Fsuspend"),
        ("POST", "/v1/endpoints/one-segment%2Fsuspend"),
        ("POST", "/v1/endpoints/one-segment%2fwake"),
        ("POST", "/v1/endpoints/one-segment%2Fbranches"),
        ("DELETE", "/v1/endpoints/one-segment%2Fbranches"),
        ("GET", "/v1/endpoints/one-segment%2F"),
        ("DELETE", "/v1/tokens/tok_0123%2Fabcd"),
    ],
)
def test_an_encoded_slash_in_a_path_parameter_is_refused_not_routed(
    server: Pgwake, admin: httpx.Client, method: str, path: str
) -> None:
    created = admin.post("/v1/endpoints", json={"name": "one-segment"})
    assert created.status_code == 201, created.text
    try:
        with _makes_no_endpoint(admin):
            response = admin.request(method, path, json={} if method == "POST" else None)
            assert _error(response, 422) == "invalid_request"
            assert "/" in response.json()["error"]["message"], response.text
        assert admin.get("/v1/endpoints/one-segment").json()["state"] == "suspended"
        assert not _compute_pids(server, "one-segment")
    finally:
        admin.delete("/v1/endpoints/one-segment")


# -- scoped tokens -----------------------------------------------------------------------


def test_scoped_tokens_see_only_their_own_endpoints_within_quota(
    server: Pgwake, admin: httpx.Client
) -> None:
    minted_a = admin.post(
        "/v1/tokens", json={"label": "a", "max_endpoints": 2, "max_ttl_seconds": 3600}
    )
    assert minted_a.status_code == 201, minted_a.text
    token_a = minted_a.json()
    assert token_a["token"].startswith("pgw_")
    assert token_a["id"].startswith("tok_")
    token_b = admin.post("/v1/tokens", json={"label": "b"}).json()
    assert token_a["token"] != token_b["token"]

    with _client(server, token_a["token"]) as a, _client(server, token_b["token"]) as b:
        first = a.post("/v1/endpoints", json={"password": PASSWORD})
        assert first.status_code == 201, first.text
        owned = first.json()["name"]
        # A token with a TTL cap only makes ephemeral endpoints.
        assert first.json()["expires_at"] == pytest.approx(time.time() + 3600, abs=60)
        assert _error(a.post("/v1/endpoints", json={"ttl_seconds": 3601}), 403) == "ttl_too_long"
        second = a.post("/v1/endpoints", json={"ttl_seconds": 600})
        assert second.status_code == 201, second.text
        assert _error(a.post("/v1/endpoints", json={}), 403) == "quota_exceeded"
        assert sorted(e["name"] for e in a.get("/v1/endpoints").json()["endpoints"]) == sorted(
            [owned, second.json()["name"]]
        )

        # B cannot tell A's endpoints from ones that do not exist.
        assert b.get("/v1/endpoints").json() == {"endpoints": []}
        for response in (
            b.get(f"/v1/endpoints/{owned}"),
            b.post(f"/v1/endpoints/{owned}/suspend"),
            b.post(f"/v1/endpoints/{owned}/wake"),
            b.post(f"/v1/endpoints/{owned}/branches", json={}),
            b.delete(f"/v1/endpoints/{owned}"),
        ):
            assert _error(response, 404) == "endpoint_not_found"
            assert owned in response.json()["error"]["message"]
        assert not _compute_pids(server, owned)  # B's wake woke nothing

        # Only the admin mints and revokes tokens.
        assert _error(a.post("/v1/tokens", json={}), 403) == "forbidden"
        assert _error(a.delete(f"/v1/tokens/{token_b['id']}"), 403) == "forbidden"
        # The admin sees every endpoint.
        everything = [e["name"] for e in admin.get("/v1/endpoints").json()["endpoints"]]
        assert owned in everything

        assert admin.delete(f"/v1/tokens/{token_a['id']}").status_code == 204
        assert _error(admin.delete(f"/v1/tokens/{token_a['id']}"), 404) == "token_not_found"
        assert _error(a.get("/v1/endpoints"), 401) == "unauthorized"
        assert b.get("/v1/endpoints").status_code == 200
    assert admin.get(f"/v1/endpoints/{owned}").status_code == 200  # it outlives its token
    assert admin.delete(f"/v1/endpoints/{owned}").status_code == 204
    assert admin.delete(f"/v1/endpoints/{second.json()['name']}").status_code == 204

    # Only hashes are stored: no secret in the catalog (nor in the log).
    for path in server.state_dir.glob("catalog.sqlite3*"):
        data = path.read_bytes()
        for secret in (token_a["token"], token_b["token"], ADMIN_TOKEN):
            assert secret.encode() not in data, path
    log = server.log_text()
    assert token_a["token"] not in log
    assert ADMIN_TOKEN not in log


# -- many at once ------------------------------------------------------------------------


def test_fifty_parallel_creates(server: Pgwake, admin: httpx.Client) -> None:
    async def create_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.api_url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=120,
            limits=httpx.Limits(max_connections=50),
        ) as client:
            return await asyncio.gather(*(client.post("/v1/endpoints") for _ in range(50)))

    started = time.monotonic()
    responses = asyncio.run(create_all())
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses]
    names = {r.json()["name"] for r in responses}
    assert len(names) == 50
    listed = {e["name"] for e in admin.get("/v1/endpoints").json()["endpoints"]}
    assert names <= listed
    assert elapsed < 60
    for name in names:
        assert admin.delete(f"/v1/endpoints/{name}").status_code == 204


# -- branching -----------------------------------------------------------------------------


_CHECKSUM = (
    "select count(*), min(id), max(id), "
    "md5(string_agg(id::text || ':' || total::text, ',' order by id)), "
    "bool_and(total = id::bigint * (id + 1) / 2) "
    "from ledger where id <= $1"
)


def test_branch_under_write_load_is_a_consistent_copy(server: Pgwake, admin: httpx.Client) -> None:
    source = admin.post("/v1/endpoints", json={"name": "ledger-src", "password": PASSWORD})
    assert source.status_code == 201, source.text

    async def scenario() -> tuple[str, int]:
        conn = await asyncpg.connect(**server.asyncpg_kwargs("ledger-src"), timeout=60)
        await conn.execute("create table ledger (id int primary key, total bigint not null)")
        stop = asyncio.Event()
        written = 0

        async def writer() -> None:
            nonlocal written
            while not stop.is_set():
                async with conn.transaction():
                    for _ in range(10):
                        written += 1
                        # A running sum, so a lost or reordered row shows.
                        await conn.execute(
                            "insert into ledger values ($1, $2)",
                            written,
                            written * (written + 1) // 2,
                        )

        task = asyncio.create_task(writer())
        # A few transactions committed before the branch...
        await wait_for_async(lambda: written > 30)
        async with httpx.AsyncClient(
            base_url=server.api_url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=120,
        ) as client:
            response = await client.post("/v1/endpoints/ledger-src/branches", json={})
        # ...and more after it.
        at_branch = written
        await wait_for_async(lambda: written > at_branch + 30)
        stop.set()
        await task
        await conn.close()
        assert response.status_code == 201, response.text
        return str(response.json()["name"]), written

    branch_name, written = uvloop.run(scenario())
    assert GENERATED_NAME.match(branch_name)
    branch = admin.get(f"/v1/endpoints/{branch_name}").json()
    assert branch["state"] == "suspended"

    async def compare() -> None:
        on_branch = await asyncpg.connect(**server.asyncpg_kwargs(branch_name), timeout=60)
        on_source = await asyncpg.connect(**server.asyncpg_kwargs("ledger-src"), timeout=60)
        try:
            big = 2**31 - 1
            count, low, high, digest, sums_ok = await on_branch.fetchrow(_CHECKSUM, big)
            assert count > 0, "the branch was taken before any commit"
            assert count % 10 == 0, f"a torn transaction: {count} rows"
            assert (low, high) == (1, count), "ids have gaps"
            assert sums_ok
            assert count < written, "the source went on after the branch"
            source_row = await on_source.fetchrow(_CHECKSUM, count)
            assert source_row[0] == count
            assert source_row[3] == digest
            assert await on_source.fetchval("select count(*) from ledger") >= count
            # The branch is writable and separate from its source.
            await on_branch.execute("insert into ledger values (-1, 0)")
            assert await on_source.fetchval("select count(*) from ledger where id = -1") == 0
        finally:
            await on_branch.close()
            await on_source.close()

    uvloop.run(compare())
    for name in (branch_name, "ledger-src"):
        assert admin.delete(f"/v1/endpoints/{name}").status_code == 204


# -- the reaper and the generated admin token ---------------------------------------------------


class _GeneratedAdminToken(Pgwake):
    """A server without ``PGWAKE_ADMIN_TOKEN``: it makes its own."""

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        del env["PGWAKE_ADMIN_TOKEN"]
        return env


@pytest.fixture(scope="module")
def reaping() -> Iterator[Pgwake]:
    with serve(server=_GeneratedAdminToken, reaper_interval="0.5") as server:
        yield server


def _generated_token(server: Pgwake) -> str:
    return (server.state_dir / "admin-token").read_text().strip()


def test_admin_token_is_generated_once_into_a_private_file(reaping: Pgwake) -> None:
    path = reaping.state_dir / "admin-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token = _generated_token(reaping)
    assert len(token) >= 32
    assert f"event=admin_token_generated path={path}" in reaping.log_text()
    assert token not in reaping.log_text()
    with _client(reaping, token) as admin:
        assert admin.get("/v1/endpoints").status_code == 200
    with _client(reaping, ADMIN_TOKEN) as other:
        assert other.get("/v1/endpoints").status_code == 401


def test_reaper_deletes_expired_and_unused_endpoints(reaping: Pgwake) -> None:
    with _client(reaping, _generated_token(reaping)) as admin:
        expiring = admin.post("/v1/endpoints", json={"ttl_seconds": 1}).json()["name"]
        # Running when it expires: the reaper stops the compute too.
        assert admin.post(f"/v1/endpoints/{expiring}/wake").json()["state"] == "running"
        unused = admin.post("/v1/endpoints", json={"delete_after_idle_seconds": 1}).json()["name"]
        kept = admin.post("/v1/endpoints", json={"ttl_seconds": 3600}).json()["name"]
        created_at = time.monotonic()

        def gone(name: str) -> bool:
            # Hidden from the API as soon as its deletion starts; then its data goes.
            hidden = admin.get(f"/v1/endpoints/{name}").status_code == 404
            return hidden and not reaping.compute_dir(name).exists()

        wait_for(lambda: gone(expiring) and gone(unused), timeout=10, interval=0.1)
        assert time.monotonic() - created_at < 7
        assert _error(admin.get(f"/v1/endpoints/{expiring}"), 404) == "endpoint_not_found"
        for name in (expiring, unused):
            assert not reaping.compute_dir(name).exists()
            assert not _compute_pids(reaping, name)
        assert admin.get(f"/v1/endpoints/{kept}").status_code == 200
    assert reaping.metric("pgwake_endpoints_deleted_total", reason="ttl") == 1
    assert reaping.metric("pgwake_endpoints_deleted_total", reason="idle") == 1
    log = reaping.log_text()
    assert f"event=endpoint_deleted endpoint={expiring} reason=ttl" in log
    assert f"event=endpoint_deleted endpoint={unused} reason=idle" in log


def test_a_ttl_expiry_tells_the_open_sessions_why_they_end() -> None:
    """The reaper deletes an endpoint whose TTL ran out while a session is open: the client
    gets a FATAL 57P01 that names the TTL, not a bare "administrator command"."""
    with serve(reaper_interval="0.2") as server:
        with _client(server) as admin:
            created = admin.post(
                "/v1/endpoints", json={"name": "brief", "password": PASSWORD, "ttl_seconds": 3}
            )
            assert created.status_code == 201, created.text
            uri = created.json()["connection_uri"]
        with psycopg.connect(uri, sslmode="disable", autocommit=True, connect_timeout=60) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            wait_for(
                lambda: server.metric("pgwake_endpoints_deleted_total", reason="ttl") == 1,
                timeout=30,
            )
            with pytest.raises(psycopg.errors.AdminShutdown) as info:
                conn.execute("select 1")
        message = str(info.value)
        assert message.startswith(
            'terminating connection because endpoint "brief" is deleted: its time to live '
            "of 3 s ran out at "
        ), message
        assert info.value.diag.message_hint is not None
        assert "ttl_seconds" in info.value.diag.message_hint
        assert server.metric("pgwake_client_errors_total", sqlstate="57P01", kind="service") == 1
        assert "event=sessions_ended endpoint=brief sessions=1 reason=ttl" in server.log_text()


def test_readyz_says_503_while_sessions_drain(pgwake: Pgwake) -> None:
    pgwake.start()
    with _client(pgwake) as admin:
        created = admin.post("/v1/endpoints", json={"name": "draining", "password": PASSWORD})
        assert created.status_code == 201, created.text
        assert admin.get("/readyz").status_code == 200
        with psycopg.connect(pgwake.dsn("draining"), connect_timeout=60) as conn:
            assert pgwake.process is not None
            pgwake.process.send_signal(signal.SIGTERM)
            # The session holds the drain open (PGWAKE_DRAIN_TIMEOUT=2): the API still
            # answers, and says pgwake is not ready.
            wait_for(lambda: admin.get("/readyz").status_code == 503, timeout=2)
            response = admin.get("/readyz")
            assert _error(response, 503) == "not_ready"
            assert admin.get("/healthz").status_code == 200
            assert conn.execute("select 1").fetchone() == (1,)
        assert pgwake.process.wait(30) == 0
