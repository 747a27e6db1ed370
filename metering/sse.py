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


def _new_event(fields: tuple[bytes | None, bytes | None, bytes]) -> SSEEvent:
    return tuple.__new__(SSEEvent, fields)  # skips NamedTuple's Python-level __new__


class SSEParser:
    """Feed it any split of an SSE byte stream; it returns each block once it is complete."""

    __slots__ = ("_buf", "_data", "_event", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()  # bytes of the block being read, from its first byte
        self._scan = 0  # offset in _buf of the first line not yet parsed
        self._data: list[bytes] = []
        self._event: bytes | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not self._buf and b"\r" not in chunk:
            return self._feed_lf(chunk)
        return self._feed_any(chunk)

    def _feed_lf(self, chunk: bytes) -> list[SSEEvent]:
        """The common case, nothing buffered and LF line ends: split on blank lines in C."""
        events: list[SSEEvent] = []
        start, size, find = 0, len(chunk), chunk.find
        while start < size:
            if chunk[start] == 0x0A:  # a blank line on its own ends an empty block
                events.append(SSEEvent(None, None, b"\n"))
                start += 1
                continue
            end = find(b"\n\n", start)
            if end < 0:
                break
            block = chunk[start:end]
            if block.startswith(b"data:") and b"\n" not in block:
                # One data line: nearly every event of a chat completion stream.
                value = block[6:] if block[5:6] == b" " else block[5:]
                events.append(_new_event((None, value, chunk[start : end + 2])))
            else:
                for line in block.split(b"\n"):
                    self._field(line)
                events.append(self._dispatch(chunk[start : end + 2]))
            start = end + 2
        if start < size:
            self._buf += chunk[start:]  # an unfinished block: the general path takes it on
            self._data, self._event = [], None
        return events

    def _feed_any(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf
        buf += chunk
        events: list[SSEEvent] = []
        pos = self._scan
        block = 0  # where the current block starts in buf
        while True:
            match = _LINE_END.search(buf, pos)
            if match is None:
                break
            end = match.end()
            if end == len(buf) and buf[-1] == 0x0D:
                break  # a CR at the end may be the first half of a CRLF
            if match.start() > pos:
                self._field(bytes(buf[pos : match.start()]))
            else:
                events.append(self._dispatch(bytes(buf[block:end])))
                block = end
            pos = end
        if block:
            del buf[:block]  # once per feed, not once per event
            pos -= block
        self._scan = pos
        return events

    def _dispatch(self, raw: bytes) -> SSEEvent:
        data = self._data
        joined = (data[0] if len(data) == 1 else b"\n".join(data)) if data else None
        event = SSEEvent(self._event, joined, raw)
        self._data, self._event = [], None
        return event

    @property
    def pending_size(self) -> int:
        """How many bytes of an unfinished block are buffered."""
        return len(self._buf)

    def pending(self) -> bytes:
        """The bytes of an unfinished block (a stream that ended without its blank line)."""
        return bytes(self._buf)

    def _field(self, line: bytes) -> None:
        if not line or line[0] == 0x3A:  # ":" starts a comment
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
