"""/graphql: compiled reads (one SQL statement), planned mutations (strawberry's resolvers without
graphql-core's executor), everything else strawberry's full path."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

from cross_web import HTTPException  # what strawberry 0.341 raises for a request it refuses
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
from api.persisted import NOT_FOUND, NOT_TRUSTED, Connect, Malformed, PersistedDocuments, Resolved
from api.replies import GRAPHQL_RESPONSE, JSON, content_type, media_type, refuse, respond
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
# Under application/graphql-response+json a refused document is a request error (GraphQL over HTTP):
# no `data`, and a status saying why: 403 for what the caller may not run, 404 for a hash nobody sent
# the text of (as Apollo's router answers), 400 for the rest (syntax, validation, limits, variables).
# Under application/json they answer 200 with `"data": null`, as they always have.
REQUEST_ERROR_STATUS = {"FORBIDDEN": 403, NOT_TRUSTED: 403, NOT_FOUND: 404}
_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}  # strawberry's refusals; the rest BAD_REQUEST


class GraphQLApp(GraphQL[Context, None]):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """strawberry's refusals (a mutation over GET, no document, ...) in plain text, as ever, unless
        the client asked for GraphQL responses: then as one, `{"errors": [...]}`."""
        if scope["type"] != "http" or media_type(scope) != GRAPHQL_RESPONSE:
            await super().__call__(scope, receive, send)
            return
        try:
            response = await self.run(Request(scope, receive))
        except HTTPException as error:
            code = _HTTP_CODES.get(error.status_code, "BAD_REQUEST")
            await refuse(send, error.status_code, code, error.reason, media=GRAPHQL_RESPONSE)
            return
        await response(scope, receive, send)

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        sub_response.media_type = media_type(request.scope)  # what create_response answers in
        return sub_response

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
        graphql_response = sub_response.media_type == GRAPHQL_RESPONSE
        if graphql_response and isinstance(response_data, dict) and _request_error(response_data):
            response_data = response_data.copy()
            del response_data["data"]
            sub_response.status_code = 400
        response = super().create_response(response_data, sub_response)
        if graphql_response:
            response.headers["content-type"] = content_type(GRAPHQL_RESPONSE).decode()
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


def _request_error(response: GraphQLHTTPResponse) -> bool:
    """Whether the response is a request error: nothing ran (variables that do not coerce, an
    operation that is not there), so it has null data and errors that point at no field."""
    errors: list[Any] = response.get("errors") or []
    return response.get("data") is None and bool(errors) and not any(error.get("path") for error in errors)


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
    only up to `max_body`, after its document is found if it names one by hash, and held to the
    registered ones if its caller is (api.persisted). Then POST requests whose document has a plan
    (see resolvers.sqljson, resolvers.direct) are answered here; the rest, and any request a plan
    declines, go to strawberry (with the body replayed), which takes the checked document from the
    same memory. Answers are in the media type the client accepts (api.replies.negotiate)."""

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
        self._persisted = PersistedDocuments(documents, settings.trusted_documents)

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
            await refuse(send, 503, code, message, [(b"retry-after", RETRY_AFTER.encode())], media_type(scope))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "GET":
            await self._get(scope, receive, send)
            return
        media = media_type(scope)
        if not _is_json(scope):
            await refuse(send, 415, "UNSUPPORTED_MEDIA_TYPE", "send the request as application/json", media=media)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            await _too_large(send, self._max_body, media)
            return
        try:
            body = await _read_body(receive, self._max_body, self._body_timeout)
        except TimeoutError:
            message = f"the request body did not arrive within {self._body_timeout:g} s"
            await refuse(send, 408, "REQUEST_TIMEOUT", message, [(b"connection", b"close")], media)
            return
        if body is None:  # the client went away
            return
        if body is _TOO_LARGE:
            await _too_large(send, self._max_body, media)
            return
        async with asyncio.timeout(self._deadline):
            await self._run(scope, receive, send, body)

    async def _run(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        media = media_type(scope)
        request, problem = _graphql_request(body)
        if request is None:
            await refuse(send, 400, "BAD_REQUEST", problem, media=media)
            return
        sent = request.get("query")
        resolved = await self._admit(scope, send, request)
        if resolved is None:
            return
        answer = await self._answer(scope, request)
        if answer is None:
            if resolved.query != sent:  # strawberry reads the document the request stands for
                body = json.dumps(request).encode()
            await self._general(scope, _replay(body, receive), send)
            return
        await respond(send, 200, answer, media=media)

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        if "query" in params or "extensions" in params:
            request, problem = _get_request(params)
            if request is None:
                await refuse(send, 400, "BAD_REQUEST", problem, media=media_type(scope))
                return
            resolved = await self._admit(scope, send, request)
            if resolved is None:
                return
            if resolved.query != params.get("query"):  # strawberry reads the document the request stands for
                scope = {**scope, "query_string": urlencode({**params, "query": resolved.query}).encode()}
        async with asyncio.timeout(self._deadline):
            await self._general(scope, receive, send)

    async def _admit(self, scope: Scope, send: Send, request: dict[str, Any]) -> Resolved | None:
        """The document the request stands for (api.persisted), put in its "query" and checked; None
        when the request was refused (and answered) instead. A document learnt by hash is remembered
        only once it passed the checks."""
        resolved = await self._resolve(scope, send, request)
        if resolved is None:
            return None
        errors = await self._check(request, principal_of(scope))
        if errors:
            await _refused(send, media_type(scope), errors)
            return None
        self._persisted.remember(resolved)
        return resolved

    async def _resolve(self, scope: Scope, send: Send, request: dict[str, Any]) -> Resolved | None:
        try:
            resolved = await self._persisted.resolve(request, principal_of(scope), _connect(scope))
        except Malformed as error:
            await refuse(send, 400, error.code, str(error), media=media_type(scope))
            return None
        if isinstance(resolved, GraphQLError):
            observe.failed_with([resolved])
            await _refused(send, media_type(scope), [resolved])
            return None
        request["query"] = resolved.query
        return resolved

    async def _check(self, request: dict[str, Any], principal: Principal) -> list[GraphQLError]:
        """The errors refusing the request's document, its cost or what it selects; none when it may run."""
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
            return []
        if any((error.extensions or {}).get("code") in LIMITS_EXCEEDED for error in errors):
            await asyncio.sleep(ABUSE_DELAY)
        observe.failed_with(errors)
        return errors

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


async def _refused(send: Send, media: str, errors: list[GraphQLError]) -> None:
    """A document refused before it ran: see `REQUEST_ERROR_STATUS`."""
    formatted = [error.formatted for error in errors]
    if media == GRAPHQL_RESPONSE:
        status = REQUEST_ERROR_STATUS.get(str((errors[0].extensions or {}).get("code")), 400)
        await respond(send, status, json.dumps({"errors": formatted}).encode(), media=media)
    else:
        await respond(send, 200, json.dumps({"data": None, "errors": formatted}).encode(), media=JSON)


def _connect(scope: Scope) -> Connect:
    """A connection from the app's pool, taken only if one is needed (a lookup of a registered document)."""

    def connect() -> contextlib.AbstractAsyncContextManager[Any]:
        state: AppState = scope["state"]["omnimember"]
        return state.pool.connection()

    return connect


def _graphql_request(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """The request a body holds, or None and what is wrong with it (a 400)."""
    try:
        request = json.loads(body)
    except ValueError as error:  # UnicodeDecodeError included
        return None, f"the body is not JSON in UTF-8: {error}"
    if not isinstance(request, dict):
        return None, _DOCUMENT_WANTED
    problem = _parameters_problem(request)
    if problem:
        return None, problem
    variables = request.get("variables")
    if not isinstance(variables, dict | None):
        return None, '"variables" must be an object or null'
    for where, text in _strings(variables or {}, "variables"):
        why = unstorable(text)
        if why is not None:
            return None, f"{where} holds {why}: it cannot be stored"
    return request, ""


_DOCUMENT_WANTED = (
    'the body must be a JSON object with the document as a string in "query"'
    " (or, for a persisted document, its hash in extensions.persistedQuery)"
)


def _parameters_problem(request: dict[str, Any]) -> str:
    """What is wrong with a request's query, operationName and extensions ("" if nothing)."""
    query, extensions = request.get("query"), request.get("extensions")
    if not isinstance(extensions, dict | None):
        return '"extensions" must be an object or null'
    if not isinstance(query, str) and not (query is None and extensions and "persistedQuery" in extensions):
        return _DOCUMENT_WANTED
    if not isinstance(request.get("operationName"), str | None):
        return '"operationName" must be a string or null'
    return ""


def _get_request(params: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
    """The request a GET's parameters hold, or None and what is wrong with it (a 400). Variables
    that are not JSON are left to strawberry, which says so."""
    request: dict[str, Any] = {"query": params.get("query"), "operationName": params.get("operationName")}
    with contextlib.suppress(ValueError):
        request["variables"] = json.loads(params.get("variables") or "null")
    if "extensions" in params:
        try:
            request["extensions"] = json.loads(params["extensions"])
        except ValueError:
            return None, "the extensions parameter is not JSON"
    problem = _parameters_problem(request)
    return (None, problem) if problem else (request, "")


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


async def _too_large(send: Send, limit: int, media: str) -> None:
    await asyncio.sleep(ABUSE_DELAY)
    observe.failed("BODY_TOO_LARGE")
    message = f"the request body is larger than {limit:,} bytes"
    body = json.dumps({"errors": [{"message": message, "extensions": {"code": "BODY_TOO_LARGE", "limit": limit}}]})
    # The rest of the body is not read: close the connection rather than drain it.
    await respond(send, 413, body.encode(), [(b"connection", b"close")], media)


def _header(scope: Scope, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), None)


def _is_json(scope: Scope) -> bool:
    content_type = _header(scope, b"content-type") or ""
    return content_type.split(";")[0].strip().lower() == "application/json"


class _Past(enum.Enum):
    LIMIT = enum.auto()


# The body went past the limit. Not a bytes sentinel: an empty body joins to the one empty bytes
# object, which an empty sentinel would be too, and an empty body was answered 413.
_TOO_LARGE = _Past.LIMIT


async def _read_body(receive: Receive, limit: int, seconds: float) -> bytes | _Past | None:
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
