"""JSON answers sent straight on the ASGI channel, for requests refused before any app runs, and the
media type a /graphql answer takes (GraphQL over HTTP: `negotiate`)."""

from __future__ import annotations

import json

from starlette.types import Scope, Send

from api import observe

JSON = "application/json"
GRAPHQL_RESPONSE = "application/graphql-response+json"
_CONTENT_TYPES = {JSON: b"application/json", GRAPHQL_RESPONSE: b"application/graphql-response+json; charset=utf-8"}
_WILDCARDS = {"*/*": 0, "application/*": 1}  # how specific a range is; an exact type is 2
_SCOPE_KEY = "omnimember.media_type"


def negotiate(accept: str | None) -> str:
    """The media type to answer in: of the two a GraphQL response can take, the one the Accept header
    ranks higher (by q, then by how specific the range naming it is, then by which comes first; a
    type's q is its most specific range's). Without a header, with `*/*` alone, or naming neither
    (which the specification lets a server disregard rather than answer 406): application/json,
    what every client got before the newer type."""
    if not accept:
        return JSON
    ranges = []
    for position, item in enumerate(accept.split(",")):
        media, _, parameters = item.partition(";")
        ranges.append((media.strip().lower(), _quality(parameters), position))
    best: tuple[tuple[float, int, int, bool], str] | None = None
    for kind in (GRAPHQL_RESPONSE, JSON):
        naming = [
            (_WILDCARDS.get(media, 2), -position, q) for media, q, position in ranges if media in (kind, *_WILDCARDS)
        ]
        if not naming:
            continue
        specificity, earlier, q = max(naming)
        rank = (q, specificity, earlier, kind == JSON)
        if q > 0 and (best is None or rank > best[0]):
            best = (rank, kind)
    return JSON if best is None else best[1]


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0  # a malformed weight accepts nothing rather than everything
    return 1.0


def media_type(scope: Scope) -> str:
    """The media type of this request's answers (negotiated once, kept in the scope)."""
    known: str | None = scope.get(_SCOPE_KEY)
    if known is None:
        accept = b", ".join(value for key, value in scope["headers"] if key == b"accept")
        known = scope[_SCOPE_KEY] = negotiate(accept.decode("latin-1"))
    return known


def content_type(media: str) -> bytes:
    return _CONTENT_TYPES[media]


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None, media: str = JSON
) -> None:
    start = [(b"content-type", _CONTENT_TYPES[media]), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def refuse(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    media: str = JSON,
) -> None:
    """`{"errors": [{"message", "extensions": {"code"}}]}` with ``status``; the code is counted (api.observe)."""
    observe.failed(code)
    body = json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()
    await respond(send, status, body, headers, media)
