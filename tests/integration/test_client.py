"""pgwake.api.client against a live server, and the CLI going through the API."""

from __future__ import annotations

import psycopg
import pytest

from pgwake.api.client import ApiError, PgwakeClient
from tests.integration.pgwake_fixture import ADMIN_TOKEN, Pgwake, wait_for


def test_three_lines_make_a_working_database(pgwake: Pgwake) -> None:
    pgwake.start()
    db = PgwakeClient(pgwake.api_url, ADMIN_TOKEN).create_endpoint(ttl_seconds=3600)
    assert db.password is not None
    assert db.password not in repr(db)
    with psycopg.connect(db.connection_uri, sslmode="disable", connect_timeout=60) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)
    assert db.expires_at is not None


def test_client_verbs_and_errors(pgwake: Pgwake) -> None:
    pgwake.start()
    admin = PgwakeClient(pgwake.api_url, ADMIN_TOKEN)
    created = admin.create_endpoint("verbs", password="a-long-password")
    assert [e.name for e in admin.list_endpoints()] == ["verbs"]
    assert admin.wake_endpoint("verbs").state == "running"
    assert admin.suspend_endpoint("verbs").state == "suspended"
    branch = admin.branch_endpoint("verbs", "verbs-copy")
    assert branch.password is None
    assert admin.get_endpoint("verbs-copy").name == "verbs-copy"
    token = admin.mint_token(label="agent", max_endpoints=1)
    scoped = PgwakeClient(pgwake.api_url, token.token)
    with pytest.raises(ApiError) as info:
        scoped.get_endpoint("verbs")
    assert (info.value.status, info.value.code) == (404, "endpoint_not_found")
    scoped.create_endpoint()
    with pytest.raises(ApiError) as info:
        scoped.create_endpoint()
    assert info.value.code == "quota_exceeded"
    admin.delete_endpoint("verbs-copy")
    with pytest.raises(ApiError) as info:
        admin.get_endpoint("verbs-copy")
    assert info.value.code == "endpoint_not_found"
    assert created.connection_uri.startswith("postgresql://app.verbs:a-long-password@")


def test_cli_goes_through_the_running_servers_api(pgwake: Pgwake) -> None:
    pgwake.start()
    PgwakeClient(pgwake.api_url, ADMIN_TOKEN).create_endpoint("via-api")
    listing = pgwake.cli("endpoint", "list").stdout
    assert "via-api" in listing
    # DISK is the server's figure, measured in the background just after the create.
    wait_for(
        lambda: pgwake.cli("endpoint", "list").stdout.splitlines()[1].split()[-1].endswith("MB")
    )
    assert "running" in pgwake.cli("endpoint", "wake", "via-api").stdout
    assert pgwake.state("via-api") == "running"  # the server's lifecycle did it
    assert "suspended" in pgwake.cli("endpoint", "suspend", "via-api").stdout
    assert pgwake.state("via-api") == "suspended"
    created = pgwake.cli("endpoint", "create").stdout.strip().splitlines()
    assert created[-1].startswith("postgresql://app.")


def test_disk_size_is_measured_at_create_and_after_each_suspend(pgwake: Pgwake) -> None:
    pgwake.start()
    admin = PgwakeClient(pgwake.api_url, ADMIN_TOKEN)
    db = admin.create_endpoint("sized", password="a-long-password")

    def disk() -> int | None:
        return admin.get_endpoint("sized").disk_bytes

    wait_for(lambda: disk() is not None)
    at_create = disk()
    assert at_create is not None
    assert at_create > 10 * 2**20  # a data directory (the template is ~34 MB here)
    with psycopg.connect(db.connection_uri, sslmode="disable", connect_timeout=60) as conn:
        conn.execute(
            "create table filler as select repeat('x', 1000) as x from generate_series(1, 20000)"
        )
    assert disk() == at_create  # not re-measured while it runs
    admin.suspend_endpoint("sized")
    wait_for(lambda: (disk() or 0) > at_create + 15 * 2**20)  # ~20 MB of rows, at rest
