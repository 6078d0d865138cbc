"""Clients that send too slowly lose their connection, and SIGTERM stops the server promptly.

Found at 9bd6195 (issue 12): 500 connections that sent nothing and 500 slowloris clients were all
held for the whole 60 s probe; SIGTERM took ~40 s behind a wedged pool. These run the real server
(uvicorn with its protocol) in a subprocess.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server

LIMITS = {"OMNIMEMBER_HEADER_TIMEOUT": "1", "OMNIMEMBER_BODY_TIMEOUT": "1", "OMNIMEMBER_SHUTDOWN_TIMEOUT": "2"}


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    served = Server(tmp_path_factory.mktemp("slow"), database_url, env=LIMITS)
    served.wait_ready()
    yield served
    served.stop()


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _closed_after(sock: socket.socket, trickle: bytes = b"") -> tuple[float, bytes]:
    """Seconds until the server closed the connection (sending ``trickle`` a byte at a time), and
    what it sent."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.25)
    for byte in [trickle[i : i + 1] for i in range(len(trickle))] or [b""] * 40:
        try:
            if byte:
                sock.sendall(byte)
            chunk = sock.recv(65536)
            if not chunk:
                return time.monotonic() - started, received
            received += chunk
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started, received
    return time.monotonic() - started, received


def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with _connect(server) as sock:
        elapsed, received = _closed_after(sock)
    assert elapsed < 5, "held open"
    assert received == b""


def test_a_slowloris_client_is_closed_before_its_headers_end(server: Server) -> None:
    head = b"POST /graphql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-a: " + b"a" * 60
    with _connect(server) as sock:
        elapsed, received = _closed_after(sock, head)
    assert elapsed < 5, "held open"
    assert received == b""


def test_a_body_that_does_not_arrive_is_408(server: Server) -> None:
    head = b"POST /graphql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(head + b'{"query": ')
        elapsed, received = _closed_after(sock)
    assert elapsed < 5
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"REQUEST_TIMEOUT" in received


def test_a_kept_alive_connection_gets_the_same_deadline_for_its_next_request(server: Server) -> None:
    request = b'{"query": "{ __typename }"}'
    head = b"POST /graphql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(head % len(request) + request)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        elapsed, _ = _closed_after(sock, b"POST /graphql HTTP/1.1\r\nhost: x\r\n" + b"x" * 40)
    assert elapsed < 5


def test_sigterm_stops_the_server_promptly_with_clients_stuck_mid_request(database_url: str, tmp_path: Path) -> None:
    served = Server(tmp_path, database_url, env=LIMITS | {"OMNIMEMBER_BODY_TIMEOUT": "60"})
    served.wait_ready()
    stuck = [_connect(served) for _ in range(5)]
    for sock in stuck:  # a complete head, a body that never comes
        sock.sendall(
            b"POST /graphql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n{"
        )
    time.sleep(0.3)
    started = time.monotonic()
    served.stop(signal.SIGTERM)
    elapsed = time.monotonic() - started
    for sock in stuck:
        sock.close()
    assert served.proc.returncode is not None
    assert elapsed < 10, f"SIGTERM took {elapsed:.1f} s"
