"""``SessionTracker``: where a session stands, from message headers both ways, however
the bytes are cut into reads."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from pgwake.protocol import encode
from pgwake.protocol.session_tracking import SessionTracker

QUERY = encode.message(b"Q", b"SELECT 1\0")
PARSE = encode.message(b"P", b"\0SELECT $1\0\0\0")
BIND = encode.message(b"B", b"\0\0\0\0\0\0\0\0\0")
EXECUTE = encode.message(b"E", b"\0\0\0\0\0")
SYNC = encode.message(b"S")
FLUSH = encode.message(b"H")
TERMINATE = encode.message(b"X")
COPY_DATA_LIKE_TERMINATE = encode.message(b"d", TERMINATE)
COPY_DONE = encode.message(b"c")

ROW_DESCRIPTION = encode.message(b"T", b"\0\x01?column?\0" + b"\0" * 18)
DATA_ROW = encode.message(b"D", b"\0\x01\0\0\0\x011")
SELECT_ONE = ROW_DESCRIPTION + DATA_ROW + encode.message(b"C", b"SELECT 1\0")
READY_IDLE = encode.message(b"Z", b"I")
READY_IN_BLOCK = encode.message(b"Z", b"T")
READY_FAILED = encode.message(b"Z", b"E")
PARSE_COMPLETE = encode.message(b"1")
BIND_COMPLETE = encode.message(b"2")
COPY_IN = encode.message(b"G", b"\0\0\0")
ERROR = encode.message(b"E", b"SERROR\0C42P01\0Mnope\0\0")
NOTIFICATION = encode.message(b"A", b"\0\0\0\x01chan\0hello\0")


def parameter_status(name: bytes, value: bytes) -> bytes:
    return encode.message(b"S", name + b"\0" + value + b"\0")


def test_a_new_session_is_idle_at_rest() -> None:
    tracker = SessionTracker()
    assert tracker.at_rest
    assert tracker.idle
    assert tracker.server_at_boundary


def test_a_query_is_busy_until_its_ready_for_query() -> None:
    tracker = SessionTracker()
    tracker.from_client(QUERY)
    assert not tracker.at_rest
    assert not tracker.quiet
    assert tracker.pending == 1
    assert tracker.requests == 1
    tracker.from_server(SELECT_ONE)
    assert not tracker.quiet  # still due
    tracker.from_server(READY_IDLE)
    assert tracker.idle
    assert tracker.requests == 1  # a count of what was asked, never down


def test_pipelined_queries_rest_after_the_last_answer() -> None:
    tracker = SessionTracker()
    tracker.from_client(QUERY + QUERY + QUERY)
    assert tracker.pending == 3
    tracker.from_server(SELECT_ONE + READY_IDLE + SELECT_ONE + READY_IDLE)
    assert not tracker.at_rest
    tracker.from_server(SELECT_ONE + READY_IDLE)
    assert tracker.at_rest
    assert tracker.requests == 3


def test_an_extended_batch_is_open_until_its_sync_is_answered() -> None:
    tracker = SessionTracker()
    tracker.from_client(PARSE + BIND + EXECUTE + FLUSH)
    assert tracker.extended
    assert not tracker.at_rest
    tracker.from_server(PARSE_COMPLETE + BIND_COMPLETE + DATA_ROW)
    assert not tracker.at_rest  # answers came, but no Sync: the batch is still open
    tracker.from_client(SYNC)
    assert not tracker.extended
    assert tracker.pending == 1
    tracker.from_server(encode.message(b"C", b"SELECT 1\0") + READY_IDLE)
    assert tracker.idle


def test_a_transaction_rests_but_is_not_idle() -> None:
    tracker = SessionTracker()
    tracker.from_client(QUERY)
    tracker.from_server(encode.message(b"C", b"BEGIN\0") + READY_IN_BLOCK)
    assert tracker.at_rest
    assert not tracker.idle
    assert tracker.status == b"T"
    tracker.from_client(QUERY)
    tracker.from_server(ERROR + READY_FAILED)
    assert tracker.status == b"E"
    assert not tracker.idle


def test_a_terminate_inside_copy_data_is_no_terminate() -> None:
    tracker = SessionTracker()
    tracker.from_client(QUERY)
    tracker.from_server(COPY_IN)
    assert tracker.copy
    tracker.from_client(COPY_DATA_LIKE_TERMINATE)
    tracker.from_client(COPY_DATA_LIKE_TERMINATE[:3])
    tracker.from_client(COPY_DATA_LIKE_TERMINATE[3:])
    assert not tracker.terminated
    tracker.from_client(COPY_DONE)
    tracker.from_server(encode.message(b"C", b"COPY 2\0") + READY_IDLE)
    assert not tracker.copy
    assert tracker.idle
    tracker.from_client(TERMINATE)
    assert tracker.terminated


def test_asynchronous_messages_change_nothing_but_what_was_told() -> None:
    tracker = SessionTracker()
    tracker.from_server(NOTIFICATION + parameter_status(b"TimeZone", b"UTC"))
    assert tracker.idle
    assert tracker.requests == 0
    assert tracker.parameter_status == {b"TimeZone": b"TimeZone\0UTC\0"}
    tracker.from_server(parameter_status(b"TimeZone", b"Europe/Paris"))
    assert tracker.parameter_status == {b"TimeZone": b"TimeZone\0Europe/Paris\0"}


def test_a_stream_cut_inside_a_message_is_not_at_rest() -> None:
    tracker = SessionTracker()
    tracker.from_server(DATA_ROW[:3])
    assert not tracker.server_at_boundary
    assert not tracker.at_rest
    assert tracker.quiet  # the message-level half: nothing is due
    tracker.from_server(DATA_ROW[3:])
    assert tracker.server_at_boundary


def test_an_error_last_is_remembered() -> None:
    tracker = SessionTracker()
    tracker.from_server(ERROR)
    assert tracker.server_sent_error
    tracker.from_server(NOTIFICATION)
    assert not tracker.server_sent_error


def test_an_impossible_length_loses_the_session_for_good() -> None:
    tracker = SessionTracker()
    tracker.from_client(b"Q\0\0\0\x02")
    assert tracker.lost
    assert not tracker.at_rest
    tracker.from_client(QUERY)
    tracker.from_server(READY_IDLE)
    assert not tracker.at_rest


def _conversation() -> tuple[bytes, bytes]:
    """A client's bytes and the compute's answers, in turns."""
    client = QUERY + PARSE + BIND + EXECUTE + SYNC + QUERY + COPY_DATA_LIKE_TERMINATE
    server = (
        SELECT_ONE
        + READY_IDLE
        + PARSE_COMPLETE
        + BIND_COMPLETE
        + DATA_ROW
        + encode.message(b"C", b"SELECT 1\0")
        + READY_IDLE
        + parameter_status(b"application_name", b"x")
        + encode.message(b"C", b"BEGIN\0")
        + READY_IN_BLOCK
    )
    return client, server


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(min_value=0), max_size=20), st.lists(st.integers(0), max_size=20))
def test_any_cut_of_the_reads_gives_the_same_result(
    client_cuts: list[int], server_cuts: list[int]
) -> None:
    client, server = _conversation()
    whole = SessionTracker()
    whole.from_client(client)
    whole.from_server(server)
    pieces = SessionTracker()
    for piece in _cut(client, client_cuts):
        pieces.from_client(piece)
    for piece in _cut(server, server_cuts):
        pieces.from_server(piece)
    for tracker in (whole, pieces):
        assert tracker.pending == 0
        assert not tracker.extended
        assert tracker.status == b"T"
        assert tracker.at_rest
        assert not tracker.terminated
        assert tracker.parameter_status == {b"application_name": b"application_name\0x\0"}
