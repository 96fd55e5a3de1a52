"""Shared helpers for the codec unit tests.

``tr`` is h11's ``tests/test_io.py`` helper: every reader is run on the whole input, byte
by byte, and with trailing bytes, and must give the same message each time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import pytest

from pgwake.protocol.framing import MessageReader
from pgwake.protocol.messages import NEED_DATA
from pgwake.protocol.startup import StartupReader

TRAILING = b"trailing bytes"


class Reader(Protocol):
    def feed(self, data: bytes) -> None: ...

    def next_message(self) -> object: ...


def remaining(reader: Reader) -> bytes:
    """The bytes a reader holds but has not consumed yet."""
    if isinstance(reader, StartupReader):
        return reader.trailing_data
    assert isinstance(reader, MessageReader)
    return reader.take_remaining()


def run_reader(make_reader: Callable[[], Reader], data: bytes, expected: object) -> None:
    """Assert that ``data`` decodes to ``expected`` whole, byte by byte and with trailing
    bytes, and that an incomplete prefix gives ``NEED_DATA`` and consumes nothing."""
    # Whole input: one message, nothing left over.
    reader = make_reader()
    reader.feed(data)
    assert reader.next_message() == expected
    assert remaining(reader) == b""

    # Byte by byte: NEED_DATA until the last byte, and the prefix is kept intact.
    reader = make_reader()
    for index in range(len(data) - 1):
        reader.feed(data[index : index + 1])
        assert reader.next_message() is NEED_DATA
        if isinstance(reader, StartupReader):
            assert reader.trailing_data == data[: index + 1]
    reader.feed(data[-1:])
    assert reader.next_message() == expected
    assert remaining(reader) == b""

    # Trailing bytes: the message, then the trailing bytes untouched.
    reader = make_reader()
    reader.feed(data + TRAILING)
    assert reader.next_message() == expected
    assert remaining(reader) == TRAILING


@pytest.fixture
def tr() -> Callable[[Callable[[], Reader], bytes, object], None]:
    return run_reader
