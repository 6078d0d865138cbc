"""Audience export over HTTP, streamed as CSV or NDJSON.

    GET /audiences/{id}/export?format=csv|ndjson&fields=id,tier,maskedPhone,channel:wechat[&snapshot=S]
        a saved audience's latest snapshot (or snapshot S of it): the frozen members, as saved
    GET /audiences/export?brand=B&expression=...&format=...&fields=...
        an ad-hoc expression, evaluated now against the bitmap index

The member ids come into this process as result chunks and are decoded with numpy; rows are read in
id batches while the response streams (store.audiences.export), so memory stays flat. A bad parameter
is a 400 and an unknown brand, audience or snapshot a 404, both with a JSON body
`{"error": {"code", "message", "parameter", ...}}` (for an expression also reason, line, column,
snippet, suggestion).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from api.state import AppState
from resolvers.cursors import parse_id
from store.audiences import engine, saved
from store.audiences import export as member_export
from store.audiences.selections import InvalidExpressionError, catalog_cache, read_expression, select
from store.errors import DomainError, ErrorCode
from store.sql import Row

_NOT_FOUND = {ErrorCode.UNKNOWN_BRAND, ErrorCode.UNKNOWN_AUDIENCE, ErrorCode.UNKNOWN_SNAPSHOT}
_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson; charset=utf-8"}


async def export_saved(request: Request) -> Response:
    state: AppState = request.state.omnimember
    try:
        chosen = _layout(request)
        audience_id = _id(request.path_params["id"], ErrorCode.UNKNOWN_AUDIENCE, "id")
        async with state.pool.connection() as conn:
            audience = await saved.audience(conn, audience_id)
            snapshot_id = await _snapshot_of(conn, audience_id, request.query_params.get("snapshot"))
            ids = await saved.snapshot_members(conn, snapshot_id)
            brand = await state.brands.get(conn, audience["brand_code"])
    except DomainError as error:
        return error_response(error)
    return _stream(state, ids, brand, chosen, f"audience-{audience_id}-{snapshot_id}")


async def export_expression(request: Request) -> Response:
    state: AppState = request.state.omnimember
    try:
        chosen = _layout(request)
        code = _required(request, "brand")
        expression = _required(request, "expression")
        node = read_expression(expression, None)
        async with state.pool.connection() as conn:
            brand = await state.brands.get(conn, code)
            selection = await select(conn, catalog_cache(state.pool), brand, node, source=expression)
            ids = await engine.member_ids(conn, selection.brand, selection.bound, selection.today)
    except DomainError as error:
        return error_response(error)
    return _stream(state, ids, brand, chosen, f"audience-{code}")


def _layout(request: Request) -> member_export.Layout:
    return member_export.layout(request.query_params.get("format"), request.query_params.get("fields"))


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise DomainError(ErrorCode.INVALID_INPUT, f"the query parameter {name!r} is required", field=name)
    return value


def _id(text: str, code: ErrorCode, field: str) -> int:
    found = parse_id(text)
    if found is None:
        raise DomainError(code, f"{text!r} names nothing", field=field)
    return found


async def _snapshot_of(conn: Any, audience_id: int, requested: str | None) -> int:
    """The requested snapshot of the audience, or its latest."""
    if requested is not None:
        snapshot = await saved.snapshot(conn, _id(requested, ErrorCode.UNKNOWN_SNAPSHOT, "snapshot"), field="snapshot")
        if snapshot["audience_id"] != audience_id:
            raise DomainError(ErrorCode.UNKNOWN_SNAPSHOT, f"the audience has no snapshot {requested}", field="snapshot")
        return int(snapshot["id"])
    snapshots = await saved.snapshots_of(conn, [audience_id])
    if not snapshots:
        raise DomainError(ErrorCode.UNKNOWN_SNAPSHOT, "the audience has no snapshot yet", field="snapshot")
    return int(snapshots[0]["id"])


def _stream(
    state: AppState, ids: npt.NDArray[np.int64], brand: Row, chosen: member_export.Layout, name: str
) -> StreamingResponse:
    body = member_export.lines(state.pool.connection, ids, brand, chosen)
    headers = {
        "content-disposition": f'attachment; filename="{name}.{chosen.format}"',
        "x-member-count": str(ids.size),
    }
    return StreamingResponse(body, media_type=_MEDIA_TYPES[chosen.format], headers=headers)


def error_response(error: DomainError) -> JSONResponse:
    status = 404 if error.code in _NOT_FOUND else 400
    body: dict[str, Any] = {"code": error.code.value, "message": error.message, "parameter": error.field}
    if isinstance(error, InvalidExpressionError):
        body |= {key: value for key, value in error.details().items() if key != "field"}
    return JSONResponse({"error": body}, status_code=status)
