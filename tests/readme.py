"""The README's snippets, and a reader who runs them in a shell as written (tests/test_readme.py).

Snippets: every fenced block, and every span of `inline code` in the prose that is a command (it
starts with a program the README tells readers to run) or a GraphQL document (`mutation {`, `{ `).
Other spans (names, expressions, fields) are words of the prose, not things to run.

A reader runs a snippet with `bash -euo pipefail -c` (every command must succeed, not only the last)
in a working directory of its own, changed in three documented ways only (`Reader.localised` checks
that nothing else changes):
- the port: `127.0.0.1:8000` becomes a free port, and `serve` is given `--port` (8000 may be taken);
- `.venv/` is the virtual environment running the tests (a symlink in the working directory, which
  also receives the files the snippets write: q.graphql, lapsing.csv);
- the environment: DATABASE_URL names a throwaway database (the README's "your own PostgreSQL": serve
  on the embedded PostgreSQL 18 is .ci/smoke's part), OMNIMEMBER_HOME a temporary directory, and no
  other OMNIMEMBER_* or OTEL_* variable of the test run leaks in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import MOBILE, ROOT
from tests.server import free_port

README = (ROOT / "README.md").read_text()
_FENCED = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
BLOCKS: list[tuple[str, str]] = [(language, body) for language, body in _FENCED.findall(README)]
_SPANS = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", _FENCED.sub("", README))]
COMMAND_WORDS = (".venv/bin/", "omnimember ", "curl ", "bash ", "pip ", "python3 ", "pytest")
COMMANDS = [span for span in _SPANS if span.startswith(COMMAND_WORDS)]
DOCUMENTS = [span for span in _SPANS if span.startswith(("mutation {", "query ", "{ "))]
SNIPPETS = [body for _, body in BLOCKS] + COMMANDS + DOCUMENTS

README_ADDRESS = "127.0.0.1:8000"
BASH = shutil.which("bash") or "/bin/bash"


def block(language: str, *words: str) -> str:
    """The one fenced block of ``language`` holding every word."""
    (found,) = [body for lang, body in BLOCKS if lang == language and all(word in body for word in words)]
    return found


def inline(*words: str) -> str:
    """The one inline command or document holding every word."""
    (found,) = [span for span in COMMANDS + DOCUMENTS if all(word in span for word in words)]
    return found


class Reader:
    """A reader at a terminal, in ``workdir``, on the database of ``database_url``; `ran` records
    the snippets run so far."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        venv = Path(sys.prefix)
        assert (venv / "bin" / "omnimember").exists(), f"run the tests from the README's venv, not {venv}"
        self.workdir = workdir
        (workdir / ".venv").symlink_to(venv, target_is_directory=True)
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNIMEMBER_", "OTEL_", "TEST_DATABASE"))}
        self.env |= {"DATABASE_URL": database_url, "OMNIMEMBER_HOME": str(workdir / "home")}
        self.ran: set[str] = set()
        self.server: subprocess.Popen[bytes] | None = None
        self.log = workdir / "serve.log"

    def localised(self, snippet: str) -> str:
        """``snippet`` on this reader's port; nothing else of it changes."""
        local = snippet.replace(README_ADDRESS, f"127.0.0.1:{self.port}")
        if "omnimember serve" in local:
            local = f"{local} --port {self.port}"
        assert local.replace(f"127.0.0.1:{self.port}", README_ADDRESS).removesuffix(f" --port {self.port}") == snippet
        assert ":8000" not in local
        return local

    def run(self, snippet: str, *, prelude: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
        """``snippet`` run by bash after ``prelude`` (what an earlier snippet defined in the same shell)."""
        self.ran.add(snippet)
        done = subprocess.run(
            [BASH, "-euo", "pipefail", "-c", self.localised(prelude) + self.localised(snippet)],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if check:
            assert done.returncode == 0, (snippet, done.stdout, done.stderr)
        return done

    def serve(self, command: str) -> None:
        """Start ``command`` (the README's serve) and wait until it is ready."""
        self.ran.add(command)
        with self.log.open("w") as log:
            self.server = subprocess.Popen(
                [BASH, "-c", self.localised(command)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals that group only
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.server.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the README's serve did not become ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(timeout=30)
        leaked = MOBILE.findall(self.log.read_text(errors="replace")) if self.log.exists() else []
        assert not leaked, f"mobile numbers in the server's log: {leaked[:5]}"

    def gql(self, tour: str, document: str) -> dict[str, Any]:
        """``document`` saved as q.graphql and sent with the tour's ``gql`` block; its `data`."""
        self.ran.add(document)
        (self.workdir / "q.graphql").write_text(document)
        body: dict[str, Any] = json.loads(self.run(tour).stdout)
        assert "errors" not in body, (document, body)
        data: dict[str, Any] = body["data"]
        return data
