"""Limits at the edge: connection caps (53300), the failed-login throttle, per-endpoint IP
allow-lists, and client addresses from trusted PROXY protocol headers."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterator

import asyncpg
import pytest
import uvloop

from pgwake.edge.throttle import FREE_FAILURES
from tests.integration.pgwake_fixture import PASSWORD, Pgwake, serve, wait_for
from tests.integration.wire import error_fields, read_message, startup_packet

AUTHENTICATION_SASL = struct.pack("!i", 10)
ALLOWED_NETWORK = "10.0.0.0/8"
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture(scope="module")
def capped() -> Iterator[Pgwake]:
    """Caps of 3 sessions per endpoint and 5 in all; no trusted proxies."""
    with serve(
        {"cap-a": {}, "cap-b": {}, "throttled": {}, "fenced": {"allow": ALLOWED_NETWORK}},
        max_endpoint_connections="3",
        max_client_connections="5",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def proxied() -> Iterator[Pgwake]:
    """Behind a load balancer on 127.0.0.1 that sends PROXY headers."""
    with serve({"behind": {"allow": ALLOWED_NETWORK}}, trusted_proxies="127.0.0.1/32") as server:
        yield server


def _kwargs(pgwake: Pgwake, endpoint: str, password: str = PASSWORD) -> dict[str, object]:
    return {**pgwake.asyncpg_kwargs(endpoint), "password": password}


async def _refused(
    pgwake: Pgwake, endpoint: str, password: str = PASSWORD
) -> asyncpg.PostgresError:
    async def connect_and_close() -> None:
        conn = await asyncpg.connect(**_kwargs(pgwake, endpoint, password), timeout=60)
        await conn.close()

    with pytest.raises(asyncpg.PostgresError) as info:
        await connect_and_close()
    return info.value


def _first_reply(
    port: int, payload: bytes, source: str = "127.0.0.1"
) -> tuple[bytes, bytes] | None:
    """Send ``payload`` from ``source``; return the server's first message (None: closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(payload)
        return read_message(sock)


def _startup(endpoint: str) -> bytes:
    return startup_packet({"user": "app", "database": "app", "options": f"endpoint={endpoint}"})


def _error(reply: tuple[bytes, bytes] | None) -> dict[str, str]:
    assert reply is not None
    assert reply[0] == b"E", reply
    return error_fields(reply[1])


def _is_sasl_request(reply: tuple[bytes, bytes] | None) -> bool:
    return reply is not None and reply[0] == b"R" and reply[1][:4] == AUTHENTICATION_SASL


# -- connection caps ------------------------------------------------------------------------


def test_connection_caps_per_endpoint_and_in_all(capped: Pgwake) -> None:
    pgwake = capped

    def active(endpoint: str) -> float:
        return pgwake.metric("pgwake_client_connections_active", endpoint=endpoint)

    async def scenario() -> None:
        sessions = [await asyncpg.connect(**_kwargs(pgwake, "cap-a"), timeout=60) for _ in range(3)]
        try:
            fourth = await _refused(pgwake, "cap-a")
            assert isinstance(fourth, asyncpg.TooManyConnectionsError)
            assert fourth.sqlstate == "53300"
            assert fourth.args[0] == 'too many connections to endpoint "cap-a"'
            # The cap counts open sessions: close one and there is room again.
            await sessions.pop().close()
            wait_for(lambda: active("cap-a") == 2, timeout=10)
            sessions.append(await asyncpg.connect(**_kwargs(pgwake, "cap-a"), timeout=60))
            assert [await s.fetchval("select 1") for s in sessions] == [1, 1, 1]

            # Another endpoint has its own cap, but the global one (5) still applies.
            for _ in range(2):
                sessions.append(await asyncpg.connect(**_kwargs(pgwake, "cap-b"), timeout=60))
            sixth = await _refused(pgwake, "cap-b")
            assert isinstance(sixth, asyncpg.TooManyConnectionsError)
            assert sixth.sqlstate == "53300"
            assert sixth.args[0] == "sorry, too many clients already"
        finally:
            for session in sessions:
                await session.close()

    refusals = pgwake.metric("pgwake_client_errors_total", sqlstate="53300", kind="service")
    uvloop.run(scenario())
    assert (
        pgwake.metric("pgwake_client_errors_total", sqlstate="53300", kind="service")
        == refusals + 2
    )
    wait_for(lambda: active("cap-a") == active("cap-b") == 0, timeout=10)


# -- throttle -------------------------------------------------------------------------------


def test_failed_logins_are_throttled_per_client_address(capped: Pgwake) -> None:
    pgwake = capped

    async def works() -> None:
        conn = await asyncpg.connect(**_kwargs(pgwake, "throttled"), timeout=60)
        assert await conn.fetchval("select 1") == 1
        await conn.close()

    async def scenario() -> None:
        # The first failures are free: each is told 28P01, none is held back.
        for _ in range(FREE_FAILURES):
            wrong = await _refused(pgwake, "throttled", password="wrong-password")
            assert wrong.sqlstate == "28P01"
        await works()  # and a success clears them

        for _ in range(FREE_FAILURES):
            await _refused(pgwake, "throttled", password="wrong-password")
        wrong = await _refused(pgwake, "throttled", password="wrong-password")
        assert wrong.sqlstate == "28P01"
        failed_at = time.monotonic()

        # Another client address is not held back: it gets the SCRAM request at once.
        other = _first_reply(pgwake.port, _startup("throttled"), source="127.0.0.2")
        assert _is_sasl_request(other), other

        # This address is, even with the right password.
        held = await _refused(pgwake, "throttled")
        assert time.monotonic() - failed_at < 1.0, "too slow to observe the 1 s delay"
        assert isinstance(held, asyncpg.InvalidAuthorizationSpecificationError)
        assert held.sqlstate == "28000"
        assert held.args[0] == "too many failed authentication attempts"
        assert "Wait" in (held.hint or "")

        time.sleep(max(0.0, failed_at + 1.1 - time.monotonic()))
        await works()

        # The success cleared the record: the free failures are back.
        for _ in range(FREE_FAILURES):
            await _refused(pgwake, "throttled", password="wrong-password")
        await works()

    uvloop.run(scenario())


# -- allow-list -----------------------------------------------------------------------------


def test_allow_list_refuses_before_authentication(capped: Pgwake) -> None:
    pgwake = capped
    reply = _first_reply(pgwake.port, _startup("fenced"))
    fields = _error(reply)  # an ErrorResponse, not an authentication request
    assert fields["C"] == "28000"
    assert "allow-list" in fields["M"]
    assert "127.0.0.1" in fields.get("D", "")
    assert pgwake.compute_starts("fenced") == 0  # never started
    assert pgwake.state("fenced") == "suspended"
    # The endpoint itself is fine: an endpoint without a list answers the same startup
    # with the SCRAM request.
    assert _is_sasl_request(_first_reply(pgwake.port, _startup("cap-a")))


# -- PROXY protocol -------------------------------------------------------------------------


def _proxy_v2(source: str, source_port: int, destination_port: int) -> bytes:
    addresses = struct.pack(
        "!4s4sHH",
        ipaddress.IPv4Address(source).packed,
        ipaddress.IPv4Address("127.0.0.1").packed,
        source_port,
        destination_port,
    )
    # Version 2, command PROXY; TCP over IPv4; then the address block.
    return PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12) + addresses


def _routed_from(pgwake: Pgwake, client: str) -> bool:
    return any(
        "event=routed" in line and "endpoint=behind" in line and f"client={client}" in line
        for line in pgwake.log_text().splitlines()
    )


def test_proxy_v1_header_from_a_trusted_proxy_sets_the_client_address(proxied: Pgwake) -> None:
    pgwake = proxied
    header = f"PROXY TCP4 10.1.2.3 127.0.0.1 5555 {pgwake.port}\r\n".encode()
    reply = _first_reply(pgwake.port, header + _startup("behind"))
    assert _is_sasl_request(reply), reply  # 10.1.2.3 is in the allow-list
    wait_for(lambda: _routed_from(pgwake, "10.1.2.3"), timeout=10)


def test_proxy_v2_header_from_a_trusted_proxy_sets_the_client_address(proxied: Pgwake) -> None:
    pgwake = proxied
    reply = _first_reply(pgwake.port, _proxy_v2("10.9.8.7", 5556, pgwake.port) + _startup("behind"))
    assert _is_sasl_request(reply), reply
    wait_for(lambda: _routed_from(pgwake, "10.9.8.7"), timeout=10)
    # An address outside the allow-list, told the same way, is refused.
    reply = _first_reply(
        pgwake.port, _proxy_v2("192.0.2.1", 5557, pgwake.port) + _startup("behind")
    )
    assert _error(reply)["C"] == "28000"


def test_trusted_proxy_must_send_a_header(proxied: Pgwake) -> None:
    pgwake = proxied
    fields = _error(_first_reply(pgwake.port, _startup("behind")))
    assert fields["C"] == "08P01"
    assert "PROXY" in fields["M"]


def test_proxy_header_from_an_untrusted_address_is_not_read(
    proxied: Pgwake, capped: Pgwake
) -> None:
    # Read as a startup packet, a header's first bytes are an impossible length: closed
    # without a reply, as Postgres closes it ("invalid length of startup packet").
    def refusals() -> int:
        logs = proxied.log_text() + capped.log_text()
        return logs.count('reason="invalid length of startup packet"')

    before = refusals()
    header = b"PROXY TCP4 10.1.2.4 127.0.0.1 5555 6432\r\n"
    # 127.0.0.2 is not in trusted_proxies: what it sends is not read as a header.
    assert _first_reply(proxied.port, header + _startup("behind"), source="127.0.0.2") is None
    # Without trusted_proxies, nobody's header is read, v1 or v2.
    assert _first_reply(capped.port, header + _startup("cap-a")) is None
    v2 = _proxy_v2("10.1.2.4", 5555, capped.port)
    assert _first_reply(capped.port, v2 + _startup("cap-a")) is None
    wait_for(lambda: refusals() - before == 3, timeout=10)
    assert "client=10.1.2.4" not in proxied.log_text() + capped.log_text()
