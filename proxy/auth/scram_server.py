"""The server side of SCRAM-SHA-256, run at the edge with a role's verifier alone. Pure."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from pgwake.auth.scram_exchange import (
    AUTHENTICATION_FAILED,
    GS2_HEADERS,
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    TLS_SERVER_END_POINT,
    ChannelBinding,
    Cursor,
    Exchange,
    ScramAuthenticationFailed,
    ScramChannelBindingFailed,
    ScramProtocolError,
    ScramState,
    Side,
    b64encode,
    decode,
    is_printable,
    malformed,
    new_nonce,
    xor,
)
from pgwake.auth.scram_verifier import (
    DEFAULT_ITERATIONS,
    KEY_BYTES,
    SALT_BYTES,
    ScramVerifier,
    b64decode,
)

__all__ = ["ScramServer", "ServerFinal"]


# --- The edge: server side -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerFinal:
    """What a successful client-final-message gives the edge."""

    #: The server-final-message, ``v=<ServerSignature>``, for SASLFinal.
    message: bytes
    #: The client's ClientKey, to log in to the compute (ARCHITECTURE.md). Never log it.
    client_key: bytes = field(repr=False)
    #: Which channel binding flag the client used.
    channel_binding: ChannelBinding


class ScramServer(Exchange):
    """The server side of SCRAM-SHA-256 as Postgres runs it (``auth-scram.c``).

    ``verifier`` is the role's verifier, or ``None`` when the role is unknown or has none:
    then the exchange is a mock, as in Postgres. Its salt is derived from ``mock_secret``
    (server-wide, secret, stable) and ``role`` (the startup user), its iteration count is
    Postgres's default, and it always fails at the end with the wrong password's error, so
    the wire cannot tell which roles exist. ``channel_binding`` is the tls-server-end-point
    data of our certificate when the client came over TLS, else ``None``. ``nonce`` fixes
    the server's half of the nonce, for tests; by default it is 18 random bytes, base64.
    Raises ``ValueError`` for an empty ``mock_secret`` or ``channel_binding`` or a nonce
    that is not printable."""

    __slots__ = (
        "_auth_prefix",
        "_cbind_flag",
        "_channel_binding",
        "_iterations",
        "_nonce",
        "_salt",
        "_server_key",
        "_server_nonce",
        "_stored_key",
    )
    _SIDE = Side.SERVER

    def __init__(
        self,
        verifier: ScramVerifier | None,
        *,
        role: str,
        mock_secret: bytes,
        channel_binding: bytes | None = None,
        nonce: str | None = None,
    ) -> None:
        super().__init__()
        if not mock_secret:
            raise ValueError("mock_secret must not be empty")
        if channel_binding is not None and not channel_binding:
            raise ValueError("channel_binding must be None or the certificate hash")
        if nonce is not None and not (nonce and is_printable(nonce)):
            raise ValueError("nonce must be printable ASCII without commas")
        if verifier is None:
            # scram_mock_salt() hashes the user name with the cluster's mock nonce.
            self._salt = hmac.digest(
                mock_secret, role.encode("utf-8", "surrogateescape"), "sha256"
            )[:SALT_BYTES]
            self._iterations = DEFAULT_ITERATIONS
            # mock_scram_secret(): keys that match no proof; the exchange is doomed anyway.
            self._stored_key: bytes | None = None
            self._server_key = bytes(KEY_BYTES)
        else:
            self._salt = verifier.salt
            self._iterations = verifier.iterations
            self._stored_key = verifier.stored_key
            self._server_key = verifier.server_key
        self._channel_binding = channel_binding
        self._server_nonce = nonce if nonce is not None else new_nonce()
        self._cbind_flag = ChannelBinding.NOT_SUPPORTED
        self._nonce = ""
        self._auth_prefix = b""

    def mechanisms(self) -> list[str]:
        """Return the SASL mechanisms to offer in AuthenticationSASL, in Postgres's order:
        ``-PLUS`` first, and only over TLS."""
        if self._channel_binding is not None:
            return [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        return [SCRAM_SHA_256]

    def handle_client_first(self, mechanism: str, data: bytes) -> bytes:
        """Read the client-first-message (SASLInitialResponse: ``mechanism`` and its data).

        Returns the server-first-message, ``r=<nonce>,s=<salt>,i=<iterations>``, for
        AuthenticationSASLContinue. Raises ``ScramProtocolError`` for a mechanism we did
        not offer or a malformed message, and ``ScramChannelBindingFailed`` when a client
        that supports channel binding thinks we do not, although we offered it."""
        with self._step(ScramState.CLIENT_FIRST):
            if mechanism == SCRAM_SHA_256_PLUS and self._channel_binding is not None:
                plus = True
            elif mechanism == SCRAM_SHA_256:
                plus = False
            else:
                raise ScramProtocolError("client selected an invalid SASL authentication mechanism")
            cursor = Cursor(decode(data))
            self._cbind_flag = self._read_gs2_header(cursor, plus=plus)
            # Forbid the optional authzid (authorization identity), as Postgres does.
            if cursor.peek() == "a":
                raise ScramProtocolError(
                    "client uses authorization identity, but it is not supported"
                )
            cursor.skip(",", "client-first-message")
            bare = cursor.rest()
            # RFC 5802 has "e=extensions-not-supported" for this, but only in the
            # server-final-message; Postgres, like us, fails at once.
            if cursor.peek() == "m":
                raise ScramProtocolError("client requires an unsupported SCRAM extension")
            # Postgres ignores the user name here and uses the startup packet's; libpq
            # sends "n=". Any value goes.
            cursor.read("n")
            client_nonce = cursor.read("r")
            if not is_printable(client_nonce):
                raise ScramProtocolError("non-printable characters in SCRAM nonce")
            while not cursor.at_end():  # optional extensions: none supported, all ignored
                cursor.read_any()
            self._nonce = client_nonce + self._server_nonce
            server_first = f"r={self._nonce},s={b64encode(self._salt)},i={self._iterations}"
            self._auth_prefix = f"{bare},{server_first},".encode("latin-1")
            return server_first.encode("ascii")

    def _read_gs2_header(self, cursor: Cursor, *, plus: bool) -> ChannelBinding:
        """Read the gs2-cbind-flag and the comma after it (``read_client_first_message``)."""
        flag = cursor.peek()
        if flag in ("n", "y"):
            if plus:
                raise malformed(
                    "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not "
                    "include channel binding data."
                )
            if flag == "y" and self._channel_binding is not None:
                raise ScramChannelBindingFailed(
                    "SCRAM channel binding negotiation error",
                    detail="The client supports SCRAM channel binding but thinks the server "
                    "does not.  However, this server does support channel binding.",
                )
            cursor.advance()
            cursor.skip(",", "gs2-header")
            return ChannelBinding(flag)
        if flag == "p":
            if not plus:
                raise malformed(
                    "The client selected SCRAM-SHA-256 without channel binding, but the "
                    "SCRAM message includes channel binding data."
                )
            if cursor.read("p") != TLS_SERVER_END_POINT:
                raise ScramProtocolError("unsupported SCRAM channel-binding type")
            return ChannelBinding.USED
        raise malformed("Unexpected channel-binding flag.")

    def handle_client_final(self, data: bytes) -> ServerFinal:
        """Read the client-final-message (SASLResponse data) and check the client's proof.

        Returns a ``ServerFinal``: the server-final-message for AuthenticationSASLFinal,
        and the ClientKey recovered from the proof. Raises ``ScramAuthenticationFailed``
        for a wrong proof and always in a mock exchange, ``ScramChannelBindingFailed``
        when the channel binding data is not ours, and ``ScramProtocolError`` for a
        malformed message or a nonce that is not this exchange's."""
        with self._step(ScramState.CLIENT_FINAL):
            text = decode(data)
            cursor = Cursor(text)
            cbind_input = GS2_HEADERS[self._cbind_flag.value].encode("ascii")
            if self._cbind_flag is ChannelBinding.USED:
                assert self._channel_binding is not None  # only PLUS, only with TLS
                cbind_input += self._channel_binding
                if cursor.read("c") != b64encode(cbind_input):
                    raise ScramChannelBindingFailed("SCRAM channel binding check failed")
            elif cursor.read("c") != b64encode(cbind_input):  # "biws" or "eSws"
                raise ScramProtocolError(
                    "unexpected SCRAM channel-binding attribute in client-final-message"
                )
            final_nonce = cursor.read("r")
            while True:  # optional extensions until the proof
                proof_start = cursor.position
                attribute, value = cursor.read_any()
                if attribute == "p":
                    break
            proof = b64decode(value)
            if proof is None or len(proof) != KEY_BYTES:
                raise malformed("Malformed proof in client-final-message.")
            if not cursor.at_end():
                raise malformed("Garbage found at the end of client-final-message.")
            if not hmac.compare_digest(final_nonce.encode("latin-1"), self._nonce.encode()):
                raise ScramProtocolError("invalid SCRAM response", detail="Nonce does not match.")

            # proof_start is just past the comma that ends client-final-message-without-proof.
            auth_message = self._auth_prefix + text[: proof_start - 1].encode("latin-1")
            stored_key = self._stored_key if self._stored_key is not None else bytes(KEY_BYTES)
            client_key = xor(proof, hmac.digest(stored_key, auth_message, "sha256"))
            verified = hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
            if not verified or self._stored_key is None:
                raise ScramAuthenticationFailed(AUTHENTICATION_FAILED)
            signature = hmac.digest(self._server_key, auth_message, "sha256")
            return ServerFinal(
                message=f"v={b64encode(signature)}".encode("ascii"),
                client_key=client_key,
                channel_binding=self._cbind_flag,
            )
