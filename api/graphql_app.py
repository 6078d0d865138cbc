"""/graphql: compiled reads (one SQL statement), planned mutations (strawberry's resolvers without
graphql-core's executor), everything else strawberry's full path."""

from __future__ import annotations

import json
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, process_result
from strawberry.types import ExecutionResult

from api.state import AppState
from resolvers.context import Context
from resolvers.direct import DirectMutations
from resolvers.sqljson import Needs, Plans
from schema.root import LIMIT_RULES, build_schema, mask_unexpected

MAX_BODY = 1 << 20  # larger documents are left to strawberry (and its limits)


class GraphQLApp(GraphQL[Context, None]):
    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        if result.errors:
            result.errors = mask_unexpected(result.errors)
        return process_result(result)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        return _context(request.state.omnimember, request.headers.get("x-request-id"))


def _context(state: AppState, request_id: str | None) -> Context:
    """One request's context, for strawberry and for planned mutations alike."""
    return Context(
        pool=state.pool,
        vault=state.vault,
        brands=state.brands,
        postings=state.postings,
        request_id=request_id or uuid.uuid4().hex,
    )


class GraphQLEndpoint:
    """POST requests whose document has a plan (see resolvers.sqljson) are answered here; the rest,
    and any request a plan declines, go to strawberry with the body replayed."""

    def __init__(self, general: GraphQLApp, plans: Plans, mutations: DirectMutations) -> None:
        self._general = general
        self._plans = plans
        self._mutations = mutations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not _is_json(scope):
            await self._general(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        answer = await self._answer(scope, body) if len(body) <= MAX_BODY else None
        if answer is None:
            await self._general(scope, _replay(body, receive), send)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def _answer(self, scope: Scope, body: bytes) -> bytes | None:
        try:
            request = json.loads(body)
        except ValueError:
            return None
        if not isinstance(request, dict) or not isinstance(request.get("query"), str):
            return None
        operation_name, variables = request.get("operationName"), request.get("variables")
        if not (operation_name is None or isinstance(operation_name, str)):
            return None
        if not (variables is None or isinstance(variables, dict)):
            return None
        state: AppState = scope["state"]["omnimember"]
        plan = self._plans.plan(request["query"], operation_name)
        if plan is not None:
            return await self._plans.answer(plan, variables, Needs(brands=state.brands, pool=state.pool))
        mutation = self._mutations.plan(request["query"], operation_name)
        if mutation is not None:
            return await self._mutations.answer(mutation, variables, _context(state, _header(scope, b"x-request-id")))
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), None)


def _is_json(scope: Scope) -> bool:
    content_type = _header(scope, b"content-type") or ""
    return content_type.split(";")[0].strip().lower() == "application/json"


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (strawberry would read it all too), or None if the client left."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def graphql_app(ide: bool) -> GraphQLEndpoint:
    schema = build_schema()
    general = GraphQLApp(schema, graphql_ide="graphiql" if ide else None)
    return GraphQLEndpoint(general, Plans(schema._schema, LIMIT_RULES), DirectMutations(schema, LIMIT_RULES))
