"""A session's state, captured on one backend and restored on another, and the answers a
parked client gets when its session cannot be brought back.

Rule: everything here is sans-IO. ``capture`` and ``restore`` are exchanges
(``exchange.py``) run in the client's own session, so every catalog object, function,
type and operator in their SQL is qualified with ``pg_catalog``: the session's
``search_path`` and role are the user's, and could shadow an unqualified name.

What is captured: the settings whose source is ``session`` (``pg_settings``), the
``SET SESSION AUTHORIZATION`` and ``SET ROLE`` that ``pg_settings`` hides, and the named
prepared statements. What cannot be moved pins the session to its backend: temporary
tables, ``LISTEN``, session advisory locks, ``WITH HOLD`` cursors, a SQL ``PREPARE`` whose
recorded text holds other statements too (Postgres records the whole query string, and
re-running it would re-run them), and non-ASCII statement text under a ``client_encoding``
other than UTF8 (restored text is sent as UTF-8). Custom settings (``SET app.x = ...``)
are invisible to ``pg_settings`` and ``SHOW ALL`` in Postgres 15, so they are not moved.

Text crosses the wire hex-encoded UTF-8, both ways, in the settings' case: the client
chose the session's ``client_encoding``, and may change it in the middle of a restore.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake.edge.exchange import Send, receive_message, unread
from pgwake.protocol import encode
from pgwake.protocol.errors import ProtocolViolation
from pgwake.protocol.framing import MessageReader, parse_data_row, parse_error_fields
from pgwake.protocol.messages import (
    BIND,
    BIND_COMPLETE,
    CLOSE,
    COMMAND_COMPLETE,
    COPY_DATA,
    COPY_DONE,
    COPY_FAIL,
    DATA_ROW,
    DESCRIBE,
    ERROR_FIELD_MESSAGE,
    ERROR_FIELD_SQLSTATE,
    ERROR_RESPONSE,
    EXECUTE,
    FLUSH,
    FUNCTION_CALL,
    NOTICE_RESPONSE,
    NOTIFICATION_RESPONSE,
    PARAMETER_STATUS,
    PARSE,
    PARSE_COMPLETE,
    QUERY,
    READY_FOR_QUERY,
    ROW_DESCRIPTION,
    SYNC,
    TERMINATE,
    TRANSACTION_IDLE,
    Frame,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pgwake.edge.exchange import Exchange

__all__ = [
    "MAX_ANSWER_LENGTH",
    "PIN_ADVISORY_LOCKS",
    "PIN_COMPOUND_PREPARE",
    "PIN_ENCODING",
    "PIN_LISTEN",
    "PIN_TEMPORARY_TABLES",
    "PIN_WITH_HOLD_CURSORS",
    "CaptureFailed",
    "Captured",
    "PreparedStatement",
    "Refuser",
    "RestoreFailed",
    "Restored",
    "SessionState",
    "capture",
    "restore",
]

#: The longest answer message read: a DataRow carries a whole statement text, hex-encoded.
MAX_ANSWER_LENGTH: Final = 64 << 20

PIN_TEMPORARY_TABLES: Final = "temporary tables"
PIN_LISTEN: Final = "LISTEN"
PIN_ADVISORY_LOCKS: Final = "advisory locks"
PIN_WITH_HOLD_CURSORS: Final = "WITH HOLD cursors"
PIN_COMPOUND_PREPARE: Final = "SQL PREPARE sent with other statements"
PIN_ENCODING: Final = "prepared statements with non-ASCII text in a client_encoding other than UTF8"

#: Settings that describe the current transaction, not the session: never set again.
_TRANSACTION_SETTINGS: Final = frozenset(
    {"transaction_isolation", "transaction_read_only", "transaction_deferrable"}
)
#: Client encodings under which UTF-8 bytes arrive unchanged.
_UTF8_SAFE_ENCODINGS: Final = frozenset({"UTF8", "SQL_ASCII"})
_TEXT_OID: Final = 25


# One query, rows of (kind, name, value, types), names and values as hex-encoded UTF-8.
# pg_stat_activity keeps the role the backend logged in as: a session user that differs
# was set by SET SESSION AUTHORIZATION. It and SET ROLE are hidden from pg_settings.
_CAPTURE_QUERY: Final = """\
SELECT 'pin', 'temporary tables', NULL, NULL WHERE EXISTS (
  SELECT FROM pg_catalog.pg_class
  WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())
UNION ALL SELECT 'pin', 'LISTEN', NULL, NULL WHERE EXISTS (
  SELECT FROM pg_catalog.pg_listening_channels())
UNION ALL SELECT 'pin', 'advisory locks', NULL, NULL WHERE EXISTS (
  SELECT FROM pg_catalog.pg_locks
  WHERE locktype OPERATOR(pg_catalog.=) 'advisory'
  AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())
UNION ALL SELECT 'pin', 'WITH HOLD cursors', NULL, NULL WHERE EXISTS (
  SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)
UNION ALL SELECT 'encoding', NULL,
  pg_catalog.encode(pg_catalog.convert_to(
    pg_catalog.current_setting('client_encoding'), 'UTF8'), 'hex'), NULL
UNION ALL SELECT 'authorization', NULL,
  pg_catalog.encode(pg_catalog.convert_to(session_user::pg_catalog.text, 'UTF8'), 'hex'), NULL
  FROM pg_catalog.pg_stat_activity
  WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
  AND usename OPERATOR(pg_catalog.<>) session_user
UNION ALL SELECT 'setting',
  pg_catalog.encode(pg_catalog.convert_to(name, 'UTF8'), 'hex'),
  pg_catalog.encode(pg_catalog.convert_to(setting, 'UTF8'), 'hex'), NULL
  FROM pg_catalog.pg_settings WHERE source OPERATOR(pg_catalog.=) 'session'
UNION ALL SELECT 'role', NULL,
  pg_catalog.encode(pg_catalog.convert_to(pg_catalog.current_setting('role'), 'UTF8'), 'hex'), NULL
  WHERE pg_catalog.current_setting('role') OPERATOR(pg_catalog.<>) 'none'
UNION ALL SELECT CASE WHEN from_sql THEN 'prepare' ELSE 'parse' END,
  pg_catalog.encode(pg_catalog.convert_to(name, 'UTF8'), 'hex'),
  pg_catalog.encode(pg_catalog.convert_to(statement, 'UTF8'), 'hex'),
  parameter_types::pg_catalog.oid[]::pg_catalog.text
  FROM pg_catalog.pg_prepared_statements
"""

#: The restore's one statement: set_config with hex-encoded UTF-8 name and value.
_SET_CONFIG_QUERY: Final = (
    "SELECT pg_catalog.set_config("
    "pg_catalog.convert_from(pg_catalog.decode($1, 'hex'), 'UTF8'), "
    "pg_catalog.convert_from(pg_catalog.decode($2, 'hex'), 'UTF8'), false)"
)


@dataclass(frozen=True, slots=True)
class PreparedStatement:
    """A named prepared statement of a session."""

    #: Never "": the unnamed statement is not captured.
    name: str
    #: The query text; for a SQL PREPARE, the whole PREPARE statement.
    text: str
    #: The parameters' type OIDs.
    parameter_types: tuple[int, ...]
    #: Made by SQL PREPARE (restored by running ``text``), not by a protocol Parse.
    from_sql: bool


class SessionState:
    """What a parked session needs on its next backend: ``settings``, (name, value) as
    ``set_config`` takes them, in the order to set them (``session_authorization`` first,
    ``role`` last, if present), and ``statements``.

    Kept packed in one bytes object: a parked session holds its state for as long as it
    is parked, and one object costs far less than the tuples, strings and statements it
    stands for (a thousand parked asyncpg sessions: 110 bytes each, not 290). Unpacked
    when used, at a re-attach."""

    __slots__ = ("_packed",)

    def __init__(
        self,
        settings: Iterable[tuple[str, str]] = (),
        statements: Iterable[PreparedStatement] = (),
    ) -> None:
        self._packed = _pack(tuple(settings), tuple(statements))

    @property
    def settings(self) -> tuple[tuple[str, str], ...]:
        return self.unpacked()[0]

    @property
    def statements(self) -> tuple[PreparedStatement, ...]:
        return self.unpacked()[1]

    def unpacked(self) -> tuple[tuple[tuple[str, str], ...], tuple[PreparedStatement, ...]]:
        """The settings and the statements."""
        return _unpack(self._packed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionState) and other._packed == self._packed

    def __hash__(self) -> int:
        return hash(self._packed)

    def __repr__(self) -> str:
        settings, statements = self.unpacked()
        return f"SessionState({settings!r}, {statements!r})"


# Packed: the two counts, then per setting its name and value, per statement its
# from_sql flag, its parameter types (a count, then the OIDs), its name and text; each
# string as its UTF-8 length and bytes.
_COUNTS: Final = struct.Struct("!II")
_LENGTH: Final = struct.Struct("!I")
_FLAG_AND_COUNT: Final = struct.Struct("!BI")


def _pack(
    settings: tuple[tuple[str, str], ...], statements: tuple[PreparedStatement, ...]
) -> bytes:
    if not settings and not statements:
        return b""
    parts = [_COUNTS.pack(len(settings), len(statements))]

    def add(text: str) -> None:
        encoded = text.encode()
        parts.append(_LENGTH.pack(len(encoded)))
        parts.append(encoded)

    for name, value in settings:
        add(name)
        add(value)
    for statement in statements:
        types = statement.parameter_types
        parts.append(_FLAG_AND_COUNT.pack(statement.from_sql, len(types)))
        parts.append(struct.pack(f"!{len(types)}I", *types))
        add(statement.name)
        add(statement.text)
    return b"".join(parts)


def _unpack(
    packed: bytes,
) -> tuple[tuple[tuple[str, str], ...], tuple[PreparedStatement, ...]]:
    if not packed:
        return (), ()
    setting_count, statement_count = _COUNTS.unpack_from(packed)
    position = _COUNTS.size

    def take() -> str:
        nonlocal position
        (length,) = _LENGTH.unpack_from(packed, position)
        start = position + _LENGTH.size
        position = start + length
        return packed[start:position].decode()

    settings = tuple((take(), take()) for _ in range(setting_count))
    statements: list[PreparedStatement] = []
    for _ in range(statement_count):
        from_sql, type_count = _FLAG_AND_COUNT.unpack_from(packed, position)
        position += _FLAG_AND_COUNT.size
        types = struct.unpack_from(f"!{type_count}I", packed, position)
        position += 4 * type_count
        name = take()
        statements.append(PreparedStatement(name, take(), types, bool(from_sql)))
    return settings, tuple(statements)


@dataclass(frozen=True, slots=True)
class Captured:
    """What ``capture`` found."""

    #: ``None`` when the session is pinned.
    state: SessionState | None
    #: Why the session cannot leave its backend, in words; empty when it can.
    pins: tuple[str, ...]
    #: NoticeResponse, NotificationResponse and ParameterStatus messages that arrived
    #: meanwhile, encoded, in order: the client's.
    passthrough: bytes


@dataclass(frozen=True, slots=True)
class Restored:
    """What ``restore`` did."""

    #: The ParameterStatus values the compute reported (name -> value).
    parameter_status: dict[str, str]
    #: The prepared statements that could not be prepared again (their table is gone...):
    #: the client hears that they do not exist if it uses them.
    dropped: tuple[str, ...]
    #: NoticeResponse and NotificationResponse messages seen, encoded, in order.
    passthrough: bytes


class CaptureFailed(Exception):
    """The session's state could not be read (an error, a transaction open...)."""

    def __init__(self, reason: str, sqlstate: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate


class RestoreFailed(Exception):
    """The settings could not be set again, or the compute answered out of turn. The
    reason is the compute's message, never a value pgwake sent."""

    def __init__(self, reason: str, sqlstate: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate


@dataclass(slots=True)
class _Answer:
    """The messages of one answer up to ReadyForQuery, asynchronous ones aside."""

    frames: list[Frame]
    error: Frame | None
    status: bytes


def _read_answer(
    reader: MessageReader, passthrough: bytearray, reported: dict[str, str] | None
) -> Exchange[_Answer]:
    """Read up to ReadyForQuery; asynchronous messages go to ``passthrough`` (and
    ParameterStatus to ``reported`` when given)."""
    frames: list[Frame] = []
    error: Frame | None = None
    while True:
        frame = yield from receive_message(reader.feed, reader.next_message)
        if frame.type == PARAMETER_STATUS and reported is not None:
            name, _, rest = frame.body.partition(b"\0")
            reported[name.decode("utf-8", "replace")] = rest.split(b"\0", 1)[0].decode(
                "utf-8", "replace"
            )
        elif frame.type in (NOTICE_RESPONSE, NOTIFICATION_RESPONSE, PARAMETER_STATUS):
            passthrough += encode.message(frame.type, frame.body)
        elif frame.type == READY_FOR_QUERY:
            return _Answer(frames, error, frame.body)
        elif frame.type == ERROR_RESPONSE:
            error = frame  # the rest of the answer is skipped up to ReadyForQuery
        else:
            frames.append(frame)


def _error_text(frame: Frame) -> tuple[str, str | None]:
    fields = parse_error_fields(frame)
    message = fields.get(ERROR_FIELD_MESSAGE.decode(), "the compute reported an error")
    return message, fields.get(ERROR_FIELD_SQLSTATE.decode())


def _text(value: bytes | None) -> str:
    return bytes.fromhex(value.decode("ascii")).decode("utf-8") if value else ""


def _parameter_types(value: bytes | None) -> tuple[int, ...]:
    inner = (value or b"{}").decode("ascii").strip("{}")
    return tuple(int(oid) for oid in inner.split(",")) if inner else ()


# After the PREPARE statement's ';', only blanks and comments may follow. Anything else
# (another statement, or a ';' inside a literal) is taken for other statements: pinning a
# session needlessly is safe, re-running a client's statement is not.
_TRAILER = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_LEADING_PREPARE = re.compile(r"(?:\s+|--[^\n]*\n|/\*.*?\*/)*prepare\s", re.DOTALL | re.I)


def _is_single_prepare(text: str) -> bool:
    """Whether a SQL PREPARE's recorded ``text`` holds that PREPARE alone."""
    if not _LEADING_PREPARE.match(text):
        return False
    semicolon = text.find(";")
    if semicolon == -1:
        return True
    trailer = _TRAILER.match(text, semicolon + 1)
    return trailer is not None and trailer.end() == len(text)


def capture() -> Exchange[Captured]:
    """Read the session's state in one simple query, sans-IO.

    Returns the state, or the pins that keep the session on its backend. Raises
    ``CaptureFailed`` when the query fails (after its ReadyForQuery), when the session is
    not idle, or when the compute answers anything else; ``PeerClosed`` at EOF."""
    yield Send(encode.query(_CAPTURE_QUERY))
    reader = MessageReader(MAX_ANSWER_LENGTH)
    passthrough = bytearray()
    try:
        answer = yield from _read_answer(reader, passthrough, None)
    except ProtocolViolation:
        raise CaptureFailed("the compute sent an invalid message") from None
    yield from unread(reader.take_remaining())
    if answer.error is not None:
        raise CaptureFailed(*_error_text(answer.error))
    if answer.status != TRANSACTION_IDLE:
        raise CaptureFailed("the session is in a transaction")
    rows: list[tuple[bytes | None, ...]] = []
    for frame in answer.frames:
        if frame.type == DATA_ROW:
            try:
                rows.append(parse_data_row(frame))
            except ProtocolViolation:
                raise CaptureFailed("the compute sent an invalid message") from None
        elif frame.type not in (ROW_DESCRIPTION, COMMAND_COMPLETE):
            raise CaptureFailed(f"unexpected message {frame.type!r} from the compute")
    try:
        return _captured(rows, bytes(passthrough))
    except (ValueError, IndexError):
        raise CaptureFailed("the compute's answer does not match the query") from None


#: The state of a session that set nothing up.
_NOTHING: Final = SessionState((), ())


def _captured(rows: list[tuple[bytes | None, ...]], passthrough: bytes) -> Captured:
    pins: list[str] = []
    authorization: list[tuple[str, str]] = []
    settings: list[tuple[str, str]] = []
    role: list[tuple[str, str]] = []
    statements: list[PreparedStatement] = []
    encoding = "UTF8"
    for kind_bytes, name, value, types in rows:
        kind = (kind_bytes or b"").decode("ascii")
        if kind == "pin":
            pins.append((name or b"").decode("utf-8"))
        elif kind == "encoding":
            encoding = _text(value)
        elif kind == "authorization":
            authorization.append(("session_authorization", _text(value)))
        elif kind == "setting":
            if _text(name) not in _TRANSACTION_SETTINGS:
                settings.append((_text(name), _text(value)))
        elif kind == "role":
            role.append(("role", _text(value)))
        elif kind in ("prepare", "parse"):
            statement = PreparedStatement(
                _text(name), _text(value), _parameter_types(types), kind == "prepare"
            )
            if statement.name:
                statements.append(statement)
        else:
            raise ValueError(kind)
    if any(s.from_sql and not _is_single_prepare(s.text) for s in statements):
        pins.append(PIN_COMPOUND_PREPARE)
    if encoding not in _UTF8_SAFE_ENCODINGS and any(not s.text.isascii() for s in statements):
        pins.append(PIN_ENCODING)
    if pins:
        return Captured(None, tuple(pins), passthrough)
    state = SessionState(tuple(authorization + settings + role), tuple(statements))
    # Most parked sessions set nothing: they all share one state, not one object each.
    return Captured(state if state != _NOTHING else _NOTHING, (), passthrough)


def restore(state: SessionState) -> Exchange[Restored]:
    """Set ``state`` on a fresh session, sans-IO, in one write: the settings as one
    extended-protocol batch (one implicit transaction: all or nothing), then each prepared
    statement on its own Sync, so one that fails leaves the others.

    Returns what the compute reported and the statements it could not prepare. Raises
    ``RestoreFailed`` when the settings fail or an answer is out of turn (after reading
    every answer), and ``PeerClosed`` at EOF."""
    settings, statements = state.unpacked()
    batches: list[bytes] = []
    if settings:
        batch = [encode.parse("", _SET_CONFIG_QUERY, (_TEXT_OID, _TEXT_OID))]
        for name, value in settings:
            hexed = [name.encode().hex().encode(), value.encode().hex().encode()]
            batch += [encode.bind("", hexed), encode.execute()]
        batches.append(b"".join([*batch, encode.sync()]))
    for statement in statements:
        if statement.from_sql:
            batches.append(encode.query(statement.text))
        else:
            batches.append(
                encode.parse(statement.name, statement.text, statement.parameter_types)
                + encode.sync()
            )
    yield Send(b"".join(batches))

    reader = MessageReader(MAX_ANSWER_LENGTH)
    passthrough = bytearray()
    reported: dict[str, str] = {}
    failure: RestoreFailed | None = None
    dropped: list[str] = []
    try:
        if settings:
            answer = yield from _read_answer(reader, passthrough, reported)
            expected = [PARSE_COMPLETE] + [BIND_COMPLETE, DATA_ROW, COMMAND_COMPLETE] * len(
                settings
            )
            if answer.error is not None:
                failure = RestoreFailed(*_error_text(answer.error))
            elif [frame.type for frame in answer.frames] != expected:
                failure = RestoreFailed("unexpected answer to the settings")
            failure = failure or _not_idle(answer)
        for statement in statements:
            answer = yield from _read_answer(reader, passthrough, reported)
            kinds = [(frame.type, frame.body) for frame in answer.frames]
            if answer.error is not None and not kinds:
                dropped.append(statement.name)
            elif kinds != [
                (COMMAND_COMPLETE, b"PREPARE\0") if statement.from_sql else (PARSE_COMPLETE, b"")
            ]:
                failure = failure or RestoreFailed("unexpected answer to a prepared statement")
            failure = failure or _not_idle(answer)
    except ProtocolViolation:
        raise RestoreFailed("the compute sent an invalid message") from None
    yield from unread(reader.take_remaining())
    if failure is not None:
        raise failure
    return Restored(reported, tuple(dropped), bytes(passthrough))


def _not_idle(answer: _Answer) -> RestoreFailed | None:
    if answer.status == TRANSACTION_IDLE:
        return None
    return RestoreFailed("the session is not idle after the restore")


_HEADER: Final = struct.Struct("!ci")
_EXTENDED: Final = frozenset({PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, FLUSH})
_IGNORED: Final = frozenset({COPY_DATA, COPY_DONE, COPY_FAIL})
_READY: Final = encode.ready_for_query(TRANSACTION_IDLE)


class Refuser:
    """Answers a parked client whose session could not be brought back, as Postgres
    answers after an error: a simple query or function call gets the error and
    ReadyForQuery; an extended-protocol batch gets the error once, the rest of it is
    discarded, and its Sync gets ReadyForQuery. COPY messages are ignored, as Postgres
    ignores them outside a COPY. Only message headers are read: bodies are skipped."""

    def __init__(self, error_response: bytes) -> None:
        self._error = error_response
        #: The client sent Terminate, or broke the protocol (and was told so): stop.
        self.terminated = False
        self._header = bytearray()
        self._kind: bytes | None = None  # the message whose body is being skipped
        self._remaining = 0
        self._discarding = False  # an extended batch failed: skip to its Sync

    @property
    def idle(self) -> bool:
        """Whether every message so far has been answered, none is partly received and no
        batch waits for its Sync: the next message may try the session again."""
        return not (self.terminated or self._discarding or self._kind or self._header)

    def feed(self, data: bytes) -> bytes:
        """Take the client's next bytes; return what to answer (possibly nothing)."""
        answer = bytearray()
        position = 0
        while position < len(data) and not self.terminated:
            if self._kind is None:
                taken = data[position : position + _HEADER.size - len(self._header)]
                self._header += taken
                position += len(taken)
                if len(self._header) < _HEADER.size:
                    break
                kind, length = _HEADER.unpack(self._header)
                self._header.clear()
                if length < 4:
                    self.terminated = True
                    answer += encode.error_response(
                        ProtocolViolation(
                            "invalid message length",
                            detail=f"message {kind!r} declares {length} bytes",
                        )
                    )
                    break
                self._kind, self._remaining = kind, length - 4
            skipped = min(self._remaining, len(data) - position)
            position += skipped
            self._remaining -= skipped
            if self._remaining == 0:
                kind, self._kind = self._kind, None
                answer += self._answer(kind)
        return bytes(answer)

    def _answer(self, kind: bytes) -> bytes:
        if kind == TERMINATE:
            self.terminated = True
            return b""
        known = kind in _EXTENDED or kind in _IGNORED or kind in (QUERY, FUNCTION_CALL, SYNC)
        if not known:  # Postgres ends the session, even while it skips to a Sync
            self.terminated = True
            return encode.error_response(
                ProtocolViolation("invalid frontend message type", detail=f"type {kind!r}")
            )
        if self._discarding:
            if kind == SYNC:
                self._discarding = False
                return _READY
            return b""
        if kind in (QUERY, FUNCTION_CALL):
            return self._error + _READY
        if kind in _EXTENDED:
            self._discarding = True
            return self._error
        if kind == SYNC:
            return _READY
        return b""  # COPY data, outside a COPY
