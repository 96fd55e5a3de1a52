"""Malformed or unusual startups get a clear ErrorResponse (or NegotiateProtocolVersion),
except where Postgres answers nothing (an impossible length, a packet cut short): there
pgwake closes without a word too, and logs why."""

from __future__ import annotations

import re
import socket
import struct

from tests.integration.pgwake_fixture import Pgwake, wait_for
from tests.integration.wire import error_fields, exchange, read_message, startup_packet


def _closed_without_a_word(port: int, payload: bytes) -> tuple[bytes, str]:
    """Send ``payload``; return what the server wrote until it closed, and our address."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        host, local_port = sock.getsockname()
        sock.sendall(payload)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass  # a close with unread bytes is a reset: still nothing was written
    return data, f"{host}:{local_port}"


def _wait_logged(pgwake: Pgwake, peer: str, reason: str) -> None:
    line = re.compile(
        rf'event=bad_startup conn=\S+ peer={re.escape(peer)} reason="{re.escape(reason)}"'
    )
    wait_for(lambda: line.search(pgwake.log_text()) is not None, timeout=10)


def test_terminate_before_the_startup_is_closed_without_a_word(shared_pgwake: Pgwake) -> None:
    # node-postgres's connect() then end(): Terminate is queued before the startup, so
    # 'X\0\0\0' is read as a startup length of 1,476,395,008. Postgres logs "invalid
    # length of startup packet" and closes; an ErrorResponse would reach that client as
    # an unhandled error.
    payload = b"X\0\0\0\x04" + startup_packet(
        {"user": "app", "database": "app", "options": "endpoint=nowhere"}
    )
    data, peer = _closed_without_a_word(shared_pgwake.port, payload)
    assert data == b""
    _wait_logged(shared_pgwake, peer, "invalid length of startup packet")
    assert "Traceback" not in shared_pgwake.log_text()


def test_oversized_startup_packet_is_closed_without_a_word(shared_pgwake: Pgwake) -> None:
    data, peer = _closed_without_a_word(shared_pgwake.port, struct.pack("!i", 10_001) + b"\0" * 16)
    assert data == b""
    _wait_logged(shared_pgwake, peer, "invalid length of startup packet")


def test_length_below_minimum_and_2_pow_31_are_closed_without_a_word(
    shared_pgwake: Pgwake,
) -> None:
    for length in (0, 4, 2**31 - 1, -1):
        data, peer = _closed_without_a_word(
            shared_pgwake.port, struct.pack("!i", length) + b"\0" * 8
        )
        assert data == b"", length
        _wait_logged(shared_pgwake, peer, "invalid length of startup packet")


def test_startup_cut_short_by_the_client_is_closed_without_a_word(
    shared_pgwake: Pgwake,
) -> None:
    packet = startup_packet({"user": "app", "database": "app", "options": "endpoint=x"})
    with socket.create_connection(("127.0.0.1", shared_pgwake.port), timeout=10) as sock:
        host, local_port = sock.getsockname()
        sock.sendall(packet[:-3])
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(4096) == b""
    _wait_logged(shared_pgwake, f"{host}:{local_port}", "incomplete startup packet")


def test_protocol_2_is_refused_with_0A000(shared_pgwake: Pgwake) -> None:
    messages = exchange(shared_pgwake.port, startup_packet({"user": "x"}, version=2 << 16))
    assert error_fields(messages[0][1])["C"] == "0A000"


def test_missing_user_is_28000(shared_pgwake: Pgwake) -> None:
    messages = exchange(shared_pgwake.port, startup_packet({"database": "x"}))
    assert error_fields(messages[0][1])["C"] == "28000"


def test_bytes_sent_with_the_ssl_request_are_refused(shared_pgwake: Pgwake) -> None:
    # Bytes already in the buffer after SSLRequest were sent before the TLS handshake
    # and could be an attacker's (CVE-2021-23214): like Postgres, no 'S', one 08P01.
    ssl_request = struct.pack("!iI", 8, 80877103)
    messages = exchange(shared_pgwake.port, ssl_request + b"GARBAGE!")
    assert [kind for kind, _ in messages] == [b"E"]
    fields = error_fields(messages[0][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
    assert fields["M"] == "received unencrypted data after SSL request"


def test_gssenc_request_is_answered_n_and_the_startup_goes_on(shared_pgwake: Pgwake) -> None:
    gssenc_request = struct.pack("!iI", 8, 80877104)
    with socket.create_connection(("127.0.0.1", shared_pgwake.port), timeout=10) as sock:
        sock.sendall(gssenc_request)
        assert sock.recv(1) == b"N"  # no GSSAPI encryption; the client may go on in clear
        sock.sendall(startup_packet({"user": "app", "database": "app"}))
        message = read_message(sock)
    assert message is not None
    assert message[0] == b"E"
    assert error_fields(message[1])["C"] == "08004"  # the startup was read: no endpoint


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
