"""Attacks by a stranger who knows an endpoint's name but no password, against a running
pgwake and *running* computes, in parallel.

Before a valid proof a connection must cost nothing the attacker can multiply: it holds
no session slot, does not keep a compute awake, forks no compute backend, cannot guess
faster than the throttle's schedule however many connections it opens at once, and from
one address cannot hold more than its share of connections in the handshake.
"""

from __future__ import annotations

import socket
import struct
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack

import asyncpg
import pytest
import uvloop

from pgwake.auth.scram import ScramClient
from pgwake.edge.throttle import FREE_FAILURES
from tests.integration.hostile import (
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    connect,
    liveness,
    message,
    read_many,
    sasl_initial_response,
    sasl_response,
    target_startup,
)
from tests.integration.pgwake_fixture import (
    PASSWORD,
    Pgwake,
    errors_in,
    postgres_pids_under,
    serve,
    wait_for,
)
from tests.integration.wire import error_fields, read_message

PER_ADDRESS = 110


@pytest.fixture(scope="module")
def pgwake() -> Iterator[Pgwake]:
    """Endpoints with short idle timeouts and a cap of 3 sessions each; stalled handshakes
    live 30 s (longer than any case here), at most ``PER_ADDRESS`` from one address."""
    endpoints = {
        name: {"idle_timeout": 600} for name in ("guess", "slots", "forks", "text", "typo")
    }
    with serve(
        {**endpoints, "awake": {"idle_timeout": 1}},
        max_endpoint_connections="3",
        startup_timeout="30",
        max_unauthenticated_per_address=str(PER_ADDRESS),
    ) as server:
        yield server


def _expect(sock: socket.socket, kind: bytes) -> bytes:
    """Read the next message; it must be of type ``kind``; return its body."""
    reply = read_message(sock)
    assert reply is not None, "closed"
    assert reply[0] == kind, error_fields(reply[1]) if reply[0] == b"E" else reply
    return reply[1]


def _stranger(pgwake: Pgwake, endpoint: str, source: str, *, client_first: bool) -> socket.socket:
    """A connection that sent its startup (and client-first) and now stalls."""
    sock = connect(pgwake.port, source, timeout=30)
    sock.sendall(target_startup(endpoint))
    assert struct.unpack_from("!i", _expect(sock, b"R"))[0] == AUTH_SASL
    if client_first:
        sock.sendall(sasl_initial_response(b"n,,n=,r=strangerstrangerstranger"))
        assert struct.unpack_from("!i", _expect(sock, b"R"))[0] == AUTH_SASL_CONTINUE
    return sock


def _login(pgwake: Pgwake, endpoint: str) -> None:
    async def select_one() -> None:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs(endpoint), timeout=30)
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    uvloop.run(select_one())


class _Guess:
    """A hand-driven SCRAM exchange up to the proof."""

    def __init__(self, pgwake: Pgwake, endpoint: str, password: str, source: str) -> None:
        self.client = ScramClient.from_password(password)
        self.sock = connect(pgwake.port, source, timeout=30)
        self.sock.sendall(target_startup(endpoint))
        _expect(self.sock, b"R")
        self.sock.sendall(sasl_initial_response(self.client.client_first_message()))
        server_first = _expect(self.sock, b"R")
        assert struct.unpack_from("!i", server_first)[0] == AUTH_SASL_CONTINUE
        self.final = sasl_response(self.client.handle_server_first(server_first[4:]))


def _sqlstate(data: bytes) -> str | None:
    """The SQLSTATE of the first ErrorResponse in ``data`` (None: no error)."""
    while len(data) >= 5:
        kind = data[:1]
        (length,) = struct.unpack_from("!i", data, 1)
        if kind == b"E":
            return error_fields(data[5 : 1 + length]).get("C")
        data = data[1 + length :]
    return None


def test_parallel_proofs_cannot_outrun_the_throttle(pgwake: Pgwake) -> None:
    """100 exchanges opened at once from one address, 99 wrong proofs sent together, then
    the right one: only the free failures and the first paid one are checked; every
    later proof, the right one too, is refused without being checked."""
    source = "127.3.0.1"
    wrong = [_Guess(pgwake, "guess", "not-the-password", source) for _ in range(99)]
    right = _Guess(pgwake, "guess", PASSWORD, source)
    for guess in wrong:
        guess.sock.sendall(guess.final)
    outcomes = read_many([guess.sock for guess in wrong], timeout=30)
    sqlstates = Counter(_sqlstate(outcome.data) for outcome in outcomes)
    assert sqlstates == {"28P01": FREE_FAILURES + 1, "28000": 99 - FREE_FAILURES - 1}, sqlstates
    right.sock.sendall(right.final)
    (outcome,) = read_many([right.sock], timeout=30)
    assert _sqlstate(outcome.data) == "28000", outcome
    for guess in [*wrong, right]:
        guess.sock.close()
    assert pgwake.compute_starts("guess") == 0


def test_stalled_strangers_do_not_keep_a_running_compute_awake(pgwake: Pgwake) -> None:
    _login(pgwake, "awake")
    pgwake.wait_state("awake", "running", timeout=5)
    with ExitStack() as stack:
        for index in range(10):
            sock = _stranger(pgwake, "awake", f"127.3.1.{index + 1}", client_first=index % 2 == 0)
            stack.callback(sock.close)
        # idle_timeout is 1 s: the strangers, still connected, must not hold it up.
        pgwake.wait_state("awake", "suspended", timeout=10)
        assert pgwake.metric("pgwake_unauthenticated_connections") >= 10
    assert pgwake.compute_starts("awake") == 1


def test_stalled_strangers_take_no_session_slot(pgwake: Pgwake) -> None:
    """The endpoint serves 3 sessions at once; 30 strangers stalled in the handshake
    leave all 3 to the clients that know the password."""
    _login(pgwake, "slots")
    with ExitStack() as stack:
        for index in range(30):
            sock = _stranger(pgwake, "slots", f"127.3.2.{index + 1}", client_first=index % 2 == 0)
            stack.callback(sock.close)

        async def three_sessions() -> None:
            kwargs = pgwake.asyncpg_kwargs("slots")
            sessions = [await asyncpg.connect(**kwargs, timeout=30) for _ in range(3)]
            try:
                assert [await s.fetchval("select 1") for s in sessions] == [1, 1, 1]
            finally:
                for session in sessions:
                    await session.close()

        uvloop.run(three_sessions())
        assert pgwake.metric("pgwake_client_connections_active", endpoint="slots") == 0


def test_stalled_strangers_fork_no_compute_backend(pgwake: Pgwake) -> None:
    """A stranger who sends a well-formed client-first for a real role (``app``) gets its
    server-first, but no connection to the compute is opened before a proof."""
    _login(pgwake, "forks")
    compute_dir = pgwake.compute_dir("forks")

    def backends() -> int:
        return len(postgres_pids_under(compute_dir))

    before = backends()
    with ExitStack() as stack:
        for index in range(30):
            sock = _stranger(pgwake, "forks", f"127.3.3.{index + 1}", client_first=True)
            stack.callback(sock.close)
        after = backends()
    assert after <= before, (before, after)
    _login(pgwake, "forks")  # still served


def test_one_address_cannot_hold_more_than_its_share_of_handshakes(pgwake: Pgwake) -> None:
    source = "127.3.4.1"
    with ExitStack() as stack:
        for _ in range(PER_ADDRESS):
            sock = _stranger(pgwake, "slots", source, client_first=False)
            stack.callback(sock.close)
        # One more from the same address is refused at once, before it sends anything.
        refused = connect(pgwake.port, source, timeout=30)
        stack.callback(refused.close)
        fields = error_fields(_expect(refused, b"E"))
        assert fields["C"] == "53300", fields
        assert "still logging in" in fields["M"], fields
        # Another address, and a client that knows the password, are served.
        other = _stranger(pgwake, "slots", "127.3.4.2", client_first=False)
        stack.callback(other.close)
        assert liveness(pgwake, "slots") > 0
    assert pgwake.metric("pgwake_unauthenticated_refused_total", limit="address") >= 1
    wait_for(lambda: pgwake.metric("pgwake_unauthenticated_connections") == 0, timeout=10)


@pytest.mark.parametrize("running", [False, True], ids=["suspended", "running"])
def test_names_that_are_not_utf8_are_unknown_roles(pgwake: Pgwake, running: bool) -> None:
    if running:
        _login(pgwake, "text")
    else:
        assert pgwake.compute_starts("text") == 0
    for user in (b"app\xff", b"\xc3(", b"app\xed\xa0\x80"):
        sock = connect(pgwake.port, f"127.3.5.{1 if running else 3}", timeout=30)
        with sock:
            parameters = b"user\0" + user + b"\0database\0app\0options\0endpoint=text\0\0"
            sock.sendall(struct.pack("!ii", 8 + len(parameters), 3 << 16) + parameters)
            _expect(sock, b"R")
            client = ScramClient.from_password(PASSWORD)
            sock.sendall(sasl_initial_response(client.client_first_message()))
            server_first = _expect(sock, b"R")
            sock.sendall(sasl_response(client.handle_server_first(server_first[4:])))
            assert error_fields(_expect(sock, b"E"))["C"] == "28P01"
    # A client that leaves before its client-first, while the lookup may still run.
    for _ in range(5):
        sock = connect(pgwake.port, "127.3.5.2", timeout=30)
        sock.sendall(target_startup("text") + message(b"X", b""))
        sock.close()
    assert pgwake.compute_starts("text") == (1 if running else 0)
    log = pgwake.log_text()
    assert not errors_in(log), log
    assert "XX000" not in log, log


def test_typos_under_sslmode_prefer_are_not_a_lockout(pgwake: Pgwake) -> None:
    """psql's default sslmode=prefer retries without TLS after a failed TLS attempt, so
    one typo is two failed proofs. Two typos in a row still read as a wrong password,
    and the right one right after them gets in."""

    def psql(password: str) -> subprocess.CompletedProcess[str]:
        dsn = pgwake.dsn("typo", sslmode="prefer", password=password)
        return subprocess.run(
            ["psql", dsn, "-XAtc", "select 1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    for _ in range(2):
        typo = psql("not-the-password")
        assert typo.returncode != 0
        assert "password authentication failed" in typo.stderr, typo.stderr
        assert "too many failed" not in typo.stderr, typo.stderr
    right = psql(PASSWORD)
    assert right.returncode == 0, right.stderr
    assert right.stdout.strip() == "1"
