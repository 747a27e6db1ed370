"""Logging for `creditgate serve`: a JSON line per request, without a system call per line.

Python's stderr is line-buffered, so a plain StreamHandler writes each line with its own
system call. Under load that is a measurable share of a request's CPU; here lines gather
in a buffer that is written at most `FLUSH_SECONDS` after its first line, and at once for
warnings and errors.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys

FLUSH_SECONDS = 0.5


class BufferedLogHandler(logging.StreamHandler):
    def __init__(self) -> None:
        stream = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(sys.stderr.fileno(), "w", closefd=False), 1 << 16),
            encoding="utf-8",
            errors="backslashreplace",
            write_through=False,
        )
        super().__init__(stream)
        self._flush_pending = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()
            return
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not in the server's loop: nothing would flush it later
            self.flush()
            return
        self._flush_pending = True
        loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        super().flush()


def configure_server_logging() -> None:
    """Warnings from everything, and creditgate's own request and lifecycle lines."""
    handler = BufferedLogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("creditgate").setLevel(logging.INFO)  # one JSON line per request
