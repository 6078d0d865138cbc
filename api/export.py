"""Audience export over HTTP, streamed as CSV or NDJSON.

    GET /audiences/{id}/export?format=csv|ndjson&fields=id,tier,maskedPhone,channel:wechat[&snapshot=S]
        a saved audience's latest snapshot (or snapshot S of it): the frozen members, as saved
    GET /audiences/export?brand=B&expression=...&format=...&fields=...
        an ad-hoc expression, evaluated now against the bitmap index
    ...&touch=sms|ai_call|wecom|mini_program|email (either route)
        only members who may be contacted on that channel (consent, and a guardian's for minors);
        `x-excluded-no-consent` and `x-excluded-minor` say how many were left out (store.audiences.reach)

Both need a key whose role may export (403 otherwise) and answer 404 for a brand, audience or
snapshot outside its scope, as for one that does not exist; each export is audited.

The member ids come into this process as result chunks and are decoded with numpy; rows are read in
id batches while the response streams (store.audiences.export), in small chunks sent only as fast as
the client takes them, so memory stays flat and a slow reader holds no database connection. A bad
parameter is a 400 and an unknown brand, audience or snapshot a 404, both with a JSON body
`{"error": {"code", "message", "parameter", ...}}` (for an expression also reason, line, column,
snippet, suggestion).

At most `max_exports` exports stream at once in a process (issue 12: 20 slow readers of a
180,000-row export added 240 MB and slowed every other request to seconds). Each holds one of the
state's `export_slots` from before its first statement until its response ends, fails or the client
goes away; one more answers 429 `TOO_MANY_EXPORTS` with `Retry-After` at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from api import observe
from api.auth import principal_of, request_id
from api.state import AppState
from resolvers.cursors import parse_id
from store.access import audit
from store.access.roles import Capability
from store.audiences import engine, reach, saved
from store.audiences import export as member_export
from store.audiences.selections import (
    IndexNotReadyError,
    InvalidExpressionError,
    catalog_cache,
    read_expression,
    select,
)
from store.brands import ScopedBrands
from store.errors import DomainError, ErrorCode
from store.sql import Row

_NOT_FOUND = {ErrorCode.UNKNOWN_BRAND, ErrorCode.UNKNOWN_AUDIENCE, ErrorCode.UNKNOWN_SNAPSHOT}
_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson; charset=utf-8"}
TOO_MANY_EXPORTS = "TOO_MANY_EXPORTS"
RETRY_AFTER = "5"  # seconds: exports of real audiences take seconds, and slots come free as they end

Ids = npt.NDArray[np.int64]
# What an endpoint reads before streaming: the members, their brand and the file's name.
Found = tuple[Ids, Row, str]


async def export_saved(request: Request) -> Response:
    return await _export(request, _saved)


async def export_expression(request: Request) -> Response:
    return await _export(request, _expression)


async def _saved(request: Request, state: AppState) -> Found:
    audience_id = _id(request.path_params["id"], ErrorCode.UNKNOWN_AUDIENCE, "id")
    scope = principal_of(request.scope).brand_ids
    async with state.pool.connection() as conn:
        audience = await saved.audience(conn, audience_id, scope)
        snapshot_id = await _snapshot_of(conn, audience_id, request.query_params.get("snapshot"), scope)
        ids = await saved.snapshot_members(conn, snapshot_id)
        brand = await state.brands.get(conn, audience["brand_code"])
        ids = await member_export.without_erased(conn, brand["id"], ids)  # frozen ids, erased members gone
    return ids, brand, f"audience-{audience_id}-{snapshot_id}"


async def _expression(request: Request, state: AppState) -> Found:
    code = _required(request, "brand")
    expression = _required(request, "expression")
    node = read_expression(expression, None)
    brands = ScopedBrands(state.brands, principal_of(request.scope).brand_ids)
    async with state.pool.connection() as conn:
        brand = await brands.get(conn, code)
        selection = await select(conn, catalog_cache(state.pool), brand, node, source=expression)
        ids = await engine.member_ids(conn, selection.brand, selection.bound, selection.today)
        ids = await member_export.without_erased(conn, brand["id"], ids)  # the index may be a moment behind
    return ids, brand, f"audience-{code}"


async def _export(request: Request, find: Callable[[Request, AppState], Awaitable[Found]]) -> Response:
    """Check the parameters, take an export slot (or answer 429), read the members and stream them;
    the slot goes back when the stream ends, however it ends."""
    state: AppState = request.state.omnimember
    principal = principal_of(request.scope)
    if not principal.may(Capability.EXPORT):
        message = f"a {principal.role} key may not export (it needs {Capability.EXPORT})"
        body = {"code": "FORBIDDEN", "message": message, "parameter": None}
        observe.failed("FORBIDDEN")
        return JSONResponse({"error": body}, status_code=403)
    try:
        chosen = _layout(request)
    except DomainError as error:
        return error_response(error)
    slot = await Slot.take(state.export_slots)
    if slot is None:
        return too_many_exports(state.settings.max_exports)
    try:
        ids, brand, name = await find(request, state)
        ids, reached = await reach.for_touch(state.pool, brand, ids, chosen.touch)
    except DomainError as error:
        slot.release()
        return error_response(error)
    except BaseException:
        slot.release()
        raise
    summary = {"fields": list(chosen.fields), "format": chosen.format, "members": int(ids.size), "file": name}
    record = audit.entry(
        principal,
        operation="export",
        brand_id=brand["id"],
        target_ids=[],
        summary=summary,
        request_id=request_id(request.scope),
    )
    state.audit.append(record)
    return _stream(state, slot, ids, brand, chosen, name, reached)


def _layout(request: Request) -> member_export.Layout:
    query = request.query_params
    return member_export.layout(query.get("format"), query.get("fields"), query.get("touch"))


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


async def _snapshot_of(conn: Any, audience_id: int, requested: str | None, scope: frozenset[int] | None) -> int:
    """The requested snapshot of the audience, or its latest."""
    if requested is not None:
        snapshot_id = _id(requested, ErrorCode.UNKNOWN_SNAPSHOT, "snapshot")
        snapshot = await saved.snapshot(conn, snapshot_id, scope, field="snapshot")
        if snapshot["audience_id"] != audience_id:
            raise DomainError(ErrorCode.UNKNOWN_SNAPSHOT, f"the audience has no snapshot {requested}", field="snapshot")
        return int(snapshot["id"])
    snapshots = await saved.snapshots_of(conn, [audience_id])
    if not snapshots:
        raise DomainError(ErrorCode.UNKNOWN_SNAPSHOT, "the audience has no snapshot yet", field="snapshot")
    return int(snapshots[0]["id"])


class Slot:
    """One of the process's export slots, given back exactly once."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    @classmethod
    async def take(cls, slots: asyncio.Semaphore) -> Slot | None:
        """A slot if one is free now, else None: an export never queues (its client would wait
        with a connection open, which is what the cap is for)."""
        if slots.locked():
            return None
        await slots.acquire()  # a free slot is taken without suspending: no one gets in between
        return cls(slots)

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
            self._slots = None


class ExportResponse(StreamingResponse):
    """A streamed export that gives its slot back when the response ends: sent in full, failed, or
    cut short by the client leaving (starlette ends the stream then)."""

    def __init__(self, body: AsyncGenerator[str, None], slot: Slot, **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self._body = body
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()
            await self._body.aclose()  # a generator left at a `yield` lets go of its ids now


def _stream(
    state: AppState,
    slot: Slot,
    ids: Ids,
    brand: Row,
    chosen: member_export.Layout,
    name: str,
    reached: reach.Reach | None = None,
) -> ExportResponse:
    body = member_export.lines(state.pool.connection, ids, brand, chosen)
    headers = {
        "content-disposition": f'attachment; filename="{name}.{chosen.format}"',
        "x-member-count": str(ids.size),
        **({} if reached is None else reached.headers()),
    }
    return ExportResponse(body, slot, media_type=_MEDIA_TYPES[chosen.format], headers=headers)


def too_many_exports(limit: int) -> JSONResponse:
    message = f"{limit} exports are streaming already, the most this server runs at once; retry shortly"
    body = {"code": TOO_MANY_EXPORTS, "message": message, "parameter": None, "limit": limit}
    observe.failed(TOO_MANY_EXPORTS)
    return JSONResponse({"error": body}, status_code=429, headers={"retry-after": RETRY_AFTER})


def error_response(error: DomainError) -> JSONResponse:
    status = 404 if error.code in _NOT_FOUND else 400
    body: dict[str, Any] = {"code": error.code.value, "message": error.message, "parameter": error.field}
    observe.failed(error.code.value)
    if isinstance(error, InvalidExpressionError):
        body |= {key: value for key, value in error.details().items() if key != "field"}
    if isinstance(error, IndexNotReadyError):  # the members it would export are not known yet
        body["pending"] = error.pending
        return JSONResponse({"error": body}, status_code=503, headers={"retry-after": "10"})
    return JSONResponse({"error": body}, status_code=status)
