"""Traces (issue 16, item 5): with OTEL_EXPORTER_OTLP_ENDPOINT set, the real server exports a server
span per request and a child span per SQL statement to an OTLP/HTTP receiver, with the request id
and the GraphQL operation and without personal data, token or variables; unset, nothing of
OpenTelemetry is imported and nothing wraps the app."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg_pool import AsyncConnectionPool

from api.otel import WithoutMessages
from api.settings import Settings
from tests.conftest import new_brand, new_key
from tests.fragments import REGISTER
from tests.server import Server

PHONE, NAME, EXTERNAL_ID = "13912340987", "司马相如", "wx-traced-42"
BY_PHONE = "query ByPhone($brand: String!, $phone: String!) { memberByPhone(brand: $brand, phone: $phone) { id } }"


class Receiver:
    """An OTLP/HTTP trace receiver on a loopback port: every export request's body, as sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[Span]:
        found = []
        for body in list(self.bodies):
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scoped in resource.scope_spans:
                    found.extend(scoped.spans)
        return found

    def resource(self) -> dict[str, str]:
        request = ExportTraceServiceRequest.FromString(self.bodies[0])
        return {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}

    def wait_for(self, done: Any, timeout: float = 20) -> list[Span]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans()
            if done(spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"spans never arrived as expected: {[s.name for s in self.spans()]}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.server.shutdown()
    made.server.server_close()


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


async def test_a_request_is_a_server_span_with_its_statements(
    database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any], receiver: Receiver
) -> None:
    code, token = await new_brand(pool), await new_key(database_url)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = Server(tmp_path, database_url, env=env)
    try:
        server.wait_ready()
        variables = {"brand": code, "channel": "wechat", "externalId": EXTERNAL_ID, "phone": PHONE, "displayName": NAME}
        headers = {"authorization": f"Bearer {token}", "x-request-id": "req-traced-1"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as http:
            registered = await http.post("/graphql", json={"query": REGISTER, "variables": variables})
            # GET carries the variables in the query string, which no span may hold.
            found = await http.get(
                "/graphql", params={"query": BY_PHONE, "variables": json.dumps({"brand": code, "phone": PHONE})}
            )
            # Key-less, development mode's loopback caller: the app still sees the client's address.
            keyless = await http.post("/graphql", json={"query": "{ brands { code } }"}, headers={"authorization": ""})
        assert registered.json()["data"]["registerMember"]["__typename"] == "MemberRegistered"
        assert keyless.status_code == 200, keyless.text
        assert (
            found.json()["data"]["memberByPhone"]["id"] == registered.json()["data"]["registerMember"]["member"]["id"]
        )
        spans = receiver.wait_for(lambda spans: sum(s.kind == Span.SPAN_KIND_SERVER for s in spans) >= 2)
    finally:
        server.stop()

    servers = {s.name: s for s in spans if s.kind == Span.SPAN_KIND_SERVER}
    assert "GET /readyz" not in servers  # probes start no trace, nor do their statements
    assert not [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT and not s.parent_span_id]
    post, get = servers["POST /graphql Register"], servers["GET /graphql ByPhone"]
    assert attributes(post)["omnimember.request_id"] == "req-traced-1"
    assert attributes(post)["graphql.operation.name"] == "Register"
    statements = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT and s.trace_id == post.trace_id]
    assert statements, "no SQL span in the request's trace"
    assert all(attributes(s)["db.system"] == "postgresql" for s in statements)
    texts = [attributes(s)["db.statement"] for s in statements]
    assert any("INSERT INTO members" in text for text in texts), texts  # the registration itself
    assert all(s.parent_span_id for s in statements)
    assert any(s.trace_id == get.trace_id for s in spans if s.kind == Span.SPAN_KIND_CLIENT)
    assert "?" not in attributes(get).get("http.url", "")
    assert not {"net.peer.ip", "client.address"} & set(attributes(post))  # the caller's address
    assert attributes(get).get("http.target") == "/graphql"
    assert receiver.resource()["service.name"] == "omnimember"
    # Nothing personal or secret anywhere in what left the service (bytes, so nothing is missed).
    sent = b"".join(receiver.bodies)
    # The token's secret is everything after `om_<prefix>_` (it may hold underscores itself: its last
    # piece alone was once "0", found in every span's bytes).
    for secret in (PHONE, PHONE[3:], NAME, EXTERNAL_ID, token, token.split("_", 2)[2]):
        assert secret.encode() not in sent, secret


def test_an_exception_on_a_span_keeps_its_type_only() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(WithoutMessages(exported)))
    tracer = provider.get_tracer(__name__)
    with pytest.raises(ValueError, match="Key"), tracer.start_as_current_span("INSERT"):
        raise ValueError(f"duplicate key value violates unique constraint\nDETAIL: Key (phone)=({PHONE}) exists.")
    (span,) = exported.get_finished_spans()
    (event,) = span.events
    assert dict(event.attributes or {}) == {"exception.type": "ValueError", "exception.escaped": "False"}
    assert span.status.description is None
    assert PHONE not in repr(span.to_json())


def _run_serve(env: dict[str, str], *, block_otel: bool = False) -> subprocess.CompletedProcess[str]:
    # None in sys.modules makes an import fail as a missing package would.
    blocked = "import sys; sys.modules['opentelemetry'] = None; " if block_otel else ""
    code = f"{blocked}import sys; from api.cli import main; sys.argv = ['omnimember', 'serve', '--port', '9']; main()"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


def test_without_the_extra_serve_says_what_to_install() -> None:
    done = _run_serve({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, block_otel=True)
    assert done.returncode == 2
    assert "pip install 'omnimember[otel]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unsupported_protocol_is_refused_at_start() -> None:
    done = _run_serve({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert done.returncode == 2
    assert "http/protobuf only" in done.stderr
    assert "Traceback" not in done.stderr


OFF_PROBE = """
import asyncio, sys, tempfile
from pathlib import Path
import httpx
from api.app import create_app
from api.settings import Settings

async def main():
    settings = Settings.from_env({"DATABASE_URL": sys.argv[1], "OMNIMEMBER_SECRET": "s" * 32})
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        async def with_state(scope, receive, send):
            scope["state"] = dict(state)
            await app(scope, receive, send)
        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/healthz")).status_code == 200
    print([m.cls.__name__ for m in app.user_middleware])
    print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry" or m == "api.otel"))

asyncio.run(main())
"""


def test_without_an_endpoint_nothing_of_opentelemetry_is_imported(database_url: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", OFF_PROBE, database_url],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=True,
    )
    middleware, modules = done.stdout.strip().splitlines()
    assert middleware == "['Observe', 'Authenticate']"
    assert modules == "[]"


def test_the_endpoint_turns_traces_on() -> None:
    assert not Settings.from_env({}).traces
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}).traces
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}).traces
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}
    assert not Settings.from_env(disabled).traces
