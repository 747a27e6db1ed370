"""The life of a metered API call, shared by every surface (chat, messages, responses,
embeddings, images): who, which model, the credit held, the upstream that serves it
(with failover), the reply relayed or returned, and the settlement, once, whatever
happens.

A surface validates its API's requests; an exchange knows one upstream API: what to send
it and how to meter and pass on what comes back. A surface served by several upstream
APIs (chat, over OpenAI or Anthropic) has an exchange for each.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from aiohttp import web

from metering import metrics
from metering.tokens import TokenCounter, count_json_text
from metering.usage import NO_USAGE, Usage
from proxy.bodies import read_json_object
from proxy.config import Deployment, ModelConfig
from proxy.errors import APIError, WireFormat, bad_request, upstream_error
from proxy.gateway import GATEWAY
from proxy.metered import MeteredCall, Outcome
from proxy.relay import EventTransform, StreamMeter, StreamRelay
from proxy.routing import Target, UpstreamsFailed
from proxy.upstream import UPSTREAM_FAILURES, Operation, Upstream, UpstreamReply

# The surface that serves each type of model, for the error that names it.
SURFACE_OF_TYPE = {
    "text": "/v1/chat/completions, /v1/responses or /v1/messages",
    "embedding": "/v1/embeddings",
    "image": "/v1/images/generations",
}


@dataclass(slots=True)
class Ask:
    """A validated request: what a surface read from the caller's body."""

    model: ModelConfig
    payload: dict[str, Any]
    counter: TokenCounter
    prompt_tokens: int  # counted here; the provider's count, when it gives one, is billed
    stream: bool = False
    output_tokens: int = 0  # the most output it may produce, for the hold
    images: int = 0  # images asked for, held before the call
    image: tuple[str | None, str | None] | None = None  # the size and quality asked for
    headers: dict[str, str] = field(default_factory=dict)  # passed on to the provider


def json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


class Exchange(ABC):
    """One request through one upstream API. Made before the hold, so that a request it
    cannot translate is refused before any credit is reserved."""

    stream_content_type: ClassVar[str | None] = None  # None: the upstream's

    def __init__(self, ask: Ask) -> None:
        self.ask = ask

    def body(self, deployment: Deployment) -> dict[str, Any]:
        """The request for `deployment`: by default the caller's, with its model name."""
        return {**self.ask.payload, "model": deployment.upstream}

    @abstractmethod
    def reply(self, body: bytes) -> tuple[Usage, bytes]:
        """The usage of a whole reply, and the body the caller gets."""

    def stream(self) -> tuple[StreamMeter, EventTransform | None]:
        raise NotImplementedError  # only surfaces with streams call it

    def refusal(self, status: int, body: bytes) -> web.Response:
        """A provider's error before any output, passed on when it is in the caller's shape
        (`{"error": ...}`, which Anthropic's also has), else a 502 that says what came."""
        parsed = json_or_none(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return web.Response(status=status, body=body, content_type="application/json")
        raise upstream_error(f"The provider answered HTTP {status}.")


class Surface(ABC):
    """One API creditgate serves, at `path`."""

    path: ClassVar[str]
    endpoint: ClassVar[str]  # the metrics label and the charge's endpoint
    wire: ClassVar[WireFormat] = WireFormat.OPENAI
    model_types: ClassVar[frozenset[str]] = frozenset({"text"})
    exchanges: ClassVar[dict[Operation, type[Exchange]]]  # preferred first
    x_api_key: ClassVar[bool] = False  # Anthropic's header is accepted for the key
    passed_headers: ClassVar[tuple[str, ...]] = ()  # the caller's, sent on to the provider

    @abstractmethod
    def ask(self, payload: dict[str, Any], model: ModelConfig, counter: TokenCounter) -> Ask:
        """Validate the body (400 naming the field) and count its prompt."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        try:
            call, ask, exchanges, targets = await self._admit(request, arrived)
        except APIError as err:
            # Refused before any credit was held; counted under the model only if it is ours.
            model = request.get(_MODEL_KEY)
            outcome = Outcome.INSUFFICIENT_CREDITS if err.status == 402 else Outcome.REJECTED
            metrics.child(
                metrics.requests,
                model.name if model else "",
                model.provider if model else "",
                self.endpoint,
                outcome,
                str(err.status),
            ).inc()
            raise
        return await self._forward(request, call, ask, exchanges, targets)

    async def _admit(
        self, request: web.Request, arrived: float
    ) -> tuple[MeteredCall, Ask, dict[Operation, Exchange], list[Target]]:
        """Everything before the provider: who, what, and the credit held for it."""
        gateway = request.app[GATEWAY]
        owner = await gateway.authenticate(request, x_api_key=self.x_api_key)
        payload = await read_json_object(request)
        name = payload.get("model")
        if not isinstance(name, str) or not name:
            raise bad_request("'model' is required: the name of a model.", param="model")
        model = gateway.config.models.get(name)
        if model is None:
            raise APIError(
                404, "model_not_found", f"The model {name!r} does not exist.", param="model"
            )
        request[_MODEL_KEY] = model
        if model.type not in self.model_types:
            raise APIError(
                400,
                "unsupported_model",
                f"{name!r} is a model of type {model.type}: call it through "
                f"{SURFACE_OF_TYPE[model.type]}, not {self.path}.",
                param="model",
            )
        ask = self.ask(payload, model, gateway.counter(model))
        ask.headers = {h: request.headers[h] for h in self.passed_headers if h in request.headers}
        targets = gateway.router.targets(model, gateway.upstreams, list(self.exchanges))
        if not targets:
            raise self._unservable(model, gateway.upstreams)
        exchanges = {}
        for target in targets:
            if target.operation not in exchanges:
                exchanges[target.operation] = self.exchanges[target.operation](ask)
        call = MeteredCall(
            gateway,
            owner,
            model,
            ask.prompt_tokens,
            endpoint=self.endpoint,
            arrived=arrived,
            image=ask.image,
        )
        await call.hold(call.worst_case(ask.output_tokens, ask.images))
        return call, ask, exchanges, targets

    def _unservable(self, model: ModelConfig, upstreams: Mapping[str, Upstream]) -> APIError:
        capable = [
            d.provider
            for d in model.deployments
            if set(self.exchanges) & upstreams[d.provider].operations
        ]
        if capable:
            return APIError(
                503,
                "provider_unavailable",
                f"The model {model.name!r} is not available: its provider is not configured.",
                type="service_unavailable",
            )
        kinds = sorted({upstreams[d.provider].config.type for d in model.deployments})
        return APIError(
            400,
            "unsupported_endpoint",
            f"The model {model.name!r} is served by a provider of type {', '.join(kinds)}, "
            f"which cannot answer {self.path}.",
            param="model",
        )

    async def _forward(
        self,
        request: web.Request,
        call: MeteredCall,
        ask: Ask,
        exchanges: dict[Operation, Exchange],
        targets: list[Target],
    ) -> web.StreamResponse:
        """Past the hold: every way out of here settles it, once."""
        usage, outcome, status = NO_USAGE, Outcome.CLIENT_CLOSED, 499
        reply: UpstreamReply | None = None

        def body_for(target: Target) -> tuple[bytes, dict[str, Any]]:
            payload = exchanges[target.operation].body(target.deployment)
            return orjson.dumps(payload), payload

        gateway = request.app[GATEWAY]
        try:
            call.upstream_sent_at = time.perf_counter()
            try:
                served = await gateway.router.send(
                    targets, body_for, ask.headers, read_body=not ask.stream
                )
            except UpstreamsFailed as failed:
                outcome = Outcome.UPSTREAM_ERROR
                if failed.target is not None:
                    call.serve(failed.target)
                if failed.refusal is not None and failed.target is not None:
                    status = failed.refusal[0]
                    return exchanges[failed.target.operation].refusal(*failed.refusal)
                status = 504 if failed.reason == "timeout" else 502
                raise upstream_error(
                    "The provider did not answer in time."
                    if status == 504
                    else "The provider is unreachable.",
                    "upstream_timeout" if status == 504 else "upstream_unreachable",
                    status,
                ) from None
            call.serve(served.target)
            reply = served.reply
            exchange = exchanges[served.target.operation]
            call.upstream_headers_at = time.perf_counter()
            if reply.status != 200:
                outcome, status = Outcome.UPSTREAM_ERROR, reply.status
                body = served.body if served.body is not None else await reply.read()
                return exchange.refusal(reply.status, body)
            if served.body is not None:
                call.upstream_done_at = time.perf_counter()
                usage, body = exchange.reply(served.body)
                outcome, status = Outcome.OK, 200
                call.mark_first_byte()
                return web.Response(
                    body=body,
                    content_type="application/json",
                    headers={"X-Request-Id": call.request_id},
                )
            meter, transform = exchange.stream()
            relay = StreamRelay(
                request, call, reply, meter, transform, self.wire, exchange.stream_content_type
            )
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


_MODEL_KEY = web.RequestKey("model", ModelConfig)


def text_ask(
    payload: dict[str, Any],
    model: ModelConfig,
    counter: TokenCounter,
    prompt_fields: tuple[str, ...],
    output_tokens: int,
) -> Ask:
    """The Ask of a text API whose prompt is the text in `prompt_fields` of its body."""
    return Ask(
        model=model,
        payload=payload,
        counter=counter,
        prompt_tokens=sum(count_json_text(counter, payload.get(key)) for key in prompt_fields),
        stream=stream_flag(payload),
        output_tokens=output_tokens,
    )


def positive_int(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"'{key}' must be a positive integer.", param=key)
    return value


def stream_flag(payload: dict[str, Any]) -> bool:
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false.", param="stream")
    return stream
