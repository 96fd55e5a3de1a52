"""A scripted peer for sans-IO exchanges (``pgwake.edge.exchange``), without I/O.

``Peer`` answers an exchange's steps as ``packet_stream.drive`` would, from a script: each
``RECEIVE`` gets the next chunk (a chunk can be a function of the last bytes sent, for a
peer whose answer depends on them), ``b""`` once the script has run out; each ``Send`` is
recorded, and so are ``Unread`` and ``StartTLS``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TypeVar

from pgwake.edge.exchange import RECEIVE, Exchange, Reply, Send, StartTLS, TLSInfo, Unread

T = TypeVar("T")

Chunk = bytes | Callable[[bytes], bytes]


class Peer:
    """The other end of an exchange, following a script."""

    def __init__(self, *chunks: Chunk, tls: TLSInfo | None = None) -> None:
        self.script: deque[Chunk] = deque(chunks)
        self.tls = tls if tls is not None else TLSInfo(None, "postgresql")
        #: Each ``Send``'s bytes, in order.
        self.writes: list[bytes] = []
        #: The bytes handed back with ``Unread``.
        self.unread = b""
        #: The ``initial`` bytes of each ``StartTLS``.
        self.tls_started: list[bytes] = []
        #: How many ``RECEIVE`` steps were answered.
        self.receives = 0

    @property
    def sent(self) -> bytes:
        """Everything the exchange sent."""
        return b"".join(self.writes)

    def run(self, exchange: Exchange[T]) -> T:
        """Answer ``exchange``'s steps until it returns; return its result (or raise what
        it raises)."""
        reply: Reply = None
        while True:
            try:
                step = exchange.send(reply)
            except StopIteration as done:
                result: T = done.value
                return result
            reply = self.answer(step)

    def answer(self, step: object) -> Reply:
        """The reply to one step."""
        if step is RECEIVE:
            self.receives += 1
            if not self.script:
                return b""
            chunk = self.script.popleft()
            if isinstance(chunk, bytes):
                return chunk
            return chunk(self.writes[-1] if self.writes else b"")
        if isinstance(step, Send):
            self.writes.append(step.data)
            return None
        if isinstance(step, Unread):
            self.unread += step.data
            return None
        assert isinstance(step, StartTLS), step
        self.tls_started.append(step.initial)
        return self.tls


def byte_by_byte(data: bytes) -> list[bytes]:
    """``data`` as one-byte chunks (h11's ``tr``: a reader must cope with any split)."""
    return [data[index : index + 1] for index in range(len(data))]
