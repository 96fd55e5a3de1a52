"""Log lines an operator can parse: logfmt by default, one JSON object per line with
``log_format = "json"``.

pgwake logs an event as ``logger.info("event=routed conn=%s endpoint=%s", conn, name)``:
a format string of ``key=value`` words whose values are ``%`` conversions or constants.
``EventFormatter`` pairs every key with its value and renders the whole line, including
``ts``, ``level`` and ``logger``, either way; a value with a space, a quote, an ``=`` or a
control character is quoted and escaped. A message that is not made of such words (a
library's own) becomes ``msg=...``, and a traceback becomes one escaped ``exc`` value, so
every line parses.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from typing import Any, Final, Literal

__all__ = ["EventFormatter", "configure_logging", "logfmt_value", "parse_logfmt"]

# One conversion specifier of printf-style formatting.
_CONVERSION: Final = re.compile(r"%[-#0 +]*(?:\d+)?(?:\.\d+)?[sdifgrxXeE%]")
_KEY: Final = re.compile(r"^[A-Za-z_][\w.]*$")
_NEEDS_QUOTES: Final = re.compile(r'[\s"=\\]|[\x00-\x1f\x7f]')
_LOGFMT_PAIR: Final = re.compile(r'\s*([^\s=]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s"]*))')
_ESCAPES: Final = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES: Final = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def logfmt_value(value: str) -> str:
    """``value`` as logfmt writes it: bare when it can be, else quoted and escaped."""
    if value and not _NEEDS_QUOTES.search(value):
        return value
    escaped = "".join(_ESCAPES.get(char, char) for char in value)
    escaped = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", lambda m: f"\\x{ord(m[0]):02x}", escaped)
    return f'"{escaped}"'


def parse_logfmt(line: str) -> dict[str, str]:
    """The ``key=value`` pairs of one logfmt line; ``ValueError`` if it is not one."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(line.rstrip()):
        match = _LOGFMT_PAIR.match(line, position)
        if match is None:
            raise ValueError(f"not logfmt at column {position}: {line!r}")
        key, quoted, bare = match.groups()
        if quoted is not None:
            value = re.sub(r"\\(.)", lambda m: _UNESCAPES.get(m[1], m[0]), quoted)
        else:
            value = bare
        fields[key] = value
        position = match.end()
    return fields


def _event_fields(record: logging.LogRecord) -> list[tuple[str, object]] | None:
    """The record's ``key=value`` words with their arguments applied; ``None`` when its
    message is not made of such words."""
    if not isinstance(record.msg, str) or "=" not in record.msg:
        return None
    remaining = list(record.args) if isinstance(record.args, tuple) else []
    fields: list[tuple[str, object]] = []
    for word in record.msg.split():
        key, sep, template = word.partition("=")
        if not sep or not _KEY.match(key):
            return None
        conversions = [c for c in _CONVERSION.findall(template) if c != "%%"]
        if len(conversions) > len(remaining):
            return None
        taken, remaining = remaining[: len(conversions)], remaining[len(conversions) :]
        if len(conversions) == 1 and template == conversions[0]:
            fields.append((key, _single_value(template, taken[0])))
        else:
            fields.append((key, template % tuple(taken) if conversions else template))
    if remaining:
        return None
    return fields


def _single_value(conversion: str, value: object) -> object:
    """A value given by one conversion alone: a number stays a number (for JSON), a
    string given to ``%r`` is the string itself, anything else is formatted."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if conversion in ("%d", "%g", "%s") and is_number:
        return value
    if conversion in ("%r", "%s") and isinstance(value, str):
        return value
    return conversion % (value,)


class EventFormatter(logging.Formatter):
    """Renders every record as one logfmt line, or one JSON object (``style="json"``)."""

    def __init__(self, style: Literal["logfmt", "json"] = "logfmt") -> None:
        super().__init__()
        self.output = style

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        fields: list[tuple[str, Any]] = [
            ("ts", stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")),
            ("level", record.levelname.lower()),
            ("logger", record.name),
        ]
        event = _event_fields(record)
        fields += event if event is not None else [("msg", record.getMessage())]
        if record.exc_info:
            fields.append(("exc", self.formatException(record.exc_info)))
        if self.output == "json":
            return json.dumps(dict(fields), default=str)
        return " ".join(f"{key}={logfmt_value(str(value))}" for key, value in fields)


def configure_logging(level: str, style: Literal["logfmt", "json"] = "logfmt") -> None:
    """Send every log record to standard error through an ``EventFormatter``."""
    handler = logging.StreamHandler()
    handler.setFormatter(EventFormatter(style))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Python's warnings (a coroutine never awaited, a deprecation) become log lines too.
    logging.captureWarnings(True)
