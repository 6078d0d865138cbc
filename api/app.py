"""The ASGI application: GraphQL at /graphql, probes, and the database lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.routing import Route

from api.embedded import EmbeddedPostgres
from api.export import export_expression, export_saved
from api.graphql_app import graphql_app
from api.health import healthz, readyz
from api.settings import Settings
from api.state import AppState, LifespanState
from store import migrate
from store.audiences.deltas import run_applier
from store.brands import BrandDirectory
from store.ledger.batchers import Postings
from store.members.phones import PhoneVault
from store.urls import libpq_url

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[LifespanState]:
        embedded = None
        url = settings.database_url
        if url is None:
            embedded = await anyio.to_thread.run_sync(EmbeddedPostgres.start, settings.home)
            url = embedded.url
            log.info("embedded PostgreSQL running in %s", settings.home / "pgdata")
            await anyio.to_thread.run_sync(migrate.upgrade, url)
        try:
            pool = AsyncConnectionPool(
                libpq_url(url),
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                # Reads are single statements; writes open transactions. The name lets operators
                # (and the fault tests) find the service's sessions in pg_stat_activity.
                kwargs={"autocommit": True, "application_name": "omnimember"},
                open=False,
            )
            await pool.open(wait=True, timeout=30)
            try:
                vault = PhoneVault(settings.phone_secret())
                # Everything built at start-up lives as long as the process: keep the collector
                # from walking it again and again (measured: fewer and shorter pauses under load).
                gc.freeze()
                state = AppState(
                    pool=pool,
                    vault=vault,
                    brands=BrandDirectory(),
                    postings=Postings(pool),
                    head_revision=migrate.head_revision(),
                )
                # Writes queue member ids; this applies them to the audience index every second.
                applier = asyncio.create_task(run_applier(pool), name="audience-index-applier")
                try:
                    yield {"omnimember": state}
                finally:
                    applier.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await applier
            finally:
                await pool.close()
        finally:
            if embedded is not None:
                # uvicorn re-raises SIGTERM after shutdown, so atexit hooks never run: stop it here.
                await anyio.to_thread.run_sync(embedded.stop)

    return Starlette(
        routes=[
            Route("/graphql", graphql_app(settings.graphql_ide)),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/audiences/export", export_expression, methods=["GET"]),
            Route("/audiences/{id}/export", export_saved, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """The app configured from the environment: the factory uvicorn's worker processes import."""
    return create_app(Settings.from_env())
