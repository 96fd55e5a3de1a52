"""What both sides of a SCRAM-SHA-256 exchange share: mechanism names, errors, channel
binding, the exchange's states and the attribute parser (RFC 5802). Pure."""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import secrets
from typing import TYPE_CHECKING, ClassVar, Final

from pgwake.auth.certhash import binding_hash_name

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "AUTHENTICATION_FAILED",
    "GS2_HEADERS",
    "SCRAM_SHA_256",
    "SCRAM_SHA_256_PLUS",
    "TLS_SERVER_END_POINT",
    "ChannelBinding",
    "Cursor",
    "Exchange",
    "ScramAuthenticationFailed",
    "ScramChannelBindingFailed",
    "ScramError",
    "ScramProtocolError",
    "ScramState",
    "Side",
    "b64encode",
    "decode",
    "is_printable",
    "malformed",
    "new_nonce",
    "sanitize",
    "tls_server_end_point",
    "xor",
]

#: ``SCRAM_RAW_NONCE_LEN`` (scram-common.h): random bytes in a nonce, sent base64 encoded.
RAW_NONCE_BYTES: Final = 18
#: SASL mechanism names (RFC 7677; ``-PLUS`` adds channel binding, RFC 5802 section 4).
SCRAM_SHA_256: Final = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS: Final = "SCRAM-SHA-256-PLUS"
#: The one channel binding type Postgres implements (RFC 5929 section 4).
TLS_SERVER_END_POINT: Final = "tls-server-end-point"
#: The gs2-header of each channel binding flag (RFC 5802 section 7; authzid is never sent).
GS2_HEADERS: Final = {"n": "n,,", "y": "y,,", "p": f"p={TLS_SERVER_END_POINT},,"}


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
AUTHENTICATION_FAILED: Final = "password authentication failed"


def malformed(detail: str) -> ScramProtocolError:
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


# --- Exchange states (Rule 1: every move is in TRANSITIONS, and only _step makes it) ----


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


class Side(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


TRANSITIONS: Final[dict[tuple[Side, ScramState], ScramState]] = {
    (Side.CLIENT, ScramState.CLIENT_FIRST): ScramState.SERVER_FIRST,
    (Side.CLIENT, ScramState.SERVER_FIRST): ScramState.SERVER_FINAL,
    (Side.CLIENT, ScramState.SERVER_FINAL): ScramState.DONE,
    # The server answers each message in the same step, so it skips the states of its own.
    (Side.SERVER, ScramState.CLIENT_FIRST): ScramState.CLIENT_FINAL,
    (Side.SERVER, ScramState.CLIENT_FINAL): ScramState.DONE,
}


class Exchange:
    """One side of one exchange; one-shot, like h11's connection after ``ERROR``."""

    __slots__ = ("_state",)
    _SIDE: ClassVar[Side]

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
        target = TRANSITIONS.get((self._SIDE, current)) if current is message else None
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


# --- Parsing helpers -----------------------------------------------------------------------


class Cursor:
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
            raise malformed(f'Expected "{char}" in the {where}.')
        self.position += 1

    def read(self, attribute: str) -> str:
        """Return the value of ``attribute``, which must come next."""
        if self.peek() != attribute:
            raise malformed(f'Expected attribute "{attribute}".')
        return self._value(attribute)

    def read_any(self) -> tuple[str, str]:
        """Return the next attribute (an ASCII letter) and its value."""
        attribute = self.peek()
        if not (attribute.isascii() and attribute.isalpha()):
            raise malformed("Attribute expected, but found invalid character.")
        return attribute, self._value(attribute)

    def _value(self, attribute: str) -> str:
        start = self.position + 2
        if self.text[self.position + 1 : start] != "=":
            raise malformed(f'Expected character "=" for attribute "{attribute}".')
        end = self.text.find(",", start)
        if end < 0:
            self.position = len(self.text)
            return self.text[start:]
        self.position = end + 1
        return self.text[start:end]


def decode(data: bytes) -> str:
    """Message bytes as text, one character per byte, so slices of the text are slices of
    the bytes (Postgres keeps them as C strings, and hashes them as sent)."""
    if not data:
        raise malformed("The message is empty.")
    if b"\0" in data:
        raise malformed("Message length does not match input length.")
    return data.decode("latin-1")


def is_printable(text: str) -> bool:
    """RFC 5802's ``printable``: ASCII 0x21-0x7E except ",". Empty passes, as in Postgres."""
    return all("!" <= char <= "~" and char != "," for char in text)


def sanitize(text: str) -> str:
    """A server's ``e=`` text, safe to show: printable ASCII, at most 100 characters."""
    return "".join(char if " " <= char <= "~" else "?" for char in text[:100])


def new_nonce() -> str:
    return b64encode(secrets.token_bytes(RAW_NONCE_BYTES))


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))
