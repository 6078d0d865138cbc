"""JSON answers sent straight on the ASGI channel, for requests refused before any app runs."""

from __future__ import annotations

import json

from starlette.types import Send

from api import observe


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def refuse(
    send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """`{"errors": [{"message", "extensions": {"code"}}]}` with ``status``; the code is counted (api.observe)."""
    observe.failed(code)
    body = json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()
    await respond(send, status, body, headers)
