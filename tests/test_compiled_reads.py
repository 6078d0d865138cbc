"""Profile reads through both read paths, checked against the data rather than only against each other.

The HTTP endpoint answers a profile read from one compiled statement (resolvers.sqljson) when it can
and from strawberry's resolvers otherwise. `firstPurchaseAt` is the earliest order's `paidAt` and
`lastPurchaseAt` the latest's, whatever order they arrived in (with one order per member, as in the
other fixtures, the two coincide); `person.memberships` lists the person's live members in the
group's other brands, each once (a group of two brands hides a wrong join).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from resolvers.sqljson import Plans
from tests.conftest import GraphQL, new_brand, unique_code
from tests.fragments import RECORD_ORDER, REGISTER

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
PROFILE = "query($id: ID!) { member(id: $id) { id firstPurchaseAt lastPurchaseAt orderCount } }"
PAGE = """query($brand: String!) { members(brand: $brand, first: 10) {
  nodes { id firstPurchaseAt lastPurchaseAt orderCount } } }"""


@contextlib.contextmanager
def general_path() -> Iterator[None]:
    """Every plan declines, so strawberry's resolvers answer."""

    async def declined(self: Plans, plan: Any, variables: Any, needs: Any) -> bytes | None:
        return None

    with mock.patch.object(Plans, "answer", declined):
        yield


@contextlib.contextmanager
def compiled_path() -> Iterator[list[bytes | None]]:
    """Plans answer as usual; the list collects their answers, to show the compiled path was taken."""
    answers: list[bytes | None] = []
    real = Plans.answer

    async def counted(self: Plans, plan: Any, variables: Any, needs: Any) -> bytes | None:
        answers.append(await real(self, plan, variables, needs))
        return answers[-1]

    with mock.patch.object(Plans, "answer", counted):
        yield answers


async def _buyer(gql: GraphQL, brand: str, external_id: str, paid: list[dt.datetime]) -> str:
    data = await gql(REGISTER, brand=brand, channel="pos", externalId=external_id)
    member: str = data["registerMember"]["member"]["id"]
    for n, at in enumerate(paid):
        result = await gql(
            RECORD_ORDER,
            brand=brand,
            channel="pos",
            orderId=f"{external_id}-{n}",
            amount="12.30",
            paidAt=at.isoformat(),
            memberId=member,
        )
        assert result["recordOrder"]["__typename"] == "OrderRecorded", result
    return member


def _dates(member: dict[str, Any]) -> tuple[dt.datetime | None, dt.datetime | None, int]:
    first, last = member["firstPurchaseAt"], member["lastPurchaseAt"]
    return (
        None if first is None else dt.datetime.fromisoformat(first),
        None if last is None else dt.datetime.fromisoformat(last),
        member["orderCount"],
    )


async def _profiles(gql: GraphQL, brand: str, members: list[str]) -> list[Any]:
    """Each member's dates from its profile and from the brand's page, in ``members``' order."""
    profiles = [_dates((await gql(PROFILE, id=member))["member"]) for member in members]
    page = {node["id"]: _dates(node) for node in (await gql(PAGE, brand=brand))["members"]["nodes"]}
    return [*profiles, *(page[member] for member in members)]


async def test_first_and_last_purchase_come_from_the_earliest_and_latest_orders(
    gql: GraphQL, masked_gql: GraphQL, brand: str
) -> None:
    days = [dt.timedelta(days=d) for d in (3, 10, 1)]  # arrive out of order: the middle one first
    member = await _buyer(gql, brand, "card-1", [NOW - d for d in days])
    expected = (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1), 3)
    with compiled_path() as answers:
        assert await _profiles(masked_gql, brand, [member]) == [expected, expected]
    assert len(answers) == 2
    assert None not in answers  # the compiled statement answered both
    with general_path():
        assert await _profiles(masked_gql, brand, [member]) == [expected, expected]


# Per member, its orders as seconds before now (distinct), in the order they are recorded.
histories = st.lists(st.lists(st.integers(0, 10**7), max_size=4, unique=True), min_size=1, max_size=3)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories=histories)
async def test_both_read_paths_serve_the_purchase_range_of_every_member(
    gql: GraphQL, masked_gql: GraphQL, pool: AsyncConnectionPool[Any], histories: list[list[int]]
) -> None:
    brand = await new_brand(pool)
    members, expected = [], []
    for n, seconds in enumerate(histories):
        paid = [NOW - dt.timedelta(seconds=s) for s in seconds]
        members.append(await _buyer(gql, brand, f"card-{n}", paid))
        expected.append((min(paid, default=None), max(paid, default=None), len(paid)))
    with compiled_path() as answers:
        assert await _profiles(masked_gql, brand, members) == expected + expected
    assert None not in answers
    with general_path():
        assert await _profiles(masked_gql, brand, members) == expected + expected


MEMBERSHIPS = "query($id: ID!) { member(id: $id) { id person { memberships { id brand { code } } } } }"


async def test_a_person_in_three_brands_of_a_group_lists_the_other_two_once_each(
    gql: GraphQL, masked_gql: GraphQL, pool: AsyncConnectionPool[Any]
) -> None:
    group = unique_code("g")
    brands = [await new_brand(pool, group) for _ in range(3)]
    ids = []
    for brand in brands:
        data = await gql(REGISTER, brand=brand, channel="pos", externalId="card", phone="13900001234")
        ids.append(data["registerMember"]["member"]["id"])
    stranger = await gql(REGISTER, brand=brands[1], channel="pos", externalId="other", phone="13900005678")
    assert stranger["registerMember"]["__typename"] == "MemberRegistered"
    expected = {
        "id": ids[0],
        "person": {"memberships": [{"id": ids[n], "brand": {"code": brands[n]}} for n in (1, 2)]},
    }
    with compiled_path() as answers:
        assert (await masked_gql(MEMBERSHIPS, id=ids[0]))["member"] == expected
    assert len(answers) == 1
    assert answers[0] is not None  # the compiled statement answered
    with general_path():
        assert (await masked_gql(MEMBERSHIPS, id=ids[0]))["member"] == expected
