"""What the lifespan creates once and every request shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from psycopg_pool import AsyncConnectionPool

from store.brands import BrandDirectory
from store.ledger.batchers import Postings
from store.members.phones import PhoneVault


@dataclass(frozen=True, slots=True)
class AppState:
    pool: AsyncConnectionPool[Any]
    vault: PhoneVault
    brands: BrandDirectory
    postings: Postings
    head_revision: str


class LifespanState(TypedDict):
    omnimember: AppState
