"""The strawberry ASGI app, with a typed per-request context."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, process_result
from strawberry.types import ExecutionResult

from api.state import AppState
from resolvers.context import Context
from schema.root import build_schema, mask_unexpected


class GraphQLApp(GraphQL[Context, None]):
    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        if result.errors:
            result.errors = mask_unexpected(result.errors)
        return process_result(result)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        state: AppState = request.state.omnimember
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        return Context(pool=state.pool, vault=state.vault, brands=state.brands, request_id=request_id)


def graphql_app(ide: bool) -> GraphQLApp:
    return GraphQLApp(build_schema(), graphql_ide="graphiql" if ide else None)
