"""POST /v1/chat/completions: validate, hold, forward, relay while metering, settle."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from metering import metrics
from metering.openai_chat import ChatStreamMeter, usage_from_chat_body
from metering.sse import SSEParser
from metering.tokens import TokenCounter
from metering.usage import NO_USAGE, Usage
from proxy.bodies import read_json_object
from proxy.config import ModelConfig
from proxy.errors import APIError, bad_request, upstream_error
from proxy.gateway import GATEWAY
from proxy.metered import MeteredCall, Outcome
from proxy.upstream import UPSTREAM_FAILURES, Upstream, UpstreamReply


def _positive_int(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"'{key}' must be a positive integer.", param=key)
    return value


ENDPOINT = "chat.completions"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    arrived = time.perf_counter()
    try:
        admitted = await _admit(request, arrived)
    except APIError as err:
        # Refused before any credit was held; counted under the model only if it is ours.
        model = request.get(_MODEL_KEY)
        outcome = Outcome.INSUFFICIENT_CREDITS if err.status == 402 else Outcome.REJECTED
        metrics.requests.labels(
            model.name if model else "",
            model.provider if model else "",
            ENDPOINT,
            outcome,
            str(err.status),
        ).inc()
        raise
    return await _forward(request, *admitted)


_MODEL_KEY = web.RequestKey("model", ModelConfig)


async def _admit(
    request: web.Request, arrived: float
) -> tuple[MeteredCall, dict[str, Any], Upstream, TokenCounter, bool]:
    """Everything before the provider: who, what, and the credit held for it."""
    gateway = request.app[GATEWAY]
    owner = await gateway.authenticate(request)
    payload = await read_json_object(request)

    name = payload.get("model")
    if not isinstance(name, str) or not name:
        raise bad_request("'model' is required: the name of a model.", param="model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required: a non-empty list.", param="messages")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false.", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object.", param="stream_options")
    model = gateway.config.models.get(name)
    if model is None:
        raise APIError(404, "model_not_found", f"The model {name!r} does not exist.", param="model")
    request[_MODEL_KEY] = model
    upstream = gateway.upstreams[model.provider]
    if not upstream.available:
        raise APIError(
            503,
            "provider_unavailable",
            f"The model {name!r} is not available: its provider is not configured.",
            type="service_unavailable",
        )
    max_output = (
        _positive_int(payload, "max_completion_tokens")
        or _positive_int(payload, "max_tokens")
        or model.max_output_tokens
    )
    choices = _positive_int(payload, "n") or 1

    counter = gateway.counter(model)
    call = MeteredCall(
        gateway,
        owner,
        model,
        counter.count_messages(messages),
        endpoint=ENDPOINT,
        arrived=arrived,
    )
    await call.hold(max_output * choices)
    return call, payload, upstream, counter, stream


async def _forward(
    request: web.Request,
    call: MeteredCall,
    payload: dict[str, Any],
    upstream: Upstream,
    counter: TokenCounter,
    stream: bool,
) -> web.StreamResponse:
    """Past the hold: every way out of here settles it, once."""
    usage, outcome, status = NO_USAGE, Outcome.CLIENT_CLOSED, 499
    reply: UpstreamReply | None = None
    strip_usage = False
    options = payload.get("stream_options")
    try:
        payload["model"] = call.model.upstream
        if stream and not (options or {}).get("include_usage"):
            # Ask for the authoritative usage, and hide that chunk from this caller.
            payload["stream_options"] = {**(options or {}), "include_usage": True}
            strip_usage = True
        call.upstream_sent_at = time.perf_counter()
        try:
            reply = await upstream.chat(orjson.dumps(payload), payload)
        except APIError as err:
            outcome, status = Outcome.UPSTREAM_ERROR, err.status
            raise
        call.upstream_headers_at = time.perf_counter()
        if reply.status != 200:
            outcome, status = Outcome.UPSTREAM_ERROR, reply.status
            return await _upstream_refusal(reply, call)
        if not stream:
            body = await reply.read()
            call.upstream_done_at = time.perf_counter()
            usage = usage_from_chat_body(_json_or_none(body), counter, call.prompt_tokens)
            outcome, status = Outcome.OK, 200
            call.mark_first_byte()
            return web.Response(
                body=body,
                content_type="application/json",
                headers={"X-Request-Id": call.request_id},
            )
        relay = StreamRelay(request, call, reply, ChatStreamMeter(counter), strip_usage)
        status = 200
        try:
            return await relay.run()
        finally:
            usage, outcome = relay.usage(), relay.outcome
    except UPSTREAM_FAILURES as err:
        outcome, status = Outcome.UPSTREAM_ERROR, 502
        raise upstream_error(f"The provider failed: {type(err).__name__}.") from None
    finally:
        if reply is not None:
            reply.close()
        call.finish(usage, outcome, status)


def _json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def _upstream_refusal(reply: UpstreamReply, call: MeteredCall) -> web.Response:
    """The provider said no before any output: its error goes to the caller, unchanged
    when it is an OpenAI-shaped error, and nothing is charged."""
    body = await reply.read()
    parsed = _json_or_none(body)
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return web.Response(
            status=reply.status,
            body=body,
            content_type="application/json",
            headers={"X-Request-Id": call.request_id},
        )
    raise upstream_error(f"The provider answered HTTP {reply.status}.")


class StreamRelay:
    """Passes an upstream SSE stream to the caller chunk by chunk, metering on the side."""

    def __init__(
        self,
        request: web.Request,
        call: MeteredCall,
        reply: UpstreamReply,
        meter: ChatStreamMeter,
        strip_usage: bool,
    ) -> None:
        self.request = request
        self.call = call
        self.reply = reply
        self.meter = meter
        self.strip_usage = strip_usage
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
                "Content-Type": self.reply.content_type,
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
        tail = parser.pending()
        try:
            if self.strip_usage and tail:
                await response.write(tail)
            await response.write_eof()
        except ConnectionResetError:
            return response
        self.outcome = Outcome.OK
        return response

    async def _admit(self, parser: SSEParser, chunk: bytes) -> tuple[bytes, bool]:
        """Meter a chunk; the bytes to pass on, and whether the credit ran out in it."""
        meter = self.meter
        already_written = 0 if self.strip_usage else parser.pending_size
        events = parser.feed(chunk)
        kept: list[bytes] | None = [] if self.strip_usage else None
        cut: int | None = None  # events delivered before the credit ran out
        for index, event in enumerate(events):
            if event.data is not None and meter.observe(event.data) and kept is not None:
                continue  # the usage chunk creditgate asked for, hidden from this caller
            if kept is not None:
                kept.append(event.raw)
            if meter.output_tokens > self._covered:
                covered = await self.call.cover(meter.output_tokens)
                if covered is None:
                    cut = index + 1  # this event still goes out: the overshoot is one event
                    break
                self._covered = covered
        if kept is not None:
            return b"".join(kept), cut is not None
        if cut is not None:
            return chunk[: sum(len(e.raw) for e in events[:cut]) - already_written], True
        return chunk, False  # the common case: the upstream's bytes, untouched

    async def _end_with_error(
        self, response: web.StreamResponse, error: APIError, outcome: Outcome
    ) -> None:
        self.outcome = outcome
        try:
            await response.write(error.sse_event())
            await response.write_eof()
        except ConnectionResetError:
            pass
