"""The command line: schema output and the serve lifecycle on the embedded PostgreSQL."""

from __future__ import annotations

import signal
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
