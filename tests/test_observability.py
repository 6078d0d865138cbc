"""Metrics at /metrics and one log line per request (issue 16, items 3 and 4): the request counter
moves by exactly the requests made, labelled by route, bounded operation name and outcome; errors
by code; the pool, exports in flight, the audience index's lag and queue per brand, postings batch
sizes; the log line's fields for a GraphQL request and an export, and no personal data or token in
it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from api import metrics as api_metrics
from api import observe
from api.app import create_app
from api.auth import Authenticate
from api.settings import Settings
from store.audiences.bitmaps import lock_brand
from store.brands import brand_by_code
from tests.audience_seed import seed
from tests.conftest import new_brand, serving
from tests.fragments import EARN, REGISTER

BRANDS = "query Brands { brands { code } }"


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics without a key: every sample by name and labels."""
    token = http.headers.pop("authorization")
    try:
        response = await http.get("/metrics")
    finally:
        http.headers["authorization"] = token
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The request log's lines as the JSON formatter writes them."""
    formatter = observe.JsonLines()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == observe.REQUEST_LOG]


async def test_the_request_counter_moves_by_the_requests_made(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path) as (http, _):
        before = await scrape(http)
        for _ in range(3):
            response = await http.post("/graphql", json={"query": BRANDS})
            assert "errors" not in response.json()
        # The same document without its name, and one naming it in operationName.
        await http.post("/graphql", json={"query": "{ brands { code } }"})
        await http.post("/graphql", json={"query": BRANDS, "operationName": "Brands"})
        after = await scrape(http)
    ok = {"route": "/graphql", "outcome": "ok"}
    assert (
        value(after, "omnimember_requests_total", operation="Brands", **ok)
        - value(before, "omnimember_requests_total", operation="Brands", **ok)
        == 4
    )
    assert value(after, "omnimember_requests_total", operation="anonymous", **ok) == 1
    latency = "omnimember_request_duration_seconds_count"
    assert value(after, latency, operation="Brands", **ok) == 4
    # The first scrape is counted once it has answered: the second one sees it.
    assert value(after, "omnimember_requests_total", route="/metrics", operation="", outcome="ok") == 1


async def test_refused_requests_count_by_error_code(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path) as (http, _):
        invalid = await http.post("/graphql", json={"query": "query Nope { nope }"})
        assert invalid.json()["errors"][0]["extensions"]["code"] == "INVALID_DOCUMENT"
        await http.post("/graphql", json={"query": "{ brands { code "})  # does not parse
        await http.post("/graphql", content=b"{}", headers={"content-type": "application/json"})
        unauthenticated = await http.post("/graphql", json={"query": BRANDS}, headers={"authorization": ""})
        assert unauthenticated.status_code == 401
        samples = await scrape(http)
    assert value(samples, "omnimember_errors_total", code="INVALID_DOCUMENT") == 1
    assert value(samples, "omnimember_errors_total", code="SYNTAX_ERROR") == 1
    assert value(samples, "omnimember_errors_total", code="BAD_REQUEST") == 1
    assert value(samples, "omnimember_errors_total", code="UNAUTHENTICATED") == 1
    # An invalid document has no operation the service knows of: its name is not a label.
    graphql = {"route": "/graphql", "operation": "anonymous"}
    assert value(samples, "omnimember_requests_total", outcome="INVALID_DOCUMENT", **graphql) == 1
    assert value(samples, "omnimember_requests_total", route="/graphql", operation="", outcome="UNAUTHENTICATED") == 1


async def test_pool_and_export_gauges(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_metrics, "INDEX_TIMEOUT", 0.2)  # the scrape's own wait for a connection
    async with serving(database_url, tmp_path, pool_min_size=2, pool_max_size=2, max_exports=3) as (http, state):
        for _ in range(50):  # the index applier takes a connection every second: catch a moment without
            idle = await scrape(http)
            if value(idle, "omnimember_pool_connections_in_use") == 0:
                break
            await asyncio.sleep(0.02)
        assert value(idle, "omnimember_pool_connections_max") == 2
        assert value(idle, "omnimember_pool_connections_in_use") == 0
        assert value(idle, "omnimember_exports_in_flight") == 0
        assert value(idle, "omnimember_exports_max") == 3
        await state.export_slots.acquire()  # what an export streaming now holds (api.export.Slot)
        first, second = await state.pool.getconn(), await state.pool.getconn()
        waiter = asyncio.create_task(state.pool.getconn())
        await asyncio.sleep(0.05)
        try:
            busy = await scrape(http)
        finally:
            await state.pool.putconn(first)
            await state.pool.putconn(await waiter)
            await state.pool.putconn(second)
            state.export_slots.release()
    assert value(busy, "omnimember_pool_connections_in_use") == 2
    assert value(busy, "omnimember_pool_requests_waiting") == 1
    assert value(busy, "omnimember_exports_in_flight") == 1
    assert value(busy, "omnimember_audience_index_read_failures_total") == 1  # no connection came free


async def test_index_lag_and_pending_changes_per_brand(
    database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    code = await new_brand(pool)
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, code))["id"]
    async with serving(database_url, tmp_path) as (http, _), pool.connection() as holder, holder.transaction():
        await lock_brand(holder, brand_id, wait=True)  # every process's applier leaves the brand alone
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO audience_changes (brand_id, member_id, queued_at)"
                " VALUES (%(b)s, 1, now() - interval '40 seconds'), (%(b)s, 2, now())",
                {"b": brand_id},
            )
        samples = await scrape(http)
        assert value(samples, "omnimember_audience_index_pending_changes", brand=code) == 2
        assert 40 <= value(samples, "omnimember_audience_index_lag_seconds", brand=code) < 100
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM audience_changes WHERE brand_id = %s", [brand_id])
        samples = await scrape(http)
    assert value(samples, "omnimember_audience_index_pending_changes", brand=code) == 0
    assert value(samples, "omnimember_audience_index_lag_seconds", brand=code) == 0


async def test_postings_batch_sizes(database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any]) -> None:
    code = await new_brand(pool)
    async with serving(database_url, tmp_path) as (http, _):
        members = []
        for i in range(8):
            variables = {"brand": code, "channel": "tmall", "externalId": f"batch-{i}"}
            registered = await http.post("/graphql", json={"query": REGISTER, "variables": variables})
            members.append(registered.json()["data"]["registerMember"]["member"]["id"])

        async def earn(member: str) -> None:
            variables = {"brand": code, "memberId": member, "amount": 10, "key": f"earn-{member}"}
            response = await http.post("/graphql", json={"query": EARN, "variables": variables})
            assert response.json()["data"]["earnPoints"]["__typename"] == "PointsPosted"

        await asyncio.gather(*(earn(member) for member in members))
        samples = await scrape(http)
    assert value(samples, "omnimember_postings_batch_size_sum", kind="credits") == 8  # every posting, once
    assert value(samples, "omnimember_postings_batch_size_count", kind="credits") >= 1
    assert value(samples, "omnimember_requests_total", route="/graphql", operation="Earn", outcome="ok") == 8


async def test_one_log_line_per_graphql_request(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(database_url, tmp_path) as (http, _):
        token = http.headers["authorization"].removeprefix("Bearer ")
        with caplog.at_level(logging.INFO, logger=observe.REQUEST_LOG):
            response = await http.post("/graphql", json={"query": BRANDS}, headers={"x-request-id": "trace-1"})
    assert response.status_code == 200
    (line,) = request_lines(caplog)
    assert line.pop("time").endswith("+00:00")
    assert line.pop("duration_ms") > 0
    assert line == {
        "level": "info",
        "logger": "omnimember.requests",
        "request_id": "trace-1",
        "method": "POST",
        "path": "/graphql",
        "route": "/graphql",
        "status": 200,
        "operation": "Brands",
        "key": token.split("_")[1],
        "role": "admin",
        "outcome": "ok",
    }


async def test_one_log_line_per_export(
    database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    seeded = await seed(pool)
    async with serving(database_url, tmp_path) as (http, _):
        with caplog.at_level(logging.INFO, logger=observe.REQUEST_LOG):
            response = await http.get("/audiences/export", params={"brand": seeded.code, "expression": "tag:vip"})
            unknown = await http.get("/audiences/export", params={"brand": "no_such_brand", "expression": "tag:vip"})
    assert (response.status_code, unknown.status_code) == (200, 404)
    exported, refused = request_lines(caplog)
    assert exported["route"] == exported["path"] == "/audiences/export"  # the path, never its query string
    assert [exported[name] for name in ("status", "outcome", "operation", "role")] == [200, "ok", None, "admin"]
    assert len(exported["request_id"]) == 32  # none given: one made up, as sent in X-Request-Id
    assert exported["request_id"] == response.headers["x-request-id"]
    assert (refused["status"], refused["outcome"]) == (404, "UNKNOWN_BRAND")


async def test_the_log_line_holds_no_personal_data_or_token(
    database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    code = await new_brand(pool)
    phone, name = "13912345678", "欧阳娜娜"
    variables = {"brand": code, "channel": "wechat", "externalId": "wx-private-7", "phone": phone, "displayName": name}
    async with serving(database_url, tmp_path) as (http, _):
        token = http.headers["authorization"].removeprefix("Bearer ")
        with caplog.at_level(logging.DEBUG):
            response = await http.post("/graphql", json={"query": REGISTER, "variables": variables})
            # A name that could carry a number is no label either.
            await http.post("/graphql", json={"query": "query q13912345678 { brands { code } }"})
    assert response.json()["data"]["registerMember"]["__typename"] == "MemberRegistered"
    lines = request_lines(caplog)
    assert [line["operation"] for line in lines] == ["Register", "anonymous"]
    everything = "\n".join(
        [*(json.dumps(line, ensure_ascii=False) for line in lines), *(record.getMessage() for record in caplog.records)]
    )
    for secret in (phone, "912345678", name, "wx-private-7", token, "registerMember"):
        assert secret not in everything


def test_operation_labels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observe, "_labels", {})
    monkeypatch.setattr(observe, "MAX_OPERATIONS", 2)
    assert observe.operation_label(None) == "anonymous"
    assert observe.operation_label("x" * 65) == "anonymous"
    assert observe.operation_label("Member") == "Member"
    assert observe.operation_label("Points") == "Points"
    assert observe.operation_label("Third") == "other"  # past the cap, a new name is no new series
    assert observe.operation_label("Member") == "Member"


def test_log_format_setting() -> None:
    assert Settings.from_env({}).log_format == "json"
    assert Settings.from_env({"OMNIMEMBER_LOG_FORMAT": "TEXT"}).log_format == "text"
    with pytest.raises(ValueError, match="OMNIMEMBER_LOG_FORMAT"):
        Settings.from_env({"OMNIMEMBER_LOG_FORMAT": "xml"})
    record = logging.LogRecord("api.app", logging.INFO, __file__, 1, "home %s", ("/srv",), None)
    line = json.loads(observe.JsonLines().format(record))
    assert (line["level"], line["logger"], line["message"]) == ("info", "api.app", "home /srv")


async def test_metrics_off_answers_no_metrics_and_still_logs(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(database_url, tmp_path, metrics=False) as (http, _):
        with caplog.at_level(logging.INFO, logger=observe.REQUEST_LOG):
            response = await http.post("/graphql", json={"query": BRANDS})
            token = http.headers.pop("authorization")
            scraped = await http.get("/metrics")
            http.headers["authorization"] = token
    assert response.status_code == 200
    assert scraped.status_code == 404  # no route: nothing counts what it would answer
    assert [line["operation"] for line in request_lines(caplog)] == ["Brands", None]


async def test_the_request_log_off_writes_no_line_and_still_counts(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(database_url, tmp_path, request_log=False) as (http, _):
        with caplog.at_level(logging.DEBUG):
            await http.post("/graphql", json={"query": BRANDS})
            samples = await scrape(http)
    assert request_lines(caplog) == []
    assert value(samples, "omnimember_requests_total", route="/graphql", operation="Brands", outcome="ok") == 1


def test_with_metrics_log_and_traces_off_nothing_observes_requests(tmp_path: Path) -> None:
    settings = Settings.from_env({"OMNIMEMBER_METRICS": "off", "OMNIMEMBER_REQUEST_LOG": "0"})
    assert (settings.metrics, settings.request_log, settings.traces) == (False, False, False)
    app = create_app(settings)
    assert middleware_of(app) == [Authenticate]
    assert "/metrics" not in {getattr(route, "path", None) for route in app.routes}
    (observing, _) = create_app(Settings.from_env({"OMNIMEMBER_METRICS": "0"})).user_middleware
    assert observing.kwargs == {"metrics": None, "log_requests": True}
    assert middleware_of(create_app(Settings.from_env({}))) == [observe.Observe, Authenticate]


def middleware_of(app: Starlette) -> list[object]:
    return [middleware.cls for middleware in app.user_middleware]


_TIMESTAMPS = st.floats(min_value=0, max_value=4e9, allow_nan=False) | st.integers(0, 4 * 10**15).map(lambda n: n / 1e6)


@settings(max_examples=500)
@given(created=_TIMESTAMPS)
def test_the_line_time_is_what_datetime_writes(created: float) -> None:
    """The per-second cache of the time's text writes what isoformat does, to the millisecond,
    rounding included (a timestamp a hair under a whole second)."""
    record = logging.LogRecord("api.app", logging.INFO, __file__, 1, "x", (), None)
    record.created = created
    expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    assert json.loads(observe.JsonLines().format(record))["time"] == expected


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(observe.REQUEST_LOG, level, __file__, 1, message, (), None)


def test_the_server_log_writes_lines_in_batches_and_loses_none() -> None:
    stream = io.StringIO()
    handler = observe._ServerHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for n in range(3):
        handler.handle(_record(f"line {n}"))
    assert stream.getvalue() == ""  # held for the batch
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stream.getvalue() == "line 0\nline 1\nline 2\n"  # written within FLUSH_SECONDS, in order
    handler.handle(_record("held"))
    handler.handle(_record("failed", logging.WARNING))
    assert stream.getvalue().endswith("held\nfailed\n")  # a warning goes out at once, with what waited
    for n in range(observe._ServerHandler.FLUSH_LINES):
        handler.handle(_record(f"burst {n}"))
    assert stream.getvalue().endswith(f"burst {observe._ServerHandler.FLUSH_LINES - 1}\n")  # a full batch at once
    handler.handle(_record("last"))
    handler.close()  # as logging.shutdown at exit: flushes, then closes
    handler.flush()
    assert stream.getvalue().endswith("last\n")
    assert stream.getvalue().count("\n") == 6 + observe._ServerHandler.FLUSH_LINES


def test_a_closed_stream_never_raises_from_the_flushing_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's timer writes on a thread of its own, where an exception reaches nobody but the
    test runner (found in the suite: a captured stderr closed under a handler installed earlier,
    logging's own report of the failure then failing on it too)."""
    stream = io.StringIO()
    handler = observe._ServerHandler(stream)
    handler.handle(_record("lost"))
    stream.close()
    monkeypatch.setattr(sys, "stderr", stream)  # where logging reports a failed write: closed as well
    time.sleep(observe._ServerHandler.FLUSH_SECONDS * 3)  # the timer fires and fails to write: quietly
    handler.flush()
    assert handler._pending == []  # the lines are dropped, not kept to fail again


@pytest.mark.parametrize("status", [200, 503])
def test_a_request_line_written_without_a_record_is_the_line_a_record_writes(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, status: int
) -> None:
    """When the server's JSON handler alone takes the request log, a line goes to it as its fields,
    with no LogRecord made (issue 16's 5%); the line is the one the record would have written, and
    any other handler (a test's capture, a deployment's own) gets records as before."""
    stream = io.StringIO()
    handler = observe._ServerHandler(stream)
    handler.setFormatter(observe.JsonLines())
    made: list[Any] = []
    make_record = observe.log.makeRecord

    def recorded(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(args)
        return make_record(*args, **kwargs)

    monkeypatch.setattr(observe.log, "makeRecord", recorded)
    level = observe.log.level
    observe.log.setLevel(logging.INFO)  # (setLevel: the logger caches what it is enabled for)
    request.addfinalizer(lambda: observe.log.setLevel(level))
    seen = observe.Observation()
    seen.operation = "Brands"
    scope = {"type": "http", "method": "POST", "path": "/graphql", "request_id": "r-1"}
    lines = []
    for handlers in ([handler], [handler, logging.NullHandler()]):
        monkeypatch.setattr(logging.root, "handlers", handlers)
        observe.Observe(Starlette(), metrics=None)._record(scope, seen, status, 0.0123)
        handler.flush()
        (line,) = stream.getvalue().splitlines()
        stream.seek(0)
        stream.truncate()
        lines.append(line)
        if len(handlers) == 1:
            assert not made  # the sole JSON handler: no record
    assert len(made) == 1  # another handler beside it: a record, as any
    fast, recorded_line = (json.loads(line) for line in lines)
    assert fast.pop("time").endswith("+00:00")
    assert recorded_line.pop("time").endswith("+00:00")
    assert fast == recorded_line
    assert list(fast)[:3] == ["level", "logger", "request_id"]
    assert fast["level"] == ("warning" if status >= 500 else "info")
