"""TLS at the edge: a CA-signed wildcard certificate, SNI routing with verify-full, direct
TLS (ALPN required), channel binding, require_tls, and certificate reload on SIGHUP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import signal
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
import uvloop

from tests.certs import write_server_certificate
from tests.integration.pgwake_fixture import PASSWORD, Pgwake, serve, wait_for
from tests.integration.wire import error_fields, read_message, startup_packet

SSL_REQUEST = struct.pack("!iI", 8, 80877103)


# -- servers --------------------------------------------------------------------------------

DNS_NAMES = ("*.localhost", "localhost")


@contextlib.contextmanager
def _tls_pgwake(directory: Path, endpoints: tuple[str, ...], **settings: str) -> Iterator[Pgwake]:
    with serve(
        endpoints,
        base_domain="localhost",
        tls_cert=str(directory / "server.crt"),
        tls_key=str(directory / "server.key"),
        **settings,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pgwake, Path]]:
    """pgwake with a CA-signed wildcard certificate and require_tls on."""
    directory = tmp_path_factory.mktemp("strict-tls")
    ca = write_server_certificate(directory, DNS_NAMES, ca_name="ca-one")
    with _tls_pgwake(directory, ("tls-a", "cbind"), require_tls="true") as server:
        yield server, ca


@pytest.fixture(scope="module")
def reloadable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pgwake, Path]]:
    """pgwake with a CA-signed certificate, listening on loopback, require_tls unset."""
    directory = tmp_path_factory.mktemp("reload-tls")
    write_server_certificate(directory, DNS_NAMES, ca_name="ca-old")
    with _tls_pgwake(directory, ("reload",)) as server:
        yield server, directory


def _sni_dsn(pgwake: Pgwake, endpoint: str, **params: str) -> str:
    extra = "".join(f" {key}={value}" for key, value in params.items())
    return (
        f"host={endpoint}.localhost hostaddr=127.0.0.1 port={pgwake.port} user=app "
        f"password={PASSWORD} dbname=app{extra}"
    )


def _routed_by_sni(pgwake: Pgwake, endpoint: str) -> int:
    return pgwake.log_text().count(f" endpoint={endpoint} via=sni tls=True ")


# -- SNI, verify-full, direct TLS -----------------------------------------------------------


def test_verify_full_with_a_wildcard_certificate_routes_by_sni(
    strict: tuple[Pgwake, Path],
) -> None:
    pgwake, ca = strict
    before = _routed_by_sni(pgwake, "tls-a")
    dsn = _sni_dsn(pgwake, "tls-a", sslmode="verify-full", sslrootcert=str(ca))
    with psycopg.connect(dsn, connect_timeout=60) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)
        assert conn.pgconn.ssl_in_use
    assert _routed_by_sni(pgwake, "tls-a") == before + 1


def test_verify_full_refuses_a_name_the_certificate_does_not_cover(
    strict: tuple[Pgwake, Path],
) -> None:
    pgwake, ca = strict
    dsn = (
        f"host=127.0.0.1 port={pgwake.port} user=app password={PASSWORD} dbname=app "
        f"sslmode=verify-full sslrootcert={ca} options=endpoint=tls-a"
    )
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(dsn, connect_timeout=60)


def test_direct_tls_with_libpq(strict: tuple[Pgwake, Path]) -> None:
    pgwake, ca = strict
    before = _routed_by_sni(pgwake, "tls-a")
    dsn = _sni_dsn(
        pgwake, "tls-a", sslnegotiation="direct", sslmode="verify-full", sslrootcert=str(ca)
    )
    with psycopg.connect(dsn, connect_timeout=60) as conn:
        assert conn.execute("select 6 * 7").fetchone() == (42,)
    assert _routed_by_sni(pgwake, "tls-a") == before + 1


def _direct_tls_replies(port: int, alpn: list[str] | None) -> list[tuple[bytes, bytes]]:
    """A ClientHello as the very first bytes (no SSLRequest), then a startup packet."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    messages = []
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="tls-a.localhost") as sock,
    ):
        sock.sendall(startup_packet({"user": "app", "database": "app"}))
        while (message := read_message(sock)) is not None:
            messages.append(message)
            if message[0] == b"R":
                break  # the server waits for our SASL response: enough
    return messages


def test_direct_tls_needs_alpn(strict: tuple[Pgwake, Path]) -> None:
    pgwake, _ = strict
    with_alpn = _direct_tls_replies(pgwake.port, ["postgresql"])
    assert [kind for kind, _ in with_alpn] == [b"R"]
    assert with_alpn[0][1][:4] == struct.pack("!i", 10)  # AuthenticationSASL

    without = _direct_tls_replies(pgwake.port, None)
    assert [kind for kind, _ in without] == [b"E"]  # no authentication request at all
    fields = error_fields(without[0][1])
    assert fields["C"] == "08P01"
    assert "without ALPN" in fields["M"]


# -- channel binding ------------------------------------------------------------------------


def _sasl_message(payload: bytes) -> bytes:
    return b"p" + struct.pack("!i", len(payload) + 4) + payload


def _scram_plus_login(
    port: int, endpoint: str, password: str, *, tamper: bool
) -> list[tuple[bytes, bytes]]:
    """SCRAM-SHA-256-PLUS by hand over TLS; the binding data is the real server
    certificate's hash unless ``tamper``. Returns the server's replies after our proof."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        with context.wrap_socket(raw, server_hostname=f"{endpoint}.localhost") as sock:
            sock.sendall(startup_packet({"user": "app", "database": "app"}))
            message = read_message(sock)
            assert message is not None
            assert message[0] == b"R"
            assert message[1][:4] == struct.pack("!i", 10)
            assert b"SCRAM-SHA-256-PLUS\0" in message[1]

            der = sock.getpeercert(binary_form=True)
            assert der is not None
            cbind = hashlib.sha256(b"some other certificate" if tamper else der).digest()
            gs2 = b"p=tls-server-end-point,,"
            first_bare = b"n=,r=" + base64.b64encode(os.urandom(18))
            first = gs2 + first_bare
            sock.sendall(
                _sasl_message(b"SCRAM-SHA-256-PLUS\0" + struct.pack("!i", len(first)) + first)
            )
            message = read_message(sock)
            assert message is not None
            assert message[0] == b"R"
            assert message[1][:4] == struct.pack("!i", 11)  # AuthenticationSASLContinue
            server_first = message[1][4:]
            attributes = dict(item.split(b"=", 1) for item in server_first.split(b","))
            salted = hashlib.pbkdf2_hmac(
                "sha256",
                password.encode(),
                base64.b64decode(attributes[b"s"]),
                int(attributes[b"i"]),
            )
            client_key = hmac.digest(salted, b"Client Key", "sha256")
            stored_key = hashlib.sha256(client_key).digest()
            without_proof = b"c=" + base64.b64encode(gs2 + cbind) + b",r=" + attributes[b"r"]
            auth_message = first_bare + b"," + server_first + b"," + without_proof
            signature = hmac.digest(stored_key, auth_message, "sha256")
            proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
            sock.sendall(_sasl_message(without_proof + b",p=" + base64.b64encode(proof)))
            replies = []
            while (message := read_message(sock)) is not None:
                replies.append(message)
                if message[0] == b"Z":
                    sock.sendall(b"X" + struct.pack("!i", 4))
                    break
            return replies


def test_channel_binding_to_another_certificate_is_28000(strict: tuple[Pgwake, Path]) -> None:
    pgwake, _ = strict
    # The hand-written client is right: with the true certificate hash it logs in.
    good = _scram_plus_login(pgwake.port, "cbind", PASSWORD, tamper=False)
    assert [kind for kind, _ in good][:2] == [b"R", b"R"]
    assert good[0][1][:4] == struct.pack("!i", 12)  # AuthenticationSASLFinal
    assert good[1][1] == struct.pack("!i", 0)  # AuthenticationOk
    assert good[-1][0] == b"Z"

    bad = _scram_plus_login(pgwake.port, "cbind", PASSWORD, tamper=True)
    assert [kind for kind, _ in bad] == [b"E"]
    fields = error_fields(bad[0][1])
    assert fields["C"] == "28000"
    assert "channel binding" in fields["M"]


# -- require_tls ----------------------------------------------------------------------------


def _asyncpg_plaintext(pgwake: Pgwake, endpoint: str) -> object:
    async def attempt() -> object:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs(endpoint), timeout=60)
        try:
            return await conn.fetchval("select current_user")
        finally:
            await conn.close()

    return uvloop.run(attempt())


def test_plaintext_is_refused_when_tls_is_required(strict: tuple[Pgwake, Path]) -> None:
    pgwake, _ = strict
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as info:
        _asyncpg_plaintext(pgwake, "tls-a")
    error = info.value
    assert error.sqlstate == "28000"
    assert error.args[0] == "TLS is required"
    assert "sslmode=require" in (error.hint or "")

    # What the hint says works: sslmode=require, and libpq's default 'prefer'.
    for sslmode in ("require", "prefer"):
        dsn = pgwake.dsn("tls-a", sslmode=sslmode)
        with psycopg.connect(dsn, connect_timeout=60) as conn:
            assert conn.execute("select current_user").fetchone() == ("app",)
            assert conn.pgconn.ssl_in_use


def test_plaintext_is_accepted_on_loopback_by_default(
    reloadable: tuple[Pgwake, Path],
) -> None:
    pgwake, _ = reloadable
    assert "require_tls" not in pgwake.settings
    assert pgwake.env["PGWAKE_LISTEN"].startswith("127.0.0.1:")
    assert _asyncpg_plaintext(pgwake, "reload") == "app"


# -- SIGHUP ---------------------------------------------------------------------------------


def test_sighup_reloads_the_certificate(reloadable: tuple[Pgwake, Path]) -> None:
    pgwake, directory = reloadable
    old_ca = directory / "ca-old.pem"

    def verify_full(ca: Path) -> psycopg.Connection[tuple[object, ...]]:
        dsn = _sni_dsn(pgwake, "reload", sslmode="verify-full", sslrootcert=str(ca))
        return psycopg.connect(dsn, connect_timeout=60)

    with verify_full(old_ca) as session:
        assert session.execute("select 1").fetchone() == (1,)
        new_ca = write_server_certificate(directory, DNS_NAMES, ca_name="ca-new")
        # New files alone change nothing: pgwake serves what it loaded.
        with verify_full(old_ca) as conn:
            assert conn.execute("select 2").fetchone() == (2,)

        assert pgwake.process is not None
        pgwake.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=tls_reloaded" in pgwake.log_text(), timeout=10)

        # The open session keeps its TLS connection.
        assert session.execute("select 3").fetchone() == (3,)
        with verify_full(new_ca) as conn:
            assert conn.execute("select 4").fetchone() == (4,)
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            verify_full(old_ca)
        assert session.execute("select 5").fetchone() == (5,)
    assert pgwake.process.poll() is None  # SIGHUP did not stop it
