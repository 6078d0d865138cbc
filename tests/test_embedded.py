"""The embedded PostgreSQL of `omnimember serve` starts with settings sized for the machine (issue 13)."""

from __future__ import annotations

from pathlib import Path

import psutil
import psycopg

from api.embedded import EmbeddedPostgres, _apply, tuned


def _shown(url: str, names: list[str]) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in names}  # type: ignore[index]


def test_the_embedded_server_runs_with_its_tuned_settings(tmp_path: Path) -> None:
    wanted = tuned(psutil.virtual_memory().total)
    server = EmbeddedPostgres.start(tmp_path)
    try:
        shown = _shown(server.url, ["jit", "random_page_cost", "work_mem", "shared_buffers"])
        assert not _apply(server._server.get_uri(), wanted), "applied once: no restart on the next start"
    finally:
        server.stop()
    assert shown["jit"] == "off"
    assert shown["random_page_cost"] == "1.1"
    assert shown["work_mem"] == "32MB"
    megabytes = int(wanted["shared_buffers"].removesuffix("MB"))
    assert shown["shared_buffers"] in (f"{megabytes}MB", f"{megabytes // 1024}GB")


def test_tuned_settings_scale_with_memory_within_bounds() -> None:
    small, large = tuned(2 * 2**30), tuned(256 * 2**30)
    assert small["shared_buffers"] == "512MB"
    assert large["shared_buffers"] == "4096MB"
    assert int(large["effective_cache_size"].removesuffix("MB")) == 128 * 1024
