"""The two servers creditgate is measured against: a canned upstream and a bare proxy.

Run as `python -m tests.bench.servers upstream PORT` or `... passthrough PORT UPSTREAM_URL`.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

CHUNKS = 50  # content chunks in one streamed chat completion


def _stream_body() -> bytes:
    head = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bench",
    }
    events = [
        b"data: "
        + orjson.dumps(
            {**head, "usage": None, "choices": [{"index": 0, "delta": {"content": " tok"}}]}
        )
        + b"\n\n"
        for _ in range(CHUNKS)
    ]
    events.append(
        b"data: "
        + orjson.dumps(
            {
                **head,
                "choices": [],
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": CHUNKS,
                    "total_tokens": 10 + CHUNKS,
                },
            }
        )
        + b"\n\n"
    )
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def _plain_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": " tok" * CHUNKS},
                }
            ],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": CHUNKS,
                "total_tokens": 10 + CHUNKS,
            },
        }
    )


def _response(body: bytes, content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


STREAM_RESPONSE = _response(_stream_body(), b"text/event-stream")
PLAIN_RESPONSE = _response(_plain_body(), b"application/json")


class CannedUpstream(asyncio.Protocol):
    """Answers every request with a prebuilt response: it must never be the bottleneck."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            start = head.find(b"content-length:")
            length = int(head[start + 15 : head.find(b"\r\n", start)]) if start >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            streamed = b'"stream":true' in body.replace(b" ", b"")
            self.transport.write(STREAM_RESPONSE if streamed else PLAIN_RESPONSE)


async def upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(CannedUpstream, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


async def passthrough(port: int, target: str) -> None:
    """The ceiling: an aiohttp proxy with no auth, metering or billing, chunks relayed."""
    import aiohttp
    from aiohttp import web

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(
            f"{target}{request.path}", data=body, headers={"Content-Type": "application/json"}
        ) as upstream_reply:
            response = web.StreamResponse(
                status=upstream_reply.status,
                headers={"Content-Type": upstream_reply.headers["Content-Type"]},
            )
            await response.prepare(request)
            async for chunk in upstream_reply.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop

    kind, port = sys.argv[1], int(sys.argv[2])
    main = upstream(port) if kind == "upstream" else passthrough(port, sys.argv[3])
    uvloop.run(main)
