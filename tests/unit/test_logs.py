"""Log lines parse: logfmt by default, JSON on request, one line per record."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from pgwake.logs import EventFormatter, logfmt_value, parse_logfmt


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(
        "pgwake.edge.client_connection", logging.WARNING, __file__, 1, msg, args, exc_info
    )


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("idle", "idle"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("bell\x07", '"bell\\x07"'),
    ],
)
def test_values_are_quoted_only_when_they_must_be(value: str, written: str) -> None:
    assert logfmt_value(value) == written
    if "\x07" not in value:
        assert parse_logfmt(f"k={written}") == {"k": value}


def test_an_event_becomes_one_logfmt_line_with_every_key() -> None:
    line = EventFormatter().format(
        _record(
            "event=client_error conn=%s endpoint=%s sqlstate=%s message=%r ms=%d",
            "ab12",
            "demo",
            "28P01",
            'password authentication failed for user "app"',
            42,
        )
    )
    assert "\n" not in line
    fields = parse_logfmt(line)
    assert fields["level"] == "warning"
    assert fields["logger"] == "pgwake.edge.client_connection"
    assert fields["ts"].endswith("Z")
    assert fields["event"] == "client_error"
    assert fields["message"] == 'password authentication failed for user "app"'
    assert fields["ms"] == "42"


def test_json_has_the_same_keys_and_keeps_numbers() -> None:
    record = _record("event=woke conn=%s endpoint=%s ms=%d", "ab12", "demo", 31)
    logfmt_fields = parse_logfmt(EventFormatter().format(record))
    as_json = json.loads(EventFormatter("json").format(record))
    assert list(as_json) == list(logfmt_fields)
    assert as_json["ms"] == 31
    assert as_json["event"] == "woke"


def test_other_messages_and_tracebacks_stay_on_one_parsable_line() -> None:
    line = EventFormatter().format(_record("Task exception was never retrieved", exc=True))
    assert "\n" not in line
    fields = parse_logfmt(line)
    assert fields["msg"] == "Task exception was never retrieved"
    assert "Traceback (most recent call last)" in fields["exc"]
    assert "boom\nsecond line" in fields["exc"]
    assert json.loads(EventFormatter("json").format(_record("plain %s", "text")))["msg"] == (
        "plain text"
    )


def test_a_message_that_is_not_all_key_value_words_is_kept_whole() -> None:
    fields = parse_logfmt(EventFormatter().format(_record("event=x then %s words", "some")))
    assert fields["msg"] == "event=x then some words"
    assert "event" not in fields


def test_parse_refuses_what_is_not_logfmt() -> None:
    with pytest.raises(ValueError, match="not logfmt"):
        parse_logfmt('2026-11-29 13:00:00 INFO x "unclosed')
