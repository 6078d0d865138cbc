"""What the API's arguments may hold, checked as a field converts them, before a resolver runs.

Planned mutations (resolvers.direct) call the same field methods, so both paths refuse alike, and
always as INVALID_INPUT naming the argument (`field`), never as an unexpected error.

- Text: every free-text argument has a maximum length (docs/errors.md#argument-limits). Those the
  data layer checks itself (externalId, displayName, city, idempotencyKey, names, codes) are checked
  there; the ones below had none.
- Money: a Decimal must be a finite number (`NaN`, `sNaN` and `Infinity` parse as Decimals); its range
  and its two decimals are the ledger's rule.
- Days and moments: one range for every Date and DateTime, the days the audience index can hold
  (tagquery.bitmap_keys: 1900-01-01 to 2079-06-06); earlier ones it would clamp, so a count and
  whyMember would disagree. The index files a moment under its day in the brand's time zone, so a
  DateTime must fall inside the range on every zone's calendar: from 1900-01-02T00:00:00Z to
  2079-06-05T23:59:59.999999Z. A DateTime must carry its offset (`Z`, `+08:00`): a time without one
  names no instant, and reading it in some zone would silently shift it by hours. (The one Date,
  a birthday, is checked by the data layer: 1900-01-01 to today, inside the same range.)
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import overload

from resolvers.domain import DomainError, ErrorCode
from tagquery.bitmap_keys import EPOCH, MAX_DAY

REASON = 500  # characters of a posting's or a refund's reason, as a merge's
EXTERNAL_ID = 128  # characters of an order number or a buyer's identity, as a channel identity's
STORE = 64  # characters of an order's store code
GROUP_NAME = 100  # characters of a new group's display name, as a brand's
TIERS = 20  # tiers a new brand may have

FIRST_DAY = EPOCH
LAST_DAY = EPOCH + dt.timedelta(days=MAX_DAY)
EARLIEST = dt.datetime.combine(FIRST_DAY + dt.timedelta(days=1), dt.time.min, dt.UTC)
LATEST = dt.datetime.combine(LAST_DAY - dt.timedelta(days=1), dt.time.max, dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


MOMENTS = f"between {_iso(EARLIEST)} and {_iso(LATEST)}"  # for descriptions and messages
ZONED = "with its offset (`Z`, `+08:00`; one without is refused)"


def invalid(field: str, message: str) -> DomainError:
    return DomainError(ErrorCode.INVALID_INPUT, message, field=field)


@overload
def text(value: str, field: str, most: int) -> str: ...
@overload
def text(value: str | None, field: str, most: int) -> str | None: ...
def text(value: str | None, field: str, most: int) -> str | None:
    """The text without surrounding spaces: 1 to ``most`` characters (None stays None)."""
    if value is None:
        return None
    stripped = value.strip()
    if not 1 <= len(stripped) <= most:
        raise invalid(field, f"{field} must be 1-{most} characters")
    return stripped


def yuan(value: Decimal, field: str) -> Decimal:
    """A finite number; what amounts it may be is the ledger's to say."""
    if not value.is_finite():
        raise invalid(field, f"{field} must be a number of yuan, not {value}")
    return value


def moment(value: dt.datetime, field: str) -> dt.datetime:
    """An instant with its offset, within EARLIEST..LATEST."""
    if value.utcoffset() is None:
        raise invalid(field, f"{field} needs a time zone offset, e.g. 2026-01-02T10:00:00+08:00 or ...Z")
    if not EARLIEST <= value <= LATEST:
        raise invalid(field, f"{field} must be {MOMENTS}")
    return value


def tiers(codes: list[str] | None) -> list[str] | None:
    """At most TIERS tier codes (each code's form is the data layer's rule)."""
    if codes is not None and len(codes) > TIERS:
        raise invalid("tiers", f"a brand has at most {TIERS} tiers")
    return codes
