"""Hostile input against a live pgwake: garbage, truncation, odd lengths, slow drips, TLS
junk, broken or replayed SCRAM, connection floods, huge messages before authentication.

Whatever arrives, pgwake answers with nothing, 'N'/'S', or well-formed messages ending in a
FATAL ErrorResponse (``hostile.parse_reply``), and after every batch: it still runs, every
connection and fd it opened is released, no compute woke, a well-behaved client is still
served, and no traceback reached the log (``hostile.check_invariants``).

One pgwake serves the module, with ``startup_timeout`` 2 s so stalled cases end fast.
Endpoints: ``target`` (the hostile traffic's aim), ``bystander`` (must stay asleep until
the very end) and ``witness`` (woken once, then used for every liveness check). Cases that
need SCRAM itself rather than the failed-login throttle connect from loopback addresses of
their own (127.1.x.y).
"""

from __future__ import annotations

import base64
import contextlib
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwake.auth.scram import ScramClient
from pgwake.compute.management import ADMIN_ROLE
from pgwake.edge.throttle import FREE_FAILURES
from tests.integration.hostile import (
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    SSL_REQUEST,
    Outcome,
    TlsClient,
    abort,
    check_invariants,
    connect,
    liveness,
    message,
    never_woken,
    next_source,
    open_fds,
    parse_reply,
    parse_tls,
    read_many,
    read_until_close,
    run_threads,
    sasl_initial_response,
    sasl_response,
    send_quietly,
    settle,
    target_startup,
)
from tests.integration.pgwake_fixture import PASSWORD as WITNESS_PASSWORD
from tests.integration.pgwake_fixture import (
    errors_in,
    postgres_pids_under,
    serve,
    wait_for,
)
from tests.integration.wire import read_message

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.integration.pgwake_fixture import Pgwake

STARTUP_TIMEOUT = 2.0
TARGET_PASSWORD = "target-pw"
UNTOUCHED = ("target", "bystander")
#: The longest a stalled connection may stay open: the deadline plus scheduling slack.
STALL_LIMIT = STARTUP_TIMEOUT + 1.5
#: What a hostile client may be told; XX000 (our fault) or a wake error never.
HOSTILE_SQLSTATES = frozenset({"08P01", "0A000", "28000", "28P01", "3D000", "08004"})
#: What pgwake logs for a startup it closes without a reply, as Postgres does.
_INVALID_LENGTH = 'reason="invalid length of startup packet"'
_INCOMPLETE = 'reason="incomplete startup packet"'


@dataclass
class Live:
    pgwake: Pgwake
    baseline_fds: int
    #: Whether ``target`` runs while it is attacked (its compute woken by a real login).
    target_running: bool = False
    #: ``target``'s compute processes before the attack (when it runs).
    target_processes: int = 0

    @property
    def port(self) -> int:
        return self.pgwake.port

    @property
    def untouched(self) -> tuple[str, ...]:
        return ("bystander",) if self.target_running else UNTOUCHED

    def check(self) -> None:
        check_invariants(
            self.pgwake, self.baseline_fds, untouched=self.untouched, witness="witness"
        )
        if self.target_running:
            # Still the one compute, and no backend forked for anything hostile.
            assert self.pgwake.compute_starts("target") == 1
            assert self.pgwake.state("target") == "running"
            processes = len(postgres_pids_under(self.pgwake.compute_dir("target")))
            assert processes <= self.target_processes, (processes, self.target_processes)


def _report(category: str, counts: Counter[str], minimum: int) -> None:
    total = sum(counts.values())
    detail = ", ".join(f"{key}={value}" for key, value in sorted(counts.items()))
    print(f"\n[hostile] {category}: {total} cases ({detail})")
    assert total >= minimum, f"{category}: only {total} cases ran (expected >= {minimum})"


@dataclass
class Pending:
    """A connection whose end is checked later, together with others (stalls run at once)."""

    sock: socket.socket
    label: object
    check: Callable[[Outcome], None]


def finish_all(pending: list[Pending], timeout: float = STALL_LIMIT) -> None:
    """Read every pending connection until it closes, then run each one's check."""
    try:
        outcomes = read_many([p.sock for p in pending], timeout)
    finally:
        for item in pending:
            item.sock.close()
    for item, outcome in zip(pending, outcomes, strict=True):
        try:
            item.check(outcome)
        except AssertionError as exc:
            raise AssertionError(f"{item.label!r}: {exc} ({outcome})") from exc


def _stable_fds(pgwake: Pgwake) -> int:
    """The server's fd count once no connection is open and it stops changing."""
    counts = [-1]

    def stable() -> bool:
        counts.append(open_fds(pgwake))
        return pgwake.metric("pgwake_open_connections") == 0 and counts[-1] == counts[-2]

    wait_for(stable, timeout=10, interval=0.3)
    return counts[-1]


@pytest.fixture(scope="module", params=["suspended", "running"], ids=lambda p: f"target-{p}")
def live(request: pytest.FixtureRequest) -> Iterator[Live]:
    """One pgwake per run of the module: every case runs against ``target`` asleep, then
    against ``target`` running (woken by a real login, as a stranger finds it)."""
    target_running = request.param == "running"
    endpoints = {
        "target": {"password": TARGET_PASSWORD, "idle_timeout": 600},
        "bystander": {"password": WITNESS_PASSWORD, "idle_timeout": 600},
        "witness": {"password": WITNESS_PASSWORD, "idle_timeout": 600},
    }
    with serve(endpoints, startup_timeout=str(STARTUP_TIMEOUT)) as server:
        liveness(server, "witness")  # wake it now: later checks measure service, not a wake
        target_processes = 0
        if target_running:
            _log_in(server, "target", TARGET_PASSWORD)
            # The warm sockets (forked backends) that login left are part of the baseline.
            target_processes = _stable_processes(server.compute_dir("target"))
        live = Live(server, _stable_fds(server), target_running, target_processes)
        yield live
        # (d) at the very end: the bystander, asleep all along, still wakes and serves.
        never_woken(server, live.untouched)
        liveness(server, "bystander")
        assert server.compute_starts("bystander") == 1
        assert server.compute_starts("target") == (1 if target_running else 0)
        log = server.log_text()
        assert not errors_in(log), log
        assert "Task exception was never retrieved" not in log, log
        assert "XX000" not in log, log


def _log_in(pgwake: Pgwake, endpoint: str, password: str) -> None:
    async def select_one() -> None:
        kwargs = {**pgwake.asyncpg_kwargs(endpoint), "password": password}
        conn = await asyncpg.connect(**kwargs, timeout=30)
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    uvloop.run(select_one())


def _stable_processes(compute_dir: Path) -> int:
    """The compute's process count once it stops changing (warm sockets filled)."""
    counts = [-1]

    def stable() -> bool:
        counts.append(len(postgres_pids_under(compute_dir)))
        return counts[-1] == counts[-2]

    wait_for(stable, timeout=10, interval=0.3)
    return counts[-1]


# --- 1. Random bytes ------------------------------------------------------------------------

_MODES = (
    "raw",
    # A plausible startup-packet length and code, then random bytes: gets past the length
    # check into the parameter parser.
    "framed_startup",
    "ssl_request_then_bytes",
    "bytes_after_S",
    "startup_then_bytes",
    # A valid startup, then random bytes framed as a 'p' message: into the SCRAM parser.
    "startup_then_framed",
)
_CODES = (3 << 16, (3 << 16) | 1, 2 << 16, 80877102, 80877103, 80877104, 0, -1)


def _check_random_reply(mode: str, prefix: bytes, outcome: Outcome) -> None:
    reply = parse_reply(prefix + outcome.data)
    # Half-closed or stalled, every connection ends within the startup deadline.
    assert outcome.closed, "still open after the startup deadline"
    if reply.sqlstate is not None:
        assert reply.sqlstate in HOSTILE_SQLSTATES, reply.error
    assert AUTH_OK not in reply.auth_codes()
    assert AUTH_SASL_FINAL not in reply.auth_codes()
    if mode == "bytes_after_S":
        assert not reply.messages, "a plaintext message on a TLS channel"
    if mode.startswith("startup_then_"):
        assert reply.messages[0][0] == b"R"
        assert reply.auth_codes()[0] == AUTH_SASL


def _random_bytes_case(
    live: Live, mode: str, garbage: bytes, half_close: bool, stalled: list[Pending]
) -> None:
    prefix = b""
    sock = connect(live.port, next_source())
    kept = False
    try:
        if mode == "bytes_after_S":
            sock.sendall(SSL_REQUEST)
            prefix = sock.recv(1)
            assert prefix == b"S"
            payload = garbage
        elif mode == "ssl_request_then_bytes":
            payload = SSL_REQUEST + garbage
        elif mode == "startup_then_bytes":
            payload = target_startup() + garbage
        elif mode == "startup_then_framed":
            payload = target_startup() + message(b"p", garbage)
        elif mode == "framed_startup":
            code = _CODES[garbage[0] % len(_CODES)] if garbage else _CODES[0]
            payload = struct.pack("!ii", len(garbage) + 8, code) + garbage
        else:
            payload = garbage
        send_quietly(sock, payload)
        if not half_close:
            # Checked after the run, all at once: each may take the whole deadline.
            stalled.append(
                Pending(
                    sock,
                    (mode, garbage),
                    lambda outcome: _check_random_reply(mode, prefix, outcome),
                )
            )
            kept = True
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        outcome = read_until_close(sock, STALL_LIMIT)
    finally:
        if not kept:
            sock.close()
    _check_random_reply(mode, prefix, outcome)


def test_random_bytes_get_a_close_or_well_formed_replies(live: Live) -> None:
    counts: Counter[str] = Counter()
    stalled: list[Pending] = []

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        mode=st.sampled_from(_MODES),
        garbage=st.binary(max_size=400),
        half_close=st.booleans(),
    )
    def one(mode: str, garbage: bytes, half_close: bool) -> None:
        counts[f"{mode}/{'fin' if half_close else 'stall'}"] += 1
        _random_bytes_case(live, mode, garbage, half_close, stalled)

    try:
        one()
    except BaseException:
        for item in stalled:
            item.sock.close()
        raise
    finish_all(stalled)
    _report("1 random bytes (hypothesis)", counts, minimum=100)
    live.check()


# --- 2. Truncated startup packets -----------------------------------------------------------


def test_truncated_startup_packets(live: Live) -> None:
    packet = target_startup()
    counts: Counter[str] = Counter()
    stalled: list[socket.socket] = []
    closed: list[socket.socket] = []
    logged_before = live.pgwake.log_text().count(_INCOMPLETE)
    try:
        for cut in range(1, len(packet)):
            for bucket in (stalled, closed):
                sock = connect(live.port, next_source())
                bucket.append(sock)
                sock.sendall(packet[:cut])
                if bucket is closed:
                    sock.shutdown(socket.SHUT_WR)
        closed_outcomes = read_many(closed, STALL_LIMIT)
        stalled_outcomes = read_many(stalled, STALL_LIMIT + 1)
    finally:
        for sock in stalled + closed:
            sock.close()
    for cut, outcome in enumerate(closed_outcomes, start=1):
        counts["half_closed"] += 1
        # Cut short by the client's close: not a word back (Postgres logs "incomplete
        # startup packet" and closes), and one log line each.
        assert outcome.closed, (cut, outcome)
        assert outcome.elapsed < 1, (cut, outcome)
        assert outcome.data == b"", (cut, outcome)
    wait_for(
        lambda: live.pgwake.log_text().count(_INCOMPLETE) - logged_before >= len(closed_outcomes),
        timeout=5,
    )
    for cut, outcome in enumerate(stalled_outcomes, start=1):
        counts["stalled"] += 1
        reply = parse_reply(outcome.data)
        assert outcome.closed, (cut, outcome)
        assert outcome.elapsed < STALL_LIMIT, (cut, outcome)
        assert reply.sqlstate == "08P01", (cut, outcome)
        assert reply.error is not None
        assert "startup not completed in time" in reply.error["M"]
    _report("2 truncated startup packets", counts, minimum=2 * (len(packet) - 1))
    live.check()


# --- 3. Odd length prefixes -----------------------------------------------------------------

_BAD_LENGTHS = (0, 1, 3, 4, 7, 10_001, 2**31 - 1, -1, -(2**31))
_BODIES = (b"", struct.pack("!i", 3 << 16), b"\0" * 16, b"\xff" * 64)


def _open_and_send(live: Live, data: bytes, *, half_close: bool) -> socket.socket:
    sock = connect(live.port, next_source())
    send_quietly(sock, data)
    if half_close:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    return sock


def _refused_at_once(sqlstate: str, text: str) -> Callable[[Outcome], None]:
    def check(outcome: Outcome) -> None:
        reply = parse_reply(outcome.data)
        assert outcome.closed
        assert outcome.elapsed < 1, "refused on the length alone, without waiting"
        assert reply.sqlstate == sqlstate, reply.error
        assert reply.error is not None
        assert text in reply.error["M"]

    return check


def _closed_at_once_without_a_word(outcome: Outcome) -> None:
    # Postgres logs "invalid length of startup packet" and closes without a reply.
    assert outcome.closed
    assert outcome.elapsed < 1, "refused on the length alone, without waiting"
    assert outcome.data == b"", parse_reply(outcome.data).messages


def _refused_at_deadline(outcome: Outcome) -> None:
    reply = parse_reply(outcome.data)
    assert outcome.closed
    assert outcome.elapsed < STALL_LIMIT
    assert reply.sqlstate == "08P01", reply.error
    assert reply.error is not None
    assert "not completed in time" in reply.error["M"]


def _closed_without_plaintext(outcome: Outcome) -> None:
    assert outcome.closed
    parse_tls(outcome.data)  # TLS alerts at most, never a plaintext message


def test_odd_length_prefixes(live: Live) -> None:
    counts: Counter[str] = Counter()
    pending = []
    logged_before = live.pgwake.log_text().count(_INVALID_LENGTH)
    for length in _BAD_LENGTHS:
        for body in _BODIES:
            for half_close in (False, True):
                sock = _open_and_send(live, struct.pack("!i", length) + body, half_close=half_close)
                check = _closed_at_once_without_a_word
                pending.append(Pending(sock, (length, body, half_close), check))
                counts[str(length)] += 1
    impossible = len(pending)
    # The edges of the valid range behave as the protocol says.
    edges: list[tuple[str, bytes, bool, Callable[[Outcome], None]]] = [
        # 8, the smallest packet: a startup still needs its terminator (as in Postgres).
        ("8", struct.pack("!ii", 8, 3 << 16), True, _refused_at_once("08P01", "terminator")),
        # 9: a 3.0 startup with no parameters at all: no user name.
        ("9", struct.pack("!ii", 9, 3 << 16) + b"\0", True, _refused_at_once("28000", "user")),
        # 10_000, the largest allowed, announced but not sent: the deadline ends it.
        ("10000", struct.pack("!ii", 10_000, 3 << 16) + b"user\0", False, _refused_at_deadline),
        ("10000/fin", struct.pack("!ii", 10_000, 3 << 16), True, _closed_without_plaintext),
        # A first byte of 0x16 is a TLS record (direct TLS): a TLS failure, no plaintext.
        ("0x16000000", struct.pack("!i", 0x16000000) + b"\0" * 8, True, _closed_without_plaintext),
        ("0x16", b"\x16", False, _closed_without_plaintext),
    ]
    for label, data, half_close, check in edges:
        pending.append(Pending(_open_and_send(live, data, half_close=half_close), label, check))
        counts[label] += 1
    finish_all(pending, STALL_LIMIT + 0.5)
    wait_for(
        lambda: live.pgwake.log_text().count(_INVALID_LENGTH) - logged_before >= impossible,
        timeout=5,
    )
    _report("3 odd length prefixes", counts, minimum=len(_BAD_LENGTHS) * 8 + 6)
    live.check()


# --- 4. Slow drip ---------------------------------------------------------------------------

DRIP_INTERVAL = 0.3


def _drip(live: Live, prefix: bytes, dripped: bytes, results: list[tuple[float, bytes]]) -> None:
    """Send ``prefix`` (and read the server's answer to it), then ``dripped`` one byte per
    ``DRIP_INTERVAL`` until the server speaks; record the time to close and the reply."""
    started = time.monotonic()
    sock = connect(live.port, next_source())
    try:
        data = b""
        if prefix:
            sock.sendall(prefix)
            answer = read_message(sock)  # AuthenticationSASL, before the drip starts
            assert answer is not None
            data = message(*answer)
        for index in range(len(dripped)):
            if not send_quietly(sock, dripped[index : index + 1]):
                break
            readable, _, _ = select.select([sock], [], [], DRIP_INTERVAL)
            if readable:
                break
        else:
            raise AssertionError("the whole drip went through without a word from pgwake")
        outcome = read_until_close(sock, STALL_LIMIT)
        assert outcome.closed, "the server did not cut a slow drip"
        results.append((time.monotonic() - started, data + outcome.data))
    finally:
        sock.close()


def test_slow_drip_is_cut_at_the_startup_deadline(live: Live) -> None:
    startup = target_startup()
    client_first = sasl_initial_response(ScramClient.from_password("x").client_first_message())
    startup_results: list[tuple[float, bytes]] = []
    scram_results: list[tuple[float, bytes]] = []
    jobs = [
        *((lambda: _drip(live, b"", startup, startup_results)) for _ in range(20)),
        *((lambda: _drip(live, startup, client_first, scram_results)) for _ in range(5)),
    ]
    runner = threading.Thread(target=run_threads, args=(jobs,))
    started = time.monotonic()
    runner.start()
    # Meanwhile a well-behaved client is served promptly.
    latencies = []
    while runner.is_alive() and len(latencies) < 4:
        latencies.append(liveness(live.pgwake, "witness"))
        time.sleep(0.3)
    runner.join()
    total = time.monotonic() - started
    assert len(startup_results) == 20, "a drip thread failed"
    assert len(scram_results) == 5, "a drip thread failed"
    assert total < 4, total
    assert latencies, "no liveness check ran during the drip"
    assert max(latencies) < 1.5, latencies
    for elapsed, data in startup_results:
        reply = parse_reply(data)
        assert elapsed < STALL_LIMIT + 0.5, elapsed
        assert reply.sqlstate == "08P01", reply.messages
        assert reply.error is not None
        assert "not completed in time" in reply.error["M"]
    for elapsed, data in scram_results:
        reply = parse_reply(data)
        assert elapsed < STALL_LIMIT + 0.5, elapsed
        assert reply.auth_codes() == [AUTH_SASL]
        assert reply.sqlstate == "08P01", reply.messages
    counts = Counter(startup=len(startup_results), scram=len(scram_results))
    print(f"\n[hostile] 4 slow drip: all ended in {total:.2f}s; witness latencies {latencies}")
    _report("4 slow drip", counts, minimum=25)
    live.check()


# --- 5. TLS garbage -------------------------------------------------------------------------


def _garbage_payloads(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.choice((1, 5, 50, 600, 5000))) for _ in range(count)]
    hello = TlsClient().step()
    payloads += [
        b"\x16\x03\x01\xff\xff" + b"\0" * 32,  # a record announcing 64 KiB
        b"\x16\x03\x01\x00\x05hello-this-is-not-tls",
        b"\x15\x03\x03\x00\x02\x02\x28",  # a fatal alert as the first record
        b"\x17\x03\x03\x00\x10" + b"A" * 16,  # application data before any handshake
        hello[:5] + bytes(b ^ 0x5A for b in hello[5:]),  # a ClientHello, scrambled
        hello[: len(hello) // 2] + rng.randbytes(len(hello) // 2),
        b"\x16\x03\x03" + struct.pack("!H", 16384) + rng.randbytes(16384),
    ]
    return payloads


def _tls_socket(live: Live, *, direct: bool) -> socket.socket:
    sock = connect(live.port, next_source())
    if not direct:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
    return sock


def _end(sock: socket.socket, ending: str, label: object, pending: list[Pending]) -> None:
    """End a hostile TLS client: RST now, or FIN / silence and check the server's close."""
    if ending == "rst":
        abort(sock)
        return
    if ending == "fin":
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    pending.append(Pending(sock, label, _closed_without_plaintext))


def test_tls_garbage(live: Live) -> None:
    counts: Counter[str] = Counter()
    pending: list[Pending] = []
    endings = ("fin", "stall", "rst")
    # SSLRequest, 'S', then garbage instead of a ClientHello.
    for index, payload in enumerate(_garbage_payloads(seed=5, count=16)):
        sock = _tls_socket(live, direct=False)
        send_quietly(sock, payload)
        ending = endings[index % 3]
        _end(sock, ending, ("ssl_request", payload[:16]), pending)
        counts[f"ssl_request+garbage/{ending}"] += 1
    # Direct TLS: a first byte 0x16, then garbage.
    rng = random.Random(6)
    for index in range(18):
        payload = b"\x16" + rng.randbytes(rng.choice((0, 4, 40, 400, 4000)))
        sock = _tls_socket(live, direct=True)
        send_quietly(sock, payload)
        ending = endings[index % 3]
        _end(sock, ending, ("direct", payload[:16]), pending)
        counts[f"direct+garbage/{ending}"] += 1
    # Real handshakes (after SSLRequest, and direct with ALPN) cut at each step.
    for direct in (False, True):
        for stage in ("half_hello", "hello", "half_finished"):
            for ending in endings:
                client = TlsClient(alpn="postgresql" if direct else None)
                hello = client.step()
                sock = _tls_socket(live, direct=direct)
                if stage == "half_hello":
                    sock.sendall(hello[: len(hello) // 2])
                else:
                    sock.sendall(hello)
                    finished = client.read_server_flight(sock)
                    if stage == "half_finished":
                        sock.sendall(finished[: len(finished) // 2])
                label = f"{'direct' if direct else 'ssl_request'}/{stage}/{ending}"
                _end(sock, ending, label, pending)
                counts[f"aborted_handshake/{label}"] += 1
    finish_all(pending, STALL_LIMIT + 0.5)
    _report("5 TLS garbage", counts, minimum=50)
    live.check()


def test_tls_fatal_to_a_silent_client_releases_the_socket(live: Live) -> None:
    socks = []
    try:
        for _ in range(10):
            # A completed direct-TLS handshake without ALPN: pgwake sends 08P01 over TLS
            # and closes; this client neither answers close_notify nor closes.
            sock = _tls_socket(live, direct=True)
            socks.append(sock)
            client = TlsClient(alpn=None)
            sock.sendall(client.step())
            sock.sendall(client.read_server_flight(sock))
        outcomes = read_many(socks, 2.5)
        assert all(outcome.data for outcome in outcomes), "no FATAL record received"
        assert live.pgwake.metric("pgwake_open_connections") == 0  # the sessions ended...
        assert all(outcome.closed for outcome in outcomes), (  # ...but the sockets did not
            f"{sum(not o.closed for o in outcomes)} of {len(outcomes)} still open 2.5 s after "
            f"the FATAL; pgwake holds {open_fds(live.pgwake) - live.baseline_fds} extra fds"
        )
    finally:
        for sock in socks:
            sock.close()
        # Once the clients close, pgwake lets go: the module's later checks stay valid.
        settle(live.pgwake, live.baseline_fds)


def test_direct_tls_cut_mid_hello_is_not_reported_as_missing_alpn(live: Live) -> None:
    before = len(live.pgwake.log_text())
    hello = TlsClient(alpn="postgresql").step()
    sock = _tls_socket(live, direct=True)
    try:
        sock.sendall(hello[: len(hello) // 2])
        sock.shutdown(socket.SHUT_WR)
        outcome = read_until_close(sock, STALL_LIMIT)
    finally:
        sock.close()
    _closed_without_plaintext(outcome)
    wait_for(lambda: "event=closed" in live.pgwake.log_text()[before:], timeout=5)
    logged = live.pgwake.log_text()[before:]
    assert "without ALPN" not in logged, logged


# --- 6. SCRAM cut or replayed halfway -------------------------------------------------------


class _Scram:
    """A hand-driven SCRAM client on a raw socket (one connection)."""

    def __init__(
        self,
        live: Live,
        endpoint: str,
        password: str,
        source: str | None = None,
        user: str = "app",
    ):
        self.sock = connect(live.port, source or next_source())
        self.client = ScramClient.from_password(password)
        self.sock.sendall(target_startup(endpoint, user))
        first = read_message(self.sock)
        assert first is not None
        self.first = first

    @property
    def throttled(self) -> bool:
        return self.first[0] == b"E"

    def server_first(self) -> bytes:
        """Send SASLInitialResponse; return the server-first-message."""
        assert self.first[0] == b"R", self.first
        assert struct.unpack_from("!i", self.first[1])[0] == AUTH_SASL
        self.sock.sendall(sasl_initial_response(self.client.client_first_message()))
        reply = read_message(self.sock)
        assert reply is not None
        kind, body = reply
        assert kind == b"R", reply
        assert struct.unpack_from("!i", body)[0] == AUTH_SASL_CONTINUE
        return body[4:]

    def finish(self, data: bytes = b"", *, half_close: bool = False) -> Outcome:
        if data:
            send_quietly(self.sock, data)
        if half_close:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        try:
            return read_until_close(self.sock, STALL_LIMIT)
        finally:
            self.sock.close()


def _refused(outcome: Outcome, allowed: tuple[str, ...] = ("08P01", "28P01", "28000")) -> str:
    assert outcome.closed, outcome
    reply = parse_reply(outcome.data)
    assert AUTH_OK not in reply.auth_codes(), reply.messages
    assert AUTH_SASL_FINAL not in reply.auth_codes(), reply.messages
    assert reply.sqlstate in allowed, (reply.error, outcome)
    assert reply.sqlstate is not None
    return reply.sqlstate


def _successful_client_final(live: Live) -> bytes:
    """Log in to ``witness`` by hand; return the client-final-message that worked."""
    scram = _Scram(live, "witness", WITNESS_PASSWORD)
    final = scram.client.handle_server_first(scram.server_first())
    scram.sock.sendall(sasl_response(final))
    kinds = []
    while True:
        received = read_message(scram.sock)
        assert received is not None, kinds
        kind, body = received
        kinds.append(kind)
        if kind == b"R" and struct.unpack_from("!i", body)[0] == AUTH_SASL_FINAL:
            scram.client.handle_server_final(body[4:])
        if kind == b"Z":
            break
    scram.sock.sendall(message(b"X", b""))
    scram.sock.close()
    return final


def test_scram_cut_garbled_or_replayed(live: Live) -> None:
    counts: Counter[str] = Counter()
    sqlstates: Counter[str] = Counter()

    def refused(kind: str, outcome: Outcome, *allowed: str) -> None:
        sqlstates[_refused(outcome, allowed or ("08P01", "28P01", "28000"))] += 1
        counts[kind] += 1

    # Cut right after server-first: FIN, RST, or silence until the deadline.
    stalled: list[Pending] = []
    for ending in ("fin", "rst", "stall"):
        for _ in range(3):
            scram = _Scram(live, "target", TARGET_PASSWORD)
            scram.server_first()
            counts[f"cut/{ending}"] += 1
            if ending == "rst":
                abort(scram.sock)
            elif ending == "stall":
                stalled.append(Pending(scram.sock, "cut/stall", _refused_at_deadline))
            else:
                outcome = scram.finish(half_close=True)
                assert outcome.closed, outcome
                assert parse_reply(outcome.data).sqlstate in (None, "08P01"), outcome
    finish_all(stalled)

    # Garbage as the client-final-message.
    rng = random.Random(8)
    garbage_finals = [
        sasl_response(b""),
        sasl_response(b"garbage"),
        sasl_response(b"c=biws"),
        sasl_response(b"c=biws,r=not-our-nonce,p=AAAA"),
        sasl_response(b"c=biws,r=,p="),
        sasl_response(b"\xff\xfe" * 100),
        sasl_response(b"A" * 60_000),
        message(b"Q", b"select 1\0"),  # a query before authentication
        message(b"p", b"")[:1] + struct.pack("!i", 2),  # a length below 4
        b"p" + struct.pack("!i", 2**31 - 1) + b"xx",  # a length far past the cap
        *(sasl_response(rng.randbytes(rng.randrange(1, 300))) for _ in range(8)),
    ]
    for index, data in enumerate(garbage_finals):
        scram = _Scram(live, "target", TARGET_PASSWORD)
        scram.server_first()
        refused("garbage_final", scram.finish(data, half_close=index % 2 == 0))

    # A wrong proof: a well-formed client-final whose proof is off by one bit, and a
    # client-final computed from a wrong password.
    for bit in (0, 7, 255):
        scram = _Scram(live, "target", TARGET_PASSWORD)
        final = scram.client.handle_server_first(scram.server_first())
        head, proof = final.rsplit(b",p=", 1)
        raw = bytearray(base64.b64decode(proof))
        raw[bit // 8] ^= 1 << (bit % 8)
        outcome = scram.finish(sasl_response(head + b",p=" + base64.b64encode(raw)))
        refused("wrong_proof", outcome, "28P01")
    for _ in range(3):
        scram = _Scram(live, "target", "not-the-password")
        final = scram.client.handle_server_first(scram.server_first())
        refused("wrong_password", scram.finish(sasl_response(final)), "28P01")

    # Replays on a new connection: a client-final that logged in to witness, and one
    # computed properly for target but never sent. The server nonce differs each time.
    witness_final = _successful_client_final(live)
    for endpoint in ("witness", "target", "witness", "target"):
        scram = _Scram(live, endpoint, TARGET_PASSWORD)
        scram.server_first()
        refused("replay_of_success", scram.finish(sasl_response(witness_final)), "08P01", "28P01")
    unsent = _Scram(live, "target", TARGET_PASSWORD)
    unsent_final = unsent.client.handle_server_first(unsent.server_first())
    unsent.sock.close()
    for _ in range(3):
        scram = _Scram(live, "target", TARGET_PASSWORD)
        scram.server_first()
        refused("replay_of_unsent", scram.finish(sasl_response(unsent_final)), "08P01", "28P01")
    # The whole exchange replayed byte for byte: client-first and client-final at once.
    scram = _Scram(live, "target", TARGET_PASSWORD)
    replay = sasl_initial_response(scram.client.client_first_message())
    refused("replay_whole", scram.finish(replay + sasl_response(unsent_final)), "08P01", "28P01")

    # SASLInitialResponse sent twice (the second where the client-final belongs).
    for _ in range(3):
        scram = _Scram(live, "target", TARGET_PASSWORD)
        scram.server_first()
        again = sasl_initial_response(ScramClient.from_password("x").client_first_message())
        refused("initial_twice", scram.finish(again))

    # A broken client-first: unknown mechanisms, channel binding over plaintext, bad nonces.
    broken_firsts = [
        sasl_initial_response(b"n,,n=,r=abc", mechanism=b"SCRAM-SHA-1"),
        sasl_initial_response(b"n,,n=,r=abc", mechanism=b"SCRAM-SHA-256-PLUS"),
        sasl_initial_response(b"p=tls-server-end-point,,n=,r=abc"),
        sasl_initial_response(b"n,,n=,r="),
        sasl_initial_response(b"n,,n=,r=" + b"x" * 50_000),
        sasl_initial_response(b"n,,n=,r=a,b"),
        sasl_initial_response(b"x,,n=,r=abc"),
        sasl_initial_response(b"n,a=admin,n=,r=abc"),
        message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", 500) + b"short"),
        message(b"p", b"SCRAM-SHA-256"),  # no NUL, no length
    ]
    for data in broken_firsts:
        scram = _Scram(live, "target", TARGET_PASSWORD)
        refused("broken_first", scram.finish(data))

    # Roles that must never log in through the edge: an unknown one (a mock exchange, the
    # same text as a wrong password) and the management role, even with its real password.
    admin_password = (live.pgwake.state_dir / "admin-password").read_text().strip()
    roles = (("nobody", "x"), ("nobody", TARGET_PASSWORD), (ADMIN_ROLE, admin_password))
    for user, password in roles:
        scram = _Scram(live, "target", password, user=user)
        final = scram.client.handle_server_first(scram.server_first())
        outcome = scram.finish(sasl_response(final))
        refused(f"role/{user}", outcome, "28P01")
        reply = parse_reply(outcome.data)
        assert reply.error is not None
        assert reply.error["M"] == f'password authentication failed for user "{user}"'

    # The throttle: from one address, the free failures and one more wrong proof, then
    # at once a refusal before SCRAM.
    source = next_source()
    for _ in range(FREE_FAILURES + 1):
        scram = _Scram(live, "target", "wrong", source=source)
        final = scram.client.handle_server_first(scram.server_first())
        refused("throttle", scram.finish(sasl_response(final)), "28P01")
    for _ in range(3):
        scram = _Scram(live, "target", TARGET_PASSWORD, source=source)
        assert scram.throttled, scram.first
        reply = parse_reply(message(*scram.first) + scram.finish().data)
        assert reply.sqlstate == "28000", reply.error
        assert reply.error is not None
        assert "too many failed authentication attempts" in reply.error["M"]
        counts["throttle"] += 1
        sqlstates["28000"] += 1

    print(f"\n[hostile] 6 SCRAM refusals by SQLSTATE: {dict(sqlstates)}")
    _report("6 SCRAM cut/garbled/replayed", counts, minimum=50)
    live.check()


# --- 7. Connection floods -------------------------------------------------------------------


def test_connect_and_close_floods_and_idle_half_open(live: Live) -> None:
    counts: Counter[str] = Counter()
    for index in range(300):
        sock = connect(live.port)
        if index % 2:
            abort(sock)
            counts["open_then_rst"] += 1
        else:
            sock.close()
            counts["open_then_fin"] += 1
    settle(live.pgwake, live.baseline_fds)

    idle: list[socket.socket] = []
    partial: list[socket.socket] = []
    read_only: list[socket.socket] = []
    try:
        for _ in range(100):
            idle.append(connect(live.port))
        for index in range(30):
            sock = connect(live.port)
            sock.sendall(target_startup()[: 1 + index])
            partial.append(sock)
        for _ in range(30):
            # A whole startup, then the client half-closes and only listens.
            sock = connect(live.port, next_source())
            sock.sendall(target_startup())
            sock.shutdown(socket.SHUT_WR)
            read_only.append(sock)
        # While idle, they are counted and hold fds: the gauge and the fd check see load.
        wait_for(
            lambda: live.pgwake.metric("pgwake_open_connections") >= len(idle) + len(partial),
            timeout=1.5,
        )
        fds_now = open_fds(live.pgwake)
        outcomes = read_many(idle + partial + read_only, STALL_LIMIT + 1)
    finally:
        for sock in idle + partial + read_only:
            sock.close()
    assert fds_now >= live.baseline_fds + len(idle), (fds_now, live.baseline_fds)
    for outcome in outcomes[: len(idle) + len(partial)]:
        reply = parse_reply(outcome.data)
        assert outcome.closed, outcome
        assert outcome.elapsed < STALL_LIMIT, outcome
        assert reply.sqlstate == "08P01", outcome
        counts["idle_or_partial_until_deadline"] += 1
    for outcome in outcomes[len(idle) + len(partial) :]:
        reply = parse_reply(outcome.data)
        assert outcome.closed, outcome
        assert outcome.elapsed < 1, outcome
        assert reply.auth_codes() == [AUTH_SASL], reply.messages
        assert reply.sqlstate in (None, "08P01"), reply.error
        counts["startup_then_half_close"] += 1
    _report("7 floods and idle half-open", counts, minimum=460)
    live.check()


# --- 8. Huge messages before authentication -------------------------------------------------

FLOOD = 150
#: A SASLInitialResponse of 1 MiB in all: the most the old 1 MiB cap accepted.
HUGE_MESSAGE = 1 << 20
#: Allowed growth of pgwake's RSS under the flood. Each client used to cost more than its
#: 1 MiB until the startup deadline (150 of them: +200 MB); refused on its header, it
#: costs a read buffer for a moment.
RSS_GROWTH_LIMIT_KB = 30 * 1024


def _rss_kb(pgwake: Pgwake) -> int:
    assert pgwake.process is not None
    status = Path(f"/proc/{pgwake.process.pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1])


class _RssPeak(threading.Thread):
    """Samples the server's RSS until stopped; ``stop`` returns the largest seen."""

    def __init__(self, pgwake: Pgwake) -> None:
        super().__init__(daemon=True)
        self.pgwake = pgwake
        self.peak = _rss_kb(pgwake)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, _rss_kb(self.pgwake))

    def stop(self) -> int:
        self.done.set()
        self.join()
        self.peak = max(self.peak, _rss_kb(self.pgwake))
        return self.peak


def test_huge_messages_before_authentication_are_refused_on_their_header(live: Live) -> None:
    # An attacker who only knows the endpoint's name: a valid startup, then all but the
    # last byte of a 1 MiB SASLInitialResponse, from many connections at once, each left
    # open. Postgres caps authentication messages at 64 KiB: pgwake refuses the header at
    # once (08P01) and never buffers the body.
    data_length = HUGE_MESSAGE - 4 - len(b"SCRAM-SHA-256\0") - 4
    huge = sasl_initial_response(b"n" * data_length)
    assert len(huge) == 1 + HUGE_MESSAGE
    outcomes: list[Outcome] = []
    everyone_sent = threading.Barrier(FLOOD, timeout=30)

    def attack() -> None:
        sock = connect(live.port, next_source(), timeout=30)
        try:
            sock.sendall(target_startup())
            send_quietly(sock, huge[:-1])
            everyone_sent.wait()  # all of them at once, none finished
            outcomes.append(read_until_close(sock, STALL_LIMIT))
        finally:
            sock.close()

    before = _rss_kb(live.pgwake)
    sampler = _RssPeak(live.pgwake)
    sampler.start()
    try:
        run_threads([attack] * FLOOD)
    finally:
        peak = sampler.stop()
    settle(live.pgwake, live.baseline_fds)
    print(
        f"\n[hostile] 8 huge messages: RSS {before} kB, peak {peak} kB,"
        f" after {_rss_kb(live.pgwake)} kB"
    )
    assert peak - before < RSS_GROWTH_LIMIT_KB, (before, peak)
    counts: Counter[str] = Counter()
    assert len(outcomes) == FLOOD
    for outcome in outcomes:
        assert outcome.closed, outcome
        reply = parse_reply(outcome.data)
        if reply.messages:  # else the close came first (a reset may drop the reply)
            assert reply.auth_codes() == [AUTH_SASL], reply.messages
            assert reply.sqlstate == "08P01", reply.error
            assert reply.error is not None
            assert reply.error["M"] == "invalid message length"
        counts["08P01" if reply.messages else "closed"] += 1
    _report("8 huge messages before authentication", counts, minimum=FLOOD)
    live.check()
