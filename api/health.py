"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from psycopg import OperationalError
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.state import AppState
from store.audiences.deltas import building
from store.migrate import current_revision


async def healthz(request: Request) -> JSONResponse:
    """The process is up; says nothing about the database."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """The database answers and its schema is at the revision this code expects."""
    state: AppState = request.state.omnimember
    if state.pool_wedged():
        return JSONResponse({"status": "unavailable", "database": "every pooled connection is stuck"}, status_code=503)
    try:
        current = await _revision(state)
    except Exception as error:  # any failure to reach the database means "not ready"
        return JSONResponse({"status": "unavailable", "database": type(error).__name__}, status_code=503)
    body: dict[str, Any] = {"database": "ok", "revision": current, "head": state.head_revision}
    if current != state.head_revision:
        return JSONResponse({"status": "migrations pending", **body}, status_code=503)
    # Reported, not a reason to take the service out: only audience reads wait for a build.
    body["audienceIndex"] = await _index(state)
    return JSONResponse({"status": "ready", **body})


async def _index(state: AppState) -> dict[str, Any]:
    """The brands whose audience index is being built (their audience reads answer INDEX_NOT_READY)."""
    async with state.pool.connection(timeout=2) as conn:
        codes = await building(conn)
    return {"building": codes, "state": "BUILDING" if codes else "READY"}


async def _revision(state: AppState) -> str | None:
    try:
        async with state.pool.connection(timeout=2) as conn:
            return await current_revision(conn)
    except OperationalError:
        # A restarted database leaves dead connections in the pool: drop them, ask once more.
        await state.pool.check()
        async with state.pool.connection(timeout=2) as conn:
            return await current_revision(conn)
