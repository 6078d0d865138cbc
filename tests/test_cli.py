"""The command line: schema output and the serve lifecycle on the embedded PostgreSQL."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from schema.root import sdl
from tests.server import OMNIMEMBER, Server


def test_schema_command_prints_the_sdl() -> None:
    out = subprocess.run([*OMNIMEMBER, "schema"], capture_output=True, text=True, check=True).stdout
    assert out == sdl()


def _postgres_on(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.mark.slow
def test_sigterm_stops_postgres_and_sigkill_recovers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pgdata = home / "pgdata"

    first = Server(home)
    try:
        assert first.wait_ready()["status"] == "ready"
        created = first.graphql('mutation { createBrand(code: "cli_b", name: "CLI", group: "cli_g") { __typename } }')
        assert created == {"data": {"createBrand": {"__typename": "BrandCreated"}}}
    finally:
        first.stop(signal.SIGTERM)
    assert _postgres_on(pgdata) == []

    killed = Server(home)
    killed.wait_ready()
    killed.stop(signal.SIGKILL)
    assert _postgres_on(pgdata) != []  # orphaned by the kill, as the package leaves it

    again = Server(home)
    try:
        again.wait_ready()
        assert again.graphql("{ brands { code } }") == {"data": {"brands": [{"code": "cli_b"}]}}
    finally:
        again.stop(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _postgres_on(pgdata) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _postgres_on(pgdata) == []


def _established(server: Server) -> list[int]:
    """Per worker process (one with a listening socket on the port): its client connections."""
    counts = []
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        connections = [c for c in child.net_connections("tcp") if c.laddr and c.laddr.port == server.port]
        if any(c.status == psutil.CONN_LISTEN for c in connections):
            counts.append(sum(c.status == psutil.CONN_ESTABLISHED for c in connections))
    return counts


def test_workers_share_the_connections(database_url: str, tmp_path: Path) -> None:
    """With one shared listening socket, a burst of keep-alive connections mostly went to one
    worker (all 32 in most tries); each worker's own SO_REUSEPORT socket spreads them (under 8 of
    32 on either worker: p < 0.001 by chance). Three bursts, each of which must be spread."""
    server = Server(tmp_path / "home", database_url, workers=2)
    try:
        server.wait_ready()
        for _ in range(3):
            clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(32)]
            try:
                deadline = time.monotonic() + 10
                while sum(counts := _established(server)) < 32 and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert len(counts) == 2, counts
                assert sum(counts) == 32, counts
                assert min(counts) >= 8, counts
            finally:
                for client in clients:
                    client.close()
            while sum(_established(server)) and time.monotonic() < deadline:
                time.sleep(0.1)  # the workers saw the clients go
        assert server.graphql("{ __typename }") == {"data": {"__typename": "Query"}}
    finally:
        server.stop()
