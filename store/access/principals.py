"""The caller behind a request: its key, role, capabilities and brand scope."""

from __future__ import annotations

from dataclasses import dataclass

from store.access.roles import ROLES, Capability, Role


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int | None  # None: the development mode's built-in key
    key_name: str
    key_prefix: str
    role: Role
    capabilities: frozenset[Capability]
    brand_ids: frozenset[int] | None  # every brand in scope (groups resolved); None: all brands
    group_ids: frozenset[int] | None  # groups named by the key (brands may be created there); None: all
    pseudonym_key: bytes  # keys this caller's pseudonyms of channel ids
    trusted_documents: bool = False  # runs registered documents only (api.persisted)

    def may(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def sees(self, brand_id: int) -> bool:
        return self.brand_ids is None or brand_id in self.brand_ids

    def owns_group(self, group_id: int | None) -> bool:
        """May create brands in this group (None: a new group, which only an all-brands key may)."""
        if self.group_ids is None:
            return True
        return group_id is not None and group_id in self.group_ids

    @property
    def clear_pii(self) -> bool:
        return Capability.CLEAR_PII in self.capabilities

    @property
    def pseudonymous_ids(self) -> bool:
        return ROLES[self.role].pseudonymous_ids
