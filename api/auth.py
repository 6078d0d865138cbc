"""Every route but /healthz, /readyz and /metrics needs a bearer key (store.access.keys); the caller it stands
for rides in the ASGI scope under ``"principal"`` for the routes to read.
GraphiQL's static files (api.ide, under /graphiql/assets/) are open too: they hold no data.

Development mode (`--dev`, OMNIMEMBER_DEV=1) lets requests without a key act as an admin over every
brand, and only when the server listens on a loopback address (api.cli refuses to start otherwise)
and the request comes from one: a convenience for trying the service on one's own machine, logged
loudly at start-up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid

from psycopg_pool import PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.ide import ASSETS_PATH
from api.replies import refuse
from api.state import AppState
from store.access.principals import Principal

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # /metrics: counts and gauges, no personal data
OPEN_PREFIX = ASSETS_PATH + "/"
# A wrong key is answered after a pause: guessing costs the guesser time, not the database a lookup
# a few microseconds apart (tokens have 256 bits, so this is about load, not about odds).
WRONG_KEY_DELAY = 0.25
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


def request_id(scope: Scope) -> str:
    """The caller's X-Request-Id (up to 100 printable characters), else a new one; fixed per request
    and sent back in the response's X-Request-Id, so an error can be found in the log."""
    known: str | None = scope.get("request_id")
    if known is None:
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        known = given if 0 < len(given) <= 100 and given.isprintable() else uuid.uuid4().hex
        scope["request_id"] = known
    return known


def principal_of(scope: Scope) -> Principal:
    """The authenticated caller of a request that passed `Authenticate`."""
    principal: Principal = scope["principal"]
    return principal


class Authenticate:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIX):
            await self._app(scope, receive, send)
            return
        header = (b"x-request-id", request_id(scope).encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self._authenticated(scope, receive, send_with_id)

    async def _authenticated(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: AppState = scope["state"]["omnimember"]
        if state.pool_wedged():  # answer at once, before a key lookup would queue for a connection
            await refuse(send, 503, "SERVICE_UNAVAILABLE", BUSY, [(b"retry-after", b"1")])
            return
        token = _bearer(scope)
        principal: Principal | None = None
        if token is not None:
            try:
                principal = await state.keys.authenticate(state.pool.connection, token)
            except PoolTimeout:
                await refuse(send, 503, "SERVICE_UNAVAILABLE", BUSY, [(b"retry-after", b"1")])
                return
        elif state.settings.dev and is_loopback((scope.get("client") or (None,))[0]):
            principal = state.developer
        if principal is None:
            if token is not None:
                await asyncio.sleep(WRONG_KEY_DELAY)
            why = "this key is not valid (unknown, revoked or expired)" if token else "send an API key"
            await refuse(
                send, 401, "UNAUTHENTICATED", f"{why}: Authorization: Bearer <key>", [(b"www-authenticate", _CHALLENGE)]
            )
            return
        wait = state.limits.request(principal)
        if wait > 0:
            message = f"this key sent more than {state.settings.rate_limit:g} requests a second; retry shortly"
            await refuse(send, 429, "RATE_LIMITED", message, [(b"retry-after", str(max(1, round(wait))).encode())])
            return
        scope["principal"] = principal
        await self._app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            if not value.strip():
                return None  # an empty header is no header
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None
