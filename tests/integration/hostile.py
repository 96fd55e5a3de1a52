"""Helpers for hostile-input tests against a live pgwake: raw sockets, strict reply checks.

A hostile client must get one of three things back: nothing (a clean close), the single
byte 'N' or 'S' answering an encryption request (after 'S' only TLS records follow), or
well-formed protocol messages, the last of which, if any is an error, is a FATAL
ErrorResponse with a five-character SQLSTATE. ``parse_reply`` checks exactly that.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import selectors
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import uvloop

from tests.integration.pgwake_fixture import errors_in, wait_for
from tests.integration.wire import error_fields, startup_packet

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from tests.integration.pgwake_fixture import Pgwake

SSL_REQUEST = struct.pack("!iI", 8, 80877103)
GSSENC_REQUEST = struct.pack("!iI", 8, 80877104)
#: Authentication request codes (protocol docs, "Message Formats").
AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 10, 11, 12
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
#: Message types pgwake may send before authentication ends (the compute's own
#: messages after AuthenticationOk are not parsed here).
_PRE_AUTH_TYPES = frozenset(b"REv")
#: TLS record content types (RFC 8446 section 5.1): change_cipher_spec .. application_data.
_TLS_CONTENT_TYPES = range(20, 24)
_TLS_MAX_RECORD = 2**14 + 2048
#: A log line at level ERROR (logfmt: ts=... level=... logger=... ...).
_ERROR_LINE = re.compile(r"^ts=\S+ level=(?:error|critical) .*$", re.MULTILINE)


def target_startup(endpoint: str = "target", user: str = "app") -> bytes:
    """The well-behaved startup packet the hostile cases mangle."""
    return startup_packet({"user": user, "database": "app", "options": f"endpoint={endpoint}"})


# --- Sockets --------------------------------------------------------------------------------

_sources = itertools.count(1)


def next_source() -> str:
    """A fresh loopback source address (127.1.0.1, 127.1.0.2, ...).

    The failed-login throttle is keyed by (client address, endpoint): a case that needs the
    SCRAM exchange itself, not the throttle's refusal, connects from an address of its own.
    """
    index = next(_sources)
    while index % 256 in (0, 255):
        index = next(_sources)
    return f"127.{1 + index // 65536}.{index // 256 % 256}.{index % 256}"


def connect(port: int, source: str | None = None, timeout: float = 5) -> socket.socket:
    """A TCP connection to pgwake, optionally from a given loopback source address."""
    address = (source, 0) if source is not None else None
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=address)


def abort(sock: socket.socket) -> None:
    """Close with a RST instead of a FIN (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; return False when the server already closed (that is allowed)."""
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


@dataclass
class Outcome:
    """What the server did on one connection."""

    data: bytes = b""
    #: The server closed (FIN or RST) before the deadline.
    closed: bool = False
    reset: bool = False
    #: Seconds from the start of reading to the close (or to the deadline).
    elapsed: float = 0.0


def read_until_close(sock: socket.socket, timeout: float) -> Outcome:
    """Read everything until the server closes or ``timeout`` seconds pass."""
    return read_many([sock], timeout)[0]


def read_many(socks: list[socket.socket], timeout: float) -> list[Outcome]:
    """Read every socket until it closes or ``timeout`` passes; one ``Outcome`` each."""
    outcomes = [Outcome() for _ in socks]
    started = time.monotonic()
    deadline = started + timeout
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(socks):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                index = key.data
                outcome = outcomes[index]
                try:
                    chunk = socks[index].recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    outcome.reset = True
                    chunk = b""
                if chunk:
                    outcome.data += chunk
                    continue
                outcome.closed = True
                outcome.elapsed = time.monotonic() - started
                selector.unregister(socks[index])
    for outcome in outcomes:
        if not outcome.closed:
            outcome.elapsed = time.monotonic() - started
    return outcomes


# --- Replies --------------------------------------------------------------------------------


@dataclass
class Reply:
    """A server's reply, split into its parts."""

    #: 'N'/'S' single bytes answering SSLRequest/GSSENCRequest.
    encryption_answers: bytes = b""
    #: TLS records (content type, payload length) after an 'S'.
    tls_records: list[tuple[int, int]] = field(default_factory=list)
    messages: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def error(self) -> dict[str, str] | None:
        """The fields of the final ErrorResponse, if the reply ends with one."""
        if self.messages and self.messages[-1][0] == b"E":
            return error_fields(self.messages[-1][1])
        return None

    @property
    def sqlstate(self) -> str | None:
        return self.error["C"] if self.error else None

    def auth_codes(self) -> list[int]:
        return [struct.unpack_from("!i", body)[0] for kind, body in self.messages if kind == b"R"]


def _check_tls_records(data: bytes) -> list[tuple[int, int]]:
    records = []
    offset = 0
    while offset < len(data):
        assert len(data) - offset >= 5, f"truncated TLS record header: {data[offset:]!r}"
        content_type, major, minor, length = struct.unpack_from("!BBBH", data, offset)
        assert content_type in _TLS_CONTENT_TYPES, f"not a TLS record: {data[offset:]!r}"
        assert (major, minor) in ((3, 1), (3, 2), (3, 3), (3, 4)), f"TLS version {major}.{minor}"
        assert length <= _TLS_MAX_RECORD, f"TLS record of {length} bytes"
        assert offset + 5 + length <= len(data), "truncated TLS record"
        records.append((content_type, length))
        offset += 5 + length
    return records


def _check_message(kind: bytes, body: bytes) -> None:
    if kind == b"E":
        fields = error_fields(body)
        assert body.endswith(b"\0"), f"ErrorResponse not NUL-terminated: {body!r}"
        assert _SQLSTATE.fullmatch(fields.get("C", "")), f"bad SQLSTATE in {fields}"
        assert fields.get("S") == "FATAL", f"not FATAL: {fields}"
        assert fields.get("V", "FATAL") == "FATAL", f"V differs from S: {fields}"
        assert fields.get("M"), f"no message: {fields}"
        assert "Traceback" not in fields["M"] + fields.get("D", "")
    elif kind == b"R":
        assert len(body) >= 4, f"short Authentication message: {body!r}"
        (code,) = struct.unpack_from("!i", body)
        assert code in (AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL), code
        if code == AUTH_SASL:
            names = body[4:]
            assert names.endswith(b"\0\0"), f"bad mechanism list: {names!r}"
            assert set(names[:-2].split(b"\0")) <= {b"SCRAM-SHA-256", b"SCRAM-SHA-256-PLUS"}
        if code == AUTH_OK:
            assert len(body) == 4
    elif kind == b"v":
        assert len(body) >= 8, f"short NegotiateProtocolVersion: {body!r}"
        _, count = struct.unpack_from("!ii", body)
        names = body[8:]
        assert names.count(b"\0") == count, f"NegotiateProtocolVersion lists {names!r}"
        assert not names or names.endswith(b"\0")


def parse_tls(data: bytes) -> list[tuple[int, int]]:
    """Check that ``data`` is whole TLS records (a direct-TLS reply); return them."""
    return _check_tls_records(data)


def parse_reply(data: bytes) -> Reply:
    """Split and check a pre-authentication reply (see the module docstring).

    Raises ``AssertionError`` naming the first thing that is not well-formed."""
    reply = Reply()
    offset = 0
    # pgwake never sends NoticeResponse before authentication, so a leading 'N' is the
    # answer to GSSENCRequest; an 'S' starts TLS, after which only TLS records may follow.
    while offset < len(data) and data[offset : offset + 1] in (b"N", b"S"):
        answer = data[offset : offset + 1]
        reply.encryption_answers += answer
        offset += 1
        if answer == b"S":
            reply.tls_records = _check_tls_records(data[offset:])
            return reply
    while offset < len(data):
        assert len(data) - offset >= 5, f"truncated message header: {data[offset:]!r}"
        kind = data[offset : offset + 1]
        assert kind[0] in _PRE_AUTH_TYPES, f"unexpected message type {kind!r} in {data!r}"
        (length,) = struct.unpack_from("!i", data, offset + 1)
        assert 4 <= length <= 65536, f"bad message length {length} in {data!r}"
        assert offset + 1 + length <= len(data), f"truncated message in {data!r}"
        body = data[offset + 5 : offset + 1 + length]
        _check_message(kind, body)
        assert not reply.messages or reply.messages[-1][0] != b"E", "message after a FATAL"
        reply.messages.append((kind, body))
        offset += 1 + length
    return reply


def message(kind: bytes, body: bytes) -> bytes:
    """A typed frontend message."""
    return kind + struct.pack("!i", len(body) + 4) + body


def sasl_initial_response(data: bytes, mechanism: bytes = b"SCRAM-SHA-256") -> bytes:
    return message(b"p", mechanism + b"\0" + struct.pack("!i", len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


class TlsClient:
    """The client side of a real TLS handshake, driven by hand so it can stop midway."""

    def __init__(self, server_hostname: str = "target.localhost", alpn: str | None = None):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if alpn is not None:
            context.set_alpn_protocols([alpn])
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self.done = False

    def step(self, received: bytes = b"") -> bytes:
        """Feed the server's bytes; return what the client sends next."""
        if received:
            self._incoming.write(received)
        if not self.done:
            try:
                self.ssl.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
        return self._outgoing.read()

    def read_server_flight(self, sock: socket.socket, timeout: float = 5) -> bytes:
        """Read until the handshake is done on our side; return our next flight."""
        sock.settimeout(timeout)
        while True:
            chunk = sock.recv(65536)
            assert chunk, "server closed during the TLS handshake"
            flight = self.step(chunk)
            if self.done:
                return flight

    def decrypt(self, data: bytes) -> bytes:
        """Plaintext carried by ``data`` (records after the handshake)."""
        self._incoming.write(data)
        plain = b""
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            while chunk := self.ssl.read(65536):
                plain += chunk
        return plain


# --- Invariants -----------------------------------------------------------------------------


def open_fds(pgwake: Pgwake) -> int:
    assert pgwake.process is not None
    return len(list(Path(f"/proc/{pgwake.process.pid}/fd").iterdir()))


def settle(pgwake: Pgwake, baseline_fds: int, timeout: float = 6) -> None:
    """Wait until no client connection is open and the fd count is back to its baseline."""

    def settled() -> bool:
        return pgwake.metric("pgwake_open_connections") == 0 and (
            abs(open_fds(pgwake) - baseline_fds) <= 2
        )

    try:
        wait_for(settled, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(
            f"not settled after {timeout}s: open_connections="
            f"{pgwake.metric('pgwake_open_connections')} fds={open_fds(pgwake)}"
            f" baseline={baseline_fds}"
        ) from None


def never_woken(pgwake: Pgwake, endpoints: Iterable[str]) -> None:
    """Nothing hostile woke these endpoints: one postmaster start (create's), no wake."""
    wakes = {
        labels: value
        for (name, labels), value in pgwake.metrics().items()
        if name == "pgwake_wakes_total"
    }
    for endpoint in endpoints:
        assert pgwake.compute_starts(endpoint) == 0, endpoint
        assert pgwake.state(endpoint) in (None, "suspended"), endpoint
        woken = {labels: v for labels, v in wakes.items() if ("endpoint", endpoint) in labels}
        assert not any(woken.values()), (endpoint, woken)


def liveness(pgwake: Pgwake, endpoint: str) -> float:
    """A well-behaved asyncpg client runs SELECT 1; return how long it took."""

    async def select_one() -> float:
        started = time.monotonic()
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs(endpoint), timeout=30)
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()
        return time.monotonic() - started

    return float(uvloop.run(select_one()))


def check_invariants(
    pgwake: Pgwake, baseline_fds: int, *, untouched: Iterable[str], witness: str
) -> None:
    """(a) running, (b) settled, (c) nothing woken, (d) others served, (e) no traceback."""
    assert pgwake.process is not None
    assert pgwake.process.poll() is None, pgwake.log_text()[-5000:]
    settle(pgwake, baseline_fds)
    never_woken(pgwake, untouched)
    liveness(pgwake, witness)
    settle(pgwake, baseline_fds)
    log = pgwake.log_text()
    assert not errors_in(log), log
    # ``error`` is for pgwake's own faults (style guide): hostile input is a warning at most.
    assert not _ERROR_LINE.findall(log), _ERROR_LINE.findall(log)


def run_threads(jobs: Iterable[Callable[[], None]]) -> None:
    """Run each job in its own thread; re-raise the first failure."""
    failures: list[BaseException] = []

    def wrap(job: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                job()
            except BaseException as exc:  # re-raised below
                failures.append(exc)

        return run

    threads = [threading.Thread(target=wrap(job)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
