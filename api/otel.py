"""The OpenTelemetry side of api.tracing, imported only when traces are on (the extra ``otel``).

One TracerProvider per process (each uvicorn worker has its own); spans are batched and exported
over OTLP/HTTP. Traces leave the service, so what a span may hold is decided here:

- The server span (opentelemetry-instrumentation-asgi) is named after the route's template and the
  GraphQL operation's bounded label (api.observe), and carries the request id (X-Request-Id, as in
  the request's log line). It never holds the query string (GET /graphql carries variables there)
  nor the client's address (a member's, when an app calls directly).
  No header is captured unless OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* ask, and even then
  Authorization and Cookie are masked. Probes and scrapes (/healthz, /readyz, /metrics) are not traced.
- SQL spans (opentelemetry-instrumentation-psycopg) hold the statement with its placeholders, never
  the bound values (the instrumentation's capture_parameters stays off). It traces the cursors a
  connection makes (`conn.cursor()`, `conn.execute()`); store.sql runs its statements on
  `AsyncRawCursor`s it makes itself, whose `execute` is traced here with the instrumentation's own
  CursorTracer. A statement outside any request (the audience index applier polls every second)
  starts no trace.
- An exception recorded on a span keeps its type only: a database error's message can quote a
  row's values (``DETAIL: Key (...)=(...)``), and a stack trace ends with that message.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
import psycopg
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.psycopg import CursorTracer, DatabaseApiAsyncIntegration, PsycopgInstrumentor
from opentelemetry.instrumentation.psycopg.version import __version__ as psycopg_instrumentation_version
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import observe

SERVICE = "omnimember"  # service.name unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names it
REQUEST_ID = "omnimember.request_id"
OPERATION = "graphql.operation.name"
MASKED_HEADERS = ["authorization", "cookie", "set-cookie"]
KEPT_OF_EXCEPTIONS = frozenset({"exception.type", "exception.escaped"})
UNTRACED = "/healthz$,/readyz$,/metrics$"  # probes and scrapes, every few seconds: no traces
_HIDDEN = "omnimember.hidden"  # the query string and client address, carried past the instrumentation


@functools.cache
def provider() -> TracerProvider:
    """The process's provider, made (and psycopg instrumented) on first use."""
    # The SDK's own reading of OTEL_TRACES_SAMPLER (private: pyproject pins the SDK's minor version).
    configured = sampling._get_from_env_or_default()
    made = TracerProvider(resource=_resource(), sampler=RequestsOnly(configured))
    # The exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION.
    made.add_span_processor(BatchSpanProcessor(WithoutMessages(OTLPSpanExporter())))
    trace.set_tracer_provider(made)
    PsycopgInstrumentor().instrument(tracer_provider=made)
    _trace_raw_cursors(made)
    return made


def _resource() -> Resource:
    detected = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        return detected.merge(Resource({SERVICE_NAME: SERVICE}))
    return detected


def _trace_raw_cursors(tracer_provider: TracerProvider) -> None:
    """`AsyncRawCursor.execute` traced as the instrumentation traces the cursors it makes."""
    integration = DatabaseApiAsyncIntegration(
        "opentelemetry.instrumentation.psycopg",
        "postgresql",
        connection_attributes=PsycopgInstrumentor._CONNECTION_ATTRIBUTES,
        version=psycopg_instrumentation_version,
        tracer_provider=tracer_provider,  # no sqlcommenter: the module it would read versions from is not needed
    )
    tracer = CursorTracer(integration)
    execute = psycopg.AsyncRawCursor.execute  # AsyncCursor's, inherited
    described = False

    async def traced(cursor: psycopg.AsyncRawCursor[Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal described
        if type(cursor) is not psycopg.AsyncRawCursor:  # a subclass, such as the instrumentation's own
            return await execute(cursor, *args, **kwargs)
        if not described:  # the database's name, host, port and user: one database per process
            integration.get_connection_attributes(cursor.connection)
            described = True
        return await tracer.traced_execution_async(cursor, functools.partial(execute, cursor), *args, **kwargs)

    setattr(psycopg.AsyncRawCursor, "execute", traced)  # noqa: B010 - mypy forbids assigning to a method


class RequestsOnly(sampling.Sampler):
    """A statement outside any request (a CLIENT span without a parent) starts no trace; the rest as
    the configured sampler (OTEL_TRACES_SAMPLER, default parentbased_always_on) decides."""

    def __init__(self, configured: sampling.Sampler) -> None:
        self._configured = configured

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> sampling.SamplingResult:
        if kind is SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return sampling.SamplingResult(sampling.Decision.DROP)
        return self._configured.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"RequestsOnly{{{self._configured.get_description()}}}"


class WithoutMessages(SpanExporter):
    """Exports spans with what their exceptions said left out: the type only (module docstring)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._exporter.export([_without_messages(span) for span in spans])

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)


def _without_messages(span: ReadableSpan) -> ReadableSpan:
    if span.status.description is None and not any(event.name == "exception" for event in span.events):
        return span
    events = [_type_only(event) if event.name == "exception" else event for event in span.events]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code),  # the SDK's description is "Type: message"
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _type_only(event: Event) -> Event:
    kept = {name: value for name, value in (event.attributes or {}).items() if name in KEPT_OF_EXCEPTIONS}
    return Event(event.name, kept, event.timestamp)


class Traced:
    """The app inside OpenTelemetry's ASGI middleware, a server span per HTTP request (module
    docstring); at shutdown, the spans still queued are sent before the process ends."""

    def __init__(self, app: ASGIApp, provider: TracerProvider) -> None:
        self._app = app
        self._provider = provider
        self._traced = OpenTelemetryMiddleware(
            _Described(app),
            excluded_urls=UNTRACED,
            tracer_provider=provider,
            exclude_spans=["receive", "send"],  # a span per ASGI message: noise, and a cost
            http_capture_headers_sanitize_fields=MASKED_HEADERS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._app(scope, receive, self._flushing(send))
            return
        if scope["type"] == "http":
            # Out of the span's attributes (url, target, peer); _Described hands them back to the app.
            hidden = (scope.get("query_string", b""), scope.get("client"))
            scope = {**scope, "query_string": b"", "client": None, _HIDDEN: hidden}
        await self._traced(scope, receive, send)

    def _flushing(self, send: Send) -> Send:
        async def flushing(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # uvicorn re-raises SIGTERM after its shutdown, so atexit hooks (the SDK's flush) never run.
                await anyio.to_thread.run_sync(self._provider.force_flush)
            await send(message)

        return flushing


class _Described:
    """Inside the server span: gives the app its query string and client back, and as the response
    starts names the span after the route and the operation and adds the request id."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hidden = scope.pop(_HIDDEN, None)
        if hidden is not None:
            scope["query_string"], scope["client"] = hidden
        span = trace.get_current_span()

        async def described(message: Message) -> None:
            if message["type"] == "http.response.start" and span.is_recording():
                _describe(span, scope)
            await send(message)

        await self._app(scope, receive, described)


def _describe(span: trace.Span, scope: Scope) -> None:
    request_id = scope.get("request_id")  # set by api.auth (not for the open paths)
    if request_id is not None:
        span.set_attribute(REQUEST_ID, request_id)
    seen = observe.current()
    operation = seen.operation if seen is not None else None
    if operation:
        span.set_attribute(OPERATION, operation)
    route = observe.route_template(scope)
    # The path would name ids (/audiences/7/export) or whatever a scanner tried: the template or nothing.
    span.update_name(" ".join(part for part in (scope["method"], route, operation) if part))
