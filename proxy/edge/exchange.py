"""The steps of a sans-IO exchange with a peer (psycopg's ``generators.py``).

Rule: an exchange does the protocol work and no I/O. It is a generator that yields a step
whenever it needs the world, gets the step's answer back from ``send``, and returns its
result or raises:

* ``Send(data)``: write ``data`` to the peer; the answer is ``None``.
* ``RECEIVE``: the exchange needs more of the peer's bytes to finish its next message;
  the answer is the bytes, ``b""`` once the peer has closed (h11's ``receive_data``).
* ``StartTLS(context, initial)``: switch the connection to TLS as the server; the answer
  is a ``TLSInfo``.
* ``Unread(data)``: bytes read past the end of the exchange, for whoever reads the
  connection next (the next exchange, or the relay).

``packet_stream.drive`` runs an exchange over a ``PacketStream``; deadlines sit around
that call. A test runs one by answering its steps with bytes of its own (``Peer.run`` in
``tests/unit/exchanges.py``). The exchanges: ``handshake.negotiate``,
``client_auth.offer_sasl`` and ``client_auth.verify_proof``, ``compute_login.log_in``,
``server_reuse.reset``, ``session_state.capture`` and ``session_state.restore``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from pgwake.protocol.messages import NeedData

if TYPE_CHECKING:
    import ssl

__all__ = [
    "RECEIVE",
    "Exchange",
    "PeerClosed",
    "Receive",
    "Reply",
    "Send",
    "StartTLS",
    "Step",
    "TLSInfo",
    "Unread",
    "receive",
    "receive_message",
    "unread",
]

T = TypeVar("T")


class PeerClosed(ConnectionResetError):
    """The peer closed the connection before the message we waited for arrived."""


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` to the peer."""

    data: bytes

    def __repr__(self) -> str:  # the data can be a SCRAM message
        return f"Send({len(self.data)} bytes)"


class Receive(enum.Enum):
    """The sentinel step: give me the peer's next bytes (``b""`` at EOF)."""

    #: The exchange's reader holds no whole message yet.
    RECEIVE = "RECEIVE"


RECEIVE = Receive.RECEIVE


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Switch to TLS as the server side, with ``initial`` bytes of the ClientHello that
    were read already (direct TLS); answered with a ``TLSInfo``."""

    context: ssl.SSLContext
    initial: bytes = b""


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What the TLS handshake settled."""

    #: The SNI host name the client sent, if any.
    server_name: str | None
    #: The ALPN protocol both sides chose, if any.
    alpn_protocol: str | None


@dataclass(frozen=True, slots=True)
class Unread:
    """Bytes read past the end of the exchange: put them back in front of the stream."""

    data: bytes


Step: TypeAlias = Send | Receive | StartTLS | Unread
#: What the driver answers a step with: bytes for ``RECEIVE``, a ``TLSInfo`` for
#: ``StartTLS``, ``None`` for the others.
Reply: TypeAlias = bytes | TLSInfo | None
#: An exchange that returns ``T``.
Exchange: TypeAlias = Generator[Step, Reply, T]


def receive() -> Exchange[bytes]:
    """Ask for the peer's next bytes; return them, ``b""`` at EOF."""
    data = yield RECEIVE
    if not isinstance(data, bytes):
        raise TypeError(f"RECEIVE answered with {type(data).__name__}")
    return data


def receive_message(feed: Callable[[bytes], None], poll: Callable[[], T | NeedData]) -> Exchange[T]:
    """Feed the peer's bytes to a sans-IO reader until ``poll`` returns a message.

    Raises ``PeerClosed`` at EOF, and whatever the reader raises on bad input."""
    while True:
        message = poll()
        if not isinstance(message, NeedData):
            return message
        data = yield from receive()
        if not data:
            raise PeerClosed("the peer closed the connection")
        feed(data)


def unread(data: bytes) -> Exchange[None]:
    """Hand back ``data`` (read, not consumed) if there is any."""
    if data:
        yield Unread(data)
