"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it. Pure: bytes in, bytes out.

Rule: nothing here does I/O, keeps time or logs. Secrets (passwords, proofs, ClientKeys,
verifiers) never appear in a ``repr`` or an exception message, so callers may log both.

Three jobs:

* Verifiers. ``make_verifier`` writes and ``parse_verifier`` reads the ``rolpassword``
  string Postgres stores, ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``
  (all base64). A verifier lets a role log in without pgwake ever storing the password.
* The edge. ``ScramServer`` is the server side (Postgres's ``auth-scram.c``), run with the
  verifier alone. From the client's proof it recovers the ClientKey (ARCHITECTURE.md).
* The compute. ``ScramClient`` is the client side (libpq's ``fe-auth-scram.c``), run with
  that ClientKey, or with a password where pgwake has one.

The exchange (RFC 5802 section 3) and the methods that make or read each message::

    ScramClient                                   ScramServer
    client_first_message()  client-first-message  ─▶  handle_client_first()
    handle_server_first()   ◀─  server-first-message
                            client-final-message  ─▶  handle_client_final()
    handle_server_final()   ◀─  server-final-message

The keys, with H = SHA-256, HMAC = HMAC-SHA-256 and Hi = PBKDF2-HMAC-SHA-256::

    SaltedPassword  = Hi(SASLprep(password), salt, iterations)
    ClientKey       = HMAC(SaltedPassword, "Client Key")     StoredKey = H(ClientKey)
    ServerKey       = HMAC(SaltedPassword, "Server Key")
    AuthMessage     = client-first-message-bare "," server-first-message ","
                      client-final-message-without-proof
    ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
    ServerSignature = HMAC(ServerKey, AuthMessage)

So whoever holds StoredKey recovers ClientKey = ClientProof XOR HMAC(StoredKey,
AuthMessage) and checks it with H(ClientKey) == StoredKey; with it, and the ServerKey to
check the reply, it can log in to any server that has the same verifier.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final

from pgwake.auth.certhash import binding_hash_name

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DEFAULT_ITERATIONS",
    "SCRAM_SHA_256",
    "SCRAM_SHA_256_PLUS",
    "ChannelBinding",
    "ScramAuthenticationFailed",
    "ScramChannelBindingFailed",
    "ScramClient",
    "ScramError",
    "ScramProtocolError",
    "ScramServer",
    "ScramState",
    "ScramVerifier",
    "ServerFinal",
    "make_verifier",
    "parse_verifier",
    "saslprep",
    "tls_server_end_point",
]

#: PostgreSQL's default ``scram_iterations`` (src/include/common/scram-common.h).
DEFAULT_ITERATIONS: Final = 4096
#: ``SCRAM_DEFAULT_SALT_LEN`` (scram-common.h): the salt length of the verifiers Postgres
#: makes, and so of our mock salts.
_SALT_BYTES: Final = 16
#: ``SCRAM_RAW_NONCE_LEN`` (scram-common.h): random bytes in a nonce, sent base64 encoded.
_RAW_NONCE_BYTES: Final = 18
#: ``SCRAM_SHA_256_KEY_LEN``: the length of every key, proof and signature.
_KEY_BYTES: Final = 32
#: Iteration counts are C ``int``s in Postgres (``scram_iterations`` tops out at INT_MAX).
_MAX_ITERATIONS: Final = 2**31 - 1

#: SASL mechanism names (RFC 7677; ``-PLUS`` adds channel binding, RFC 5802 section 4).
SCRAM_SHA_256: Final = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS: Final = "SCRAM-SHA-256-PLUS"
#: The one channel binding type Postgres implements (RFC 5929 section 4).
_TLS_SERVER_END_POINT: Final = "tls-server-end-point"
#: The gs2-header of each channel binding flag (RFC 5802 section 7; authzid is never sent).
_GS2_HEADERS: Final = {"n": "n,,", "y": "y,,", "p": f"p={_TLS_SERVER_END_POINT},,"}


_PROHIBITED: Final = (
    stringprep.in_table_c12,  # non-ASCII space
    stringprep.in_table_c21_c22,  # control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogates
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties, deprecated
    stringprep.in_table_c9,  # tagging characters
    stringprep.in_table_a1,  # unassigned in Unicode 3.2
)


def saslprep(password: str) -> str:
    """SASLprep (RFC 4013) as PostgreSQL applies it to passwords (``saslprep.c``).

    Where SASLprep rejects the string, Postgres uses the password unchanged, and so do
    we; otherwise a verifier made here would not match what the server computes."""
    if password.isascii():
        return password
    # Map: non-ASCII spaces (C.1.2) become spaces, then "commonly mapped to nothing" (B.1)
    # goes. U+200B is in both tables; Postgres checks C.1.2 first, so it becomes a space.
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char
        for char in password
        if stringprep.in_table_c12(char) or not stringprep.in_table_b1(char)
    )
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not normalized or any(check(char) for char in normalized for check in _PROHIBITED):
        return password
    # Bidirectional rule (RFC 3454 section 6).
    if any(stringprep.in_table_d1(char) for char in normalized):
        if any(stringprep.in_table_d2(char) for char in normalized):
            return password
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return password
    return normalized


def make_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """Return the SCRAM-SHA-256 verifier of ``password`` in Postgres's text format."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


# --- Verifiers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """A role's SCRAM-SHA-256 verifier, decoded. The keys are left out of ``repr``."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= _MAX_ITERATIONS:
            raise ValueError("SCRAM verifier iteration count out of range")
        if not self.salt:
            raise ValueError("SCRAM verifier has an empty salt")
        if len(self.stored_key) != _KEY_BYTES or len(self.server_key) != _KEY_BYTES:
            raise ValueError(f"SCRAM verifier keys must be {_KEY_BYTES} bytes")


_BASE64: Final = r"[A-Za-z0-9+/]*={0,2}"
_VERIFIER: Final = re.compile(
    rf"SCRAM-SHA-256\$(?P<iterations>[0-9]{{1,10}}):(?P<salt>{_BASE64})"
    rf"\$(?P<stored_key>{_BASE64}):(?P<server_key>{_BASE64})"
)


def parse_verifier(text: str) -> ScramVerifier:
    """Decode a verifier in Postgres's text format (``parse_scram_secret`` in
    ``auth-scram.c``), as ``make_verifier`` writes it and ``pg_authid.rolpassword`` holds it.

    Returns the ``ScramVerifier``. Raises ``ValueError`` for anything else: another
    scheme (``md5…``, plaintext), bad base64, keys that are not 32 bytes, an empty salt or
    an iteration count outside 1..2**31-1. The message never quotes ``text``."""
    match = _VERIFIER.fullmatch(text)
    if match is None:
        raise ValueError("not a SCRAM-SHA-256 verifier")
    salt, stored_key, server_key = (
        _b64decode(match[name]) for name in ("salt", "stored_key", "server_key")
    )
    if salt is None or stored_key is None or server_key is None:
        raise ValueError("SCRAM verifier has invalid base64")
    return ScramVerifier(int(match["iterations"]), salt, stored_key, server_key)


# --- Errors ------------------------------------------------------------------------------


class ScramError(Exception):
    """A SCRAM exchange failed. ``message`` (Postgres's errmsg) and ``detail`` (its
    errdetail, or ``None``) are safe to show the client: they never hold a password,
    proof, key, nonce or verifier."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message if detail is None else f"{message}: {detail}")
        self.message = message
        self.detail = detail


class ScramProtocolError(ScramError):
    """A message broke RFC 5802 or Postgres's rules, or a step came out of order.

    Postgres answers 08P01 (0A000 for an authzid or a mandatory extension)."""


class ScramAuthenticationFailed(ScramError):
    """The exchange was well formed but does not authenticate: a wrong password, an
    unknown role (the mock exchange), a wrong ServerSignature or a server's ``e=``.

    The edge answers 28P01. The text is the same for a wrong password and an unknown role."""


class ScramChannelBindingFailed(ScramAuthenticationFailed):
    """Channel binding failed: the client's binding data is not our certificate's hash, or
    it supports channel binding but thinks we do not (a downgrade). Postgres answers 28000."""


#: What the edge says for a wrong password and for an unknown role alike.
_AUTHENTICATION_FAILED: Final = "password authentication failed"


def _malformed(detail: str) -> ScramProtocolError:
    return ScramProtocolError("malformed SCRAM message", detail=detail)


# --- Channel binding ---------------------------------------------------------------------


class ChannelBinding(enum.Enum):
    """The client's gs2-cbind-flag (RFC 5802 section 7), and the binding data itself."""

    #: ``n``: the client does not support channel binding, or chose not to use it.
    NOT_SUPPORTED = "n"
    #: ``y``: the client supports channel binding but thinks the server does not.
    NOT_OFFERED = "y"
    #: ``p=tls-server-end-point``: the client bound the exchange to our certificate.
    USED = "p"

    @staticmethod
    def tls_server_end_point(certificate_der: bytes) -> bytes:
        """Return the tls-server-end-point binding data (RFC 5929 section 4.1) of the
        server certificate ``certificate_der``: its hash with the certificate's signature
        hash algorithm, except that MD5 and SHA-1 become SHA-256.

        Certificates without a separate hash (Ed25519, Ed448) get SHA-256. Postgres
        (``be_tls_get_certificate_hash``) refuses those; RFC 5929 does not cover them.
        Raises ``ValueError`` for bytes that are no DER certificate or an unknown
        signature algorithm."""
        return hashlib.new(binding_hash_name(certificate_der), certificate_der).digest()


tls_server_end_point: Final = ChannelBinding.tls_server_end_point


# --- Exchange states (Rule 1: every move is in _TRANSITIONS, and only _step makes it) ----


class ScramState(enum.Enum):
    """Where one side of an exchange is, named after the next message of the exchange
    that side makes or reads (RFC 5802 section 3)."""

    #: The client is to send the client-first-message; the server waits for it.
    CLIENT_FIRST = "client-first-message"
    #: The client waits for the server-first-message.
    SERVER_FIRST = "server-first-message"
    #: The server waits for the client-final-message.
    CLIENT_FINAL = "client-final-message"
    #: The client waits for the server-final-message.
    SERVER_FINAL = "server-final-message"
    #: The exchange succeeded and is over.
    DONE = "done"
    #: A step raised, or came out of order; the exchange is over and refuses every step.
    FAILED = "failed"


class _Side(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


_TRANSITIONS: Final[dict[tuple[_Side, ScramState], ScramState]] = {
    (_Side.CLIENT, ScramState.CLIENT_FIRST): ScramState.SERVER_FIRST,
    (_Side.CLIENT, ScramState.SERVER_FIRST): ScramState.SERVER_FINAL,
    (_Side.CLIENT, ScramState.SERVER_FINAL): ScramState.DONE,
    # The server answers each message in the same step, so it skips the states of its own.
    (_Side.SERVER, ScramState.CLIENT_FIRST): ScramState.CLIENT_FINAL,
    (_Side.SERVER, ScramState.CLIENT_FINAL): ScramState.DONE,
}


class _Exchange:
    """One side of one exchange; one-shot, like h11's connection after ``ERROR``."""

    __slots__ = ("_state",)
    _SIDE: ClassVar[_Side]

    def __init__(self) -> None:
        self._state = ScramState.CLIENT_FIRST

    @property
    def state(self) -> ScramState:
        """Where the exchange is."""
        return self._state

    @contextlib.contextmanager
    def _step(self, message: ScramState) -> Iterator[None]:
        """Run the step that makes or reads ``message``: refuse it out of order, move on
        when it returns, and fail the exchange when it raises."""
        current = self._state
        target = _TRANSITIONS.get((self._SIDE, current)) if current is message else None
        if target is None:
            self._state = ScramState.FAILED
            raise ScramProtocolError(
                "SCRAM exchange step out of order",
                detail=f"The {self._SIDE.value} was handed the {message.value} in state "
                f"{current.name}.",
            )
        try:
            yield
        except BaseException:
            self._state = ScramState.FAILED
            raise
        self._state = target


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


class ScramServer(_Exchange):
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
    _SIDE = _Side.SERVER

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
        if nonce is not None and not (nonce and _is_printable(nonce)):
            raise ValueError("nonce must be printable ASCII without commas")
        if verifier is None:
            # scram_mock_salt() hashes the user name with the cluster's mock nonce.
            self._salt = hmac.digest(
                mock_secret, role.encode("utf-8", "surrogateescape"), "sha256"
            )[:_SALT_BYTES]
            self._iterations = DEFAULT_ITERATIONS
            # mock_scram_secret(): keys that match no proof; the exchange is doomed anyway.
            self._stored_key: bytes | None = None
            self._server_key = bytes(_KEY_BYTES)
        else:
            self._salt = verifier.salt
            self._iterations = verifier.iterations
            self._stored_key = verifier.stored_key
            self._server_key = verifier.server_key
        self._channel_binding = channel_binding
        self._server_nonce = nonce if nonce is not None else _new_nonce()
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
            cursor = _Cursor(_decode(data))
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
            if not _is_printable(client_nonce):
                raise ScramProtocolError("non-printable characters in SCRAM nonce")
            while not cursor.at_end():  # optional extensions: none supported, all ignored
                cursor.read_any()
            self._nonce = client_nonce + self._server_nonce
            server_first = f"r={self._nonce},s={_b64encode(self._salt)},i={self._iterations}"
            self._auth_prefix = f"{bare},{server_first},".encode("latin-1")
            return server_first.encode("ascii")

    def _read_gs2_header(self, cursor: _Cursor, *, plus: bool) -> ChannelBinding:
        """Read the gs2-cbind-flag and the comma after it (``read_client_first_message``)."""
        flag = cursor.peek()
        if flag in ("n", "y"):
            if plus:
                raise _malformed(
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
                raise _malformed(
                    "The client selected SCRAM-SHA-256 without channel binding, but the "
                    "SCRAM message includes channel binding data."
                )
            if cursor.read("p") != _TLS_SERVER_END_POINT:
                raise ScramProtocolError("unsupported SCRAM channel-binding type")
            return ChannelBinding.USED
        raise _malformed("Unexpected channel-binding flag.")

    def handle_client_final(self, data: bytes) -> ServerFinal:
        """Read the client-final-message (SASLResponse data) and check the client's proof.

        Returns a ``ServerFinal``: the server-final-message for AuthenticationSASLFinal,
        and the ClientKey recovered from the proof. Raises ``ScramAuthenticationFailed``
        for a wrong proof and always in a mock exchange, ``ScramChannelBindingFailed``
        when the channel binding data is not ours, and ``ScramProtocolError`` for a
        malformed message or a nonce that is not this exchange's."""
        with self._step(ScramState.CLIENT_FINAL):
            text = _decode(data)
            cursor = _Cursor(text)
            cbind_input = _GS2_HEADERS[self._cbind_flag.value].encode("ascii")
            if self._cbind_flag is ChannelBinding.USED:
                assert self._channel_binding is not None  # only PLUS, only with TLS
                cbind_input += self._channel_binding
                if cursor.read("c") != _b64encode(cbind_input):
                    raise ScramChannelBindingFailed("SCRAM channel binding check failed")
            elif cursor.read("c") != _b64encode(cbind_input):  # "biws" or "eSws"
                raise ScramProtocolError(
                    "unexpected SCRAM channel-binding attribute in client-final-message"
                )
            final_nonce = cursor.read("r")
            while True:  # optional extensions until the proof
                proof_start = cursor.position
                attribute, value = cursor.read_any()
                if attribute == "p":
                    break
            proof = _b64decode(value)
            if proof is None or len(proof) != _KEY_BYTES:
                raise _malformed("Malformed proof in client-final-message.")
            if not cursor.at_end():
                raise _malformed("Garbage found at the end of client-final-message.")
            if not hmac.compare_digest(final_nonce.encode("latin-1"), self._nonce.encode()):
                raise ScramProtocolError("invalid SCRAM response", detail="Nonce does not match.")

            # proof_start is just past the comma that ends client-final-message-without-proof.
            auth_message = self._auth_prefix + text[: proof_start - 1].encode("latin-1")
            stored_key = self._stored_key if self._stored_key is not None else bytes(_KEY_BYTES)
            client_key = _xor(proof, hmac.digest(stored_key, auth_message, "sha256"))
            verified = hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
            if not verified or self._stored_key is None:
                raise ScramAuthenticationFailed(_AUTHENTICATION_FAILED)
            signature = hmac.digest(self._server_key, auth_message, "sha256")
            return ServerFinal(
                message=f"v={_b64encode(signature)}".encode("ascii"),
                client_key=client_key,
                channel_binding=self._cbind_flag,
            )


# --- The compute: client side ------------------------------------------------------------


class ScramClient(_Exchange):
    """The client side of SCRAM-SHA-256 as libpq runs it (``fe-auth-scram.c``), without
    channel binding (gs2 header ``n,,``): computes are reached over a unix socket.

    Build it with ``from_client_key`` (what the edge recovered, with the catalog's
    verifier), ``from_password``, or ``awaiting_client_key`` when the ClientKey comes
    after the client-first-message (``use_client_key``)."""

    __slots__ = (
        "_auth_message",
        "_client_first_bare",
        "_client_key",
        "_client_nonce",
        "_password",
        "_server_key",
        "_verifier",
    )
    _SIDE = _Side.CLIENT

    def __init__(
        self,
        *,
        client_key: bytes | None = None,
        verifier: ScramVerifier | None = None,
        password: str | None = None,
        user: str = "",
        nonce: str | None = None,
        awaiting_key: bool = False,
    ) -> None:
        """Prefer the classmethods; they say which pair to pass."""
        super().__init__()
        no_credentials = password is None and client_key is None
        if (
            (password is not None and client_key is not None)
            or (no_credentials and not awaiting_key)
            or (client_key is None) != (verifier is None)
        ):
            raise ValueError("pass either client_key and verifier, or password")
        if client_key is not None and verifier is not None:
            _check_client_key(client_key, verifier)
        if nonce is not None and not (nonce and _is_printable(nonce)):
            raise ValueError("nonce must be printable ASCII without commas")
        self._client_key = client_key
        self._verifier = verifier
        self._password = password
        self._client_nonce = nonce if nonce is not None else _new_nonce()
        # saslname (RFC 5802 section 5.1): "=" and "," are escaped. Sent as UTF-8, kept
        # one character per byte like every message here (see _decode).
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
    def awaiting_client_key(cls, *, nonce: str | None = None) -> ScramClient:
        """A ClientKey client whose key is not known yet: it can send the
        client-first-message now, and needs ``use_client_key`` before it reads the
        server-first-message. pgwake runs the compute's first round trip this way while
        its own client still computes the proof the key comes from."""
        return cls(nonce=nonce, awaiting_key=True)

    def use_client_key(self, client_key: bytes, verifier: ScramVerifier) -> None:
        """Give an ``awaiting_client_key`` client its ClientKey and the catalog verifier.
        Raises ``ValueError`` when ``H(client_key)`` is not the verifier's StoredKey, and
        ``ScramProtocolError`` when the client has credentials already or is past the
        server-first-message."""
        if self._client_key is not None or self._password is not None:
            raise ScramProtocolError("the SCRAM client has its credentials already")
        if self._state not in (ScramState.CLIENT_FIRST, ScramState.SERVER_FIRST):
            raise ScramProtocolError(
                "SCRAM exchange step out of order",
                detail=f"A ClientKey came in state {self._state.name}.",
            )
        _check_client_key(client_key, verifier)
        self._client_key = client_key
        self._verifier = verifier

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
            return f"{_GS2_HEADERS['n']}{self._client_first_bare}".encode("latin-1")

    def handle_server_first(self, data: bytes) -> bytes:
        """Read the server-first-message (AuthenticationSASLContinue data).

        Returns the client-final-message, ``c=biws,r=<nonce>,p=<ClientProof>``, for
        SASLResponse. Raises ``ScramProtocolError`` for a malformed message, a nonce that
        does not start with ours, a bad salt or an iteration count below 1; and
        ``ScramAuthenticationFailed`` when, built from a ClientKey, the server's salt or
        iteration count is not the verifier's (the compute's verifier differs from the
        catalog's: refresh it)."""
        with self._step(ScramState.SERVER_FIRST):
            text = _decode(data)
            cursor = _Cursor(text)
            nonce = cursor.read("r")
            if not nonce.startswith(self._client_nonce):
                raise ScramProtocolError("invalid SCRAM response", detail="Nonce mismatch.")
            salt = _b64decode(cursor.read("s"))
            if not salt:
                raise _malformed("Invalid salt.")
            iterations_text = cursor.read("i")
            if not re.fullmatch("[0-9]{1,10}", iterations_text):  # int() of 5000 digits raises
                raise _malformed("Invalid iteration count.")
            iterations = int(iterations_text)
            if not 1 <= iterations <= _MAX_ITERATIONS:
                raise _malformed("Invalid iteration count.")
            if not cursor.at_end():
                raise _malformed("Garbage found at the end of server-first-message.")

            if self._password is not None:
                salted_password = hashlib.pbkdf2_hmac(
                    "sha256", saslprep(self._password).encode(), salt, iterations
                )
                client_key = hmac.digest(salted_password, b"Client Key", "sha256")
                self._server_key = hmac.digest(salted_password, b"Server Key", "sha256")
            else:
                if self._client_key is None or self._verifier is None:
                    raise ScramProtocolError(
                        "the SCRAM client has no credentials",
                        detail="use_client_key must come before the server-first-message.",
                    )
                if (salt, iterations) != (self._verifier.salt, self._verifier.iterations):
                    raise ScramAuthenticationFailed(
                        "the compute's verifier differs from the catalog's"
                    )
                client_key = self._client_key
                self._server_key = self._verifier.server_key
            without_proof = f"c={_b64encode(_GS2_HEADERS['n'].encode())},r={nonce}"
            self._auth_message = f"{self._client_first_bare},{text},{without_proof}".encode(
                "latin-1"
            )
            stored_key = hashlib.sha256(client_key).digest()
            proof = _xor(client_key, hmac.digest(stored_key, self._auth_message, "sha256"))
            return f"{without_proof},p={_b64encode(proof)}".encode("latin-1")

    def handle_server_final(self, data: bytes) -> None:
        """Read the server-final-message (AuthenticationSASLFinal data) and check the
        server's signature.

        Returns ``None`` when the server proved it holds the ServerKey. Raises
        ``ScramAuthenticationFailed`` for a wrong signature or an ``e=`` error (its text
        is the detail), and ``ScramProtocolError`` for a malformed message."""
        with self._step(ScramState.SERVER_FINAL):
            cursor = _Cursor(_decode(data))
            if cursor.peek() == "e":
                raise ScramAuthenticationFailed(
                    "error received from server in SCRAM exchange",
                    detail=_sanitize(cursor.read("e")),
                )
            signature = _b64decode(cursor.read("v"))
            if not cursor.at_end():
                raise _malformed("Garbage found at the end of server-final-message.")
            if signature is None or len(signature) != _KEY_BYTES:
                raise _malformed("Invalid server signature.")
            expected = hmac.digest(self._server_key, self._auth_message, "sha256")
            if not hmac.compare_digest(signature, expected):
                raise ScramAuthenticationFailed("incorrect server signature")


def _check_client_key(client_key: bytes, verifier: ScramVerifier) -> None:
    if not hmac.compare_digest(hashlib.sha256(client_key).digest(), verifier.stored_key):
        raise ValueError("the ClientKey does not match the verifier's StoredKey")


# --- Parsing helpers -----------------------------------------------------------------------


class _Cursor:
    """Reads attributes as ``read_attr_value`` and ``read_any_attr`` in ``auth-scram.c``
    do: ``<letter>=<value>``, where the value runs to the next comma, which is consumed."""

    __slots__ = ("position", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def peek(self) -> str:
        """The next character, or ``""`` at the end."""
        return self.text[self.position : self.position + 1]

    def at_end(self) -> bool:
        return self.position >= len(self.text)

    def rest(self) -> str:
        return self.text[self.position :]

    def advance(self) -> None:
        self.position += 1

    def skip(self, char: str, where: str) -> None:
        if self.peek() != char:
            raise _malformed(f'Expected "{char}" in the {where}.')
        self.position += 1

    def read(self, attribute: str) -> str:
        """Return the value of ``attribute``, which must come next."""
        if self.peek() != attribute:
            raise _malformed(f'Expected attribute "{attribute}".')
        return self._value(attribute)

    def read_any(self) -> tuple[str, str]:
        """Return the next attribute (an ASCII letter) and its value."""
        attribute = self.peek()
        if not (attribute.isascii() and attribute.isalpha()):
            raise _malformed("Attribute expected, but found invalid character.")
        return attribute, self._value(attribute)

    def _value(self, attribute: str) -> str:
        start = self.position + 2
        if self.text[self.position + 1 : start] != "=":
            raise _malformed(f'Expected character "=" for attribute "{attribute}".')
        end = self.text.find(",", start)
        if end < 0:
            self.position = len(self.text)
            return self.text[start:]
        self.position = end + 1
        return self.text[start:end]


def _decode(data: bytes) -> str:
    """Message bytes as text, one character per byte, so slices of the text are slices of
    the bytes (Postgres keeps them as C strings, and hashes them as sent)."""
    if not data:
        raise _malformed("The message is empty.")
    if b"\0" in data:
        raise _malformed("Message length does not match input length.")
    return data.decode("latin-1")


def _is_printable(text: str) -> bool:
    """RFC 5802's ``printable``: ASCII 0x21-0x7E except ",". Empty passes, as in Postgres."""
    return all("!" <= char <= "~" and char != "," for char in text)


def _sanitize(text: str) -> str:
    """A server's ``e=`` text, safe to show: printable ASCII, at most 100 characters."""
    return "".join(char if " " <= char <= "~" else "?" for char in text[:100])


def _new_nonce() -> str:
    return _b64encode(secrets.token_bytes(_RAW_NONCE_BYTES))


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict base64 (alphabet and padding), or ``None``."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:  # binascii.Error and UnicodeEncodeError both are
        return None


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))
