"""Incremental Server-Sent Events parser.

Works on bytes so that a chunk boundary inside a UTF-8 character, a line or a CRLF pair
never matters: lines are only cut at their terminators, which never occur inside a
multi-byte character. Every block of lines up to a blank line comes back with its raw
bytes, so a relay can pass the stream through unchanged or drop one event exactly.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEEvent(NamedTuple):
    """One block of the stream. `data` is None for blocks without a data line (comments)."""

    event: bytes | None
    data: bytes | None
    raw: bytes


class SSEParser:
    """Feed it any split of an SSE byte stream; it returns each block once it is complete."""

    __slots__ = ("_buf", "_data", "_event", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()  # bytes of the block being read, from its first byte
        self._scan = 0  # offset in _buf of the first line not yet parsed
        self._data: list[bytes] = []
        self._event: bytes | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf
        buf += chunk
        events: list[SSEEvent] = []
        pos = self._scan
        while True:
            match = _LINE_END.search(buf, pos)
            if match is None:
                break
            end = match.end()
            if end == len(buf) and buf[-1] == 0x0D:
                break  # a CR at the end may be the first half of a CRLF
            line = bytes(buf[pos : match.start()])
            pos = end
            if line:
                self._field(line)
                continue
            data = b"\n".join(self._data) if self._data else None
            events.append(SSEEvent(self._event, data, bytes(buf[:end])))
            del buf[:end]
            pos = 0
            self._data = []
            self._event = None
        self._scan = pos
        return events

    @property
    def pending_size(self) -> int:
        """How many bytes of an unfinished block are buffered."""
        return len(self._buf)

    def pending(self) -> bytes:
        """The bytes of an unfinished block (a stream that ended without its blank line)."""
        return bytes(self._buf)

    def _field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" starts a comment
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
