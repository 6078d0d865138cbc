"""/graphql: compiled reads (one SQL statement), planned mutations (strawberry's resolvers without
graphql-core's executor), everything else strawberry's full path."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import parse_qsl

from graphql import GraphQLError
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, process_result
from strawberry.types import ExecutionResult

from api import observe
from api.auth import BUSY, principal_of, request_id
from api.ide import render as render_ide
from api.replies import refuse, respond
from api.settings import Settings
from api.state import AppState
from resolvers.audit import audit_clear_reads
from resolvers.context import Context
from resolvers.direct import DirectMutations
from resolvers.domain import Principal
from resolvers.sqljson import Needs, Plans
from schema.documents import Documents, unstorable
from schema.permissions import Permissions
from schema.root import build_schema, mask_unexpected
from store.brands import ScopedBrands

UNAVAILABLE = "SERVICE_UNAVAILABLE"
# Past a limit, the answer waits: no real client sends such a request twice, and a client sending them
# in a loop gets a few answers a second instead of taking the CPU every other request needs (measured
# in bench/abuse.py: four such clients cost the profile read 60% of its throughput without it).
ABUSE_DELAY = 0.25
LIMITS_EXCEEDED = {
    "DOCUMENT_TOO_LARGE",
    "TOO_MANY_TOKENS",
    "TOO_DEEP",
    "TOO_MANY_ALIASES",
    "TOO_MANY_FIELDS",
    "TOO_COSTLY",
}
RETRY_AFTER = "1"  # seconds: connections come free fast, or the pool is wedged and /readyz says so


class GraphQLApp(GraphQL[Context, None]):
    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        context: Context | None = request.scope.get("context")
        if context is not None:
            await audit_clear_reads(context)
        if result.errors:
            errors = [_busy_if_pool_timeout(error) for error in result.errors]
            result.errors = mask_unexpected(errors, request.scope.get("request_id"))
            observe.failed_with(result.errors)
        return process_result(result)

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        errors: list[Any] = (response_data.get("errors") if isinstance(response_data, dict) else None) or []
        codes = {(error.get("extensions") or {}).get("code"): error for error in errors}
        if UNAVAILABLE in codes:
            response.status_code = 503
            response.headers["retry-after"] = RETRY_AFTER
        elif "RATE_LIMITED" in codes:
            response.status_code = 429
            response.headers["retry-after"] = str(codes["RATE_LIMITED"]["extensions"].get("retryAfter", 1))
        return response

    async def render_graphql_ide(self, request: Request) -> Response:
        """GraphiQL from the package's own files (api.ide), not strawberry's page, which loads a CDN."""
        return await render_ide(request)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        context = _context(request.state.omnimember, principal_of(request.scope), request_id(request.scope))
        request.scope["context"] = context
        return context


def _busy_if_pool_timeout(error: GraphQLError) -> GraphQLError:
    if not isinstance(error.original_error, PoolTimeout):
        return error
    return GraphQLError(BUSY, error.nodes, path=error.path, extensions={"code": UNAVAILABLE})


def _context(state: AppState, principal: Principal, request_id: str) -> Context:
    """One request's context, for strawberry and for planned mutations alike."""
    return Context(
        pool=state.pool,
        vault=state.vault,
        brands=ScopedBrands(state.brands, principal.brand_ids),
        postings=state.postings,
        request_id=request_id,
        principal=principal,
        audit=state.audit,
        limits=state.limits,
    )


class GraphQLEndpoint:
    """Every request with a document passes the checks of schema.documents here first, its body read
    only up to `max_body`. Then POST requests whose document has a plan (see resolvers.sqljson,
    resolvers.direct) are answered here; the rest, and any request a plan declines, go to strawberry
    (with the body replayed), which takes the checked document from the same memory."""

    def __init__(
        self,
        general: GraphQLApp,
        documents: Documents,
        permissions: Permissions,
        plans: Plans,
        mutations: DirectMutations,
        settings: Settings,
    ) -> None:
        self._general = general
        self._documents = documents
        self._plans = plans
        self._mutations = mutations
        self._max_body = settings.max_body
        self._body_timeout = settings.body_timeout
        self._deadline = settings.request_deadline
        self._permissions = permissions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "POST"):
            await self._general(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._serve(scope, receive, tracked)
        except (TimeoutError, PoolTimeout) as error:
            if started:  # too late for another answer; the server ends the response
                raise
            deadline = isinstance(error, TimeoutError)
            code, message = (
                ("DEADLINE_EXCEEDED", _deadline_message(self._deadline)) if deadline else (UNAVAILABLE, BUSY)
            )
            await refuse(send, 503, code, message, [(b"retry-after", RETRY_AFTER.encode())])

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "GET":
            await self._get(scope, receive, send)
            return
        if not _is_json(scope):
            await refuse(send, 415, "UNSUPPORTED_MEDIA_TYPE", "send the request as application/json")
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            await _too_large(send, self._max_body)
            return
        try:
            body = await _read_body(receive, self._max_body, self._body_timeout)
        except TimeoutError:
            message = f"the request body did not arrive within {self._body_timeout:g} s"
            await refuse(send, 408, "REQUEST_TIMEOUT", message, [(b"connection", b"close")])
            return
        if body is None:  # the client went away
            return
        if body is _TOO_LARGE:
            await _too_large(send, self._max_body)
            return
        async with asyncio.timeout(self._deadline):
            await self._run(scope, receive, send, body)

    async def _run(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        request, problem = _graphql_request(body)
        if request is None:
            await refuse(send, 400, "BAD_REQUEST", problem)
            return
        refused = await self._check(request, principal_of(scope))
        if refused is not None:
            await respond(send, 200, refused)
            return
        answer = await self._answer(scope, request)
        if answer is None:
            await self._general(scope, _replay(body, receive), send)
            return
        await respond(send, 200, answer)

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        if "query" in params:
            request: dict[str, Any] = {"query": params["query"], "operationName": params.get("operationName")}
            with contextlib.suppress(ValueError):
                request["variables"] = json.loads(params.get("variables") or "null")
            refused = await self._check(request, principal_of(scope))
            if refused is not None:
                await respond(send, 200, refused)
                return
        async with asyncio.timeout(self._deadline):
            await self._general(scope, receive, send)

    async def _check(self, request: dict[str, Any], principal: Principal) -> bytes | None:
        """The response refusing the request's document, its cost or what it selects, or None when it may run."""
        checked = await self._documents.check_async(request["query"])
        observe.operation(request.get("operationName"), None if checked.errors else checked.document)
        variables = request.get("variables")
        too_costly = self._documents.cost(
            checked, request.get("operationName"), variables if isinstance(variables, dict) else None
        )
        errors = [*checked.errors, *([too_costly] if too_costly else [])]
        if not errors and checked.document is not None:
            forbidden = self._permissions.refusal(principal, checked)
            errors = [forbidden] if forbidden is not None else []
        if not errors:
            return None
        if any((error.extensions or {}).get("code") in LIMITS_EXCEEDED for error in errors):
            await asyncio.sleep(ABUSE_DELAY)
        observe.failed_with(errors)
        return json.dumps({"data": None, "errors": [error.formatted for error in errors]}).encode()

    async def _answer(self, scope: Scope, request: dict[str, Any]) -> bytes | None:
        state: AppState = scope["state"]["omnimember"]
        operation_name, variables = request.get("operationName"), request.get("variables")
        principal = principal_of(scope)
        # Personal data in clear takes the general path, whose resolvers audit each such read.
        plan = None if principal.clear_pii else self._plans.plan(request["query"], operation_name)
        if plan is not None:
            needs = Needs(brands=ScopedBrands(state.brands, principal.brand_ids), pool=state.pool, principal=principal)
            return await self._plans.answer(plan, variables, needs)
        mutation = self._mutations.plan(request["query"], operation_name)
        if mutation is not None:
            answer = await self._mutations.answer(mutation, variables, _context(state, principal, request_id(scope)))
            if answer is not None and answer.startswith(b'{"data":null,"errors":'):  # only its INTERNAL answer
                observe.failed("INTERNAL")
            return answer
        return None


def _graphql_request(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """The request a body holds, or None and what is wrong with it (a 400)."""
    try:
        request = json.loads(body)
    except ValueError as error:  # UnicodeDecodeError included
        return None, f"the body is not JSON in UTF-8: {error}"
    if not isinstance(request, dict) or not isinstance(request.get("query"), str):
        return None, 'the body must be a JSON object with the document as a string in "query"'
    if not isinstance(request.get("operationName"), str | None):
        return None, '"operationName" must be a string or null'
    variables = request.get("variables")
    if not isinstance(variables, dict | None):
        return None, '"variables" must be an object or null'
    for where, text in _strings(variables or {}, "variables"):
        why = unstorable(text)
        if why is not None:
            return None, f"{where} holds {why}: it cannot be stored"
    return request, ""


def _strings(value: Any, where: str) -> list[tuple[str, str]]:
    """Every string in a JSON value (keys included), with where it is, without recursion."""
    found: list[tuple[str, str]] = []
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            found.append((path, item))
        elif isinstance(item, dict):
            for key, inner in item.items():
                found.append((path, key))
                stack.append((inner, f"{path}.{key}"))
        elif isinstance(item, list):
            stack.extend((inner, f"{path}[{i}]") for i, inner in enumerate(item))
    return found


def _deadline_message(seconds: float) -> str:
    return f"the request did not finish within {seconds:g} s; nothing it did is lost, and a retry is safe"


async def _too_large(send: Send, limit: int) -> None:
    await asyncio.sleep(ABUSE_DELAY)
    observe.failed("BODY_TOO_LARGE")
    message = f"the request body is larger than {limit:,} bytes"
    body = json.dumps({"errors": [{"message": message, "extensions": {"code": "BODY_TOO_LARGE", "limit": limit}}]})
    # The rest of the body is not read: close the connection rather than drain it.
    await respond(send, 413, body.encode(), [(b"connection", b"close")])


def _header(scope: Scope, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), None)


def _is_json(scope: Scope) -> bool:
    content_type = _header(scope, b"content-type") or ""
    return content_type.split(";")[0].strip().lower() == "application/json"


_TOO_LARGE = b""  # a sentinel (compared by identity): the body went past the limit


async def _read_body(receive: Receive, limit: int, seconds: float) -> bytes | None:
    """The whole request body up to ``limit`` bytes (else `_TOO_LARGE`, the rest unread), or None
    if the client left; TimeoutError if the rest does not arrive within ``seconds``. The
    first part is read without a timer: a small body arrives whole with its headers."""
    chunks: list[bytes] = []
    size = 0
    message = await receive()
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        async with asyncio.timeout_at(deadline):
            message = await receive()


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def graphql_app(settings: Settings) -> GraphQLEndpoint:
    schema = build_schema(introspection=settings.introspection_on, suggestions=settings.suggestions_on)
    general = GraphQLApp(schema, graphql_ide="graphiql" if settings.ide_on else None)
    documents = schema.documents
    return GraphQLEndpoint(
        general,
        documents,
        Permissions(schema._schema),
        Plans(schema._schema, documents),
        DirectMutations(schema, documents),
        settings,
    )
