"""Chat Completions over Anthropic's Messages API: the request translated to Messages,
the reply (a whole message or its stream) translated back to Chat Completions.

Only what Chat Completions can say is translated: text, images, tools and tool calls,
stop sequences, sampling. Thinking blocks are the provider's and are not shown.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from metering.anthropic import AnthropicStreamMeter
from metering.sse import SSEEvent
from metering.usage import Usage
from proxy.errors import APIError, anthropic_error_type, bad_request

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}


def _text(content: Any, role: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if content is None:
        return ""
    raise bad_request(f"A {role} message's content must be a string or a list of parts.")


def _image(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise bad_request("An image_url part needs image_url.url.", param="messages")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0]
        if ";base64" not in header or not data:
            raise bad_request("An image data URL must be base64.", param="messages")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content if isinstance(content, list) else ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            blocks.append(_image(part))
        else:
            raise bad_request(
                f"Content parts of type {kind!r} cannot be sent to this model.", param="messages"
            )
    return blocks


def _tool_use(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request("A tool call needs function.name.", param="messages")
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        raise bad_request("A tool call's arguments must be JSON.", param="messages") from None
    return {
        "type": "tool_use",
        "id": call.get("id", ""),
        "name": function["name"],
        "input": arguments,
    }


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list.", param="tools")
    translated = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request("Each tool needs type 'function' and function.name.", param="tools")
        entry = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        translated.append(entry)
    return translated


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        translated: dict[str, Any] | None = None
    elif choice in ("auto", "none"):
        translated = {"type": choice}
    elif choice == "required":
        translated = {"type": "any"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        translated = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise bad_request("'tool_choice' is not valid.", param="tool_choice")
    if parallel is False:
        translated = {**(translated or {"type": "auto"}), "disable_parallel_tool_use": True}
    return translated


def messages_request(payload: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """A Chat Completions request as a Messages request (its model is the deployment's)."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Messages wants user and assistant turns alternating: consecutive ones merge.
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": role, "content": blocks})

    for message in payload["messages"]:
        if not isinstance(message, dict):
            raise bad_request("Each message must be an object.", param="messages")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_text(content, role))
        elif role == "user":
            add("user", _blocks(content))
        elif role == "assistant":
            blocks = _blocks(content) + [_tool_use(c) for c in message.get("tool_calls") or ()]
            add("assistant", blocks)
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id", "")),
                "content": _text(content, role),
            }
            add("user", [result])
        else:
            raise bad_request(f"Unknown message role {role!r}.", param="messages")

    request: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens}
    if system:
        request["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p"):
        if payload.get(key) is not None:
            request[key] = payload[key]
    stop = payload.get("stop")
    if stop is not None:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("tools"):
        request["tools"] = _tools(payload["tools"])
    choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
    if choice is not None:
        request["tool_choice"] = choice
    if isinstance(payload.get("user"), str):
        request["metadata"] = {"user_id": payload["user"]}
    if payload.get("stream"):
        request["stream"] = True
    return request


def chat_usage(usage: Usage) -> dict[str, Any]:
    """Usage in Chat Completions' shape (prompt tokens include the cache's)."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def chat_completion(message: dict[str, Any], model: str, usage: Usage) -> dict[str, Any]:
    """A whole Messages reply as a chat.completion."""
    text, tool_calls = [], []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{message.get('id', '')}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": _FINISH_REASONS.get(message.get("stop_reason"), "stop"),
            }
        ],
        "usage": chat_usage(usage),
    }


def chat_error(status: int, body: bytes) -> APIError:
    """An Anthropic error reply, as the error a Chat Completions caller understands."""
    try:
        error = orjson.loads(body).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return APIError(
        status,
        str(kind or anthropic_error_type(status)),
        f"The provider refused the request: {message or f'HTTP {status}'}",
        type="invalid_request_error" if status < 500 else "upstream_error",
    )


class ChatFromMessagesStream:
    """Turns a Messages stream into Chat Completions chunks, metering it on the way."""

    def __init__(self, meter: AnthropicStreamMeter, model: str, include_usage: bool) -> None:
        self.meter = meter
        self._model = model
        self._include_usage = include_usage
        self._id = "chatcmpl-"
        self._created = int(time.time())
        self._tool_index: dict[int, int] = {}  # content block index -> tool call index
        self._finish: str | None = None

    def _chunk(self, delta: dict[str, Any] | None, **extra: Any) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [] if delta is None else [
                {"index": 0, "delta": delta, "finish_reason": extra.pop("finish", None)}
            ],
            **extra,
        }  # fmt: skip
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def event(self, event: SSEEvent) -> bytes:
        if event.data is None:
            return b""
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(data, dict):
            return b""
        self.meter.observe_event(data)
        kind = data.get("type")
        if kind == "message_start":
            self._id = f"chatcmpl-{(data.get('message') or {}).get('id', '')}"
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") != "tool_use":
                return b""
            index = self._tool_index[data.get("index", 0)] = len(self._tool_index)
            call = {
                "index": index,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if delta.get("type") == "input_json_delta":
                call = {
                    "index": self._tool_index.get(data.get("index", 0), 0),
                    "function": {"arguments": delta.get("partial_json", "")},
                }
                return self._chunk({"tool_calls": [call]})
            return b""
        if kind == "message_delta":
            reason = (data.get("delta") or {}).get("stop_reason")
            if self._finish is not None:
                return b""  # one finish per choice, however many deltas report usage
            self._finish = _FINISH_REASONS.get(reason, "stop")
            return self._chunk({}, finish=self._finish)
        if kind == "message_stop":
            usage = b""
            if self._include_usage:
                usage = self._chunk(None, usage=chat_usage(self.meter.usage(0)))
            return usage + b"data: [DONE]\n\n"
        if kind == "error":
            error = data.get("error") or {}
            failure = APIError(
                502,
                str(error.get("type") or "upstream_error"),
                f"The provider's stream failed: {error.get('message', 'unknown error')}",
                type="upstream_error",
            )
            return failure.sse_event()
        return b""  # ping, content_block_stop, thinking and the like

    def tail(self, pending: bytes) -> bytes:
        return b""  # an unfinished Messages event has no Chat Completions equivalent
