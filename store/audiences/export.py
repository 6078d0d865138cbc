"""Members of an audience as CSV or NDJSON lines, fetched in id batches.

The ids are already in the process (decoded from result chunks, see store.audiences.engine); rows are read
`BATCH` ids at a time with `id = ANY(:ids)`, rendered at once and handed out in chunks of at most
`CHUNK_CHARS` characters, so memory holds the id array and one batch's text, however large the
audience, and a reader that takes its time holds no connection (each batch's connection goes back
before its first chunk is handed out). Fields: `id`, `brand`, `tier`, `status`, `city`,
`pointsBalance`, `maskedPhone` and `channel:<c>` (the member's external ids on channel c; in CSV
joined with `|`, in NDJSON a list, under the key `channel:<c>`).

CSV cells that a spreadsheet would read as a formula (text starting with `=`, `+`, `-`, `@`, a tab or
a carriage return: OWASP's list for CSV injection) are written quoted with a `'` in front, which
spreadsheet programs show as text; NDJSON is data for programs and stays exactly as stored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by

from store.audiences.reach import check_touch
from store.errors import DomainError, ErrorCode
from store.sql import Query, Row
from store.tables import CHANNELS, member_identities, members

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

BATCH = 1_000  # ids per statement: a slow reader holds one batch's text at most
CHUNK_CHARS = 65_536  # characters per chunk handed out (a single longer line goes alone)
_MAX_ID_DIGITS = 19  # of a bigint
_ROWLESS = {"id", "brand"}
_SENTINEL = -123456789  # stands for the id while a line template is rendered
FORMATS = ("csv", "ndjson")
DEFAULT_FIELDS = ("id", "tier", "maskedPhone")
_CHANNEL = "channel:"
_COLUMNS: dict[str, str] = {
    "id": "id",
    "tier": "tier",
    "status": "status",
    "city": "city",
    "pointsBalance": "points_balance",
    "maskedPhone": "phone_masked",
}
FIELDS = ("id", "brand", *[name for name in _COLUMNS if name != "id"])

Connect = Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]]

_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))
_identities = (
    sa.select(
        sa.func.json_agg(
            aggregate_order_by(
                sa.func.json_build_array(member_identities.c.channel, member_identities.c.external_id),
                member_identities.c.id,
            )
        )
    )
    .where(
        member_identities.c.member_id == members.c.id,
        member_identities.c.channel == sa.any_(sa.bindparam("channels", type_=ARRAY(sa.Text))),
    )
    .scalar_subquery()
    .label("identities")
)
# The brand condition is redundant for ids taken from the brand's index; it keeps a mistake from
# ever exporting another brand's members.
# Erased members never leave (store.members.erasure): `without_erased` drops them from the ids first.
_rows = sa.select(*(members.c[column] for column in _COLUMNS.values())).where(
    members.c.id == sa.any_(_IDS), members.c.brand_id == sa.bindparam("brand_id"), members.c.erased_at.is_(None)
)
_batch = Query(_rows.order_by(members.c.id))
_batch_with_identities = Query(_rows.add_columns(_identities).order_by(members.c.id))
_erased = Query(
    sa.select(members.c.id).where(members.c.brand_id == sa.bindparam("brand_id"), members.c.erased_at.is_not(None))
)


@dataclasses.dataclass(frozen=True, slots=True)
class Layout:
    """What each line holds, in order, and how lines are written."""

    fields: tuple[str, ...]
    format: str
    touch: str | None = None
    """A touch channel: leave out members who may not be contacted on it (store.audiences.reach)."""

    @property
    def channels(self) -> list[str]:
        return [field.removeprefix(_CHANNEL) for field in self.fields if field.startswith(_CHANNEL)]


def layout(format: str | None, fields: str | None, touch: str | None = None) -> Layout:
    """Check the export's parameters; INVALID_INPUT naming `format`, `fields` or `touch` and the bad item."""
    chosen = format or "csv"
    if chosen not in FORMATS:
        raise DomainError(ErrorCode.INVALID_INPUT, f"format must be csv or ndjson, not {chosen!r}", field="format")
    names = tuple(name.strip() for name in fields.split(",")) if fields else DEFAULT_FIELDS
    for position, name in enumerate(names, start=1):
        if name not in FIELDS and not (name.startswith(_CHANNEL) and name.removeprefix(_CHANNEL) in CHANNELS):
            known = ", ".join([*FIELDS, *(f"{_CHANNEL}{c}" for c in CHANNELS)])
            message = f"unknown field {name!r} (item {position} of fields); known: {known}"
            raise DomainError(ErrorCode.INVALID_INPUT, message, field="fields")
    if len(set(names)) != len(names):
        raise DomainError(ErrorCode.INVALID_INPUT, "a field is listed twice", field="fields")
    return Layout(names, chosen, check_touch(touch))


async def without_erased(
    conn: AsyncConnection[Any], brand_id: int, ids: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """``ids`` less the brand's erased members (a frozen snapshot keeps their ids; its export does
    not list them, and the count it announces is what it sends)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    erased = np.fromiter((row["id"] for row in await _erased.all(conn, brand_id=brand_id)), dtype=np.int64)
    return ids[~np.isin(ids, erased)] if erased.size else ids


async def member_rows(
    conn: AsyncConnection[Any], brand_id: int, ids: Sequence[int], channels: Sequence[str]
) -> list[Row]:
    """One statement: the brand's members with these ids, ascending, with identities of `channels` if any."""
    if channels:
        return await _batch_with_identities.all(conn, ids=list(ids), brand_id=brand_id, channels=list(channels))
    return await _batch.all(conn, ids=list(ids), brand_id=brand_id)


async def lines(
    connect: Connect,
    ids: npt.NDArray[np.int64],
    brand: Row,
    chosen: Layout,
    *,
    batch: int | None = None,
) -> AsyncGenerator[str, None]:
    """The export in text chunks of at most CHUNK_CHARS characters (a header first for CSV); one
    connection per batch, given back before the batch's first chunk is handed out."""
    import numpy as np  # lazily: a count needs none (issue 16)

    size = batch or BATCH
    render = _csv if chosen.format == "csv" else _ndjson
    if chosen.format == "csv":
        yield _csv_line(chosen.fields)
    template = _rowless_template(chosen, brand["code"])
    if template is not None:  # nothing to read: lines straight from the ids
        before, after = template
        step = max(1, CHUNK_CHARS // (len(before) + len(after or "") + _MAX_ID_DIGITS))
        for start in range(0, ids.size, step):
            yield rowless_lines(np.sort(ids[start : start + step]), before, after)
        return
    for start in range(0, ids.size, size):
        async with connect() as conn:
            rows = await member_rows(conn, brand["id"], ids[start : start + size].tolist(), chosen.channels)
        rendered = [render(_record(row, brand["code"], chosen)) for row in rows]
        del rows  # only the text waits for the reader
        for chunk in chunks(rendered):
            yield chunk


def chunks(rendered: Iterable[str], limit: int | None = None) -> Iterator[str]:
    """Lines joined into chunks of at most ``limit`` (default CHUNK_CHARS) characters; a longer
    line is a chunk of its own."""
    most = limit or CHUNK_CHARS
    pending: list[str] = []
    size = 0
    for line in rendered:
        if pending and size + len(line) > most:
            yield "".join(pending)
            pending, size = [], 0
        pending.append(line)
        size += len(line)
    if pending:
        yield "".join(pending)


def _record(row: Row, brand_code: str, chosen: Layout) -> dict[str, Any]:
    by_channel: dict[str, list[str]] = {}
    for channel, external_id in row.get("identities") or ():
        by_channel.setdefault(channel, []).append(external_id)
    record: dict[str, Any] = {}
    for field in chosen.fields:
        if field == "brand":
            record[field] = brand_code
        elif field.startswith(_CHANNEL):
            record[field] = by_channel.get(field.removeprefix(_CHANNEL), [])
        else:
            record[field] = row[_COLUMNS[field]]
    return record


def _ndjson(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def _csv(record: dict[str, Any]) -> str:
    return _csv_line(["|".join(v) if isinstance(v, list) else ("" if v is None else v) for v in record.values()])


# What makes a spreadsheet program read a cell as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_QUOTED = (",", '"', "\r", "\n")


def _csv_line(values: Sequence[Any]) -> str:
    """One CSV line (RFC 4180, `\\n`-terminated, quoted only where needed, as the csv module
    writes), with formula-like text neutralised."""
    if len(values) == 1 and values[0] == "":
        return '""\n'  # an empty line would read as no row at all
    return ",".join(_csv_cell(value) for value in values) + "\n"


def _csv_cell(value: Any) -> str:
    if not isinstance(value, str):
        return str(value)
    if value.startswith(FORMULA_STARTS):
        return "\"'" + value.replace('"', '""') + '"'
    if any(special in value for special in _QUOTED):
        return '"' + value.replace('"', '""') + '"'
    return value


def _rowless_template(chosen: Layout, brand_code: str) -> tuple[str, str | None] | None:
    """For fields that need no member row, a line as (text before the id, text after it; None
    without an id), rendered by the row path's own renderer so both paths write the same bytes."""
    if not set(chosen.fields) <= _ROWLESS:
        return None
    row = {"id": _SENTINEL}
    line = (_csv if chosen.format == "csv" else _ndjson)(_record(row, brand_code, chosen))
    before, found, after = line.partition(str(_SENTINEL))
    return (before, after) if found else (line, None)


def rowless_lines(ids: npt.NDArray[np.int64], before: str, after: str | None) -> str:
    """``before + str(id) + after`` for every id, built with numpy: 4M ids in tens of milliseconds,
    where formatting them one by one takes a second. Ids are ascending, so the ids of each decimal
    width form one run and become one block of fixed-width rows."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if after is None:  # the same line for every member
        return before * ids.size
    if not before.isascii() or not after.isascii():
        return "".join(f"{before}{member_id}{after}" for member_id in ids.tolist())
    head, tail = np.frombuffer(before.encode(), np.uint8), np.frombuffer(after.encode(), np.uint8)
    powers = 10 ** np.arange(_MAX_ID_DIGITS, dtype=np.int64)
    bounds = np.searchsorted(ids, powers[1:])  # where each width starts
    blocks = []
    start = 0
    for width, end in enumerate([*bounds.tolist(), ids.size], start=1):
        run = ids[start:end]
        start = end
        if run.size == 0:
            continue
        digits = (run[:, None] // powers[width - 1 :: -1]) % 10 + ord("0")
        block = np.empty((run.size, head.size + width + tail.size), np.uint8)
        block[:, : head.size] = head
        block[:, head.size : head.size + width] = digits
        block[:, head.size + width :] = tail
        blocks.append(block.tobytes())
    return b"".join(blocks).decode("ascii")
