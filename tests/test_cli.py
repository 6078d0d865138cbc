"""The command line: schema output and the serve lifecycle on the embedded PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from schema.root import sdl

OMNIMEMBER = [sys.executable, "-m", "api"]


def test_schema_command_prints_the_sdl() -> None:
    out = subprocess.run([*OMNIMEMBER, "schema"], capture_output=True, text=True, check=True).stdout
    assert out == sdl()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _postgres_on(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


class Server:
    """`omnimember serve` in a subprocess without DATABASE_URL: the embedded PostgreSQL 18."""

    def __init__(self, home: Path) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
        env |= {"OMNIMEMBER_HOME": str(home), "OMNIMEMBER_SECRET": "cli-test-secret-0123456789"}
        self.log = home.parent / f"serve-{self.port}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([*OMNIMEMBER, "serve", "--port", str(self.port)], env=env, stderr=log)

    def wait_ready(self, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1)
                if response.status_code == 200:
                    body: dict[str, str] = response.json()
                    return body
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become ready")

    def graphql(self, query: str) -> dict[str, object]:
        response = httpx.post(f"http://127.0.0.1:{self.port}/graphql", json={"query": query}, timeout=10)
        body: dict[str, object] = response.json()
        return body

    def stop(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)


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
