"""Malformed or unusual startups get a clear ErrorResponse (or NegotiateProtocolVersion)."""

from __future__ import annotations

import socket
import struct

from tests.integration.pgwake_fixture import PASSWORD, Pgwake, wait_for
from tests.integration.wire import error_fields, exchange, read_message, startup_packet


def test_oversized_startup_packet_is_08P01(shared_pgwake: Pgwake) -> None:
    messages = exchange(shared_pgwake.port, struct.pack("!i", 10_001) + b"\0" * 16)
    assert messages[0][0] == b"E"
    fields = error_fields(messages[0][1])
    assert fields["C"] == "08P01"
    assert fields["S"] == "FATAL"


def test_length_below_minimum_and_2_pow_31_are_08P01(shared_pgwake: Pgwake) -> None:
    for length in (0, 4, 2**31 - 1, -1):
        messages = exchange(shared_pgwake.port, struct.pack("!i", length) + b"\0" * 8)
        assert error_fields(messages[0][1])["C"] == "08P01", length


def test_protocol_2_is_refused_with_0A000(shared_pgwake: Pgwake) -> None:
    messages = exchange(shared_pgwake.port, startup_packet({"user": "x"}, version=2 << 16))
    assert error_fields(messages[0][1])["C"] == "0A000"


def test_missing_user_is_28000(shared_pgwake: Pgwake) -> None:
    messages = exchange(shared_pgwake.port, startup_packet({"database": "x"}))
    assert error_fields(messages[0][1])["C"] == "28000"


def test_garbage_after_ssl_request_is_refused(shared_pgwake: Pgwake) -> None:
    ssl_request = struct.pack("!iI", 8, 80877103)
    messages = exchange(shared_pgwake.port, ssl_request + b"GARBAGE!")
    # The 'S'/'N' byte is not a framed message: parse what follows it.
    assert messages, "expected an ErrorResponse"


def test_newer_minor_version_gets_negotiate_protocol_version(shared_pgwake: Pgwake) -> None:
    shared_pgwake.create("npv")
    packet = startup_packet(
        {"user": "app", "database": "app", "options": "endpoint=npv", "_pq_.something": "1"},
        version=(3 << 16) | 2,
    )
    with socket.create_connection(("127.0.0.1", shared_pgwake.port), timeout=60) as sock:
        sock.sendall(packet)
        message = read_message(sock)
        assert message is not None
        kind, body = message
        assert kind == b"v"
        newest_minor, count = struct.unpack_from("!ii", body)
        assert (newest_minor, count) == (0, 1)
        assert body[8:] == b"_pq_.something\0"
        # Then the compute's authentication request follows as usual (SASL).
        message = read_message(sock)
        assert message is not None
        assert message[0] == b"R"
        assert struct.unpack_from("!i", message[1])[0] == 10
    assert PASSWORD  # the exchange stops before the password is needed


def test_slow_startup_times_out(pgwake: Pgwake) -> None:
    pgwake.settings["startup_timeout"] = "1"
    pgwake.start()
    with socket.create_connection(("127.0.0.1", pgwake.port), timeout=10) as sock:
        sock.sendall(struct.pack("!i", 40))  # promise 40 bytes, send nothing more
        message = read_message(sock)
    assert message is not None
    assert error_fields(message[1])["C"] == "08P01"
    assert "startup not completed in time" in error_fields(message[1])["M"]


def test_tls_garbage_is_closed_cleanly(shared_pgwake: Pgwake) -> None:
    with socket.create_connection(("127.0.0.1", shared_pgwake.port), timeout=10) as sock:
        sock.sendall(struct.pack("!iI", 8, 80877103))
        assert sock.recv(1) == b"S"
        sock.sendall(b"\x16\x03\x01\x00\x05hello-this-is-not-tls" * 4)
        assert sock.recv(100) == b""  # closed, no plaintext error on a TLS channel
    # The shared fixture asserts at teardown that no traceback reached the log.
    wait_for(lambda: "event=tls_error" in shared_pgwake.log_text(), timeout=10)
