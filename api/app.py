"""The ASGI application: GraphQL at /graphql, probes, and the database lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from api.auth import Authenticate
from api.embedded import EmbeddedPostgres
from api.export import export_expression, export_saved
from api.graphql_app import graphql_app
from api.health import healthz, readyz
from api.ide import assets as graphiql_assets
from api.metrics import Metrics
from api.observe import Observe, configure_logging
from api.settings import Settings
from api.slow_clients import use_header_timeout
from api.state import AppState, LifespanState
from api.tracing import tracing_middleware
from resolvers.limits import RateLimits
from store import migrate
from store.access.audit import AuditWriter
from store.access.keys import Keys
from store.access.roles import Role
from store.audiences.deltas import run_applier
from store.audiences.lifecycle import run_lifecycle
from store.audiences.rule_tags import run_rule_tags
from store.brands import BrandDirectory
from store.ledger.batchers import Postings
from store.members.phones import PhoneVault
from store.pools import Pool, watch
from store.urls import libpq_url, redacted

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Starlette:
    metrics = Metrics() if settings.metrics else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[LifespanState]:
        embedded = None
        url = settings.database_url
        if url is None:
            embedded = await anyio.to_thread.run_sync(EmbeddedPostgres.start, settings.home)
            url = embedded.url
            log.info("embedded PostgreSQL running in %s", settings.home / "pgdata")
            await anyio.to_thread.run_sync(migrate.upgrade, url)
        log.info("omnimember: home %s, database %s", settings.home, redacted(url))
        try:
            pool = Pool(
                libpq_url(url),
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                timeout=settings.pool_timeout,
                # Reads are single statements; writes open transactions. The name lets operators
                # (and the fault tests) find the service's sessions in pg_stat_activity. No
                # statement runs longer than statement_timeout (maintenance lifts it locally).
                kwargs={
                    "autocommit": True,
                    "application_name": "omnimember",
                    "options": f"-c statement_timeout={int(settings.statement_timeout * 1000)}",
                },
                open=False,
            )
            await pool.open(wait=True, timeout=30)
            try:
                secret = settings.phone_secret()  # one secret keys phones and pseudonyms alike
                vault, keys = PhoneVault(secret), Keys(secret)
                # Everything built at start-up lives as long as the process: keep the collector
                # from walking it again and again (measured: fewer and shorter pauses under load).
                gc.freeze()
                state = AppState(
                    pool=pool,
                    vault=vault,
                    brands=BrandDirectory(),
                    postings=Postings(pool, None if metrics is None else metrics.batch_observed),
                    head_revision=migrate.head_revision(),
                    settings=settings,
                    export_slots=asyncio.Semaphore(settings.max_exports),
                    keys=keys,
                    developer=keys.development(Role(settings.dev_role)),
                    audit=AuditWriter(pool),
                    limits=RateLimits(settings.rate_limit, settings.phone_lookups),
                )
                background = [
                    # Writes queue member ids; this applies them to the audience index every second.
                    asyncio.create_task(run_applier(pool), name="audience-index-applier"),
                    # Stages that move with days passing, new rules or a rebuilt index, with no write.
                    asyncio.create_task(run_lifecycle(pool), name="lifecycle-stages"),
                    # Rule tags whose rules move with the day (`last_purchase WITHIN 30d`), with no write.
                    asyncio.create_task(run_rule_tags(pool), name="rule-tags"),
                    asyncio.create_task(
                        watch(
                            pool, warn_after=settings.request_deadline * 2, reclaim_after=settings.request_deadline * 10
                        ),
                        name="pool-watchdog",
                    ),
                    asyncio.create_task(state.audit.run(), name="audit-writer"),
                ]
                try:
                    yield {"omnimember": state}
                finally:
                    for task in background:
                        task.cancel()
                    for task in background:
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                    try:
                        await state.audit.flush()  # the records of the last requests
                    except Exception:
                        log.exception("audit records lost at shutdown")
            finally:
                await pool.close()
        finally:
            if embedded is not None:
                # uvicorn re-raises SIGTERM after shutdown, so atexit hooks never run: stop it here.
                await anyio.to_thread.run_sync(embedded.stop)

    return Starlette(
        routes=[
            Route("/graphql", graphql_app(settings)),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *([Route("/metrics", metrics.endpoint, methods=["GET"])] if metrics is not None else []),
            Route("/audiences/export", export_expression, methods=["GET"]),
            Route("/audiences/{id}/export", export_saved, methods=["GET"]),
            *([graphiql_assets()] if settings.ide_on else []),
        ],
        middleware=[*tracing_middleware(settings), *_observing(settings, metrics), Middleware(Authenticate)],
        lifespan=lifespan,
    )


def _observing(settings: Settings, metrics: Metrics | None) -> list[Middleware]:
    """`Observe`, unless metrics, request log and traces are all off: then nothing times requests."""
    if metrics is None and not settings.request_log and not settings.traces:
        return []
    return [Middleware(Observe, metrics=metrics, log_requests=settings.request_log)]


def app_from_env() -> Starlette:
    """The app configured from the environment: the factory uvicorn's worker processes import."""
    settings = Settings.from_env()
    configure_logging(settings.log_format)  # a worker process starts with no logging set up
    use_header_timeout(settings.header_timeout)
    return create_app(settings)
