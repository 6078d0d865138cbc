"""The strawberry ASGI app, with a typed per-request context."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from api.state import AppState
from resolvers.context import Context
from schema.root import build_schema


class GraphQLApp(GraphQL[Context, None]):
    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        state: AppState = request.state.omnimember
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        return Context(pool=state.pool, vault=state.vault, brands=state.brands, request_id=request_id)


def graphql_app(ide: bool) -> GraphQLApp:
    return GraphQLApp(build_schema(), graphql_ide="graphiql" if ide else None)
