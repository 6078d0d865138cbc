"""Audit records written from the API: every mutation (`audited`) and every request that read
personal data in clear (`audit_clear_reads`). Records carry ids and a summary, never the data:
arguments holding personal data (phones, names, birthdays, channel ids) are recorded as given."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

from resolvers.context import Context, Info
from store.access import audit
from store.errors import DomainError

PERSONAL_ARGUMENTS = frozenset({"phone", "display_name", "birthday", "city", "external_id", "buyer_id"})
_ID_ARGUMENTS = ("member_id", "survivor_id", "merged_id", "merge_id", "posting_id", "id")
_RESULT_IDS = ("member_id", "order_id", "posting_id", "merge_id", "snapshot_id", "audience_id")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def audited(operation: str) -> Callable[[F], F]:
    """Record each call of a mutation resolver (after it ran, whatever its typed result)."""

    def decorate(resolve: F) -> F:
        @functools.wraps(resolve)
        async def run(*args: Any, **kwargs: Any) -> Any:
            result = await resolve(*args, **kwargs)
            info: Info = kwargs["info"]
            await _record_mutation(info.context, operation, kwargs, result)
            return result

        return run  # type: ignore[return-value]

    return decorate


async def _record_mutation(context: Context, operation: str, arguments: dict[str, Any], result: Any) -> None:
    brand_id = None
    code = arguments.get("brand")
    if isinstance(code, str):
        try:
            brand_id = await context.brands.id_of(context.pool, code)
        except DomainError:
            brand_id = None
    targets = [str(arguments[name]) for name in _ID_ARGUMENTS if arguments.get(name) is not None]
    targets += [str(i) for i in arguments.get("member_ids") or ()][:100]
    targets += [str(getattr(result, name)) for name in _RESULT_IDS if getattr(result, name, None) is not None]
    summary = {
        "result": type(result).__name__,
        "arguments": {name: _summarised(name, value) for name, value in arguments.items() if name != "info"},
    }
    code_of_error = getattr(result, "code", None)
    if code_of_error is not None:
        summary["code"] = str(code_of_error.value if isinstance(code_of_error, Enum) else code_of_error)
    record = audit.entry(
        context.principal,
        operation=operation,
        brand_id=brand_id,
        target_ids=list(dict.fromkeys(targets)),
        summary=summary,
        request_id=context.request_id,
    )
    context.audit.append(record)


def _summarised(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in PERSONAL_ARGUMENTS:
        return "given"
    if isinstance(value, bool | int | str):
        return value if not isinstance(value, str) or len(value) <= 200 else value[:200] + "…"
    if isinstance(value, Decimal | dt.date | dt.datetime):
        return str(value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return f"{len(value)} values"
    return type(value).__name__


async def audit_clear_reads(context: Context) -> None:
    """One record for the members whose personal data this request read in clear."""
    if not context.clear_reads:
        return
    ids = sorted(context.clear_reads)
    context.clear_reads.clear()
    by_brand: dict[int | None, list[int]] = {}
    for member_id, row in zip(ids, await context.loaders.member_by_id.load_many(ids), strict=True):
        by_brand.setdefault(None if row is None else row["brand_id"], []).append(member_id)
    for brand_id, members in by_brand.items():
        record = audit.entry(
            context.principal,
            operation="read personal data",
            brand_id=brand_id,
            target_ids=members,
            summary={"members": len(members)},
            request_id=context.request_id,
        )
        context.audit.append(record)
