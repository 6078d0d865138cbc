"""Exports under load (issue 12, item 2): at most `max_exports` stream at once (more answer 429
`TOO_MANY_EXPORTS` with Retry-After), each slot comes back however its stream ends, the text is
handed out in small chunks only as fast as the client takes them, and a client that takes its time
holds no database connection.

Found at 9bd6195: 20 slow readers of a 180,000-row export added 240 MB and slowed ordinary queries
to 1.3-13 s; every export was accepted and each chunk held 10,000 rows.

httpx's ASGI transport reads a response whole, so the clients here speak ASGI themselves: each takes
a body chunk only when the test lets it, or leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Scope

from api.app import create_app
from api.settings import Settings
from api.state import AppState
from store.audiences import engine
from store.audiences import export as member_export
from tests.audience_seed import Seeded, seed
from tests.conftest import TEST_SECRET
from tests.server import Server

READER = "export-reader"  # the task a Reader's request runs in


@contextlib.asynccontextmanager
async def running(database_url: str, home: Path, **settings: Any) -> AsyncIterator[tuple[ASGIApp, AppState]]:
    """The app with its lifespan entered, as an ASGI callable that hands requests the state; in
    development mode, so that these loopback requests need no key."""
    app = create_app(Settings(database_url=database_url, home=home, secret=TEST_SECRET, dev=True, **settings))
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            scope.setdefault("client", ("127.0.0.1", 40000))
            await app(scope, receive, send)

        yield with_state, (state or {})["omnimember"]


class Reader:
    """One GET over ASGI by a client that takes a body chunk only when let (`take`), or leaves
    (`leave`). ``spec`` 2.4 servers tell a streaming app that the client left by failing `send`
    (uvicorn); older ones by a disconnect message (starlette listens for it)."""

    def __init__(self, app: ASGIApp, path: str, params: dict[str, str], spec: str = "2.4") -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.started = asyncio.Event()
        self.arrived = asyncio.Condition()
        self._allowed = 0
        self._gone = asyncio.Event()
        self._may_send = asyncio.Event()
        self._asked = False
        self._send_fails = spec >= "2.4"
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": spec},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": urlencode(params).encode(),
            "root_path": "",
            "headers": [(b"host", b"omnimember.test")],
            "client": ("127.0.0.1", 1),
            "server": ("omnimember.test", 80),
        }
        self.task = asyncio.create_task(self._run(app, scope), name=READER)

    async def _run(self, app: ASGIApp, scope: Scope) -> None:
        await app(scope, self._receive, self._send)

    async def _receive(self) -> Message:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        self._fail_if_gone()
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            self.started.set()
            return
        if message.get("body"):
            async with self.arrived:
                self.chunks.append(message["body"])
                self.arrived.notify_all()
        while self._allowed <= 0 and message.get("more_body", False):  # the client is not reading
            self._may_send.clear()
            await self._may_send.wait()
            self._fail_if_gone()
        self._allowed -= 1

    def _fail_if_gone(self) -> None:
        if self._gone.is_set() and self._send_fails:
            raise OSError("the client went away")  # as uvicorn's send does

    async def first_chunk(self) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: bool(self.chunks)), 10)

    def take(self, chunks: int = 1_000_000) -> None:
        self._allowed += chunks
        self._may_send.set()

    def leave(self) -> None:
        self._gone.set()
        self._may_send.set()

    async def finished(self) -> None:
        await asyncio.wait_for(self.task, 10)


@pytest.fixture(scope="module")
async def seeded(pool: AsyncConnectionPool[Any]) -> Seeded:
    return await seed(pool, count=300)


def _params(seeded: Seeded, **extra: str) -> dict[str, str]:
    return {"brand": seeded.code, "expression": "NOT tag:vip", "fields": "id,tier,city", **extra}


async def _get(app: ASGIApp, params: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://omnimember.test") as http:
        return await http.get("/audiences/export", params=params)


async def test_a_fifth_export_is_429_until_one_of_four_ends(
    database_url: str, tmp_path: Path, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(member_export, "BATCH", 20)
    async with running(database_url, tmp_path) as (app, state):
        assert state.settings.max_exports == 4
        readers = [Reader(app, "/audiences/export", _params(seeded)) for _ in range(4)]
        for reader in readers:
            await reader.first_chunk()  # streaming, and stuck: its client reads nothing
        refused = await _get(app, _params(seeded))
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"].isdigit()
        assert refused.json()["error"] == {
            "code": "TOO_MANY_EXPORTS",
            "message": refused.json()["error"]["message"],
            "parameter": None,
            "limit": 4,
        }
        saved = await _get_saved_export(app, seeded)
        assert saved.status_code == 429  # the cap is one for both endpoints

        readers[0].take()
        await readers[0].finished()
        whole = b"".join(readers[0].chunks).decode()
        assert whole.splitlines()[0] == "id,tier,city"
        assert len(whole.splitlines()) == 1 + 150  # every member without vip

        accepted = await _get(app, _params(seeded))
        assert accepted.status_code == 200, accepted.text
        assert accepted.text == whole
        assert all(not reader.task.done() for reader in readers[1:])
        for reader in readers[1:]:
            reader.take()
            await reader.finished()
        assert state.export_slots._value == 4


async def _get_saved_export(app: ASGIApp, seeded: Seeded) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://omnimember.test") as http:
        return await http.get("/audiences/1/export")


@pytest.mark.parametrize("spec", ["2.4", "2.3"])
async def test_the_slot_comes_back_when_the_client_leaves(
    spec: str, database_url: str, tmp_path: Path, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(member_export, "BATCH", 20)
    async with running(database_url, tmp_path, max_exports=1) as (app, state):
        reader = Reader(app, "/audiences/export", _params(seeded), spec=spec)
        await reader.first_chunk()
        assert (await _get(app, _params(seeded))).status_code == 429
        reader.leave()
        with contextlib.suppress(ClientDisconnect):  # how starlette reports a send that failed
            await reader.finished()
        assert len(reader.chunks) < 5  # it stopped where the client left
        assert (await _get(app, _params(seeded))).status_code == 200
        assert state.export_slots._value == 1


async def test_the_slot_comes_back_when_the_export_fails_or_is_refused(
    database_url: str, tmp_path: Path, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(database_url, tmp_path, max_exports=1) as (app, state):
        for params, status in [
            ({**_params(seeded), "brand": "no_such_brand"}, 404),
            ({**_params(seeded), "expression": "tag:nope"}, 400),
            ({**_params(seeded), "fields": "phone"}, 400),
        ]:
            assert (await _get(app, params)).status_code == status
            assert state.export_slots._value == 1

        real = member_export.member_rows
        calls = 0

        async def failing(*args: Any) -> list[dict[str, Any]]:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise RuntimeError("the database went away mid-export")
            return await real(*args)

        monkeypatch.setattr(member_export, "BATCH", 20)
        monkeypatch.setattr(member_export, "member_rows", failing)
        with pytest.raises(RuntimeError):
            await _get(app, _params(seeded))
        assert state.export_slots._value == 1

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("no ids today")

        monkeypatch.setattr(engine, "member_ids", broken)
        with pytest.raises(RuntimeError):
            await _get(app, _params(seeded))
        assert state.export_slots._value == 1


async def test_a_slow_reader_holds_no_connection(
    database_url: str, tmp_path: Path, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(member_export, "BATCH", 20)
    monkeypatch.setattr(member_export, "CHUNK_CHARS", 100)
    async with running(database_url, tmp_path) as (app, state):
        reader = Reader(app, "/audiences/export", _params(seeded))
        reader.take(3)  # the header and two chunks, then it stops reading
        async with reader.arrived:
            await asyncio.wait_for(reader.arrived.wait_for(lambda: len(reader.chunks) >= 4), 10)
        await asyncio.sleep(0.05)
        assert len(reader.chunks) == 4  # the stream waits for the client ...
        held = [checkout for checkout in state.pool.checkouts.values() if checkout.holder == READER]
        assert held == []  # ... holding no connection
        reader.take()
        await reader.finished()
        assert len(b"".join(reader.chunks).decode().splitlines()) == 1 + 150


@pytest.mark.parametrize("fields", ["id,tier,city,channel:wechat", "id", "brand,id"])
async def test_chunks_are_bounded(
    fields: str, pool: AsyncConnectionPool[Any], seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every chunk holds at most CHUNK_CHARS characters (a longer line goes alone), whatever the
    batch, and together they are the export."""
    layout = member_export.layout("csv", fields)
    brand = {"id": seeded.brand_id, "code": seeded.code}
    ids = np.array(seeded.ids, dtype=np.int64)
    whole = "".join([chunk async for chunk in member_export.lines(pool.connection, ids, brand, layout)])
    monkeypatch.setattr(member_export, "CHUNK_CHARS", 256)
    chunks = [chunk async for chunk in member_export.lines(pool.connection, ids, brand, layout)]
    assert "".join(chunks) == whole
    assert len(chunks) > 10
    assert max(len(chunk) for chunk in chunks) <= 256


def test_a_line_longer_than_a_chunk_goes_alone() -> None:
    lines = ["a" * 10, "b" * 300, "c" * 10, "d" * 10]
    assert list(member_export.chunks(lines, 25)) == ["a" * 10, "b" * 300, "c" * 10 + "d" * 10]


def _export_socket(server: Server, path: str) -> socket.socket:
    """A client that asks for an export and reads nothing of it (a small receive buffer, so the
    server's writes back up at once)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.settimeout(10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return sock


def _status(sock: socket.socket) -> bytes:
    head = sock.recv(200)
    return head.split(b"\r\n")[0]


@pytest.mark.slow
async def test_slow_readers_of_a_real_server(database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any]) -> None:
    """uvicorn: clients that stop reading hold their slots (and nothing else: ordinary requests are
    answered at once), one more is 429, and a client that hangs up gives its slot back."""
    large = await seed(pool, count=20_000)
    server = Server(tmp_path, database_url, env={"OMNIMEMBER_MAX_EXPORTS": "2"})
    await asyncio.to_thread(server.wait_ready)
    path = "/audiences/export?" + urlencode(_params(large, fields="id,tier,maskedPhone,city"))
    readers: list[socket.socket] = []
    try:
        readers += [_export_socket(server, path) for _ in range(2)]
        assert [await asyncio.to_thread(_status, sock) for sock in readers] == [b"HTTP/1.1 200 OK"] * 2
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            refused = await http.get(path)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "5"
            started = asyncio.get_running_loop().time()
            assert (await http.post("/graphql", json={"query": "{ brands { code } }"})).status_code == 200
            assert asyncio.get_running_loop().time() - started < 2
            readers.pop().close()  # the client hangs up mid-export
            for _ in range(50):
                accepted = await http.get(path)
                if accepted.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert accepted.status_code == 200
            assert len(accepted.text.splitlines()) == 1 + 10_000
    finally:
        for sock in readers:
            sock.close()
        await asyncio.to_thread(server.stop)
