"""Roles: what each kind of caller may do, as one table (README "Keys and roles" prints it).

A capability is a verb over a brand's data; a role is a set of them plus how it sees personal
information. Every GraphQL field and HTTP route names the capability it needs (schema.permissions,
api.auth); a key's role and grants decide whether it has it, its scope decides on which brands.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Capability(enum.StrEnum):
    READ_MEMBERS = "read_members"  # one member at a time: by id, identity or phone
    LIST_MEMBERS = "list_members"  # a brand's members page by page
    WRITE_MEMBERS = "write_members"  # register members, bind identities, set consent
    MERGE_MEMBERS = "merge_members"  # merge and unmerge
    ERASE_MEMBERS = "erase_members"  # erase a member's personal information
    READ_POINTS = "read_points"  # points history, orders, expiring points, tier history
    WRITE_POINTS = "write_points"  # earn, redeem, cancel, adjust, record and refund orders
    READ_TAGS = "read_tags"  # the tag catalog
    WRITE_TAGS = "write_tags"  # define tags, tag and untag members
    AUDIENCES = "audiences"  # counts, samples, breakdowns, saved audiences, snapshots
    EXPORT = "export"  # stream an audience's members out (the export route)
    MANAGE_BRANDS = "manage_brands"  # create brands in the key's groups
    READ_AUDIT = "read_audit"  # the audit log
    CLEAR_PII = "clear_pii"  # phone, name, birthday, address and channel ids in clear (audited)


class Role(enum.StrEnum):
    ADMIN = "admin"
    FRONTEND = "frontend"
    CAMPAIGN = "campaign"
    PARTNER = "partner"
    SUPPORT = "support"


@dataclass(frozen=True, slots=True)
class RoleRules:
    purpose: str
    capabilities: frozenset[Capability]
    grantable: frozenset[Capability] = frozenset()  # extra capabilities a key of the role may be given
    pseudonymous_ids: bool = False  # channel ids become a per-key keyed hash


C = Capability
ROLES: dict[Role, RoleRules] = {
    Role.ADMIN: RoleRules(
        "operators: everything in scope, creates brands and keys; personal data in clear, audited",
        frozenset(C),
    ),
    Role.FRONTEND: RoleRules(
        "the brand's own apps: single members, their points and orders; no audiences, no exports",
        frozenset({C.READ_MEMBERS, C.WRITE_MEMBERS, C.READ_POINTS, C.WRITE_POINTS, C.READ_TAGS}),
    ),
    Role.CAMPAIGN: RoleRules(
        "campaign tools: audiences, counts, saved audiences, exports, tagging; masked profiles",
        frozenset({C.READ_MEMBERS, C.LIST_MEMBERS, C.READ_POINTS, C.READ_TAGS, C.WRITE_TAGS, C.AUDIENCES, C.EXPORT}),
    ),
    Role.PARTNER: RoleRules(
        "external partners: members by identity, masked, channel ids pseudonymous; ledger writes only if granted",
        frozenset({C.READ_MEMBERS, C.READ_POINTS, C.READ_TAGS}),
        grantable=frozenset({C.WRITE_POINTS, C.WRITE_MEMBERS}),
        pseudonymous_ids=True,
    ),
    Role.SUPPORT: RoleRules(
        "customer service: members and their points in clear (every such read audited), fixes and erasure",
        frozenset(
            {
                C.READ_MEMBERS,
                C.LIST_MEMBERS,
                C.WRITE_MEMBERS,
                C.MERGE_MEMBERS,
                C.ERASE_MEMBERS,
                C.READ_POINTS,
                C.READ_TAGS,
                C.CLEAR_PII,
            }
        ),
    ),
}


def capabilities(role: Role, grants: frozenset[Capability] = frozenset()) -> frozenset[Capability]:
    """What a key of ``role`` with ``grants`` may do; a grant the role cannot take is refused."""
    rules = ROLES[role]
    refused = grants - rules.grantable - rules.capabilities
    if refused:
        names = ", ".join(sorted(refused))
        raise ValueError(f"the {role} role cannot be granted {names}")
    return rules.capabilities | grants


def table() -> str:
    """The role table in Markdown (the README's copy is checked against it)."""
    lines = ["| role | may | grantable | personal data |", "|---|---|---|---|"]
    for role, rules in ROLES.items():
        may = ", ".join(sorted(c for c in rules.capabilities if c != C.CLEAR_PII))
        pii = "clear, audited" if C.CLEAR_PII in rules.capabilities else "masked"
        if rules.pseudonymous_ids:
            pii += "; channel ids pseudonymous"
        grantable = ", ".join(sorted(rules.grantable)) or "-"
        lines.append(f"| `{role}` | {may} | {grantable} | {pii} |")
    return "\n".join(lines)
