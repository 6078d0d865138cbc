"""Personal data as the caller may see it (store.access.pii): clear for roles with CLEAR_PII, each
member so read noted for the audit log; masked for the others; channel ids as per-caller
pseudonyms for partners."""

from __future__ import annotations

import datetime as dt

from resolvers.context import Info
from store.access.pii import mask_name, pseudonym


def name(info: Info, member_id: int, value: str | None) -> str | None:
    if value is None:
        return None
    if info.context.principal.clear_pii:
        info.context.clear_reads.add(member_id)
        return value
    return mask_name(value)


def birthday(info: Info, member_id: int, value: dt.date | None) -> dt.date | None:
    if value is None or not info.context.principal.clear_pii:
        return None
    info.context.clear_reads.add(member_id)
    return value


def channel_id(info: Info, member_id: int | None, channel: str, value: str) -> str:
    principal = info.context.principal
    if principal.pseudonymous_ids:
        return pseudonym(principal.pseudonym_key, channel, value)
    if principal.clear_pii and member_id is not None:
        info.context.clear_reads.add(member_id)
    return value
