"""SCRAM-SHA-256 exchanges: RFC 7677's example end to end, the edge's server, the compute's
ClientKey client, the mock exchange, channel binding, and the fuzz invariant (any bytes
give a message or a ``ScramError``, never anything else)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwake.auth.scram import (
    DEFAULT_ITERATIONS,
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    ChannelBinding,
    ScramAuthenticationFailed,
    ScramChannelBindingFailed,
    ScramClient,
    ScramError,
    ScramProtocolError,
    ScramServer,
    ScramState,
    ScramVerifier,
    ServerFinal,
    make_verifier,
    parse_verifier,
    tls_server_end_point,
)
from tests.certs import self_signed

FUZZ = settings(max_examples=300, deadline=None)

# RFC 7677 section 3: user "user", password "pencil".
RFC_PASSWORD = "pencil"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_NONCE = RFC_CLIENT_NONCE + RFC_SERVER_NONCE
RFC_CLIENT_FIRST = f"n,,n=user,r={RFC_CLIENT_NONCE}".encode()
RFC_SERVER_FIRST = f"r={RFC_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode()
RFC_CLIENT_FINAL = f"c=biws,r={RFC_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".encode()
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

PASSWORD = "correct horse battery staple"
SALT = b"0123456789abcdef"
VERIFIER = parse_verifier(make_verifier(PASSWORD, salt=SALT))
MOCK_SECRET = b"a server-wide secret for mock salts"
CBIND_DATA = hashlib.sha256(b"our certificate").digest()
PLUS_HEADER = "p=tls-server-end-point,,"
CLIENT_KEY = hmac.digest(
    hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), SALT, 4096), b"Client Key", "sha256"
)


def server(
    verifier: ScramVerifier | None = VERIFIER,
    *,
    role: str = "alice",
    channel_binding: bytes | None = None,
    nonce: str | None = None,
    mock_secret: bytes = MOCK_SECRET,
) -> ScramServer:
    return ScramServer(
        verifier, role=role, mock_secret=mock_secret, channel_binding=channel_binding, nonce=nonce
    )


def run(client: ScramClient, edge: ScramServer) -> ServerFinal:
    """One whole exchange between a client and a server; returns the server's result."""
    server_first = edge.handle_client_first(SCRAM_SHA_256, client.client_first_message())
    final = edge.handle_client_final(client.handle_server_first(server_first))
    client.handle_server_final(final.message)
    return final


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def attributes(message: bytes) -> dict[str, str]:
    pairs = (part.partition("=") for part in message.decode().split(","))
    return {name: value for name, _, value in pairs}


@dataclass
class HandClient:
    """A client written out by hand, for what ScramClient does not send (channel binding,
    extensions): builds the client-final-message for any gs2 header and binding data."""

    password: str = PASSWORD
    bare: str = "n=,r=fyko+d2lbbFgONRv9qkxdawL"

    def first(self, gs2_header: str) -> bytes:
        return (gs2_header + self.bare).encode()

    def final(
        self, server_first: bytes, cbind_input: bytes, *, extensions: str = "", nonce: str = ""
    ) -> bytes:
        fields = attributes(server_first)
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        without_proof = f"c={b64(cbind_input)},r={nonce or fields['r']}{extensions}"
        auth_message = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={b64(proof)}".encode()


# --- Verifiers ---------------------------------------------------------------------------


def test_parse_verifier_reads_make_verifier() -> None:
    verifier = parse_verifier(make_verifier(RFC_PASSWORD, salt=RFC_SALT, iterations=4096))
    assert (verifier.iterations, verifier.salt) == (4096, RFC_SALT)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    assert verifier.stored_key == hashlib.sha256(client_key).digest()
    assert verifier.server_key == hmac.digest(salted, b"Server Key", "sha256")


def test_verifier_repr_hides_the_keys() -> None:
    text = repr(VERIFIER)
    assert b64(VERIFIER.stored_key) not in text
    assert VERIFIER.stored_key.hex() not in text
    assert str(VERIFIER.stored_key) not in text
    assert "iterations=4096" in text


_GOOD = make_verifier("x", salt=SALT)
_, _SALT_AND_KEYS = _GOOD.split("$", 1)
_KEY = b64(bytes(32))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "secret",
        "md5" + "0" * 32,
        _GOOD.replace("SCRAM-SHA-256", "SCRAM-SHA-1"),
        _GOOD.replace("SCRAM-SHA-256", "scram-sha-256"),
        _GOOD + "\n",
        " " + _GOOD,
        _GOOD + ":extra",
        f"SCRAM-SHA-256$0:{b64(SALT)}${_KEY}:{_KEY}",
        f"SCRAM-SHA-256$-1:{b64(SALT)}${_KEY}:{_KEY}",
        f"SCRAM-SHA-256$4096x:{b64(SALT)}${_KEY}:{_KEY}",
        f"SCRAM-SHA-256${2**31}:{b64(SALT)}${_KEY}:{_KEY}",
        f"SCRAM-SHA-256${'1' * 5000}:{b64(SALT)}${_KEY}:{_KEY}",
        f"SCRAM-SHA-256$:{b64(SALT)}${_KEY}:{_KEY}",
        f"SCRAM-SHA-256$4096:${_KEY}:{_KEY}",  # empty salt
        f"SCRAM-SHA-256$4096:abc${_KEY}:{_KEY}",  # bad padding
        f"SCRAM-SHA-256$4096:a b=${_KEY}:{_KEY}",
        f"SCRAM-SHA-256$4096:{b64(SALT)}${b64(bytes(31))}:{_KEY}",
        f"SCRAM-SHA-256$4096:{b64(SALT)}${_KEY}:{b64(bytes(33))}",
        f"SCRAM-SHA-256$4096:{b64(SALT)}${_KEY}",
        f"SCRAM-SHA-256$4096:{b64(SALT)}:{_KEY}:{_KEY}",
        "SCRAM-SHA-256$\u0664\u0660\u0669\u0666:" + _SALT_AND_KEYS.split(":", 1)[1],
    ],
)
def test_parse_verifier_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="SCRAM") as caught:
        parse_verifier(text)
    assert _KEY not in str(caught.value)


# --- RFC 7677 ----------------------------------------------------------------------------


def test_rfc7677_example_end_to_end() -> None:
    verifier = parse_verifier(make_verifier(RFC_PASSWORD, salt=RFC_SALT, iterations=4096))
    client = ScramClient.from_password(RFC_PASSWORD, user="user", nonce=RFC_CLIENT_NONCE)
    edge = server(verifier, nonce=RFC_SERVER_NONCE)

    assert client.client_first_message() == RFC_CLIENT_FIRST
    assert edge.handle_client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    final = edge.handle_client_final(RFC_CLIENT_FINAL)
    assert final.message == RFC_SERVER_FINAL
    client.handle_server_final(RFC_SERVER_FINAL)

    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    assert final.client_key == hmac.digest(salted, b"Client Key", "sha256")
    assert final.channel_binding is ChannelBinding.NOT_SUPPORTED
    assert client.state is edge.state is ScramState.DONE


def test_rfc7677_with_the_client_key_alone() -> None:
    # The compute leg: the same proof from the ClientKey and the verifier, no password.
    verifier = parse_verifier(make_verifier(RFC_PASSWORD, salt=RFC_SALT, iterations=4096))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    client = ScramClient.from_client_key(client_key, verifier, nonce=RFC_CLIENT_NONCE)
    assert client.client_first_message() == f"n,,n=,r={RFC_CLIENT_NONCE}".encode()
    # The user name is in the AuthMessage, so the proof differs from the RFC's; the server
    # (which hashes what was sent) accepts it all the same.
    edge = server(verifier, nonce=RFC_SERVER_NONCE)
    server_first = edge.handle_client_first(SCRAM_SHA_256, f"n,,n=,r={RFC_CLIENT_NONCE}".encode())
    assert server_first == RFC_SERVER_FIRST
    final = edge.handle_client_final(client.handle_server_first(server_first))
    client.handle_server_final(final.message)
    assert final.client_key == client_key


# --- The edge ------------------------------------------------------------------------------


def test_mechanisms() -> None:
    assert server().mechanisms() == [SCRAM_SHA_256]
    assert server(channel_binding=CBIND_DATA).mechanisms() == [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]


@pytest.mark.parametrize("password", [PASSWORD, "", "pässwörd", "\ufb01sh", "p@ss,=word"])
def test_password_round_trip(password: str) -> None:
    verifier = parse_verifier(make_verifier(password))
    client = ScramClient.from_password(password)
    edge = server(verifier)
    states = [(client.state, edge.state)]
    server_first = edge.handle_client_first(SCRAM_SHA_256, client.client_first_message())
    states.append((client.state, edge.state))
    client_final = client.handle_server_first(server_first)
    states.append((client.state, edge.state))
    final = edge.handle_client_final(client_final)
    states.append((client.state, edge.state))
    client.handle_server_final(final.message)
    states.append((client.state, edge.state))
    # The state is the next message each side makes or reads.
    assert states == [
        (ScramState.CLIENT_FIRST, ScramState.CLIENT_FIRST),
        (ScramState.SERVER_FIRST, ScramState.CLIENT_FINAL),
        (ScramState.SERVER_FINAL, ScramState.CLIENT_FINAL),
        (ScramState.SERVER_FINAL, ScramState.DONE),
        (ScramState.DONE, ScramState.DONE),
    ]
    assert hashlib.sha256(final.client_key).digest() == verifier.stored_key


def test_messages_look_like_postgres_and_libpq() -> None:
    client = ScramClient.from_password(PASSWORD)
    client_first = client.client_first_message()
    assert client_first.startswith(b"n,,n=,r=")
    client_nonce = client_first[len(b"n,,n=,r=") :]
    assert len(base64.b64decode(client_nonce, validate=True)) == 18  # SCRAM_RAW_NONCE_LEN

    server_first = server().handle_client_first(SCRAM_SHA_256, client_first)
    fields = attributes(server_first)
    assert list(fields) == ["r", "s", "i"]
    assert fields["r"].startswith(client_nonce.decode())
    assert len(base64.b64decode(fields["r"][len(client_nonce) :], validate=True)) == 18
    assert (base64.b64decode(fields["s"]), fields["i"]) == (SALT, "4096")

    client_final = client.handle_server_first(server_first)
    assert client_final.startswith(f"c=biws,r={fields['r']},p=".encode())


def test_edge_to_compute_relay() -> None:
    """What pgwake does: the edge recovers the ClientKey from a client that knows the
    password, then logs in to the compute, which has the same verifier, with it alone."""
    edge = server(VERIFIER)
    at_edge = run(ScramClient.from_password(PASSWORD), edge)

    compute = server(VERIFIER, role="ignored by a real server", mock_secret=b"other")
    to_compute = ScramClient.from_client_key(at_edge.client_key, VERIFIER)
    at_compute = run(to_compute, compute)  # checks the compute's ServerSignature too
    assert at_compute.client_key == at_edge.client_key
    assert to_compute.state is ScramState.DONE


def test_client_key_must_match_the_verifier() -> None:
    with pytest.raises(ValueError, match="StoredKey"):
        ScramClient.from_client_key(bytes(32), VERIFIER)


def test_compute_with_another_verifier() -> None:
    # ALTER ROLE ... PASSWORD on the compute: another salt, so the catalog is stale.
    at_edge = run(ScramClient.from_password(PASSWORD), server(VERIFIER))
    for other in [make_verifier(PASSWORD), make_verifier(PASSWORD, salt=SALT, iterations=4097)]:
        client = ScramClient.from_client_key(at_edge.client_key, VERIFIER)
        compute = server(parse_verifier(other))
        server_first = compute.handle_client_first(SCRAM_SHA_256, client.client_first_message())
        with pytest.raises(ScramAuthenticationFailed) as caught:
            client.handle_server_first(server_first)
        assert caught.value.message == "the compute's verifier differs from the catalog's"
        assert client.state is ScramState.FAILED


def test_compute_with_the_same_salt_but_another_password() -> None:
    at_edge = run(ScramClient.from_password(PASSWORD), server(VERIFIER))
    client = ScramClient.from_client_key(at_edge.client_key, VERIFIER)
    compute = server(parse_verifier(make_verifier("another", salt=SALT)))
    server_first = compute.handle_client_first(SCRAM_SHA_256, client.client_first_message())
    with pytest.raises(ScramAuthenticationFailed):
        compute.handle_client_final(client.handle_server_first(server_first))


def test_wrong_password() -> None:
    client = ScramClient.from_password("wrong")
    edge = server()
    client_final = client.handle_server_first(
        edge.handle_client_first(SCRAM_SHA_256, client.client_first_message())
    )
    with pytest.raises(ScramAuthenticationFailed) as caught:
        edge.handle_client_final(client_final)
    assert type(caught.value) is ScramAuthenticationFailed
    assert caught.value.message == "password authentication failed"
    assert caught.value.detail is None
    proof = attributes(client_final)["p"]
    assert proof not in str(caught.value)
    assert edge.state is ScramState.FAILED


# --- The mock exchange ---------------------------------------------------------------------


def mock_server_first(role: str, mock_secret: bytes = MOCK_SECRET) -> dict[str, str]:
    edge = server(None, role=role, mock_secret=mock_secret)
    return attributes(edge.handle_client_first(SCRAM_SHA_256, b"n,,n=,r=abc"))


def test_mock_looks_like_a_real_role() -> None:
    real = attributes(server().handle_client_first(SCRAM_SHA_256, b"n,,n=,r=abc"))
    mock = mock_server_first("nobody")
    assert list(mock) == list(real) == ["r", "s", "i"]
    assert len(mock["r"]) == len(real["r"])
    assert len(base64.b64decode(mock["s"])) == len(base64.b64decode(real["s"])) == 16
    assert len(mock["s"]) == len(real["s"])
    assert mock["i"] == real["i"] == str(DEFAULT_ITERATIONS)


def test_mock_salt_is_deterministic_per_role() -> None:
    assert mock_server_first("nobody")["s"] == mock_server_first("nobody")["s"]
    assert mock_server_first("nobody")["s"] != mock_server_first("nobody2")["s"]
    assert mock_server_first("nobody")["s"] != mock_server_first("nobody", b"other")["s"]
    # The nonce is fresh each time, as for a real role.
    assert mock_server_first("nobody")["r"] != mock_server_first("nobody")["r"]
    expected = hmac.digest(MOCK_SECRET, b"nobody", "sha256")[:16]
    assert base64.b64decode(mock_server_first("nobody")["s"]) == expected


def test_mock_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="mock_secret"):
        server(None, mock_secret=b"")


@pytest.mark.parametrize("password", [PASSWORD, "", "anything"])
def test_mock_always_fails_like_a_wrong_password(password: str) -> None:
    client = ScramClient.from_password(password)
    edge = server(None, role="nobody")
    client_final = client.handle_server_first(
        edge.handle_client_first(SCRAM_SHA_256, client.client_first_message())
    )
    with pytest.raises(ScramAuthenticationFailed) as caught:
        edge.handle_client_final(client_final)
    assert type(caught.value) is ScramAuthenticationFailed
    assert (caught.value.message, caught.value.detail) == ("password authentication failed", None)
    assert edge.state is ScramState.FAILED


def test_mock_still_checks_the_messages() -> None:
    # Postgres parses a doomed exchange in full, so malformed input gets the same error.
    edge = server(None, role="nobody")
    edge.handle_client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
    with pytest.raises(ScramProtocolError, match="Nonce does not match"):
        edge.handle_client_final(b"c=biws,r=abcdef,p=" + b64(bytes(32)).encode())


# --- Channel binding -----------------------------------------------------------------------


def test_plus_with_our_binding_data() -> None:
    hand = HandClient()
    edge = server(channel_binding=CBIND_DATA)
    server_first = edge.handle_client_first(SCRAM_SHA_256_PLUS, hand.first(PLUS_HEADER))
    final = edge.handle_client_final(hand.final(server_first, PLUS_HEADER.encode() + CBIND_DATA))
    assert final.channel_binding is ChannelBinding.USED
    assert edge.state is ScramState.DONE


def test_plus_with_other_binding_data() -> None:
    hand = HandClient()
    edge = server(channel_binding=CBIND_DATA)
    server_first = edge.handle_client_first(SCRAM_SHA_256_PLUS, hand.first(PLUS_HEADER))
    other = hashlib.sha256(b"a man in the middle").digest()
    with pytest.raises(ScramChannelBindingFailed, match="channel binding check failed"):
        edge.handle_client_final(hand.final(server_first, PLUS_HEADER.encode() + other))


def test_plus_with_n_binding_in_final() -> None:
    hand = HandClient()
    edge = server(channel_binding=CBIND_DATA)
    server_first = edge.handle_client_first(SCRAM_SHA_256_PLUS, hand.first(PLUS_HEADER))
    with pytest.raises(ScramChannelBindingFailed):
        edge.handle_client_final(hand.final(server_first, b"n,,"))


def test_y_when_we_offered_plus_is_a_downgrade() -> None:
    with pytest.raises(ScramChannelBindingFailed, match="negotiation error"):
        server(channel_binding=CBIND_DATA).handle_client_first(SCRAM_SHA_256, b"y,,n=,r=abc")


def test_y_without_tls_is_fine() -> None:
    hand = HandClient()
    edge = server()
    server_first = edge.handle_client_first(SCRAM_SHA_256, hand.first("y,,"))
    final = edge.handle_client_final(hand.final(server_first, b"y,,"))  # c=eSws
    assert final.channel_binding is ChannelBinding.NOT_OFFERED


def test_n_over_tls_is_fine() -> None:
    hand = HandClient()
    edge = server(channel_binding=CBIND_DATA)
    server_first = edge.handle_client_first(SCRAM_SHA_256, hand.first("n,,"))
    assert edge.handle_client_final(hand.final(server_first, b"n,,")).client_key


@pytest.mark.parametrize(
    ("flag", "final_flag"), [("n,,", b"y,,"), ("y,,", b"n,,"), ("n,,", b"p=tls-server-end-point,,")]
)
def test_final_binding_must_repeat_the_flag(flag: str, final_flag: bytes) -> None:
    hand = HandClient()
    edge = server()
    server_first = edge.handle_client_first(SCRAM_SHA_256, hand.first(flag))
    with pytest.raises(ScramProtocolError, match="unexpected SCRAM channel-binding"):
        edge.handle_client_final(hand.final(server_first, final_flag))


@pytest.mark.parametrize(
    ("channel_binding", "mechanism", "message", "error", "match"),
    [
        # p= with plain SCRAM-SHA-256, over TLS or not.
        (CBIND_DATA, SCRAM_SHA_256, PLUS_HEADER, ScramProtocolError, "includes channel binding"),
        (None, SCRAM_SHA_256, PLUS_HEADER, ScramProtocolError, "includes channel binding"),
        # -PLUS without binding data.
        (CBIND_DATA, SCRAM_SHA_256_PLUS, "n,,", ScramProtocolError, "does not include"),
        (CBIND_DATA, SCRAM_SHA_256_PLUS, "y,,", ScramProtocolError, "does not include"),
        # -PLUS without TLS: we never offered it.
        (None, SCRAM_SHA_256_PLUS, PLUS_HEADER, ScramProtocolError, "invalid SASL"),
        (CBIND_DATA, "SCRAM-SHA-1", "n,,", ScramProtocolError, "invalid SASL"),
        (CBIND_DATA, "", "n,,", ScramProtocolError, "invalid SASL"),
        # Only tls-server-end-point exists in Postgres.
        (CBIND_DATA, SCRAM_SHA_256_PLUS, "p=tls-unique,,", ScramProtocolError, "type"),
        (CBIND_DATA, SCRAM_SHA_256_PLUS, "p=,,", ScramProtocolError, "type"),
    ],
)
def test_channel_binding_negotiation(
    channel_binding: bytes | None,
    mechanism: str,
    message: str,
    error: type[ScramError],
    match: str,
) -> None:
    edge = server(channel_binding=channel_binding)
    with pytest.raises(error, match=match):
        edge.handle_client_first(mechanism, f"{message}n=,r=abc".encode())
    assert edge.state is ScramState.FAILED


def test_empty_channel_binding_is_refused() -> None:
    with pytest.raises(ValueError, match="channel_binding"):
        server(channel_binding=b"")


# --- tls-server-end-point ------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_tls_server_end_point_rsa_sha256(rsa_key: rsa.RSAPrivateKey) -> None:
    der = self_signed(rsa_key, hashes.SHA256())
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()
    assert ChannelBinding.tls_server_end_point(der) == hashlib.sha256(der).digest()


def test_tls_server_end_point_ecdsa_sha384() -> None:
    der = self_signed(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    assert tls_server_end_point(der) == hashlib.sha384(der).digest()


def test_tls_server_end_point_sha512(rsa_key: rsa.RSAPrivateKey) -> None:
    der = self_signed(rsa_key, hashes.SHA512())
    assert tls_server_end_point(der) == hashlib.sha512(der).digest()


# sha256WithRSAEncryption (1.2.840.113549.1.1.11) and its siblings differ in the last byte.
_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")


@pytest.mark.parametrize(("name", "last_byte"), [("sha1", 0x05), ("md5", 0x04)])
def test_tls_server_end_point_weak_hashes_become_sha256(
    rsa_key: rsa.RSAPrivateKey, name: str, last_byte: int
) -> None:
    # cryptography no longer signs with SHA-1 or MD5, so relabel a SHA-256 certificate: the
    # binding hashes the bytes and never checks the signature.
    weak = _SHA256_WITH_RSA[:-1] + bytes([last_byte])
    der = self_signed(rsa_key, hashes.SHA256()).replace(_SHA256_WITH_RSA, weak)
    assert x509.load_der_x509_certificate(der).signature_hash_algorithm.name == name  # type: ignore[union-attr]
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()


def test_tls_server_end_point_ed25519_uses_sha256() -> None:
    der = self_signed(ed25519.Ed25519PrivateKey.generate(), None)
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()


def test_tls_server_end_point_needs_a_certificate() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - cryptography's own message
        tls_server_end_point(b"not a certificate")


# --- Malformed messages at the edge --------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b"n,,n=,r=abc",
        b"n,,n=user,r=abc",
        b"n,,n=,r=",  # Postgres takes an empty client nonce too
        b"n,,n=,r=abc,",  # ... and a trailing comma
        b"n,,n=,r=abc,x=1,Y=2,z=",  # extensions are ignored
        b"n,,n=\xc3\xa9\xff,r=abc",  # the user name is ignored, bytes and all
    ],
)
def test_client_first_accepted(message: bytes) -> None:
    server_first = server().handle_client_first(SCRAM_SHA_256, message)
    assert server_first.startswith(b"r=" + message.split(b"r=")[1].split(b",")[0])


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b"", "empty"),
        (b"n,,n=,r=a\0bc", "length"),
        (b"x,,n=,r=abc", "channel-binding flag"),
        (b",,n=,r=abc", "channel-binding flag"),
        (b"n", "Expected"),
        (b"n,", "Expected"),
        (b"nn,n=,r=abc", "Expected"),
        (b"n,a=admin,n=,r=abc", "authorization identity"),
        (b"n,x,n=,r=abc", "Expected"),
        (b"n,,m=ext,n=,r=abc", "extension"),
        (b"n,,r=abc", 'attribute "n"'),
        (b"n,,n=", 'attribute "r"'),
        (b"n,,n=,", 'attribute "r"'),
        (b"n,,n,r=abc", '"=" for attribute "n"'),
        (b"n,,n=,r=ab c", "non-printable"),
        (b"n,,n=,r=ab\xe9", "non-printable"),
        (b"n,,n=,r=abc,1=2", "Attribute expected"),
        (b"n,,n=,r=abc,x", '"=" for attribute "x"'),
        (b"n,,n=,r=abc,,", "Attribute expected"),
        (b"n,,n=,r=abc,\xe9=1", "Attribute expected"),
    ],
)
def test_client_first_refused(message: bytes, match: str) -> None:
    edge = server()
    with pytest.raises(ScramProtocolError, match=match):
        edge.handle_client_first(SCRAM_SHA_256, message)
    assert edge.state is ScramState.FAILED
    with pytest.raises(ScramProtocolError, match="out of order"):
        edge.handle_client_first(SCRAM_SHA_256, b"n,,n=,r=abc")


def started() -> tuple[ScramServer, bytes, str]:
    """A server after a good client-first-message, its reply and the combined nonce."""
    edge = server()
    server_first = edge.handle_client_first(SCRAM_SHA_256, HandClient().first("n,,"))
    return edge, server_first, attributes(server_first)["r"]


def test_client_final_with_extensions_before_the_proof() -> None:
    edge, server_first, _ = started()
    message = HandClient().final(server_first, b"n,,", extensions=",x=1,y=")
    assert edge.handle_client_final(message).client_key


def test_client_final_proof_covers_the_extensions() -> None:
    edge, server_first, _ = started()
    message = HandClient().final(server_first, b"n,,", extensions=",x=1")
    with pytest.raises(ScramAuthenticationFailed):
        edge.handle_client_final(message.replace(b",x=1,", b",x=2,"))


def test_client_final_with_a_trailing_comma() -> None:
    # read_attr_value() eats the comma after a value, so Postgres takes "p=...,"; so do we.
    edge, server_first, _ = started()
    assert edge.handle_client_final(HandClient().final(server_first, b"n,,") + b",").client_key


def client_final_cases() -> list[tuple[str, str]]:
    proof = b64(bytes(32))
    return [
        ("", "empty"),
        ("c=biws,r={nonce}", "Attribute expected"),
        ("c=biws,r={nonce},", "Attribute expected"),
        ("c=biws,r={nonce},x=1", "Attribute expected"),
        (f"c=biws,r={{nonce}},p={proof},x=1", "Garbage"),
        (f"c=biws,r={{nonce}},p={proof}AAAA", "Malformed proof"),
        ("c=biws,r={nonce},p=" + b64(bytes(31)), "Malformed proof"),
        ("c=biws,r={nonce},p=not base64!", "Malformed proof"),
        ("c=biws,r={nonce},p=", "Malformed proof"),
        (f"c=biws,r={{nonce}}x,p={proof}", "Nonce does not match"),
        (f"c=biws,r=abc,p={proof}", "Nonce does not match"),
        (f"c=biws,r=,p={proof}", "Nonce does not match"),
        (f"r={{nonce}},c=biws,p={proof}", 'attribute "c"'),
        (f"c=biws,p={proof}", 'attribute "r"'),
        (f"c=eSws,r={{nonce}},p={proof}", "channel-binding attribute"),
        (f"c=,r={{nonce}},p={proof}", "channel-binding attribute"),
        (f"c=biws,r={{nonce}},p={proof}\0", "length"),
    ]


@pytest.mark.parametrize(("template", "match"), client_final_cases())
def test_client_final_refused(template: str, match: str) -> None:
    edge, _, nonce = started()
    with pytest.raises(ScramProtocolError, match=match):
        edge.handle_client_final(template.replace("{nonce}", nonce).encode())
    assert edge.state is ScramState.FAILED


# --- Out of order --------------------------------------------------------------------------


def test_server_steps_out_of_order() -> None:
    edge = server()
    with pytest.raises(ScramProtocolError, match="out of order"):
        edge.handle_client_final(b"c=biws,r=abc,p=" + b64(bytes(32)).encode())
    assert edge.state is ScramState.FAILED
    with pytest.raises(ScramProtocolError, match="out of order"):
        edge.handle_client_first(SCRAM_SHA_256, b"n,,n=,r=abc")


def test_server_is_one_shot() -> None:
    client, edge = ScramClient.from_password(PASSWORD), server()
    run(client, edge)
    with pytest.raises(ScramProtocolError, match="out of order"):
        edge.handle_client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
    with pytest.raises(ScramProtocolError, match="out of order"):
        edge.handle_client_final(b"c=biws")
    with pytest.raises(ScramProtocolError, match="out of order"):
        client.client_first_message()


def test_client_steps_out_of_order() -> None:
    client = ScramClient.from_password(PASSWORD)
    with pytest.raises(ScramProtocolError, match="out of order"):
        client.handle_server_first(b"r=abc,s=AAAA,i=1")
    assert client.state is ScramState.FAILED

    client = ScramClient.from_password(PASSWORD)
    client.client_first_message()
    with pytest.raises(ScramProtocolError, match="out of order"):
        client.client_first_message()
    with pytest.raises(ScramProtocolError, match="out of order"):
        client.handle_server_final(b"v=AAAA")


def test_server_after_an_authentication_failure() -> None:
    client = ScramClient.from_password("wrong")
    edge = server()
    client_final = client.handle_server_first(
        edge.handle_client_first(SCRAM_SHA_256, client.client_first_message())
    )
    with pytest.raises(ScramAuthenticationFailed):
        edge.handle_client_final(client_final)
    with pytest.raises(ScramProtocolError, match="out of order"):
        edge.handle_client_final(client_final)


# --- The compute's messages ----------------------------------------------------------------


def client_after_first(**kwargs: str) -> tuple[ScramClient, str]:
    client = ScramClient.from_password(PASSWORD, nonce="clientnonce", **kwargs)
    client.client_first_message()
    return client, "clientnonce"


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        (b"", ScramProtocolError, "empty"),
        (b"r=other,s=AAAA,i=4096", ScramProtocolError, "Nonce mismatch"),
        (b"r=client,s=AAAA,i=4096", ScramProtocolError, "Nonce mismatch"),
        (b"s=AAAA,r=clientnonceXYZ,i=4096", ScramProtocolError, 'attribute "r"'),
        (b"r=clientnonceXYZ,i=4096", ScramProtocolError, 'attribute "s"'),
        (b"r=clientnonceXYZ,s=AAA,i=4096", ScramProtocolError, "salt"),
        (b"r=clientnonceXYZ,s=,i=4096", ScramProtocolError, "salt"),
        (b"r=clientnonceXYZ,s=AAAA", ScramProtocolError, 'attribute "i"'),
        (b"r=clientnonceXYZ,s=AAAA,i=0", ScramProtocolError, "iteration"),
        (b"r=clientnonceXYZ,s=AAAA,i=-1", ScramProtocolError, "iteration"),
        (b"r=clientnonceXYZ,s=AAAA,i=", ScramProtocolError, "iteration"),
        (b"r=clientnonceXYZ,s=AAAA,i=4096x", ScramProtocolError, "iteration"),
        (b"r=clientnonceXYZ,s=AAAA,i=2147483648", ScramProtocolError, "iteration"),
        (b"r=clientnonceXYZ,s=AAAA,i=" + b"1" * 5000, ScramProtocolError, "iteration"),
        ("r=clientnonceXYZ,s=AAAA,i=\u0664".encode(), ScramProtocolError, "iteration"),
        (b"r=clientnonceXYZ,s=AAAA,i=1,x=1", ScramProtocolError, "Garbage"),
        (b"m=ext,r=clientnonceXYZ,s=AAAA,i=1", ScramProtocolError, 'attribute "r"'),
    ],
)
def test_server_first_refused(message: bytes, error: type[ScramError], match: str) -> None:
    client, _ = client_after_first()
    with pytest.raises(error, match=match):
        client.handle_server_first(message)
    assert client.state is ScramState.FAILED


def test_server_first_with_the_bare_client_nonce() -> None:
    # libpq only checks that the server's nonce starts with its own; so do we.
    client, nonce = client_after_first()
    assert client.handle_server_first(f"r={nonce},s=AAAA,i=1".encode()).startswith(b"c=biws")


def finished_client() -> tuple[ScramClient, bytes]:
    client = ScramClient.from_password(PASSWORD)
    edge = server()
    final = edge.handle_client_final(
        client.handle_server_first(
            edge.handle_client_first(SCRAM_SHA_256, client.client_first_message())
        )
    )
    return client, final.message


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        (b"", ScramProtocolError, "empty"),
        (b"e=invalid-proof", ScramAuthenticationFailed, "invalid-proof"),
        (b"e=other-error,x=1", ScramAuthenticationFailed, "other-error"),
        (b"v=" + b64(bytes(32)).encode(), ScramAuthenticationFailed, "incorrect server signature"),
        (b"v=" + b64(bytes(31)).encode(), ScramProtocolError, "signature"),
        (b"v=***", ScramProtocolError, "signature"),
        (b"v=", ScramProtocolError, "signature"),
        (b"x=1", ScramProtocolError, 'attribute "v"'),
    ],
)
def test_server_final_refused(message: bytes, error: type[ScramError], match: str) -> None:
    client, _ = finished_client()
    with pytest.raises(error, match=match):
        client.handle_server_final(message)
    assert client.state is ScramState.FAILED


def test_server_final_with_garbage() -> None:
    client, good = finished_client()
    with pytest.raises(ScramProtocolError, match="Garbage"):
        client.handle_server_final(good + b",x=1")


def test_server_error_text_is_sanitized() -> None:
    client, _ = finished_client()
    with pytest.raises(ScramAuthenticationFailed) as caught:
        client.handle_server_final(b"e=bad\x1b[31m" + b"x" * 500)
    assert caught.value.detail == "bad?[31m" + "x" * 92


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"password": "x", "client_key": b"k"},
        {"client_key": b"k"},
        {"password": "x", "verifier": VERIFIER},
    ],
)
def test_client_needs_one_kind_of_credentials(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="either"):
        ScramClient(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("nonce", ["", "a,b", "a b", "é"])
def test_nonces_must_be_printable(nonce: str) -> None:
    with pytest.raises(ValueError, match="printable"):
        ScramClient.from_password(PASSWORD, nonce=nonce)
    with pytest.raises(ValueError, match="printable"):
        server(nonce=nonce)


def test_user_name_is_escaped() -> None:
    client = ScramClient.from_password(PASSWORD, user="a=b,c", nonce="n")
    assert client.client_first_message() == b"n,,n=a=3Db=2Cc,r=n"


def test_user_name_in_utf8() -> None:
    client = ScramClient.from_password(PASSWORD, user="€ü")
    assert client.client_first_message().startswith("n,,n=€ü,r=".encode())
    # The AuthMessage hashes the same bytes on both sides.
    run(ScramClient.from_password(PASSWORD, user="€ü"), server())


def test_secrets_stay_out_of_reprs() -> None:
    final = run(ScramClient.from_password(PASSWORD), server())
    assert str(final.client_key) not in repr(final)
    assert b64(final.client_key) not in repr(final)


# --- The fuzz invariant --------------------------------------------------------------------

_mechanisms = st.sampled_from([SCRAM_SHA_256, SCRAM_SHA_256_PLUS, "SCRAM-SHA-1", ""])
# Pieces of real messages, so examples get past the first checks.
_pieces = st.sampled_from(
    ["n", "y", "p", "p=tls-server-end-point", "a=x", "m=x", "n=", "n=user", "r=", "r=abc",
     "c=biws", "c=eSws", "p=" + b64(bytes(32)), "x=1", "", "=", "\0", "é", " "]
)  # fmt: skip
_near_messages = st.lists(_pieces, max_size=8).map(lambda parts: ",".join(parts).encode())
_messages = st.one_of(st.binary(max_size=200), _near_messages)


@FUZZ
@given(
    mechanism=_mechanisms,
    data=_messages,
    channel_binding=st.sampled_from([None, CBIND_DATA]),
    mock=st.booleans(),
)
def test_fuzz_client_first(
    mechanism: str, data: bytes, channel_binding: bytes | None, mock: bool
) -> None:
    edge = server(None if mock else VERIFIER, channel_binding=channel_binding)
    try:
        reply = edge.handle_client_first(mechanism, data)
    except ScramError:
        assert edge.state is ScramState.FAILED
    else:
        assert reply.startswith(b"r=")
        assert edge.state is ScramState.CLIENT_FINAL


@FUZZ
@given(data=_messages, flag=st.sampled_from(["n,,", "y,,", PLUS_HEADER]), mock=st.booleans())
def test_fuzz_client_final(data: bytes, flag: str, mock: bool) -> None:
    plus = flag == PLUS_HEADER
    edge = server(None if mock else VERIFIER, channel_binding=CBIND_DATA if plus else None)
    edge.handle_client_first(
        SCRAM_SHA_256_PLUS if plus else SCRAM_SHA_256, HandClient().first(flag)
    )
    with pytest.raises(ScramError):  # no random message carries a good proof
        edge.handle_client_final(data)
    assert edge.state is ScramState.FAILED


@FUZZ
@given(data=_messages, nonce_prefix=st.booleans())
def test_fuzz_server_first(data: bytes, nonce_prefix: bool) -> None:
    # A ClientKey client: no PBKDF2, so a random huge iteration count cannot stall the test.
    client, nonce = ScramClient.from_client_key(CLIENT_KEY, VERIFIER, nonce="cn"), "cn"
    client.client_first_message()
    if nonce_prefix:
        data = f"r={nonce}".encode() + data
    try:
        reply = client.handle_server_first(data)
    except ScramError:
        assert client.state is ScramState.FAILED
    else:
        assert reply.startswith(b"c=biws,r=")


@FUZZ
@given(data=_messages)
def test_fuzz_server_final(data: bytes) -> None:
    client, _ = finished_client()
    with pytest.raises(ScramError):
        client.handle_server_final(data)


@FUZZ
@given(text=st.text(max_size=200))
def test_fuzz_parse_verifier(text: str) -> None:
    try:
        verifier = parse_verifier(text)
    except ValueError:
        return
    assert verifier.iterations >= 1
