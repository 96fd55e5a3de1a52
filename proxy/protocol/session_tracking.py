"""Where a relayed session stands, from its message headers both ways. Sans-IO.

The relay copies bytes as they come; it hands each read to ``SessionTracker`` first, which
walks the message headers in it (type byte and length: payloads are skipped, never copied
or parsed, so a large result costs one jump per message) and keeps what pgwake must know
about the session:

* how many answers are due: every Query, FunctionCall and Sync the client sent gets
  exactly one ReadyForQuery, so ``pending`` counts them down;
* whether an extended-protocol batch is open (Parse, Bind... with no Sync yet);
* the transaction status of the last ReadyForQuery, and whether a COPY runs;
* a real Terminate message (a CopyData that happens to hold the same bytes is skipped
  with its payload);
* ParameterStatus messages the compute sent, by name (the client was told those values).

A session is *at rest* when nothing is due, no batch is open and both streams are at a
message boundary; *quiet* is its message-level half (nothing due, no batch open).
``from_client`` and ``from_server`` run on every read of every session, so they keep to a
few attribute reads and one length unpack per message, and call nobody: whoever needs to
know looks (the endpoint's idle check does, once a tick: ``requests`` tells whether the
session ran something since its last look).

A stream whose length field is impossible (below 4) is not followed any further: the
session is ``lost`` and never at rest again (Postgres ends such a session anyway).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["SessionTracker"]

_LENGTH: Final = struct.Struct("!i").unpack_from

# Type bytes as ints (a bytes object indexed gives ints).
_SYNC: Final = ord("S")
_READY_FOR_QUERY: Final = ord("Z")
_ERROR_RESPONSE: Final = ord("E")
_IDLE: Final = b"I"

# What each type byte means to the tracker, one lookup per message (a 256-entry table is
# cheaper on the hot path than comparisons); 0 for the messages it only steps over.
_ANSWERED: Final = 1  # Query, FunctionCall, Sync: one ReadyForQuery each
_OPENS_BATCH: Final = 2  # Parse, Bind, Describe, Execute, Close, Flush
_ENDS_SESSION: Final = 3  # Terminate
_READ_WHOLE: Final = 1  # ReadyForQuery, ParameterStatus: their bodies matter
_COPY_STARTS: Final = 2  # CopyInResponse, CopyOutResponse, CopyBothResponse


def _table(roles: dict[str, int]) -> bytes:
    table = bytearray(256)
    for kinds, role in roles.items():
        for kind in kinds:
            table[ord(kind)] = role
    return bytes(table)


_CLIENT_KINDS: Final = _table({"QFS": _ANSWERED, "PBDECH": _OPENS_BATCH, "X": _ENDS_SESSION})
_SERVER_KINDS: Final = _table({"ZS": _READ_WHOLE, "GHW": _COPY_STARTS})


class SessionTracker:
    """Both directions of one session, header by header. Feed every byte each side
    sends, in order: ``from_client`` for the client's, ``from_server`` for the compute's."""

    __slots__ = (
        "_client_head",
        "_client_skip",
        "_server_head",
        "_server_skip",
        "copy",
        "extended",
        "last_server_message",
        "lost",
        "parameter_status",
        "pending",
        "requests",
        "status",
        "terminated",
    )

    def __init__(self) -> None:
        #: ReadyForQuery messages due: one per Query, FunctionCall and Sync sent.
        self.pending = 0
        #: Every Query, FunctionCall and Sync the client ever sent: a session that ran
        #: something since one look has a larger count at the next.
        self.requests = 0
        #: An extended-protocol batch has begun and no Sync closed it yet.
        self.extended = False
        #: The transaction status of the last ReadyForQuery (``I``, ``T`` or ``E``). A
        #: tracker starts after the login's, which is always idle.
        self.status = _IDLE
        #: A COPY runs (CopyIn/Out/BothResponse seen, its ReadyForQuery not yet).
        self.copy = False
        #: The client sent Terminate.
        self.terminated = False
        #: The type byte of the last whole message the compute sent (0: none yet).
        self.last_server_message = 0
        #: ParameterStatus messages the compute sent since the tracker began: name to the
        #: whole body (``name\0value\0``). ``None`` until the first.
        self.parameter_status: dict[bytes, bytes] | None = None
        #: A length field made no sense: the streams are no longer followed.
        self.lost = False
        # Per direction: bytes of the current message still to come (skip), and the
        # start of a message whose header (or, for the few read whole, body) is cut.
        self._client_skip = 0
        self._client_head = b""
        self._server_skip = 0
        self._server_head = b""

    @property
    def at_rest(self) -> bool:
        """Nothing is due, no batch is open, and both streams are at a boundary."""
        return (
            not self.pending
            and not self.extended
            and not self._client_skip
            and not self._client_head
            and not self._server_skip
            and not self._server_head
            and not self.lost
        )

    @property
    def idle(self) -> bool:
        """At rest, outside any transaction."""
        return self.at_rest and self.status == _IDLE

    @property
    def server_at_boundary(self) -> bool:
        """The compute's stream to the client ends with a whole message."""
        return not self._server_skip and not self._server_head and not self.lost

    @property
    def quiet(self) -> bool:
        """Nothing is due and no batch is open (the streams may still be mid-message:
        ``at_rest`` says whether they are at a boundary too)."""
        return not self.pending and not self.extended

    def from_client(self, data: bytes) -> None:
        """Follow bytes the client sent."""
        skip = self._client_skip
        size = len(data)
        if skip >= size:  # inside one message still (a large COPY row, a long query)
            self._client_skip = skip - size
            return
        if self._client_head:
            data = self._client_head + data
            size = len(data)
            self._client_head = b""
        if self.lost:
            return
        position = skip
        pending = self.pending
        unpack = _LENGTH
        while True:
            if position + 5 > size:
                self._client_head = data[position:]
                self._client_skip = 0
                break
            kind = data[position]
            length = unpack(data, position + 1)[0]
            if length < 4:
                self._lose()
                return
            role = _CLIENT_KINDS[kind]
            if role:
                if role == _ANSWERED:
                    pending += 1
                    if kind == _SYNC:
                        self.extended = False
                elif role == _OPENS_BATCH:
                    self.extended = True
                else:
                    self.terminated = True
            position += 1 + length
            if position >= size:
                self._client_skip = position - size
                break
        self.requests += pending - self.pending
        self.pending = pending

    def from_server(self, data: bytes) -> None:
        """Follow bytes the compute sent."""
        skip = self._server_skip
        size = len(data)
        if skip >= size:  # inside one message still (a large row)
            self._server_skip = skip - size
            return
        if self._server_head:
            data = self._server_head + data
            size = len(data)
            self._server_head = b""
        if self.lost:
            return
        position = skip
        kind = self.last_server_message
        unpack = _LENGTH
        kinds = _SERVER_KINDS
        while True:
            if position + 5 > size:
                self._server_head = data[position:]
                self._server_skip = 0
                break
            kind = data[position]
            length = unpack(data, position + 1)[0]
            if length < 4:
                self._lose()
                return
            end = position + 1 + length
            role = kinds[kind]
            if role:  # most messages (rows, completions) are only stepped over
                if role == _COPY_STARTS:
                    self.copy = True
                elif end > size:  # read these whole: their bodies are a few bytes
                    self._server_head = data[position:]
                    self._server_skip = 0
                    break
                elif kind == _READY_FOR_QUERY:
                    self.status = data[end - 1 : end]
                    self.copy = False
                    if self.pending:
                        self.pending -= 1
                else:
                    body = data[position + 5 : end]
                    statuses = self.parameter_status
                    if statuses is None:
                        statuses = self.parameter_status = {}
                    statuses[body.split(b"\0", 1)[0]] = body
            position = end
            if position >= size:
                self._server_skip = position - size
                break
        self.last_server_message = kind

    @property
    def server_sent_error(self) -> bool:
        """The compute's last whole message was an ErrorResponse (it explained itself)."""
        return self.last_server_message == _ERROR_RESPONSE

    def _lose(self) -> None:
        self.lost = True
        self._client_skip = self._server_skip = 0
        self._client_head = self._server_head = b""
