"""SCRAM-SHA-256 verifiers, checked by an independent computation and RFC 7677's example."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import stringprep

import pytest

from pgwake.auth.scram import DEFAULT_ITERATIONS, make_verifier, saslprep

VERIFIER_FORMAT = re.compile(
    r"^SCRAM-SHA-256\$(?P<iterations>\d+):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored_key>[A-Za-z0-9+/=]+):(?P<server_key>[A-Za-z0-9+/=]+)$"
)

# RFC 7677 section 3: user "user", password "pencil".
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_ITERATIONS = 4096
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = RFC_CLIENT_NONCE + "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST_BARE = f"n=user,r={RFC_CLIENT_NONCE}"
RFC_SERVER_FIRST = f"r={RFC_SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL_WITHOUT_PROOF = f"c=biws,r={RFC_SERVER_NONCE}"
RFC_AUTH_MESSAGE = (
    f"{RFC_CLIENT_FIRST_BARE},{RFC_SERVER_FIRST},{RFC_CLIENT_FINAL_WITHOUT_PROOF}"
).encode()
RFC_CLIENT_PROOF = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_SIGNATURE = base64.b64decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def split_verifier(verifier: str) -> tuple[int, bytes, bytes, bytes]:
    """Return (iterations, salt, StoredKey, ServerKey) of a Postgres SCRAM verifier."""
    match = VERIFIER_FORMAT.match(verifier)
    assert match is not None, verifier
    return (
        int(match["iterations"]),
        base64.b64decode(match["salt"], validate=True),
        base64.b64decode(match["stored_key"], validate=True),
        base64.b64decode(match["server_key"], validate=True),
    )


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def test_verifier_format() -> None:
    iterations, salt, stored_key, server_key = split_verifier(make_verifier("secret"))
    assert iterations == DEFAULT_ITERATIONS == 4096  # Postgres's default scram_iterations
    assert len(salt) == 16
    assert len(stored_key) == len(server_key) == 32


def test_random_salt_per_verifier() -> None:
    assert split_verifier(make_verifier("secret"))[1] != split_verifier(make_verifier("secret"))[1]


@pytest.mark.parametrize(
    ("password", "salt", "iterations"),
    [
        ("secret", b"0123456789abcdef", 4096),
        ("", b"\0" * 16, 4096),
        ("correct horse battery staple", b"\xff" * 16, 1),
        ("p@ss:$word", bytes(range(16)), 10_000),
    ],
)
def test_verifier_matches_an_independent_computation(
    password: str, salt: bytes, iterations: int
) -> None:
    salted_password = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac_sha256(salted_password, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac_sha256(salted_password, b"Server Key")
    b64 = base64.b64encode
    expected = (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )
    assert make_verifier(password, salt=salt, iterations=iterations) == expected


def test_rfc7677_example() -> None:
    verifier = make_verifier("pencil", salt=RFC_SALT, iterations=RFC_ITERATIONS)
    iterations, salt, stored_key, server_key = split_verifier(verifier)
    assert (iterations, salt) == (RFC_ITERATIONS, RFC_SALT)

    # The client's side, computed from the password as the RFC's client did.
    salted_password = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, RFC_ITERATIONS)
    client_key = hmac_sha256(salted_password, b"Client Key")
    assert hashlib.sha256(client_key).digest() == stored_key

    # ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage) gives the RFC's proof...
    client_signature = hmac_sha256(stored_key, RFC_AUTH_MESSAGE)
    assert xor(client_key, client_signature) == RFC_CLIENT_PROOF
    # ...and the ServerKey in the verifier signs as the RFC's server did.
    assert hmac_sha256(server_key, RFC_AUTH_MESSAGE) == RFC_SERVER_SIGNATURE


def test_rfc7677_client_key_recovered_from_the_proof() -> None:
    # ARCHITECTURE.md: the proxy holds only the verifier, and recovers the ClientKey from the
    # client's proof, checked by H(ClientKey) == StoredKey.
    _, _, stored_key, _ = split_verifier(
        make_verifier("pencil", salt=RFC_SALT, iterations=RFC_ITERATIONS)
    )
    recovered = xor(RFC_CLIENT_PROOF, hmac_sha256(stored_key, RFC_AUTH_MESSAGE))
    assert hashlib.sha256(recovered).digest() == stored_key

    wrong_proof = bytes([RFC_CLIENT_PROOF[0] ^ 1]) + RFC_CLIENT_PROOF[1:]
    recovered = xor(wrong_proof, hmac_sha256(stored_key, RFC_AUTH_MESSAGE))
    assert hashlib.sha256(recovered).digest() != stored_key


def test_wrong_password_gives_another_verifier() -> None:
    salt = b"0123456789abcdef"
    assert make_verifier("pencil", salt=salt) != make_verifier("pencils", salt=salt)


#: (password, what SASLprep makes of it for Postgres): RFC 4013 section 3's examples, then
#: one case per rule. Where SASLprep fails, Postgres (``saslprep.c``) hashes the password
#: unchanged, so the expected value is the input. ``tests/integration/test_scram_real_postgres``
#: checks the same passwords against a real server's verifiers.
SASLPREP_VECTORS = {
    "rfc4013-1-soft-hyphen": ("I\u00adX", "IX"),
    "rfc4013-2-unchanged": ("user", "user"),
    "rfc4013-3-case-kept": ("USER", "USER"),
    "rfc4013-4-nfkc": ("\u00aa", "a"),
    "rfc4013-5-nfkc": ("\u2168", "IX"),
    "rfc4013-6-prohibited": ("\u0007", "\u0007"),
    "rfc4013-7-bidi": ("\u06271", "\u06271"),
    # U+200B is in both C.1.2 (space) and B.1 (nothing); Postgres maps spaces first.
    "zero-width-space": ("pass\u200bword", "pass word"),
    "no-break-space": ("pass\u00a0word", "pass word"),
    "ligature": ("\ufb01sh", "fish"),
    "already-normalized": ("p\u00e4ssw\u00f6rd", "p\u00e4ssw\u00f6rd"),
    "combining-mark-composed": ("pa\u0308ss", "p\u00e4ss"),
    "c22-control": ("\ufb01\u0080", "\ufb01\u0080"),
    "unassigned-in-unicode-3.2": ("a\u0308\U0001f600", "a\u0308\U0001f600"),
    "empty-once-mapped": ("\u00ad\ufeff", "\u00ad\ufeff"),
    "bidi-at-both-ends": ("\u0627\u0628", "\u0627\u0628"),
}


@pytest.mark.parametrize(
    ("password", "prepared"), SASLPREP_VECTORS.values(), ids=SASLPREP_VECTORS.keys()
)
def test_saslprep_vectors(password: str, prepared: str) -> None:
    assert saslprep(password) == prepared
    # The verifier hashes the prepared string's UTF-8 bytes.
    salt = b"0123456789abcdef"
    salted_password = hashlib.pbkdf2_hmac("sha256", prepared.encode(), salt, 4096)
    stored_key = hashlib.sha256(hmac_sha256(salted_password, b"Client Key")).digest()
    assert split_verifier(make_verifier(password, salt=salt))[2] == stored_key


def test_the_vectors_exercise_the_stringprep_tables_they_name() -> None:
    # RFC 3454's tables as Python's stringprep module has them: the vectors above are
    # about the rules they claim to be about.
    assert stringprep.in_table_b1("\u00ad")
    assert stringprep.in_table_b1("\u200b")
    assert stringprep.in_table_c12("\u200b")
    assert stringprep.in_table_c12("\u00a0")
    assert stringprep.in_table_c22("\u0080")
    assert stringprep.in_table_a1("\U0001f600")
    assert stringprep.in_table_d1("\u0627")
    assert stringprep.in_table_d1("\u0628")
