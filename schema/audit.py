"""The audit log as admins read it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import strawberry
from strawberry.scalars import JSON

from resolvers import audit_log
from resolvers.context import Info
from resolvers.domain import Row
from schema.errors import or_graphql_error
from schema.points import HistoryPageInfo, page_info


@strawberry.type(description="One audited operation: a mutation, an export or a read of personal data in clear.")
class AuditEntry:
    id: strawberry.ID = strawberry.field(description="Record id (increasing).")
    at: dt.datetime = strawberry.field(description="When it was recorded.")
    key_name: str = strawberry.field(description="The name of the API key that did it.")
    role: str = strawberry.field(description="The key's role.")
    operation: str = strawberry.field(description="The mutation, `export` or `read personal data`.")
    target_ids: list[str] = strawberry.field(description="Ids it concerned (members, orders, postings, ...).")
    summary: JSON = strawberry.field(
        description="What changed: the result type, error code, and the arguments, personal ones as `given`."
    )
    request_id: str = strawberry.field(description="The request's id (X-Request-Id), as in the server log.")

    @classmethod
    def from_row(cls, row: Row) -> AuditEntry:
        return cls(
            id=strawberry.ID(str(row["id"])),
            at=row["at"],
            key_name=row["key_name"],
            role=row["role"],
            operation=row["operation"],
            target_ids=row["target_ids"],
            summary=row["summary"],
            request_id=row["request_id"],
        )


@strawberry.type(description="An audit record and its cursor.")
class AuditEntryEdge:
    cursor: str = strawberry.field(description="Opaque position.")
    node: AuditEntry = strawberry.field(description="The record.")


@strawberry.type(description="A brand's audit log, newest first.")
class AuditEntryConnection:
    edges: list[AuditEntryEdge] = strawberry.field(description="Records with cursors.")
    page_info: HistoryPageInfo = strawberry.field(description="Where this page sits.")

    @strawberry.field(description="The records of this page.")
    def nodes(self) -> list[AuditEntry]:
        return [edge.node for edge in self.edges]


async def audit_log_page(info: Info, brand: str, first: int, after: str | None) -> AuditEntryConnection:
    page = await or_graphql_error(audit_log.audit_page(info, brand=brand, first=first, after=after))
    edges = [
        AuditEntryEdge(cursor=c, node=AuditEntry.from_row(r)) for r, c in zip(page.rows, page.cursors, strict=True)
    ]
    return AuditEntryConnection(edges=edges, page_info=page_info(page))


BrandCode = Annotated[str, strawberry.argument(description="Brand code.")]
First = Annotated[int, strawberry.argument(description="Page size, 0-100.")]
After = Annotated[str | None, strawberry.argument(description="`endCursor` of the previous page.")]
