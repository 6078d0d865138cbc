"""The server's scheduled passes (lifecycle stages and RFM bounds, rule tags): one loop for each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

MAX_DELAY = 600.0  # seconds between tries while a pass keeps failing


async def every(interval: float, what: str, log: logging.Logger, one_pass: Callable[[], Awaitable[None]]) -> None:
    """`one_pass` every `interval` seconds until cancelled; a failure is logged (once while it
    persists) and retried, backing off to MAX_DELAY (a database not migrated yet should not fill the
    log every 30 seconds)."""
    delay = interval
    while True:
        try:
            await one_pass()
            delay = interval
        except Exception:
            if delay == interval:
                log.exception("%s: the scheduled pass failed; retrying", what)
            delay = min(delay * 2, MAX_DELAY)
        await asyncio.sleep(delay)
