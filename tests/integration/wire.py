"""Raw-socket helpers: speak the Postgres wire protocol by hand to test refusals."""

from __future__ import annotations

import socket
import struct


def startup_packet(parameters: dict[str, str], version: int = 3 << 16) -> bytes:
    body = struct.pack("!i", version)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters.items())
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def read_message(sock: socket.socket) -> tuple[bytes, bytes] | None:
    header = _read_exactly(sock, 5)
    if header is None:
        return None
    length = struct.unpack("!i", header[1:])[0]
    body = _read_exactly(sock, length - 4)
    assert body is not None
    return header[:1], body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return data or None
        data += chunk
    return data


def error_fields(body: bytes) -> dict[str, str]:
    return {chr(p[0]): p[1:].decode() for p in body.split(b"\0") if p}


def exchange(port: int, payload: bytes, timeout: float = 10) -> list[tuple[bytes, bytes]]:
    """Send ``payload``, return every message until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        messages = []
        while True:
            message = read_message(sock)
            if message is None:
                return messages
            messages.append(message)


def tls_exchange(
    port: int, server_hostname: str, payload: bytes, timeout: float = 30
) -> list[tuple[bytes, bytes]]:
    """SSLRequest, TLS with SNI ``server_hostname`` (no verification), then ``payload``."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        raw.sendall(struct.pack("!iI", 8, 80877103))
        assert raw.recv(1) == b"S"
        with context.wrap_socket(raw, server_hostname=server_hostname) as sock:
            sock.sendall(payload)
            messages = []
            while True:
                message = read_message(sock)
                if message is None:
                    return messages
                messages.append(message)
