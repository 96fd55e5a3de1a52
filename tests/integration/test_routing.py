"""The three routing forms, and the documented errors (ARCHITECTURE.md) for bad routes."""

from __future__ import annotations

import subprocess

import asyncpg
import psycopg
import pytest
import uvloop

from tests.integration.pgwake_fixture import PASSWORD, Pgwake
from tests.integration.wire import error_fields, startup_packet, tls_exchange


@pytest.fixture(scope="module")
def routed(shared_pgwake: Pgwake) -> Pgwake:
    for name in ("route-a", "route-b"):
        shared_pgwake.create(name)
    return shared_pgwake


def _who(conninfo: str) -> tuple[str, str]:
    with psycopg.connect(conninfo, connect_timeout=60) as conn:
        row = conn.execute("select current_user, current_setting('application_name')").fetchone()
    assert row is not None
    return row[0], row[1]


def test_options_form(routed: Pgwake) -> None:
    assert _who(routed.dsn("route-a", application_name="opt"))[0] == "app"


def test_options_form_keeps_other_options(routed: Pgwake) -> None:
    dsn = (
        f"host=127.0.0.1 port={routed.port} user=app password={PASSWORD} dbname=app "
        "sslmode=disable options='endpoint=route-a -c search_path=pg_catalog'"
    )
    with psycopg.connect(dsn, connect_timeout=60) as conn:
        row = conn.execute("show search_path").fetchone()
    assert row == ("pg_catalog",)


def test_user_form_strips_the_endpoint_from_the_role(routed: Pgwake) -> None:
    dsn = (
        f"host=127.0.0.1 port={routed.port} user=app.route-b password={PASSWORD} "
        "dbname=app sslmode=disable"
    )
    assert _who(dsn)[0] == "app"


def test_sni_form_with_psql_over_tls(routed: Pgwake) -> None:
    conninfo = (
        f"host=route-a.localhost hostaddr=127.0.0.1 port={routed.port} user=app "
        f"password={PASSWORD} dbname=app sslmode=require"
    )
    out = subprocess.run(
        [
            "psql",
            conninfo,
            "-XAtc",
            "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # The client<->pgwake leg is TLS; pgwake<->compute is a private unix socket.
    assert out.stdout.strip() == "app|f"
    assert "endpoint=route-a via=sni tls=True" in routed.log_text()


async def _asyncpg_refusal(**kwargs: object) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(**kwargs, timeout=30)  # type: ignore[arg-type]
    return info.value


def _refusal(port: int, user: str, options: str | None = None) -> asyncpg.PostgresError:
    settings = {"options": options} if options else {}
    return uvloop.run(
        _asyncpg_refusal(
            host="127.0.0.1",
            port=port,
            user=user,
            password=PASSWORD,
            database="app",
            ssl=False,
            server_settings=settings,
        )
    )


def _sni_refusal(port: int, server_hostname: str, **parameters: str) -> dict[str, str]:
    messages = tls_exchange(
        port, server_hostname, startup_packet({"user": "app", "database": "app", **parameters})
    )
    assert messages[-1][0] == b"E", messages
    return error_fields(messages[-1][1])


def test_unknown_endpoint_is_3D000(routed: Pgwake) -> None:
    error = _refusal(routed.port, "app", "endpoint=no-such-endpoint")
    assert error.sqlstate == "3D000"
    assert 'endpoint "no-such-endpoint" does not exist' in str(error)


def test_missing_endpoint_is_08004_with_a_hint(routed: Pgwake) -> None:
    error = _refusal(routed.port, "app")
    assert error.sqlstate == "08004"
    assert "options=endpoint%3D" in error.hint


def test_conflicting_endpoints_are_refused(routed: Pgwake) -> None:
    fields = _sni_refusal(routed.port, "route-a.localhost", options="endpoint=route-b")
    assert fields["C"] == "3D000"
    assert fields["M"] == "conflicting endpoints"
    assert "route-a" in fields["D"]
    assert "route-b" in fields["D"]
    error = _refusal(routed.port, "app.route-a", "endpoint=route-b")
    assert error.sqlstate == "3D000"
    assert "conflicting endpoints" in str(error)


def test_unknown_endpoint_under_the_base_domain_is_3D000(routed: Pgwake) -> None:
    assert _sni_refusal(routed.port, "nope.localhost")["C"] == "3D000"


def test_wrong_password_is_reported_by_the_compute(routed: Pgwake) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        uvloop.run(asyncpg.connect(**{**routed.asyncpg_kwargs("route-a"), "password": "bad"}))
