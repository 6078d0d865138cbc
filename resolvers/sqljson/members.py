"""The member profile graph in SQL: Member and what a profile read selects under it.

Each function mirrors a strawberry type in schema/ (same fields, same order rules, same nulls);
a field without a case here sends the whole request down the general path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from graphql import SelectionSetNode

from resolvers import cursors
from resolvers.members import MAX_PAGE as MEMBER_PAGE
from resolvers.points import MAX_PAGE as HISTORY_PAGE
from resolvers.sqljson.compiler import Compiler, Needs, Params
from resolvers.sqljson.connections import Page, Shape, connection
from resolvers.sqljson.json_sql import (
    decimal_text,
    enum_name,
    id_text,
    iso_datetime,
    json_list,
    json_object,
    text,
)
from resolvers.sqljson.selection import NotCompilable, Selected
from store.access.pii import mask_name_sql
from store.members.profiles import brand_keyset
from store.tables import (
    brand_tiers,
    brands,
    groups,
    member_identities,
    member_tags,
    members,
    points_entries,
    tag_definitions,
)
from store.tags.catalog import unexpired

Columns = Any  # an aliased table's column collection

_MEMBER_SCALARS: dict[str, Callable[[Columns], sa.ColumnElement[Any]]] = {
    "id": lambda m: id_text(m.id),
    "status": lambda m: enum_name(m.status),
    "pointsBalance": lambda m: m.points_balance,
    "growthValue": lambda m: m.growth_value,
    # Compiled plans answer only callers who see personal data masked (api.graphql_app).
    "displayName": lambda m: mask_name_sql(m.display_name),
    "gender": lambda m: enum_name(m.gender),
    "birthday": lambda m: sa.null(),
    "birthMonth": lambda m: sa.cast(sa.extract("month", m.birthday), sa.Integer),
    "city": lambda m: m.city,
    "registeredAt": lambda m: iso_datetime(m.registered_at),
    "firstPurchaseAt": lambda m: iso_datetime(m.first_purchase_at),
    "lastPurchaseAt": lambda m: iso_datetime(m.last_purchase_at),
    "orderCount": lambda m: m.order_count,
    "totalSpend": lambda m: decimal_text(m.total_spend),
    "maskedPhone": lambda m: m.phone_masked,
    "mergedAt": lambda m: iso_datetime(m.merged_at),
    "erasedAt": lambda m: iso_datetime(m.erased_at),
}
MEMBERS_PAGE = Shape("MemberConnection", "MemberEdge", "PageInfo", "member", descending=False)
HISTORY = Shape("PointsEntryConnection", "PointsEntryEdge", "HistoryPageInfo", "entry", descending=True)
_NO_KEY = 9223372036854775807  # above every bigint id: "no cursor" in `id < coalesce(:before, ...)`


def _member_rows(c: Compiler) -> tuple[Any, Any, sa.Select[Any]]:
    """Aliases of members and their tier, and a select over the join (columns added by callers)."""
    m, t = c.alias(members), c.alias(brand_tiers)
    joined = m.join(t, sa.and_(t.c.brand_id == m.c.brand_id, t.c.code == m.c.tier))
    return m, t, sa.select().select_from(joined)


def member_object(c: Compiler, selection_sets: list[SelectionSetNode], m: Any, t: Any) -> sa.ColumnElement[Any]:
    pairs = [(field.key, _member_field(c, field, m, t)) for field in c.fields(selection_sets, "Member")]
    return json_object(pairs)


def _member_field(c: Compiler, field: Selected, m: Any, t: Any) -> sa.ColumnElement[Any]:
    scalar = _MEMBER_SCALARS.get(field.name)
    if scalar is not None:
        return scalar(m.c)
    match field.name:
        case "__typename":
            return text("Member")
        case "tier":
            return _tier_object(c, field.subselection(), t.c)
        case "brand":
            return brand_by_id(c, field.subselection(), m.c.brand_id)
        case "identities":
            return _identities(c, field, m.c.id)
        case "person":
            return _person(c, field, m.c)
        case "mergedInto":
            return member_by_id(c, field.subselection(), m.c.merged_into)
        case "pointsHistory":
            return _points_history(c, field, m.c.id)
        case "tags":
            return _tags(c, field, m.c.id)
    raise NotCompilable(f"Member.{field.name}")


def member_by_id(c: Compiler, selection_sets: list[SelectionSetNode], member_id: Any) -> sa.ColumnElement[Any]:
    """The member with this id as an object, or null."""
    m, t, rows = _member_rows(c)
    found = rows.add_columns(member_object(c, selection_sets, m, t)).where(
        m.c.id == member_id, c.in_scope(m.c.brand_id)
    )
    return found.correlate_except(m, t).scalar_subquery()


def _tier_object(c: Compiler, selection_sets: list[SelectionSetNode], t: Columns) -> sa.ColumnElement[Any]:
    values = {"__typename": text("Tier"), "code": t.code, "name": t.name, "rank": t.rank}
    return json_object([(f.key, _pick(values, "Tier", f)) for f in c.fields(selection_sets, "Tier")])


def brand_by_id(c: Compiler, selection_sets: list[SelectionSetNode], brand_id: Any) -> sa.ColumnElement[Any]:
    b = c.alias(brands)
    pairs = []
    for field in c.fields(selection_sets, "Brand"):
        match field.name:
            case "group":
                pairs.append((field.key, _group_by_id(c, field.subselection(), b.c.group_id)))
            case "tiers":
                pairs.append((field.key, _tiers_of(c, field.subselection(), b.c.id)))
            case _:
                values = {
                    "__typename": text("Brand"),
                    "id": id_text(b.c.id),
                    "code": b.c.code,
                    "name": b.c.name,
                    "createdAt": iso_datetime(b.c.created_at),
                }
                pairs.append((field.key, _pick(values, "Brand", field)))
    return sa.select(json_object(pairs)).where(b.c.id == brand_id).correlate_except(b).scalar_subquery()


def _group_by_id(c: Compiler, selection_sets: list[SelectionSetNode], group_id: Any) -> sa.ColumnElement[Any]:
    g = c.alias(groups)
    values = {"__typename": text("Group"), "id": id_text(g.c.id), "code": g.c.code, "name": g.c.name}
    pairs = [(f.key, _pick(values, "Group", f)) for f in c.fields(selection_sets, "Group")]
    return sa.select(json_object(pairs)).where(g.c.id == group_id).correlate_except(g).scalar_subquery()


def _tiers_of(c: Compiler, selection_sets: list[SelectionSetNode], brand_id: Any) -> sa.ColumnElement[Any]:
    t = c.alias(brand_tiers)
    element = _tier_object(c, selection_sets, t.c)
    listed = json_list(element, (t.c.rank,))
    return sa.select(listed).where(t.c.brand_id == brand_id).correlate_except(t).scalar_subquery()


def _identities(c: Compiler, field: Selected, member_id: Any) -> sa.ColumnElement[Any]:
    i = c.alias(member_identities)
    c.channel_ids = True
    values = {
        "__typename": text("Identity"),
        "channel": enum_name(i.c.channel),
        "externalId": i.c.external_id,
        "boundAt": iso_datetime(i.c.bound_at),
    }
    element = json_object([(f.key, _pick(values, "Identity", f)) for f in c.subfields(field, "Identity")])
    listed = json_list(element, (i.c.bound_at, i.c.id))
    return sa.select(listed).where(i.c.member_id == member_id).correlate_except(i).scalar_subquery()


def _tags(c: Compiler, field: Selected, member_id: Any) -> sa.ColumnElement[Any]:
    """Unexpired assignments, by category then code (store.tags.assignments.tags_by_member)."""
    mt, td = c.alias(member_tags), c.alias(tag_definitions)
    values = {
        "__typename": text("MemberTag"),
        "code": td.c.code,
        "name": td.c.name,
        "category": enum_name(td.c.category),
        "source": mt.c.source,
        "assignedAt": iso_datetime(mt.c.assigned_at),
        "expiresAt": iso_datetime(mt.c.expires_at),
        "ruleVersion": mt.c.rule_version,
        "computedAt": iso_datetime(mt.c.computed_at),
    }
    element = json_object([(f.key, _pick(values, "MemberTag", f)) for f in c.subfields(field, "MemberTag")])
    return (
        sa.select(json_list(element, (td.c.category, td.c.code)))
        .select_from(mt.join(td, td.c.id == mt.c.tag_id))
        .where(mt.c.member_id == member_id, unexpired(mt))
        .correlate_except(mt, td)
        .scalar_subquery()
    )


def _person(c: Compiler, field: Selected, m: Columns) -> sa.ColumnElement[Any]:
    """Null without a phone; else the key and the live members sharing the phone in the group."""
    b = c.alias(brands)
    group_id = sa.select(b.c.group_id).where(b.c.id == m.brand_id).correlate_except(b).scalar_subquery()
    pairs = []
    for person_field in c.subfields(field, "Person"):
        match person_field.name:
            case "__typename":
                pairs.append((person_field.key, text("Person")))
            case "key":  # schema.member.Person.key
                raw = sa.func.int8send(group_id).op("||")(sa.func.substr(m.phone_hash, 1, 16))
                encoded = sa.func.encode(raw, text("base64"))
                pairs.append((person_field.key, sa.func.translate(encoded, text("+/\n"), text("-_"), type_=sa.Text)))
            case "memberships":
                pairs.append((person_field.key, _memberships(c, person_field, m, group_id)))
            case _:
                raise NotCompilable(f"Person.{person_field.name}")
    return sa.case((m.phone_hash.is_(None), sa.null()), else_=json_object(pairs))


def _memberships(c: Compiler, field: Selected, m: Columns, group_id: Any) -> sa.ColumnElement[Any]:
    other, tier, rows = _member_rows(c)
    b = c.alias(brands)
    element = member_object(c, field.subselection(), other, tier)
    return (
        rows.add_columns(json_list(element, (other.c.brand_id, other.c.id)))
        .join(b, b.c.id == other.c.brand_id)
        .where(
            other.c.phone_hash == m.phone_hash,
            b.c.group_id == group_id,
            other.c.merged_into.is_(None),
            other.c.id != m.id,
            c.in_scope(other.c.brand_id),
        )
        .correlate_except(other, tier, b)
        .scalar_subquery()
    )


def _points_history(c: Compiler, field: Selected, member_id: Any) -> sa.ColumnElement[Any]:
    e = c.alias(points_entries)
    first, before, has_previous = c.param(sa.Integer), c.param(sa.BigInteger), c.param(sa.Boolean)

    async def bind(args: Mapping[str, Any], needs: Needs) -> Params:
        after = args.get("after")
        before_id = cursors.decode(after, "entry", 1)[0] if after is not None else None
        return {
            first.key: cursors.check_first(args["first"], HISTORY_PAGE),
            before.key: before_id,
            has_previous.key: after is not None,
        }

    c.bind("Member", field, bind)
    rows = sa.select().where(e.c.member_id == member_id, e.c.id < sa.func.coalesce(before, _NO_KEY)).correlate_except(e)
    values = {
        "__typename": text("PointsEntry"),
        "id": id_text(e.c.id),
        "kind": enum_name(e.c.kind),
        "amount": e.c.amount,
        "balanceAfter": e.c.balance_after,
        "note": e.c.note,
        "createdAt": iso_datetime(e.c.created_at),
        "postingId": id_text(e.c.posting_id),
    }

    def node(selection_sets: list[SelectionSetNode]) -> sa.ColumnElement[Any]:
        return json_object([(f.key, _pick(values, "PointsEntry", f)) for f in c.fields(selection_sets, "PointsEntry")])

    return connection(c, field, HISTORY, Page(rows, e.c.id, first, has_previous), node)


def members_page(c: Compiler, field: Selected) -> sa.ColumnElement[Any]:
    """Query.members: a brand's live members in id order (selections by audience take the general path)."""
    given = {argument.name.value for node in field.nodes for argument in node.arguments or ()}
    if not given <= {"brand", "first", "after"}:
        raise NotCompilable(f"members({', '.join(sorted(given))})")
    m, t, rows = _member_rows(c)
    brand_id, first, after_id = c.param(sa.BigInteger), c.param(sa.Integer), c.param(sa.BigInteger)
    has_previous = c.param(sa.Boolean)

    async def bind(args: Mapping[str, Any], needs: Needs) -> Params:
        after = args.get("after")
        return {
            first.key: cursors.check_first(args["first"], MEMBER_PAGE),
            after_id.key: cursors.decode(after, "member", 1)[0] if after is not None else None,
            has_previous.key: after is not None,
            brand_id.key: await needs.brands.id_of(needs.pool, args["brand"]),
        }

    c.bind("Query", field, bind)
    in_brand, order = brand_keyset(m, brand_id, after_id)
    rows = rows.where(in_brand, m.c.merged_into.is_(None))
    counted = c.alias(members)
    total = (
        sa.select(sa.func.count())
        .where(counted.c.brand_id == brand_id, counted.c.merged_into.is_(None))
        .scalar_subquery()
    )
    return connection(
        c,
        field,
        MEMBERS_PAGE,
        Page(rows, m.c.id, first, has_previous, order),
        lambda selection_sets: member_object(c, selection_sets, m, t),
        extra={"totalCount": total},
    )


def member_root(c: Compiler, field: Selected) -> sa.ColumnElement[Any]:
    """Query.member(id): unparseable ids name no member, as on the general path."""
    member_id = c.param(sa.BigInteger)

    async def bind(args: Mapping[str, Any], needs: Needs) -> Params:
        return {member_id.key: cursors.parse_id(args["id"])}

    c.bind("Query", field, bind)
    return member_by_id(c, field.subselection(), member_id)


def _pick(values: Mapping[str, sa.ColumnElement[Any]], type_name: str, field: Selected) -> sa.ColumnElement[Any]:
    value = values.get(field.name)
    if value is None:
        raise NotCompilable(f"{type_name}.{field.name}")
    return value
