"""Several worker processes, each listening on its own socket.

uvicorn's `--workers` shares one listening socket among the workers, and Linux hands each new
connection to the worker that most recently waited for one, usually the busiest: a few long-lived
client connections (a proxy's pool, a load generator) can all land on one worker while the others
idle. Measured with wrk's 16 keep-alive connections and two workers: one worker served every
request. Here each worker gets its own socket bound to the same address with SO_REUSEPORT, and the
kernel spreads incoming connections over the sockets by a hash of the client's address and port.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger(__name__)


def listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """``count`` listening sockets on one address (port 0: the first one's free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _OneSocketEach(Multiprocess):
    """uvicorn's supervisor, starting worker n on socket n. A worker it replaces (one that died)
    listens on all of them: still served, a little less evenly."""

    def init_processes(self) -> None:
        for sock in self.sockets:
            process = Process(self.config, [sock])
            process.start()
            self.processes.append(process)


def run_workers(config: uvicorn.Config) -> None:
    """Serve ``config`` (an import string app) with ``config.workers`` processes until signalled."""
    sockets = listening_sockets(config.host, config.port, config.workers, config.backlog)
    host, port = sockets[0].getsockname()[:2]
    log.info("omnimember listening on http://%s:%d with %d workers", host, port, config.workers)
    try:
        _OneSocketEach(config, sockets).run()
    finally:
        for sock in sockets:
            sock.close()
