"""GraphQL documents shared by the tests."""

from __future__ import annotations

ERROR = "... on Error { __typename code message field }"
MEMBER = """
    id status maskedPhone displayName gender birthday city
    tier { code rank }
    identities { channel externalId }
    mergedInto { id }
"""

REGISTER = f"""
mutation Register($brand: String!, $channel: String!, $externalId: String!, $phone: String,
                  $displayName: String, $gender: Gender, $birthday: Date, $city: String) {{
  registerMember(brand: $brand, channel: $channel, externalId: $externalId, phone: $phone,
                 displayName: $displayName, gender: $gender, birthday: $birthday, city: $city) {{
    __typename
    ... on MemberRegistered {{ outcome member {{ {MEMBER} }} }}
    {ERROR}
  }}
}}
"""

BIND = f"""
mutation Bind($brand: String!, $channel: String!, $externalId: String!, $memberId: ID, $phone: String) {{
  bindIdentity(brand: $brand, channel: $channel, externalId: $externalId, memberId: $memberId, phone: $phone) {{
    __typename
    ... on IdentityBound {{ outcome member {{ {MEMBER} }} }}
    ... on IdentityAlreadyBound {{ memberId }}
    ... on AlreadyMerged {{ survivorId }}
    {ERROR}
  }}
}}
"""

MERGE = f"""
mutation Merge($survivorId: ID!, $mergedId: ID!, $reason: String!) {{
  mergeMembers(survivorId: $survivorId, mergedId: $mergedId, reason: $reason) {{
    __typename
    ... on MembersMerged {{
      merge {{ id reason movedIdentities {{ channel externalId }} survivor {{ {MEMBER} }} merged {{ {MEMBER} }} }}
    }}
    ... on AlreadyMerged {{ survivorId }}
    {ERROR}
  }}
}}
"""

UNMERGE = f"""
mutation Unmerge($mergeId: ID!) {{
  unmergeMembers(mergeId: $mergeId) {{
    __typename
    ... on MembersUnmerged {{ merge {{ id unmergedAt survivor {{ {MEMBER} }} merged {{ {MEMBER} }} }} }}
    {ERROR}
  }}
}}
"""

MEMBER_BY_ID = f"query Member($id: ID!) {{ member(id: $id) {{ {MEMBER} }} }}"
