"""The per-request context every resolver receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool
from strawberry import Info as _Info

from resolvers.limits import RateLimits
from resolvers.loaders import Loaders
from store.access.audit import AuditWriter
from store.access.principals import Principal
from store.brands import ScopedBrands
from store.ledger.batchers import Postings
from store.members.phones import PhoneVault


@dataclass(slots=True)
class Context:
    pool: AsyncConnectionPool[Any]
    vault: PhoneVault
    brands: ScopedBrands  # the directory as the caller sees it: other brands do not exist
    postings: Postings
    request_id: str
    principal: Principal
    audit: AuditWriter
    limits: RateLimits
    loaders: Loaders = field(init=False)
    # Members whose personal data this request read in clear: one audit record when it ends.
    clear_reads: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Fresh loaders per request: their caches must never outlive it.
        self.loaders = Loaders(self.pool, self.brands)


Info = _Info[Context, None]
