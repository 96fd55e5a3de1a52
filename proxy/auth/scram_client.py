"""The client side of SCRAM-SHA-256, run against a compute with a recovered ClientKey
(or a password). Pure."""

from __future__ import annotations

import hashlib
import hmac
import re

from pgwake.auth.saslprep import saslprep
from pgwake.auth.scram_exchange import (
    GS2_HEADERS,
    Cursor,
    Exchange,
    ScramAuthenticationFailed,
    ScramProtocolError,
    ScramState,
    Side,
    b64encode,
    decode,
    is_printable,
    malformed,
    new_nonce,
    sanitize,
    xor,
)
from pgwake.auth.scram_verifier import KEY_BYTES, MAX_ITERATIONS, ScramVerifier, b64decode

__all__ = ["ScramClient"]


# --- The compute: client side ------------------------------------------------------------


class ScramClient(Exchange):
    """The client side of SCRAM-SHA-256 as libpq runs it (``fe-auth-scram.c``), without
    channel binding (gs2 header ``n,,``): computes are reached over a unix socket.

    Build it with ``from_client_key`` (what the edge recovered, with the catalog's
    verifier), or ``from_password``."""

    __slots__ = (
        "_auth_message",
        "_client_first_bare",
        "_client_key",
        "_client_nonce",
        "_password",
        "_server_key",
        "_verifier",
    )
    _SIDE = Side.CLIENT

    def __init__(
        self,
        *,
        client_key: bytes | None = None,
        verifier: ScramVerifier | None = None,
        password: str | None = None,
        user: str = "",
        nonce: str | None = None,
    ) -> None:
        """Prefer the classmethods; they say which pair to pass."""
        super().__init__()
        if (password is not None) == (client_key is not None) or (client_key is None) != (
            verifier is None
        ):
            raise ValueError("pass either client_key and verifier, or password")
        if client_key is not None and verifier is not None:
            check_client_key(client_key, verifier)
        if nonce is not None and not (nonce and is_printable(nonce)):
            raise ValueError("nonce must be printable ASCII without commas")
        self._client_key = client_key
        self._verifier = verifier
        self._password = password
        self._client_nonce = nonce if nonce is not None else new_nonce()
        # saslname (RFC 5802 section 5.1): "=" and "," are escaped. Sent as UTF-8, kept
        # one character per byte like every message here (see decode).
        name = user.replace("=", "=3D").replace(",", "=2C").encode().decode("latin-1")
        self._client_first_bare = f"n={name},r={self._client_nonce}"
        self._server_key = b""
        self._auth_message = b""

    @classmethod
    def from_client_key(
        cls, client_key: bytes, verifier: ScramVerifier, *, nonce: str | None = None
    ) -> ScramClient:
        """A client that logs in with a ClientKey instead of a password: the one the edge
        recovered (``ServerFinal.client_key``) for the role whose catalog verifier is
        ``verifier``. The server must have that verifier's salt and iteration count, and
        prove it has its ServerKey. Raises ``ValueError`` when ``H(client_key)`` is not the
        verifier's StoredKey."""
        return cls(client_key=client_key, verifier=verifier, nonce=nonce)

    @classmethod
    def from_password(
        cls, password: str, *, user: str = "", nonce: str | None = None
    ) -> ScramClient:
        """A client that logs in with ``password``. ``user`` goes into the
        client-first-message; Postgres ignores it, and libpq sends it empty."""
        return cls(password=password, user=user, nonce=nonce)

    def client_first_message(self) -> bytes:
        """Return the client-first-message, ``n,,n=,r=<nonce>``, for SASLInitialResponse
        with mechanism ``SCRAM-SHA-256``. Raises ``ScramProtocolError`` when called twice."""
        with self._step(ScramState.CLIENT_FIRST):
            return f"{GS2_HEADERS['n']}{self._client_first_bare}".encode("latin-1")

    def handle_server_first(self, data: bytes) -> bytes:
        """Read the server-first-message (AuthenticationSASLContinue data).

        Returns the client-final-message, ``c=biws,r=<nonce>,p=<ClientProof>``, for
        SASLResponse. Raises ``ScramProtocolError`` for a malformed message, a nonce that
        does not start with ours, a bad salt or an iteration count below 1; and
        ``ScramAuthenticationFailed`` when, built from a ClientKey, the server's salt or
        iteration count is not the verifier's (the compute's verifier differs from the
        catalog's: refresh it)."""
        with self._step(ScramState.SERVER_FIRST):
            text = decode(data)
            cursor = Cursor(text)
            nonce = cursor.read("r")
            if not nonce.startswith(self._client_nonce):
                raise ScramProtocolError("invalid SCRAM response", detail="Nonce mismatch.")
            salt = b64decode(cursor.read("s"))
            if not salt:
                raise malformed("Invalid salt.")
            iterations_text = cursor.read("i")
            if not re.fullmatch("[0-9]{1,10}", iterations_text):  # int() of 5000 digits raises
                raise malformed("Invalid iteration count.")
            iterations = int(iterations_text)
            if not 1 <= iterations <= MAX_ITERATIONS:
                raise malformed("Invalid iteration count.")
            if not cursor.at_end():
                raise malformed("Garbage found at the end of server-first-message.")

            if self._password is not None:
                salted_password = hashlib.pbkdf2_hmac(
                    "sha256", saslprep(self._password).encode(), salt, iterations
                )
                client_key = hmac.digest(salted_password, b"Client Key", "sha256")
                self._server_key = hmac.digest(salted_password, b"Server Key", "sha256")
            else:
                assert self._client_key is not None  # __init__: a password or a key
                assert self._verifier is not None
                if (salt, iterations) != (self._verifier.salt, self._verifier.iterations):
                    raise ScramAuthenticationFailed(
                        "the compute's verifier differs from the catalog's"
                    )
                client_key = self._client_key
                self._server_key = self._verifier.server_key
            without_proof = f"c={b64encode(GS2_HEADERS['n'].encode())},r={nonce}"
            self._auth_message = f"{self._client_first_bare},{text},{without_proof}".encode(
                "latin-1"
            )
            stored_key = hashlib.sha256(client_key).digest()
            proof = xor(client_key, hmac.digest(stored_key, self._auth_message, "sha256"))
            return f"{without_proof},p={b64encode(proof)}".encode("latin-1")

    def handle_server_final(self, data: bytes) -> None:
        """Read the server-final-message (AuthenticationSASLFinal data) and check the
        server's signature.

        Returns ``None`` when the server proved it holds the ServerKey. Raises
        ``ScramAuthenticationFailed`` for a wrong signature or an ``e=`` error (its text
        is the detail), and ``ScramProtocolError`` for a malformed message."""
        with self._step(ScramState.SERVER_FINAL):
            cursor = Cursor(decode(data))
            if cursor.peek() == "e":
                raise ScramAuthenticationFailed(
                    "error received from server in SCRAM exchange",
                    detail=sanitize(cursor.read("e")),
                )
            signature = b64decode(cursor.read("v"))
            if not cursor.at_end():
                raise malformed("Garbage found at the end of server-final-message.")
            if signature is None or len(signature) != KEY_BYTES:
                raise malformed("Invalid server signature.")
            expected = hmac.digest(self._server_key, self._auth_message, "sha256")
            if not hmac.compare_digest(signature, expected):
                raise ScramAuthenticationFailed("incorrect server signature")


def check_client_key(client_key: bytes, verifier: ScramVerifier) -> None:
    if not hmac.compare_digest(hashlib.sha256(client_key).digest(), verifier.stored_key):
        raise ValueError("the ClientKey does not match the verifier's StoredKey")
