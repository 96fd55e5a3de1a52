"""pgwake.auth.scram against a real PostgreSQL 15, over its unix socket, by hand.

The compute leg as pgwake runs it: the edge recovers the ClientKey from a client that knows
the password, and a ``ScramClient`` built from that ClientKey alone logs in to a Postgres
whose role has the same verifier. Also: the verifier Postgres makes itself from a plaintext
``PASSWORD`` parses, and a password client logs in with it.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgwake.auth.scram import (
    SCRAM_SHA_256,
    ScramAuthenticationFailed,
    ScramClient,
    ScramServer,
    make_verifier,
    parse_verifier,
)
from pgwake.compute.local import LocalBackend
from pgwake.settings import load_settings


@functools.cache
def bindir() -> Path:
    """The server binaries pgwake itself would use (system, or the pgserver wheel copied
    where the unprivileged user can run them): this test never skips."""
    state = Path(tempfile.mkdtemp(prefix="pgwake-scram-bin-", dir="/tmp"))
    state.chmod(0o711)
    atexit.register(shutil.rmtree, state, True)
    return LocalBackend(load_settings(state_dir=state)).bindir


PORT = 5432  # the socket sits in a private directory, so the port cannot clash
SUPERUSER = "postgres"
# Postgres must not run as root: as root, run it as this unprivileged user.
RUN_AS = "pgwake" if os.geteuid() == 0 else None

# AuthenticationRequest codes (protocol docs): 0 Ok, 10 SASL, 11 SASLContinue, 12 SASLFinal.
AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 10, 11, 12


@dataclass(frozen=True)
class Cluster:
    socket_dir: Path

    def sql(self, query: str) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir), port=PORT, user=SUPERUSER, dbname="postgres"
        ) as connection:
            cursor = connection.execute(query)
            return cursor.fetchall() if cursor.description else []


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, user=RUN_AS, timeout=120)


def _wait_ready(data_dir: Path, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """postmaster.pid's last line is the status; "ready" once it accepts connections."""
    deadline = time.monotonic() + timeout
    pid_file = data_dir / "postmaster.pid"
    while time.monotonic() < deadline:
        assert server.poll() is None, "postgres exited during startup"
        if pid_file.exists() and "ready" in pid_file.read_text():
            return
        time.sleep(0.05)
    raise TimeoutError("postgres did not become ready")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgwake-scram-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        os.chmod(root, 0o711)  # the unprivileged user must reach its directories inside
        data_dir, socket_dir = root / "data", root / "sock"
        for directory in (data_dir, socket_dir):
            directory.mkdir(mode=0o700)
            if RUN_AS is not None:
                shutil.chown(directory, RUN_AS, RUN_AS)
        _run(
            str(bindir() / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=reject",
            "--no-sync",
        )
        # The superuser sets things up over trust; every other role must use SCRAM.
        (data_dir / "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\nlocal all all scram-sha-256\n"
        )
        server = subprocess.Popen(
            [
                str(bindir() / "postgres"),
                "-D",
                str(data_dir),
                "-p",
                str(PORT),
                "-k",
                str(socket_dir),
                "-c",
                "listen_addresses=",
                "-c",
                "password_encryption=scram-sha-256",
                "-c",
                "fsync=off",
            ],
            user=RUN_AS,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ready(data_dir, server)
        yield Cluster(socket_dir)
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # fast shutdown
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(root, ignore_errors=True)


# --- A minimal hand-written frontend -------------------------------------------------------


def _send(sock: socket.socket, kind: bytes, body: bytes) -> None:
    sock.sendall(kind + struct.pack("!i", len(body) + 4) + body)


def _receive(sock: socket.socket) -> tuple[bytes, bytes]:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    header = exactly(5)
    return header[:1], exactly(struct.unpack("!i", header[1:])[0] - 4)


def _authentication(sock: socket.socket) -> tuple[int, bytes]:
    """Read one AuthenticationRequest: its code and data; fail on an ErrorResponse."""
    kind, body = _receive(sock)
    if kind == b"E":
        fields = {chr(part[0]): part[1:].decode() for part in body.split(b"\0") if part}
        raise ServerError(fields["C"], fields["M"])
    assert kind == b"R", (kind, body)
    return struct.unpack("!i", body[:4])[0], body[4:]


class ServerError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate


def log_in(cluster: Cluster, role: str, client: ScramClient) -> int:
    """Start up as ``role``, run SCRAM with ``client`` and return the last
    AuthenticationRequest code (0 is AuthenticationOk). Raises ``ServerError``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(cluster.socket_dir / f".s.PGSQL.{PORT}"))
        parameters = b"".join(
            key.encode() + b"\0" + value.encode() + b"\0"
            for key, value in {"user": role, "database": "postgres"}.items()
        )
        body = struct.pack("!i", 3 << 16) + parameters + b"\0"
        sock.sendall(struct.pack("!i", len(body) + 4) + body)

        code, data = _authentication(sock)
        assert code == AUTH_SASL
        assert data.split(b"\0")[:-2] == [SCRAM_SHA_256.encode()]  # no TLS, so no -PLUS
        client_first = client.client_first_message()
        _send(
            sock,
            b"p",
            SCRAM_SHA_256.encode() + b"\0" + struct.pack("!i", len(client_first)) + client_first,
        )

        code, server_first = _authentication(sock)
        assert code == AUTH_SASL_CONTINUE
        _send(sock, b"p", client.handle_server_first(server_first))

        code, server_final = _authentication(sock)
        assert code == AUTH_SASL_FINAL
        client.handle_server_final(server_final)

        code, _ = _authentication(sock)
        _send(sock, b"X", b"")
        return code


def client_key_recovered_at_the_edge(password: str, verifier_text: str) -> bytes:
    """What pgwake's edge holds after a client logged in with ``password``."""
    client = ScramClient.from_password(password)
    edge = ScramServer(parse_verifier(verifier_text), role="alice", mock_secret=b"mock")
    final = edge.handle_client_final(
        client.handle_server_first(
            edge.handle_client_first(SCRAM_SHA_256, client.client_first_message())
        )
    )
    client.handle_server_final(final.message)
    return final.client_key


# --- Tests ---------------------------------------------------------------------------------


def test_client_key_logs_in_to_postgres(cluster: Cluster) -> None:
    verifier_text = make_verifier("s3cret pässword")
    cluster.sql(f"CREATE ROLE alice LOGIN PASSWORD '{verifier_text}'")
    stored = cluster.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'")
    assert stored == [(verifier_text,)]  # Postgres keeps a verifier as given

    client_key = client_key_recovered_at_the_edge("s3cret pässword", verifier_text)
    client = ScramClient.from_client_key(client_key, parse_verifier(verifier_text))
    assert log_in(cluster, "alice", client) == AUTH_OK


def test_postgres_verifier_parses_and_password_logs_in(cluster: Cluster) -> None:
    cluster.sql("CREATE ROLE bob LOGIN PASSWORD 'plain pencil'")
    ((text,),) = cluster.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'bob'")
    assert isinstance(text, str)
    verifier = parse_verifier(text)
    assert verifier.iterations == 4096
    assert len(verifier.salt) == 16

    assert log_in(cluster, "bob", ScramClient.from_password("plain pencil")) == AUTH_OK
    # And the ClientKey route works with Postgres's own verifier too.
    client_key = client_key_recovered_at_the_edge("plain pencil", text)
    assert log_in(cluster, "bob", ScramClient.from_client_key(client_key, verifier)) == AUTH_OK


def test_wrong_password_is_refused_by_postgres(cluster: Cluster) -> None:
    cluster.sql(f"CREATE ROLE carol LOGIN PASSWORD '{make_verifier('right')}'")
    with pytest.raises(ServerError) as caught:
        log_in(cluster, "carol", ScramClient.from_password("wrong"))
    assert caught.value.sqlstate == "28P01"


def test_stale_catalog_verifier_is_detected(cluster: Cluster) -> None:
    # The compute's verifier changed (ALTER ROLE ... PASSWORD): another salt.
    catalog = make_verifier("old password")
    cluster.sql(f"CREATE ROLE dave LOGIN PASSWORD '{make_verifier('new password')}'")
    client_key = client_key_recovered_at_the_edge("old password", catalog)
    client = ScramClient.from_client_key(client_key, parse_verifier(catalog))
    with pytest.raises(ScramAuthenticationFailed, match="differs from the catalog"):
        log_in(cluster, "dave", client)


#: Passwords SASLprep changes, or gives up on (Postgres then uses the password unchanged).
SASLPREP_PASSWORDS = {
    "soft-hyphen": "pass\u00adword",  # B.1: mapped to nothing
    "zero-width-space": "pass\u200bword",  # C.1.2 and B.1: Postgres maps it to a space
    "no-break-space": "pass\u00a0word",  # C.1.2: mapped to a space
    "ideographic-space": "\u3000pass",  # C.1.2: mapped to a space
    "only-mapped-to-nothing": "\u00ad\ufeff",  # empty once mapped: unchanged
    "line-separator": "pass\u2028",  # C.2.2: unchanged
    "ligature": "\ufb01sh",  # NFKC
    "roman-nine": "\u2168",  # NFKC, RFC 4013 section 3 example 5
    "prohibited": "\ufb01\u0080",  # C.2.2 control character: unchanged
    "unassigned": "a\u0308\U0001f600",  # A.1 in Unicode 3.2: unchanged
    "bidi-ends": "\u0627\u0628",  # RandALCat at both ends: allowed
    "bidi": "\u06271",  # RandALCat not at both ends, RFC 4013 section 3 example 7: unchanged
    "plain-non-ascii": "p\u00e4ss",
}


@pytest.mark.parametrize("password", SASLPREP_PASSWORDS.values(), ids=SASLPREP_PASSWORDS.keys())
def test_verifier_matches_the_one_postgres_makes(cluster: Cluster, password: str) -> None:
    """Postgres's own SASLprep is the oracle: the verifier it makes from a plaintext
    password equals ``make_verifier``'s with the same salt and iterations."""
    quoted = password.replace("'", "''")
    cluster.sql("DROP ROLE IF EXISTS saslprep")
    cluster.sql(f"CREATE ROLE saslprep LOGIN PASSWORD '{quoted}'")
    ((text,),) = cluster.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'saslprep'")
    assert isinstance(text, str)
    verifier = parse_verifier(text)
    assert make_verifier(password, salt=verifier.salt, iterations=verifier.iterations) == text
