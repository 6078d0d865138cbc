"""The per-request context every resolver receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool
from strawberry import Info as _Info

from resolvers.loaders import Loaders
from store.brands import BrandDirectory
from store.ledger.batchers import Postings
from store.members.phones import PhoneVault


@dataclass(slots=True)
class Context:
    pool: AsyncConnectionPool[Any]
    vault: PhoneVault
    brands: BrandDirectory
    postings: Postings
    request_id: str
    loaders: Loaders = field(init=False)

    def __post_init__(self) -> None:
        # Fresh loaders per request: their caches must never outlive it.
        self.loaders = Loaders(self.pool, self.brands)


Info = _Info[Context, None]
