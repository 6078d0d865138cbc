"""What the lifespan creates once and every request shares."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TypedDict

from api.settings import Settings
from resolvers.limits import RateLimits
from store.access.audit import AuditWriter
from store.access.keys import Keys
from store.access.principals import Principal
from store.brands import BrandDirectory
from store.ledger.batchers import Postings
from store.members.phones import PhoneVault
from store.pools import Pool


@dataclass(frozen=True, slots=True)
class AppState:
    pool: Pool
    vault: PhoneVault
    brands: BrandDirectory
    postings: Postings
    head_revision: str
    settings: Settings
    export_slots: asyncio.Semaphore  # exports streaming at once (settings.max_exports)
    keys: Keys
    audit: AuditWriter
    limits: RateLimits
    developer: Principal  # who key-less loopback requests are in development mode

    def pool_wedged(self) -> bool:
        """Every connection has been out far longer than any request may take: requests would only
        queue behind them."""
        stuck = self.pool.held_longer_than(self.settings.request_deadline * 2)
        return len(stuck) >= self.settings.pool_max_size


class LifespanState(TypedDict):
    omnimember: AppState
