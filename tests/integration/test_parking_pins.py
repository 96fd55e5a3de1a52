"""Parking's edges against a real pgwake and real Postgres: the sessions it must not park
(pinned: they keep the compute awake, visibly, with their state intact), the timeout that
ends them, the opt-out, and what a parked session meets on its way back: a wake that
fails, a cancel, its ParameterStatus and backend key, a Terminate, strangers."""

from __future__ import annotations

import asyncio
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
import uvloop
from psycopg import errors, pq

from tests.integration.pgwake_fixture import (
    ADMIN_TOKEN,
    PASSWORD,
    Pgwake,
    postgres_pids_under,
    serve,
    wait_for,
)

#: Every endpoint's idle timeout here (seconds): short, so a test waits little.
IDLE = 0.5
#: How long a pinned session must have been pinned before the test looks at it.
PINNED_LONG = 3 * IDLE

#: The pin scenarios: the endpoint each runs on, the reason the API gives, the label
#: of ``pgwake_pinned_sessions``.
PINS = {
    "temporary_table": ("temporary tables", "temporary_tables"),
    "listen": ("LISTEN", "listen"),
    "advisory_lock": ("advisory locks", "advisory_locks"),
    "with_hold_cursor": ("WITH HOLD cursors", "with_hold_cursors"),
    "open_transaction": ("open transaction", "open_transaction"),
    "failed_transaction": ("failed transaction", "open_transaction"),
    "copy_in_progress": ("COPY in progress", "copy"),
}


def _pin_endpoint(case: str) -> str:
    return "pin-" + case.replace("_", "-")


#: The module's endpoints and their settings (the API's names).
ENDPOINTS: dict[str, dict[str, object]] = {
    **{_pin_endpoint(case): {} for case in PINS},
    "timeout": {"pinned_session_timeout_seconds": 1},
    "optout": {"park_sessions": False},
    "wakefail": {},
    "plain": {},
    "strangers": {},
}


@pytest.fixture(scope="module")
def server() -> Iterator[Pgwake]:
    """One server for the module; its endpoints made through the API (no CLI process
    per endpoint)."""
    with serve() as pgwake, _api(pgwake) as api:
        for name, options in ENDPOINTS.items():
            body = {"name": name, "password": PASSWORD, "idle_timeout_seconds": IDLE, **options}
            response = api.post("/v1/endpoints", json=body)
            assert response.status_code == 201, response.text
        yield pgwake


# -- helpers -------------------------------------------------------------------------------


def _api(server: Pgwake) -> httpx.Client:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.Client(base_url=server.api_url, headers=headers, timeout=60)


def _view(server: Pgwake, name: str) -> dict[str, Any]:
    with _api(server) as api:
        response = api.get(f"/v1/endpoints/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _pinned_long(server: Pgwake, name: str, reason: str) -> dict[str, Any] | None:
    """The one pinned session of ``name`` if it has been pinned for ``reason`` for at
    least ``PINNED_LONG`` seconds."""
    pinned = _view(server, name)["pinned_sessions"]
    if (
        len(pinned) == 1
        and pinned[0]["reason"] == reason
        and time.time() - pinned[0]["since"] >= PINNED_LONG
    ):
        return dict(pinned[0])
    return None


def _holds(predicate: Callable[[], object], seconds: float) -> None:
    """Fail as soon as ``predicate()`` is false within the next ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate()
        time.sleep(0.05)


def _park(server: Pgwake, name: str) -> None:
    """Wait until ``name``'s compute has suspended under its open, parked sessions."""
    server.wait_state(name, "suspended", timeout=30)
    wait_for(lambda: _view(server, name)["session_states"]["parked"] >= 1, timeout=10)


def _connect(server: Pgwake, name: str, **params: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server.dsn(name, **params), autocommit=True)


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# -- 1. one test per pin reason --------------------------------------------------------------

Scenario = Iterator[None]


def _temporary_table(conn: psycopg.Connection[Any], server: Pgwake, name: str) -> Scenario:
    conn.execute("CREATE TEMP TABLE scratch AS SELECT generate_series(1, 3) AS i")
    yield
    assert _one(conn, "SELECT count(*) FROM scratch") == 3
    conn.execute("DROP TABLE scratch")


def _listen(conn: psycopg.Connection[Any], server: Pgwake, name: str) -> Scenario:
    conn.execute("LISTEN pins")
    yield
    with _connect(server, name) as other:
        other.execute("NOTIFY pins, 'still here'")
    notes = list(conn.notifies(timeout=10, stop_after=1))
    assert [(n.channel, n.payload) for n in notes] == [("pins", "still here")]
    conn.execute("UNLISTEN *")


def _advisory_lock(conn: psycopg.Connection[Any], server: Pgwake, name: str) -> Scenario:
    conn.execute("SELECT pg_advisory_lock(42)")
    backend = _one(conn, "SELECT pg_backend_pid()")
    yield
    with _connect(server, name) as other:
        held = other.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", [backend]
        ).fetchone()
        assert held == (1,)
        assert _one(other, "SELECT pg_try_advisory_lock(42)") is False
    assert _one(conn, "SELECT pg_advisory_unlock(42)") is True


def _with_hold_cursor(conn: psycopg.Connection[Any], server: Pgwake, name: str) -> Scenario:
    conn.execute("BEGIN")
    conn.execute("DECLARE held CURSOR WITH HOLD FOR SELECT generate_series(1, 3)")
    conn.execute("COMMIT")
    yield
    assert conn.execute("FETCH 2 FROM held").fetchall() == [(1,), (2,)]
    conn.execute("CLOSE held")


def _open_transaction(conn: psycopg.Connection[Any], server: Pgwake, name: str) -> Scenario:
    conn.execute("CREATE TABLE IF NOT EXISTS kept (i int)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO kept VALUES (1)")
    assert _one(conn, "SELECT 1") == 1
    yield
    assert conn.info.transaction_status is pq.TransactionStatus.INTRANS
    conn.execute("INSERT INTO kept VALUES (2)")
    conn.execute("COMMIT")
    with _connect(server, name) as other:
        assert _one(other, "SELECT sum(i) FROM kept") == 3


def _failed_transaction(conn: psycopg.Connection[Any], server: Pgwake, name: str) -> Scenario:
    conn.execute("BEGIN")
    with pytest.raises(errors.DivisionByZero):
        conn.execute("SELECT 1/0")
    yield
    assert conn.info.transaction_status is pq.TransactionStatus.INERROR
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")
    conn.execute("ROLLBACK")
    assert _one(conn, "SELECT 2") == 2


def _copy_in_progress(conn: psycopg.Connection[Any], server: Pgwake, name: str) -> Scenario:
    conn.execute("CREATE TABLE IF NOT EXISTS copied (i int)")
    with conn.cursor().copy("COPY copied FROM STDIN") as copy:
        copy.write_row((1,))
        yield
        copy.write_row((2,))
    assert _one(conn, "SELECT sum(i) FROM copied") == 3


SCENARIOS: dict[str, Callable[[psycopg.Connection[Any], Pgwake, str], Scenario]] = {
    "temporary_table": _temporary_table,
    "listen": _listen,
    "advisory_lock": _advisory_lock,
    "with_hold_cursor": _with_hold_cursor,
    "open_transaction": _open_transaction,
    "failed_transaction": _failed_transaction,
    "copy_in_progress": _copy_in_progress,
}


@pytest.mark.parametrize("case", list(PINS))
def test_a_pinned_session_keeps_the_compute_visibly_and_its_state_intact(
    server: Pgwake, case: str
) -> None:
    name = _pin_endpoint(case)
    reason, label = PINS[case]
    app = f"pins-{case}"
    with _connect(server, name, application_name=app) as conn:
        starts = server.compute_starts(name)
        scenario = SCENARIOS[case](conn, server, name)
        next(scenario)
        wait_for(lambda: _pinned_long(server, name, reason), timeout=30)
        if label not in ("open_transaction", "copy"):  # a park was tried, and refused
            assert server.metric("pgwake_parks_total", endpoint=name, outcome="pinned") > 0
        assert server.state(name) == "running"
        assert server.compute_starts(name) == starts
        pinned = _pinned_long(server, name, reason)
        assert pinned is not None
        assert pinned["client"] == "127.0.0.1"
        assert pinned["application_name"] == app
        view = _view(server, name)
        assert view["session_states"]["pinned"] == 1
        assert view["session_states"]["parked"] == 0
        printed = server.cli("endpoint", "get", name).stdout
        assert f"127.0.0.1 app={app} reason={reason}" in printed, printed
        assert "1 pinned" in printed, printed
        wait_for(
            lambda: server.metric("pgwake_pinned_sessions", endpoint=name, reason=label) == 1,
            timeout=10,
        )
        # The state is intact; then released, and the session parks like any other.
        with pytest.raises(StopIteration):
            next(scenario)
        _park(server, name)
        assert _view(server, name)["pinned_sessions"] == []
        assert server.metric("pgwake_pinned_sessions", endpoint=name, reason=label) == 0
        assert _one(conn, "SELECT 7") == 7
        assert server.state(name) == "running"
    assert server.metric("pgwake_reattaches_total", endpoint=name, outcome="ok") >= 1


# -- 2. pinned_session_timeout ---------------------------------------------------------------


def _fatal_when_closed(conn: psycopg.Connection[Any]) -> psycopg.Error:
    """The error a connection pgwake closed gives at its next query."""
    readable, _, _ = select.select([conn.fileno()], [], [], 30)
    assert readable, "pgwake said nothing to the client"
    with pytest.raises(psycopg.Error) as info:  # 25P03 is an InternalError to psycopg
        conn.execute("SELECT 1")
    return info.value


def test_pinned_session_timeout_ends_pinned_sessions_with_the_reason(server: Pgwake) -> None:
    name = "timeout"
    temp = _connect(server, name, application_name="temp")
    in_transaction = _connect(server, name, application_name="tx")
    try:
        temp.execute("CREATE TEMP TABLE scratch (i int)")
        in_transaction.execute("BEGIN")
        in_transaction.execute("SELECT 1")
        for conn, sqlstate, why in (
            (temp, "57P05", "temporary tables"),
            (in_transaction, "25P03", "open transaction"),
        ):
            error = _fatal_when_closed(conn)
            assert error.sqlstate == sqlstate
            assert error.diag.severity_nonlocalized == "FATAL"
            message = error.diag.message_primary or ""
            assert "kept the endpoint's compute awake" in message, message
            assert why in message, message
            assert "pinned_session_timeout" in (error.diag.message_hint or "")
            assert conn.closed
        server.wait_state(name, "suspended", timeout=30)
        assert "event=pinned_timeout" in server.log_text()
    finally:
        temp.close()
        in_transaction.close()


def _copy_then_stall(conn: psycopg.Connection[Any]) -> None:
    """A COPY that sends 10 kB every 0.3 s for 2 s (more than libpq buffers, so it goes
    out), then stalls until pgwake says something."""
    with conn.cursor().copy("COPY copied_slowly FROM STDIN") as copy:
        started = time.monotonic()
        while time.monotonic() - started < 2:
            copy.write(b"1\n" * 5000)
            assert not select.select([conn.fileno()], [], [], 0.3)[0], "ended while sending"
        readable, _, _ = select.select([conn.fileno()], [], [], 30)
        assert readable, "pgwake said nothing to the client"
        copy.write_row((2,))


def test_pinned_session_timeout_ends_a_stalled_copy_but_not_one_that_sends(
    server: Pgwake,
) -> None:
    name = "timeout"  # pinned_session_timeout 1 s
    with _connect(server, name, application_name="copier") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS copied_slowly (i int)")
        with pytest.raises(psycopg.Error) as info:
            _copy_then_stall(conn)
        error = info.value
        assert error.sqlstate == "57P05"
        assert "COPY in progress" in (error.diag.message_primary or "")
    server.wait_state(name, "suspended", timeout=30)


# -- 3. the opt-out ----------------------------------------------------------------------------


def test_without_parking_an_idle_connection_keeps_the_compute_until_turned_on(
    server: Pgwake,
) -> None:
    name = "optout"
    with _connect(server, name) as conn:
        assert _one(conn, "SELECT 1") == 1
        wait_for(lambda: _view(server, name)["session_states"]["idle"] == 1, timeout=10)
        _holds(lambda: server.state(name) == "running", 6 * IDLE)
        assert server.metric("pgwake_parks_total", endpoint=name, outcome="parked") == 0
        assert "park_sessions: false" in server.cli("endpoint", "get", name).stdout
        server.cli("endpoint", "update", name, "--park-sessions", "true")
        _park(server, name)
        assert _one(conn, "SELECT 2") == 2
    assert server.metric("pgwake_reattaches_total", endpoint=name, outcome="ok") == 1


# -- 4. a re-attach whose wake fails ---------------------------------------------------------


class _BrokenConf:
    """The endpoint's postgresql.conf with a line Postgres refuses (its next start fails)."""

    _LINE = "\nthis is not a setting\n"

    def __init__(self, server: Pgwake, name: str) -> None:
        self.path = server.compute_dir(name) / "data" / "postgresql.conf"

    def __enter__(self) -> None:
        self.path.write_text(self.path.read_text() + self._LINE)

    def __exit__(self, *exc: object) -> None:
        self.path.write_text(self.path.read_text().replace(self._LINE, "\n"))


def test_a_failed_wake_at_reattach_is_an_error_and_the_next_query_succeeds(
    server: Pgwake,
) -> None:
    name = "wakefail"
    with _connect(server, name) as conn:
        conn.execute("SET application_name = 'survivor'")
        pid = conn.info.backend_pid
        _park(server, name)
        with _BrokenConf(server, name):
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT 1")
            assert info.value.sqlstate == "57P03"
            assert info.value.diag.severity_nonlocalized == "ERROR"
            assert "could not start" in (info.value.diag.message_primary or "")
            assert not conn.closed
            assert conn.info.transaction_status is pq.TransactionStatus.IDLE
        # Repaired; until the start back-off has passed each try is the same error.
        deadline = time.monotonic() + 30
        while True:
            try:
                value = _one(conn, "SELECT current_setting('application_name')")
                break
            except errors.CannotConnectNow:  # 57P03; any other error fails the test
                assert not conn.closed
                assert time.monotonic() < deadline, "the compute never started again"
                time.sleep(0.1)
        assert value == "survivor"
        assert conn.info.backend_pid == pid
    assert server.metric("pgwake_reattaches_total", endpoint=name, outcome="wake_failed") >= 1


def test_a_failed_wake_at_reattach_under_the_extended_protocol(server: Pgwake) -> None:
    name = "wakefail"

    async def scenario() -> None:
        conn = await asyncpg.connect(**server.asyncpg_kwargs(name), timeout=60)
        try:
            statement = await conn.prepare("SELECT $1::int + 1")
            assert await statement.fetchval(1) == 2
            await asyncio.to_thread(_park, server, name)
            with _BrokenConf(server, name):
                with pytest.raises(asyncpg.CannotConnectNowError) as info:
                    await statement.fetchval(2)
                assert "could not start" in info.value.args[0]
                assert not conn.is_closed()
            deadline = time.monotonic() + 30
            while True:
                try:
                    value = await statement.fetchval(41)
                    break
                except asyncpg.CannotConnectNowError:
                    assert not conn.is_closed()
                    assert time.monotonic() < deadline, "the compute never started again"
                    await asyncio.sleep(0.1)
            assert value == 42
            assert await conn.fetchval("SELECT 5") == 5
        finally:
            await conn.close()

    uvloop.run(scenario())


# -- 5. cancel across a re-attach -------------------------------------------------------------


@pytest.mark.parametrize("first", ["SELECT 1", None], ids=["after_reattach", "as_reattach"])
def test_cancel_reaches_the_backend_a_parked_session_reattached_to(
    server: Pgwake, first: str | None
) -> None:
    name = "plain"
    with _connect(server, name, application_name="sleeper") as conn:
        _park(server, name)
        if first is not None:
            conn.execute(first)

        def cancel_once_sleeping() -> None:
            with _connect(server, name) as watcher:
                wait_for(
                    lambda: (
                        watcher.execute(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE application_name = 'sleeper' AND query LIKE 'SELECT pg_sleep%%' "
                            "AND state = 'active'"
                        ).fetchone()
                        == (1,)
                    ),
                    timeout=30,
                    interval=0.05,
                )
            conn.cancel_safe()

        canceller = threading.Thread(target=cancel_once_sleeping)
        started = time.monotonic()
        canceller.start()
        try:
            with pytest.raises(errors.QueryCanceled) as info:
                conn.execute("SELECT pg_sleep(30)")
        finally:
            canceller.join()
        assert info.value.sqlstate == "57014"
        assert time.monotonic() - started < 15
        assert _one(conn, "SELECT 3") == 3


def test_a_cancel_for_a_parked_session_wakes_nothing(server: Pgwake) -> None:
    name = "plain"
    with _connect(server, name) as conn:
        _park(server, name)
        starts = server.compute_starts(name)
        before = server.metric("pgwake_cancel_requests_total", outcome="no_backend")
        conn.cancel_safe()  # nothing runs: nothing to cancel, no backend to reach
        wait_for(
            lambda: server.metric("pgwake_cancel_requests_total", outcome="no_backend") > before
        )
        assert server.state(name) == "suspended"
        assert server.compute_starts(name) == starts
        assert _one(conn, "SELECT 3") == 3


# -- 6. ParameterStatus and the backend key ---------------------------------------------------


def test_parameter_status_and_backend_key_survive_a_reattach(server: Pgwake) -> None:
    name = "plain"
    with _connect(server, name) as conn:
        conn.execute("SET application_name = 'x'")
        assert conn.info.parameter_status("application_name") == "x"
        told_pid = conn.info.backend_pid
        first_backend = _one(conn, "SELECT pg_backend_pid()")
        _park(server, name)
        assert _one(conn, "SHOW application_name") == "x"
        assert conn.info.parameter_status("application_name") == "x"
        assert conn.info.backend_pid == told_pid
        assert _one(conn, "SELECT pg_backend_pid()") != first_backend


# -- 7. a parked client that leaves -----------------------------------------------------------


def test_a_parked_client_that_terminates_wakes_nothing(server: Pgwake) -> None:
    name = "plain"
    conn = _connect(server, name)
    try:
        _park(server, name)
        starts = server.compute_starts(name)
    finally:
        conn.close()  # a Terminate, then the socket's close
    wait_for(lambda: _view(server, name)["sessions"] == 0, timeout=10)
    assert server.state(name) == "suspended"
    assert server.compute_starts(name) == starts
    assert not postgres_pids_under(server.compute_dir(name))


# -- 8. strangers ---------------------------------------------------------------------------


def test_strangers_with_a_wrong_password_wake_nothing_and_unpark_nothing(server: Pgwake) -> None:
    name = "strangers"
    with _connect(server, name) as conn:
        _park(server, name)
        starts = server.compute_starts(name)

        async def stranger() -> BaseException:
            kwargs = {**server.asyncpg_kwargs(name), "password": "not-the-password"}
            try:
                await asyncpg.connect(**kwargs, timeout=30)
            except (asyncpg.PostgresError, OSError) as error:
                return error
            raise AssertionError("a stranger got in")

        async def strangers() -> list[BaseException]:
            return list(await asyncio.gather(*(stranger() for _ in range(20))))

        refused = uvloop.run(strangers())
        assert {getattr(error, "sqlstate", None) for error in refused} <= {"28P01", "28000"}
        assert server.state(name) == "suspended"
        assert server.compute_starts(name) == starts
        states = _view(server, name)["session_states"]
        assert states == {"active": 0, "idle": 0, "parked": 1, "pinned": 0}
        assert server.metric("pgwake_reattaches_total", endpoint=name, outcome="ok") == 0
        # The parked session itself still comes back.
        assert _one(conn, "SELECT 4") == 4
