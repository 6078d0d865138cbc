"""Which capability each field of the schema needs: the one table every request is checked against.

Keys are schema coordinates: ``Type.field`` for one field, ``Type`` for every field of a type that
has no entry of its own. None means any authenticated caller (still within its brand scope, which
the resolvers apply). A document is refused before anything runs when it selects a field its
caller's role lacks the capability for, whichever path then answers it (compiled read, planned
mutation or strawberry), so the check is the same everywhere. tests/test_permissions.py fails when
a type or a root field has no entry here.
"""

from __future__ import annotations

from collections.abc import Iterable

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    get_named_type,
    visit,
)

from resolvers.domain import Capability, Principal
from schema.documents import Checked

C = Capability
RULES: dict[str, Capability | None] = {
    # Roots: every field named, so a new one cannot slip in under a type-level default.
    "Query.brands": None,
    "Query.member": C.READ_MEMBERS,
    "Query.memberByIdentity": C.READ_MEMBERS,
    "Query.memberByPhone": C.READ_MEMBERS,
    "Query.memberMerge": C.READ_MEMBERS,
    "Query.members": C.LIST_MEMBERS,
    "Query.audience": C.AUDIENCES,
    "Query.savedAudiences": C.AUDIENCES,
    "Query.savedAudience": C.AUDIENCES,
    "Query.compareSnapshots": C.AUDIENCES,
    "Query.channelOverlap": C.AUDIENCES,
    "Query.brandOverlap": C.AUDIENCES,
    "Query.tags": C.READ_TAGS,
    "Query.auditLog": C.READ_AUDIT,
    "Query.lifecycleTransitions": C.AUDIENCES,
    # Federation (schema/federation.py): entities are members, read as `member` reads them; the SDL is
    # for the operator who adds the subgraph to a supergraph (docs/federation.md).
    "Query._entities": C.READ_MEMBERS,
    "Query._service": C.MANAGE_BRANDS,
    "Mutation.createBrand": C.MANAGE_BRANDS,
    "Mutation.registerMember": C.WRITE_MEMBERS,
    "Mutation.bindIdentity": C.WRITE_MEMBERS,
    "Mutation.mergeMembers": C.MERGE_MEMBERS,
    "Mutation.unmergeMembers": C.MERGE_MEMBERS,
    "Mutation.eraseMember": C.ERASE_MEMBERS,
    "Mutation.earnPoints": C.WRITE_POINTS,
    "Mutation.redeemPoints": C.WRITE_POINTS,
    "Mutation.cancelRedemption": C.WRITE_POINTS,
    "Mutation.adjustPoints": C.WRITE_POINTS,
    "Mutation.recordOrder": C.WRITE_POINTS,
    "Mutation.refundOrder": C.WRITE_POINTS,
    "Mutation.defineTag": C.WRITE_TAGS,
    "Mutation.tagMembers": C.WRITE_TAGS,
    "Mutation.untagMembers": C.WRITE_TAGS,
    "Mutation.setTagRule": C.WRITE_TAGS,
    "Mutation.saveAudience": C.AUDIENCES,
    "Mutation.refreshAudience": C.AUDIENCES,
    "Mutation.setConsent": C.WRITE_MEMBERS,
    "Mutation.setGuardianConsent": C.WRITE_MEMBERS,
    "Mutation.setLifecycleRules": C.MANAGE_BRANDS,
    # Members and what hangs off them.
    "Member": C.READ_MEMBERS,
    "Member.pointsHistory": C.READ_POINTS,
    "Member.orders": C.READ_POINTS,
    "Member.expiringPoints": C.READ_POINTS,
    "Member.tierHistory": C.READ_POINTS,
    "Member.tags": C.READ_TAGS,
    "MemberConnection": None,
    "MemberEdge": None,
    "Identity": C.READ_MEMBERS,
    "MovedIdentity": C.READ_MEMBERS,
    "Person": C.READ_MEMBERS,
    "MemberMerge": C.READ_MEMBERS,
    "MemberRegistered": None,
    "IdentityBound": None,
    "MembersMerged": None,
    "MembersUnmerged": None,
    "ChannelIdentity": C.READ_MEMBERS,
    "Consent": C.READ_MEMBERS,
    "ConsentRecorded": None,
    "MemberErased": None,
    # Points and orders.
    "PointsEntry": C.READ_POINTS,
    "PointsEntryConnection": C.READ_POINTS,
    "PointsEntryEdge": C.READ_POINTS,
    "PointsPosting": C.READ_POINTS,
    "Order": C.READ_POINTS,
    "OrderConnection": C.READ_POINTS,
    "OrderEdge": C.READ_POINTS,
    "ExpiringPoints": C.READ_POINTS,
    "ExpiringLot": C.READ_POINTS,
    "TierChange": C.READ_POINTS,
    "PointsPosted": None,
    "OrderRecorded": None,
    "OrderRefunded": None,
    # Tags.
    "TagDefinition": C.READ_TAGS,
    "MemberTag": C.READ_TAGS,
    "TagDefined": None,
    "MembersTagged": None,
    "MembersUntagged": None,
    "TagRuleSet": None,
    "TagRuleVersion": C.READ_TAGS,
    "RuleTagFreshness": C.READ_TAGS,
    # Audiences.
    "Audience": C.AUDIENCES,
    "AudienceExplain": C.AUDIENCES,
    "FunnelStep": C.AUDIENCES,
    "BreakdownValue": C.AUDIENCES,
    "WhyMember": C.AUDIENCES,
    "WhyNode": C.AUDIENCES,
    "SavedAudience": C.AUDIENCES,
    "AudienceSnapshot": C.AUDIENCES,
    "SnapshotComparison": C.AUDIENCES,
    "AudienceSaved": None,
    "AudienceRefreshed": None,
    "Reach": C.AUDIENCES,
    # Lifecycle: a member's stages are read as the member is; transitions are an audience; the
    # brand's rules and the stages' freshness are open, as the brand and its index's freshness are.
    "StageChange": C.READ_MEMBERS,
    "LifecycleTransitions": C.AUDIENCES,
    "LifecycleTransitionPair": C.AUDIENCES,
    "LifecycleRules": None,
    "LifecycleRulesSet": None,
    "LifecycleFreshness": None,
    # RFM thresholds are open as the lifecycle rules are (what `rfm:<cell>` means, no member data).
    "RfmThresholds": None,
    "RfmCell": None,
    "RfmScores": C.READ_MEMBERS,
    "ChannelOverlap": C.AUDIENCES,
    "ChannelShare": C.AUDIENCES,
    "ChannelPair": C.AUDIENCES,
    "BrandOverlap": C.AUDIENCES,
    "BrandShare": C.AUDIENCES,
    "BrandPair": C.AUDIENCES,
    # The audit log.
    "AuditEntry": C.READ_AUDIT,
    "AuditEntryConnection": C.READ_AUDIT,
    "AuditEntryEdge": C.READ_AUDIT,
    # Open to every caller: brands in scope, pages, freshness and every typed error.
    "Brand": None,
    "BrandCreated": None,
    "Group": None,
    "Tier": None,
    "IndexFreshness": None,
    "PageInfo": None,
    "HistoryPageInfo": None,
    "Error": None,
    "_Service": None,
}


def rule(type_name: str, field_name: str, is_error: bool = False) -> Capability | None:
    coordinate = f"{type_name}.{field_name}"
    if coordinate in RULES:
        return RULES[coordinate]
    if type_name in RULES:
        return RULES[type_name]
    if is_error:
        return None
    raise LookupError(f"no permission rule for {coordinate}")


class Permissions:
    """The capabilities a checked document needs, and the refusal of a caller who lacks one."""

    def __init__(self, schema: GraphQLSchema) -> None:
        self._schema = schema
        self._errors = {t.name for t in schema.type_map.values() if _implements_error(t)}

    def refusal(self, principal: Principal, checked: Checked) -> GraphQLError | None:
        """FORBIDDEN naming the first field the caller may not select, or None. ``checked`` passed the
        document checks; what it needs is worked out once and kept on it (Documents remembers it)."""
        assert checked.document is not None
        if checked.needs is None:
            checked.needs = tuple(self._needs_of(checked.document))
        for capability, coordinate in checked.needs:
            if not principal.may(capability):
                return GraphQLError(
                    f"a {principal.role} key may not select {coordinate} (it needs {capability})",
                    extensions={"code": "FORBIDDEN", "field": coordinate, "needs": str(capability)},
                )
        return None

    def _needs_of(self, document: DocumentNode) -> Iterable[tuple[Capability, str]]:
        found: dict[str, Capability] = {}
        type_info = TypeInfo(self._schema)
        errors = self._errors

        class Collect(Visitor):
            def enter_field(self, node: FieldNode, *_: object) -> None:
                parent = type_info.get_parent_type()
                name = node.name.value
                if parent is None or name.startswith("__"):
                    return
                parent_name = get_named_type(parent).name
                if parent_name.startswith("__"):  # introspection: its own switch (settings)
                    return
                capability = rule(parent_name, name, parent_name in errors)
                if capability is not None:
                    found.setdefault(f"{parent_name}.{name}", capability)

        visit(document, TypeInfoVisitor(type_info, Collect()))
        return [(capability, coordinate) for coordinate, capability in found.items()]


def _implements_error(named: object) -> bool:
    interfaces = getattr(named, "interfaces", None) or []
    return any(i.name == "Error" for i in interfaces)
