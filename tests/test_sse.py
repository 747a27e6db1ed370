"""The SSE parser gives the same events for every split of the bytes."""

from __future__ import annotations

import pytest

from metering.sse import SSEParser

STREAM = (
    b": keep-alive comment\n\n"
    b'event: message\ndata: {"a": "caf\xc3\xa9 \xe2\x98\x95"}\n\n'
    b"data: line one\r\ndata: line two\r\n\r\n"
    b"data:no-space\r\rdata: [DONE]\n\n"
)
EXPECTED = [
    (None, None),
    (b"message", '{"a": "café ☕"}'.encode()),
    (None, b"line one\nline two"),
    (None, b"no-space"),
    (None, b"[DONE]"),
]


def parse(pieces: list[bytes]) -> tuple[list, bytes]:
    parser = SSEParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events, parser.pending()


def test_whole_stream():
    events, pending = parse([STREAM])
    assert [(e.event, e.data) for e in events] == EXPECTED
    assert b"".join(e.raw for e in events) == STREAM
    assert pending == b""


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_every_split_size(size):
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    events, _ = parse(pieces)
    assert [(e.event, e.data) for e in events] == EXPECTED
    assert b"".join(e.raw for e in events) == STREAM


def test_every_single_cut_point():
    for cut in range(len(STREAM) + 1):
        events, _ = parse([STREAM[:cut], STREAM[cut:]])
        assert [(e.event, e.data) for e in events] == EXPECTED, cut


def test_unfinished_event_is_pending_not_emitted():
    events, pending = parse([b"data: one\n\ndata: tw"])
    assert [e.data for e in events] == [b"one"]
    assert pending == b"data: tw"


def test_cr_at_chunk_end_waits_for_a_possible_lf():
    parser = SSEParser()
    assert parser.feed(b"data: x\r\n\r") == []
    [event] = parser.feed(b"\ndata: y\n\n")[:1]
    assert event.raw == b"data: x\r\n\r\n"


def test_lf_fast_path_and_general_path_agree():
    # A stream without CR takes the fast path while nothing is buffered; cut anywhere,
    # later feeds take the general path: the events must be the same either way.
    stream = b": c\n\n\ndata: one\n\nevent: e\ndata: a\ndata: b\n\ndata:x\n\ndata: [DONE]\n\n"
    whole = [(e.event, e.data, e.raw) for e in SSEParser().feed(stream)]
    assert [d for _, d, _ in whole] == [None, None, b"one", b"a\nb", b"x", b"[DONE]"]
    assert b"".join(r for _, _, r in whole) == stream
    for cut in range(len(stream) + 1):
        parser = SSEParser()
        events = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert [(e.event, e.data, e.raw) for e in events] == whole, cut
