"""Every route but /healthz and /readyz needs a bearer key (store.access.keys); the caller it stands
for rides in the ASGI scope under ``"principal"`` for the routes to read.

Development mode (`--dev`, OMNIMEMBER_DEV=1) lets requests without a key act as an admin over every
brand, and only when the server listens on a loopback address (api.cli refuses to start otherwise)
and the request comes from one: a convenience for trying the service on one's own machine, logged
loudly at start-up.
"""

from __future__ import annotations

import ipaddress
import json

from psycopg_pool import PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from api.state import AppState
from store.access.principals import Principal

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
BUSY = "the service is busy: no database connection came free in time; retry shortly"
_CHALLENGE = b'Bearer realm="omnimember"'


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def principal_of(scope: Scope) -> Principal:
    """The authenticated caller of a request that passed `Authenticate`."""
    principal: Principal = scope["principal"]
    return principal


class Authenticate:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        state: AppState = scope["state"]["omnimember"]
        if state.pool_wedged():  # answer at once, before a key lookup would queue for a connection
            await _reply(send, 503, "SERVICE_UNAVAILABLE", BUSY, [(b"retry-after", b"1")])
            return
        token = _bearer(scope)
        principal: Principal | None = None
        if token is not None:
            try:
                principal = await state.keys.authenticate(state.pool.connection, token)
            except PoolTimeout:
                await _reply(send, 503, "SERVICE_UNAVAILABLE", BUSY, [(b"retry-after", b"1")])
                return
        elif state.settings.dev and is_loopback((scope.get("client") or (None,))[0]):
            principal = state.keys.development()
        if principal is None:
            why = "this key is not valid (unknown, revoked or expired)" if token else "send an API key"
            await _reply(
                send, 401, "UNAUTHENTICATED", f"{why}: Authorization: Bearer <key>", [(b"www-authenticate", _CHALLENGE)]
            )
            return
        wait = state.limits.request(principal)
        if wait > 0:
            message = f"this key sent more than {state.settings.rate_limit:g} requests a second; retry shortly"
            await _reply(send, 429, "RATE_LIMITED", message, [(b"retry-after", str(max(1, round(wait))).encode())])
            return
        scope["principal"] = principal
        await self._app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


async def _reply(send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
