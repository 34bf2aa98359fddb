"""The gateway's log lines: one record, one line, whatever a client sent.

Request paths, event names and header values reach log messages; a path with
``%0A`` wrote a forged line into the log, one with ``%1B[`` could drive a
terminal. The one formatter the CLI installs escapes every control character
(C0, DEL, C1, and the Unicode line and paragraph separators) in the message
part of a record: ``\\n`` becomes ``\\\\n``, ESC ``\\\\x1b``. The traceback it
appends is the gateway's own text and keeps its lines.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = {code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _CONTROLS}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape."""
    return text.translate(_ESCAPES)


class EscapingFormatter(logging.Formatter):
    """A Formatter whose ``%(message)s`` never holds a control character."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = escape_controls(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message  # other handlers see the record as it was


def configure_logging(level: int = logging.INFO) -> None:
    """The CLI's logging: every record to stderr, one escaped line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
