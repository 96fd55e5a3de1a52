"""The pure parts of parking: capture and restore as sans-IO exchanges against a scripted
compute, and the Refuser's answers to a parked client."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwake.edge.exchange import PeerClosed
from pgwake.edge.session_state import (
    _CAPTURE_QUERY,
    _SET_CONFIG_QUERY,
    PIN_ADVISORY_LOCKS,
    PIN_COMPOUND_PREPARE,
    PIN_ENCODING,
    PIN_LISTEN,
    PIN_TEMPORARY_TABLES,
    PIN_WITH_HOLD_CURSORS,
    CaptureFailed,
    PreparedStatement,
    Refuser,
    RestoreFailed,
    SessionState,
    _is_single_prepare,
    capture,
    restore,
)
from pgwake.protocol import encode
from pgwake.protocol.errors import ProtocolViolation
from pgwake.protocol.framing import MessageReader, parse_data_row, parse_error_fields
from pgwake.protocol.messages import Frame
from tests.unit.exchanges import Peer, byte_by_byte

IDLE = encode.message(b"Z", b"I")
IN_BLOCK = encode.message(b"Z", b"T")
NOTICE = encode.message(b"N", b"SNOTICE\0Mhello\0\0")
NOTIFICATION = encode.message(b"A", b"\0\0\0\1chan\0payload\0")


def _status(name: str, value: str) -> bytes:
    return encode.message(b"S", f"{name}\0{value}\0".encode())


def _error(message: str, sqlstate: str = "57014") -> bytes:
    return encode.message(b"E", f"SERROR\0C{sqlstate}\0M{message}\0\0".encode())


def _data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return encode.message(b"D", body)


def _hex(text: str) -> bytes:
    return text.encode().hex().encode()


def _row(
    kind: str, name: str | None = None, value: str | None = None, types: str | None = None
) -> bytes:
    if kind == "pin":
        return _data_row(b"pin", (name or "").encode(), None, None)
    return _data_row(
        kind.encode(),
        None if name is None else _hex(name),
        None if value is None else _hex(value),
        None if types is None else types.encode(),
    )


ROW_DESCRIPTION = encode.message(b"T", b"\0\4" + b"?column?\0" + b"\0" * 18 * 4)


def _answer(*rows: bytes) -> bytes:
    return (
        ROW_DESCRIPTION
        + b"".join(rows)
        + encode.message(b"C", f"SELECT {len(rows)}\0".encode())
        + IDLE
    )


# -- the protocol pieces ---------------------------------------------------------------------


def test_data_rows_decode_values_and_nulls() -> None:
    frame = Frame(b"D", _data_row(b"a", None, b"")[5:])
    assert parse_data_row(frame) == (b"a", None, b"")
    for body in (b"", b"\0\1", b"\0\1\0\0\0\5ab", b"\0\1\0\0\0\0x", b"\0\1\xff\xff\xff\xfe"):
        with pytest.raises(ProtocolViolation):
            parse_data_row(Frame(b"D", body))


def test_extended_protocol_encoders() -> None:
    assert encode.query("SELECT 1") == b"Q\0\0\0\rSELECT 1\0"
    assert encode.parse("s", "SELECT $1", (23,)) == (
        b"P" + struct.pack("!i", 4 + 2 + 10 + 2 + 4) + b"s\0SELECT $1\0\0\1\0\0\0\x17"
    )
    assert encode.bind("", [b"ab", None]) == (
        b"B" + struct.pack("!i", 4 + 1 + 1 + 2 + 2 + 6 + 4 + 2) + b"\0\0\0\0\0\2"
        b"\0\0\0\2ab\xff\xff\xff\xff\0\0"
    )
    assert encode.execute() == b"E\0\0\0\t\0\0\0\0\0"
    assert encode.sync() == b"S\0\0\0\4"
    assert encode.ready_for_query(b"I") == IDLE


# -- capture ---------------------------------------------------------------------------------


def test_the_capture_query_is_sent_alone_and_names_each_pin() -> None:
    peer = Peer(_answer(_row("encoding", value="UTF8")))
    peer.run(capture())
    assert peer.writes == [encode.query(_CAPTURE_QUERY)]
    for reason in (PIN_TEMPORARY_TABLES, PIN_LISTEN, PIN_ADVISORY_LOCKS, PIN_WITH_HOLD_CURSORS):
        assert f"'{reason}'" in _CAPTURE_QUERY


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte_by_byte"])
def test_settings_and_statements_are_captured_in_order(split: bool) -> None:
    answer = _answer(
        _row("encoding", value="UTF8"),
        _row("authorization", value="alice"),
        _row("setting", "search_path", "app, public"),
        _row("setting", "transaction_isolation", "serializable"),
        _row("setting", "TimeZone", "Europe/Paris"),
        _row("role", value="reader"),
        _row("parse", "s1", "SELECT $1 + $2", "{23,25}"),
        _row("parse", "s0", "SELECT now()", "{}"),
        _row("prepare", "p", "PREPARE p(int) AS SELECT $1 -- trailing\n;", "{23}"),
        _row("parse", "", "SELECT 1", "{}"),
    )
    peer = Peer(*(byte_by_byte(answer) if split else [answer]))
    captured = peer.run(capture())
    assert captured.pins == ()
    assert captured.passthrough == b""
    assert captured.state == SessionState(
        settings=(
            ("session_authorization", "alice"),
            ("search_path", "app, public"),
            ("TimeZone", "Europe/Paris"),
            ("role", "reader"),
        ),
        statements=(
            PreparedStatement("s1", "SELECT $1 + $2", (23, 25), from_sql=False),
            PreparedStatement("s0", "SELECT now()", (), from_sql=False),
            PreparedStatement("p", "PREPARE p(int) AS SELECT $1 -- trailing\n;", (23,), True),
        ),
    )
    assert peer.unread == b""


def test_role_comes_last_whatever_the_row_order() -> None:
    answer = _answer(_row("role", value="r"), _row("setting", "work_mem", "8192"))
    state = Peer(answer).run(capture()).state
    assert state is not None
    assert state.settings == (("work_mem", "8192"), ("role", "r"))


def test_non_ascii_text_survives_the_hex_encoding() -> None:
    answer = _answer(_row("parse", "é", "SELECT 'ünïcode'", "{}"))
    state = Peer(answer).run(capture()).state
    assert state is not None
    assert state.statements == (PreparedStatement("é", "SELECT 'ünïcode'", (), False),)


def test_pins_leave_no_state() -> None:
    answer = _answer(
        _row("pin", PIN_TEMPORARY_TABLES),
        _row("pin", PIN_LISTEN),
        _row("setting", "work_mem", "8192"),
    )
    captured = Peer(answer).run(capture())
    assert captured.state is None
    assert captured.pins == (PIN_TEMPORARY_TABLES, PIN_LISTEN)


def test_a_prepare_sent_with_other_statements_pins() -> None:
    answer = _answer(_row("prepare", "a", "PREPARE a AS SELECT 1; SELECT 2", "{}"))
    assert Peer(answer).run(capture()).pins == (PIN_COMPOUND_PREPARE,)


@pytest.mark.parametrize(
    ("text", "single"),
    [
        ("PREPARE a AS SELECT 1", True),
        ("PREPARE a AS SELECT 1;", True),
        ("  /* c */ prepare a AS SELECT 1 ;  -- done\n /* more */ \n", True),
        ("PREPARE a AS SELECT 1; SELECT 2", False),
        ("PREPARE a AS SELECT ';'", False),  # a ';' in a literal: pinned, to be safe
        ("SELECT 1; PREPARE a AS SELECT 1", False),
        ("EXECUTE a", False),
        ("PREPARE a AS SELECT 1; -- x\nSELECT 2", False),
    ],
)
def test_what_counts_as_a_prepare_alone(text: str, single: bool) -> None:
    assert _is_single_prepare(text) is single


def test_non_ascii_statements_under_another_client_encoding_pin() -> None:
    latin = _answer(_row("encoding", value="LATIN1"), _row("parse", "s", "SELECT 'é'", "{}"))
    assert Peer(latin).run(capture()).pins == (PIN_ENCODING,)
    ascii_only = _answer(_row("encoding", value="LATIN1"), _row("parse", "s", "SELECT 1", "{}"))
    assert Peer(ascii_only).run(capture()).pins == ()


def test_asynchronous_messages_pass_through_in_order() -> None:
    status = _status("TimeZone", "UTC")
    answer = NOTICE + ROW_DESCRIPTION + NOTIFICATION + encode.message(b"C", b"SELECT 0\0")
    captured = Peer(answer + status + IDLE).run(capture())
    assert captured.passthrough == NOTICE + NOTIFICATION + status
    assert captured.state == SessionState((), ())


def test_an_error_fails_the_capture_after_its_ready_for_query() -> None:
    trailing = encode.message(b"A", b"\0\0\0\1c\0\0")
    peer = Peer(_error("canceling statement due to statement timeout") + IDLE + trailing)
    with pytest.raises(CaptureFailed) as failed:
        peer.run(capture())
    assert failed.value.reason == "canceling statement due to statement timeout"
    assert failed.value.sqlstate == "57014"
    assert peer.unread == trailing


def test_bytes_after_ready_for_query_are_unread() -> None:
    peer = Peer(_answer() + NOTIFICATION)
    assert peer.run(capture()).passthrough == b""
    assert peer.unread == NOTIFICATION


@pytest.mark.parametrize(
    "answer",
    [
        _answer()[:-6] + IN_BLOCK,
        ROW_DESCRIPTION + encode.message(b"G", b"\0\0\0") + IDLE,
        ROW_DESCRIPTION + encode.message(b"D", b"\0") + IDLE,
        ROW_DESCRIPTION + _data_row(b"nonsense", None, None, None) + IDLE,
        ROW_DESCRIPTION + _data_row(b"setting", b"zz", b"00", None) + IDLE,
        ROW_DESCRIPTION + _data_row(b"setting") + IDLE,
        b"D\0\0\0\1",
    ],
    ids=["in_transaction", "copy", "bad_row", "bad_kind", "bad_hex", "short_row", "bad_length"],
)
def test_anything_unexpected_fails_the_capture(answer: bytes) -> None:
    with pytest.raises(CaptureFailed):
        Peer(answer).run(capture())


def test_eof_during_the_capture_is_peer_closed() -> None:
    with pytest.raises(PeerClosed):
        Peer(ROW_DESCRIPTION).run(capture())


# -- restore ---------------------------------------------------------------------------------

STATE = SessionState(
    settings=(("search_path", "app"), ("role", "reader")),
    statements=(
        PreparedStatement("s", "SELECT $1", (23,), from_sql=False),
        PreparedStatement("p", "PREPARE p AS SELECT 1", (), from_sql=True),
    ),
)
SETTINGS_OK = (
    encode.message(b"1")
    + (encode.message(b"2") + _data_row(b"x") + encode.message(b"C", b"SELECT 1\0")) * 2
    + IDLE
)
PARSED = encode.message(b"1") + IDLE
PREPARED = encode.message(b"C", b"PREPARE\0") + IDLE


def test_restore_sends_everything_in_one_write() -> None:
    peer = Peer(SETTINGS_OK + PARSED + PREPARED)
    restored = peer.run(restore(STATE))
    assert peer.writes == [
        encode.parse("", _SET_CONFIG_QUERY, (25, 25))
        + encode.bind("", [b"search_path".hex().encode(), b"app".hex().encode()])
        + encode.execute()
        + encode.bind("", [b"role".hex().encode(), b"reader".hex().encode()])
        + encode.execute()
        + encode.sync()
        + encode.parse("s", "SELECT $1", (23,))
        + encode.sync()
        + encode.query("PREPARE p AS SELECT 1")
    ]
    assert restored.dropped == ()
    assert restored.parameter_status == {}
    assert restored.passthrough == b""


def test_an_empty_state_sends_nothing_but_an_empty_write() -> None:
    peer = Peer()
    assert peer.run(restore(SessionState((), ()))).dropped == ()
    assert peer.writes == [b""]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte_by_byte"])
def test_statements_that_fail_are_dropped_and_the_others_kept(split: bool) -> None:
    answer = (
        SETTINGS_OK
        + _error('relation "gone" does not exist', "42P01")
        + IDLE
        + _error("syntax error", "42601")
        + IDLE
    )
    peer = Peer(*(byte_by_byte(answer) if split else [answer]))
    assert peer.run(restore(STATE)).dropped == ("s", "p")


def test_parameter_status_is_collected_and_notices_pass_through() -> None:
    answer = (
        encode.message(b"1")
        + NOTICE
        + (encode.message(b"2") + _data_row(b"x") + encode.message(b"C", b"SELECT 1\0")) * 2
        + _status("is_superuser", "off")
        + _status("application_name", "app")
        + IDLE
        + PARSED
        + NOTIFICATION
        + PREPARED
        + NOTICE
    )
    peer = Peer(answer)
    restored = peer.run(restore(STATE))
    assert restored.parameter_status == {"is_superuser": "off", "application_name": "app"}
    assert restored.passthrough == NOTICE + NOTIFICATION
    assert peer.unread == NOTICE


def test_failed_settings_fail_the_restore_with_the_servers_message_only() -> None:
    answer = encode.message(b"1") + _error('role "reader" does not exist', "22023") + IDLE
    peer = Peer(answer + PARSED + PREPARED)
    with pytest.raises(RestoreFailed) as failed:
        peer.run(restore(STATE))
    assert failed.value.reason == 'role "reader" does not exist'
    assert failed.value.sqlstate == "22023"
    assert peer.unread == b""  # every answer was read: the backend is at rest


@pytest.mark.parametrize(
    "answer",
    [
        SETTINGS_OK[:-6] + IN_BLOCK + PARSED + PREPARED,
        encode.message(b"1") + IDLE + PARSED + PREPARED,
        SETTINGS_OK + PREPARED + PREPARED,
        SETTINGS_OK + PARSED + encode.message(b"C", b"SELECT 1\0") + IDLE,
        SETTINGS_OK + PARSED + encode.message(b"Z", b"E"),
        SETTINGS_OK + b"1\0\0\0\0",
    ],
    ids=[
        "settings_in_block",
        "settings_short",
        "parse_answered_as_sql",
        "other_tag",
        "failed_block",
        "bad_length",
    ],
)
def test_answers_out_of_turn_fail_the_restore(answer: bytes) -> None:
    with pytest.raises(RestoreFailed):
        Peer(answer).run(restore(STATE))


def test_eof_during_the_restore_is_peer_closed() -> None:
    with pytest.raises(PeerClosed):
        Peer(SETTINGS_OK).run(restore(STATE))


# -- the Refuser -----------------------------------------------------------------------------

ERROR = _error("the database could not be woken", "57P03")
READY = IDLE


def _m(kind: bytes, body: bytes = b"") -> bytes:
    return encode.message(kind, body)


QUERY = _m(b"Q", b"SELECT 1\0")
PARSE = encode.parse("", "SELECT 1")
BIND = encode.bind("", [])
DESCRIBE = _m(b"D", b"P\0")
EXECUTE = encode.execute()
SYNC = encode.sync()
FLUSH = _m(b"H")
CLOSE = _m(b"C", b"Ss\0")
FUNCTION_CALL = _m(b"F", b"\0\0\0\1\0\0\0\0\0\0")
TERMINATE = _m(b"X")


@pytest.mark.parametrize("message", [QUERY, FUNCTION_CALL], ids=["query", "function_call"])
def test_a_simple_query_gets_the_error_and_ready_for_query(message: bytes) -> None:
    refuser = Refuser(ERROR)
    assert refuser.feed(message) == ERROR + READY
    assert refuser.idle
    assert refuser.feed(message + message) == (ERROR + READY) * 2


@pytest.mark.parametrize("first", [PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, FLUSH])
def test_an_extended_batch_gets_the_error_once_then_ready_at_its_sync(first: bytes) -> None:
    refuser = Refuser(ERROR)
    assert refuser.feed(first) == ERROR
    assert not refuser.idle
    # Until the Sync, everything is discarded, simple queries and COPY data too.
    assert refuser.feed(BIND + EXECUTE + QUERY + FUNCTION_CALL + _m(b"d", b"xx") + FLUSH) == b""
    assert not refuser.idle
    assert refuser.feed(SYNC) == READY
    assert refuser.idle


def test_a_sync_alone_and_copy_messages() -> None:
    refuser = Refuser(ERROR)
    assert refuser.feed(SYNC) == READY
    assert refuser.feed(_m(b"d", b"row\n") + _m(b"c") + _m(b"f", b"oops\0")) == b""
    assert refuser.idle


def test_several_messages_in_one_call_are_answered_in_order() -> None:
    refuser = Refuser(ERROR)
    data = QUERY + PARSE + BIND + EXECUTE + SYNC + SYNC + QUERY
    assert refuser.feed(data) == ERROR + READY + ERROR + READY + READY + ERROR + READY


def test_split_headers_and_bodies_wait_for_the_whole_message() -> None:
    refuser = Refuser(ERROR)
    assert refuser.feed(QUERY[:3]) == b""
    assert not refuser.idle
    assert refuser.feed(QUERY[3:7]) == b""
    assert not refuser.idle
    assert refuser.feed(QUERY[7:]) == ERROR + READY
    assert refuser.idle


def test_one_byte_at_a_time() -> None:
    refuser = Refuser(ERROR)
    data = PARSE + SYNC + QUERY + FLUSH + SYNC
    answers = b"".join(refuser.feed(chunk) for chunk in byte_by_byte(data))
    assert answers == ERROR + READY + ERROR + READY + ERROR + READY


def test_terminate_stops_and_ignores_what_follows() -> None:
    refuser = Refuser(ERROR)
    assert refuser.feed(PARSE + TERMINATE + QUERY) == ERROR
    assert refuser.terminated
    assert not refuser.idle
    assert refuser.feed(QUERY) == b""


@pytest.mark.parametrize("length", [0, 3, -1])
def test_a_length_below_four_is_a_fatal_protocol_violation(length: int) -> None:
    refuser = Refuser(ERROR)
    answer = refuser.feed(QUERY + b"Q" + struct.pack("!i", length) + QUERY)
    reader = MessageReader()
    reader.feed(answer[len(ERROR + READY) :])
    frame = reader.next_message()
    assert isinstance(frame, Frame)
    assert parse_error_fields(frame)["S"] == "FATAL"
    assert parse_error_fields(frame)["C"] == "08P01"
    assert refuser.terminated


def test_an_unknown_message_type_is_fatal_even_while_discarding() -> None:
    refuser = Refuser(ERROR)
    answer = refuser.feed(PARSE + _m(b"?", b"x"))
    assert answer.startswith(ERROR)
    assert b"08P01" in answer[len(ERROR) :]
    assert refuser.terminated


_CLIENT_MESSAGES = [QUERY, PARSE, BIND, DESCRIBE, EXECUTE, SYNC, FLUSH, CLOSE, FUNCTION_CALL]
_CLIENT_MESSAGES += [_m(b"d", b"x" * 300), _m(b"c"), _m(b"f", b"e\0"), TERMINATE]


@given(
    messages=st.lists(st.sampled_from(_CLIENT_MESSAGES), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_chunking_gives_the_same_answer(messages: list[bytes], cuts: list[int]) -> None:
    data = b"".join(messages)
    whole = Refuser(ERROR)
    expected = whole.feed(data)
    chunked = Refuser(ERROR)
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    answers = b"".join(chunked.feed(data[a:b]) for a, b in itertools.pairwise(points))
    assert answers == expected
    assert (chunked.terminated, chunked.idle) == (whole.terminated, whole.idle)


# -- the packed state -----------------------------------------------------------------------

_TEXTS = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_STATEMENTS = st.builds(
    PreparedStatement,
    _TEXTS,
    _TEXTS,
    st.tuples(*[st.integers(0, 2**32 - 1)] * 3) | st.just(()),
    st.booleans(),
)


@given(st.lists(st.tuples(_TEXTS, _TEXTS), max_size=5), st.lists(_STATEMENTS, max_size=5))
def test_state_unpacks_to_what_was_packed(
    settings: list[tuple[str, str]], statements: list[PreparedStatement]
) -> None:
    state = SessionState(settings, statements)
    assert state.settings == tuple(settings)
    assert state.statements == tuple(statements)
    assert state == SessionState(tuple(settings), tuple(statements))
    assert hash(state) == hash(SessionState(settings, statements))


def test_states_that_differ_are_not_equal() -> None:
    statement = PreparedStatement("s", "SELECT $1", (23,), from_sql=False)
    assert SessionState((), (statement,)) != SessionState((), ())
    assert SessionState((("a", "b"),), ()) != SessionState((("ab", ""),), ())
    assert SessionState((), (statement,)) != SessionState(
        (), (PreparedStatement("s", "SELECT $1", (25,), from_sql=False),)
    )
    assert repr(SessionState((("TimeZone", "UTC"),), ())) == (
        "SessionState((('TimeZone', 'UTC'),), ())"
    )
