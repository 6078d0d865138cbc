"""`omnimember serve` in a subprocess, for tests that need a real server and real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import MOBILE

OMNIMEMBER = [sys.executable, "-m", "api"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """The service on a free loopback port: on ``database_url``, or on its embedded PostgreSQL 18."""

    def __init__(
        self,
        home: Path,
        database_url: str | None = None,
        secret: str = "server-test-secret-0123456789",
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
        # Development mode: these loopback requests need no key (tests/test_access.py covers keys).
        environment |= {"OMNIMEMBER_HOME": str(home), "OMNIMEMBER_SECRET": secret, "OMNIMEMBER_DEV": "1", **(env or {})}
        if database_url is not None:
            environment["DATABASE_URL"] = database_url
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / f"serve-{self.port}.log"
        with self.log.open("w") as log:
            command = [*OMNIMEMBER, "serve", "--port", str(self.port), "--workers", str(workers)]
            self.proc = subprocess.Popen(command, env=environment, stderr=log)

    def wait_ready(self, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=1)
                if response.status_code == 200:
                    body: dict[str, str] = response.json()
                    return body
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not become ready:\n{self.log.read_text()}")

    def graphql(self, query: str) -> dict[str, object]:
        response = httpx.post(f"{self.url}/graphql", json={"query": query}, timeout=10)
        body: dict[str, object] = response.json()
        return body

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        leaked = MOBILE.findall(self.log.read_text(errors="replace"))
        assert not leaked, f"mobile numbers in the server log {self.log}: {leaked[:5]}"
