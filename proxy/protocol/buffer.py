"""The receive buffer every sans-IO reader in this package builds on.

``feed(data)`` only stores bytes; a reader's ``next_*`` method parses from ``_buffer``
and deletes what it consumed. ``take_remaining()`` hands the unparsed rest to whoever
reads the stream next (the relay, or the next phase's reader).
"""

from __future__ import annotations

__all__ = ["ReceiveBuffer"]


class ReceiveBuffer:
    """Bytes received and not yet consumed by a reader."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Store ``data``; it is parsed by the reader's next call."""
        self._buffer += data

    def take_remaining(self) -> bytes:
        """Return and forget the bytes not yet parsed."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest
