"""Passes an upstream SSE stream to the caller chunk by chunk, metering on the side.

Untransformed, the caller gets the upstream's bytes exactly as they came. A transform
(hiding the usage chunk creditgate asked for, or translating one API's events into
another's) decides what each event becomes. Either way the hold is checked after each
event: a stream that outgrows it is extended, and stopped at the event where the
account's credit runs out.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from aiohttp import web

from metering import metrics
from metering.sse import SSEEvent, SSEParser
from metering.usage import Usage
from proxy.errors import APIError, WireFormat, upstream_error
from proxy.metered import MeteredCall, Outcome
from proxy.upstream import UPSTREAM_FAILURES, UpstreamReply


class StreamMeter(Protocol):
    output_tokens: int  # a running estimate, kept within the hold
    failed: bool  # the provider reported an error inside the stream

    def observe(self, data: bytes) -> bool:
        """Meter one `data:` payload; True when it is a usage-only chunk."""
        ...

    def usage(self, prompt_tokens: int) -> Usage: ...


class EventTransform(Protocol):
    """What the caller gets for each upstream event (the transform meters it too)."""

    def event(self, event: SSEEvent) -> bytes: ...

    def tail(self, pending: bytes) -> bytes:
        """What the caller gets of an unfinished last event."""
        ...


class HiddenUsage:
    """Passes every event but the usage-only chunk that creditgate asked for."""

    def __init__(self, meter: StreamMeter) -> None:
        self._observe = meter.observe

    def event(self, event: SSEEvent) -> bytes:
        if event.data is not None and self._observe(event.data):
            return b""
        return event.raw

    def tail(self, pending: bytes) -> bytes:
        return pending


class StreamRelay:
    def __init__(
        self,
        request: web.Request,
        call: MeteredCall,
        reply: UpstreamReply,
        meter: StreamMeter,
        transform: EventTransform | None,
        wire: WireFormat,
        content_type: str | None = None,
    ) -> None:
        self.request = request
        self.call = call
        self.reply = reply
        self.meter = meter
        self.transform = transform
        self.wire = wire
        self.content_type = content_type or reply.content_type
        self.outcome = Outcome.CLIENT_CLOSED  # until the stream is seen to end otherwise
        self._covered = call.output_tokens_covered()  # output tokens the hold pays for

    def usage(self) -> Usage:
        return self.meter.usage(self.call.prompt_tokens)

    async def run(self) -> web.StreamResponse:
        metrics.active_streams.inc()
        try:
            return await self._relay()
        finally:
            metrics.active_streams.dec()
            self.call.upstream_done_at = time.perf_counter()

    async def _relay(self) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": self.content_type,
                "Cache-Control": "no-cache",
                "X-Request-Id": self.call.request_id,
            }
        )
        await response.prepare(self.request)
        parser = SSEParser()
        call = self.call
        chunks = aiter(self.reply.chunks())
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except UPSTREAM_FAILURES as err:
                await self._end_with_error(
                    response,
                    upstream_error(
                        f"The provider's stream broke off: {type(err).__name__}.",
                        "upstream_timeout"
                        if isinstance(err, asyncio.TimeoutError)
                        else "upstream_error",
                    ),
                    Outcome.UPSTREAM_ERROR,
                )
                return response
            out, out_of_credit = await self._admit(parser, chunk)
            if out:
                call.mark_first_byte()
                try:
                    await response.write(out)
                except ConnectionResetError:
                    return response  # the caller went away; outcome stays client_closed
            if out_of_credit:
                await self._end_with_error(
                    response,
                    APIError(
                        402,
                        "insufficient_credits",
                        "The stream was stopped: the account ran out of credits.",
                        type="insufficient_credits",
                    ),
                    Outcome.INSUFFICIENT_CREDITS,
                )
                return response
        try:
            if self.transform is not None:
                tail = self.transform.tail(parser.pending())
                if tail:
                    await response.write(tail)
            await response.write_eof()
        except ConnectionResetError:
            return response
        self.outcome = Outcome.UPSTREAM_ERROR if self.meter.failed else Outcome.OK
        return response

    async def _admit(self, parser: SSEParser, chunk: bytes) -> tuple[bytes, bool]:
        """Meter a chunk; the bytes to pass on, and whether the credit ran out in it."""
        meter, transform = self.meter, self.transform
        already_written = 0 if transform else parser.pending_size
        events = parser.feed(chunk)
        kept: list[bytes] = []
        cut: int | None = None  # events delivered before the credit ran out
        for index, event in enumerate(events):
            if transform is None:
                if event.data is not None:
                    meter.observe(event.data)
            else:
                kept.append(transform.event(event))
            if meter.output_tokens > self._covered:
                covered = await self.call.cover(meter.output_tokens)
                if covered is None:
                    cut = index + 1  # this event still goes out: the overshoot is one event
                    break
                self._covered = covered
        if transform is not None:
            return b"".join(kept), cut is not None
        if cut is not None:
            return chunk[: sum(len(e.raw) for e in events[:cut]) - already_written], True
        return chunk, False  # the common case: the upstream's bytes, untouched

    async def _end_with_error(
        self, response: web.StreamResponse, error: APIError, outcome: Outcome
    ) -> None:
        self.outcome = outcome
        try:
            await response.write(error.sse_event(self.wire))
            await response.write_eof()
        except ConnectionResetError:
            pass
