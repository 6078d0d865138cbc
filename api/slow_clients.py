"""A client gets `header_timeout` seconds to send a request's headers, or loses the connection.

uvicorn closes idle keep-alive connections, but a connection that never sends a complete request
head is held forever: every byte it trickles in cancels the keep-alive timer (500 silent
connections and 500 slowloris clients were all held for the whole 60 s probe, issue 12). Here the
clock starts when the connection opens and again when a response completes, and stops when a
request's headers are complete; the body has its own deadline in the endpoint (`body_timeout`).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadline(HttpToolsProtocol):
    header_timeout = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's head, on this kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def use_header_timeout(seconds: float) -> type[HeaderDeadline]:
    """The protocol for uvicorn's `http` setting, with this deadline in this process. A class
    attribute, not a subclass per value: uvicorn's worker processes receive the class by name, and
    each sets its deadline again from its settings (api.app.app_from_env)."""
    HeaderDeadline.header_timeout = seconds
    return HeaderDeadline
