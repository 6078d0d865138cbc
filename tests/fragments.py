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

POSTED = """
    __typename
    ... on PointsPosted { replayed posting { id operation entries { kind amount balanceAfter note } }
                          member { id pointsBalance } }
    ... on Error { code message field }
"""
SPENT = POSTED + "... on InsufficientPoints { available }"

EARN = f"""
mutation Earn($brand: String!, $memberId: ID!, $amount: Int!, $key: String!, $reason: String) {{
  earnPoints(brand: $brand, memberId: $memberId, amount: $amount, idempotencyKey: $key, reason: $reason) {{ {POSTED} }}
}}
"""

REDEEM = f"""
mutation Redeem($brand: String!, $memberId: ID!, $amount: Int!, $key: String!) {{
  redeemPoints(brand: $brand, memberId: $memberId, amount: $amount, idempotencyKey: $key) {{ {SPENT} }}
}}
"""

ADJUST = f"""
mutation Adjust($brand: String!, $memberId: ID!, $delta: Int!, $key: String!, $reason: String!) {{
  adjustPoints(brand: $brand, memberId: $memberId, delta: $delta, idempotencyKey: $key, reason: $reason) {{
    {SPENT}
  }}
}}
"""

CANCEL = f"""
mutation Cancel($brand: String!, $postingId: ID!, $key: String!) {{
  cancelRedemption(brand: $brand, postingId: $postingId, idempotencyKey: $key) {{ {POSTED} }}
}}
"""

RECORDED = """
    __typename
    ... on OrderRecorded { replayed order { id pointsEarned growthEarned amount }
                           posting { entries { kind amount note } }
                           member { id status pointsBalance growthValue orderCount totalSpend tier { code } } }
    ... on Error { code message field }
"""
REFUNDED = """
    __typename
    ... on OrderRefunded { replayed order { id refunded pointsReversed growthReversed pointsUnrecovered }
                           posting { entries { kind amount } } member { id pointsBalance growthValue totalSpend } }
    ... on Error { code message field }
"""

RECORD_ORDER = f"""
mutation Order($brand: String!, $channel: String!, $orderId: String!, $amount: Decimal!, $paidAt: DateTime!,
               $memberId: ID, $buyerId: String) {{
  recordOrder(brand: $brand, channel: $channel, externalOrderId: $orderId, amount: $amount, paidAt: $paidAt,
              memberId: $memberId, buyerId: $buyerId) {{ {RECORDED} }}
}}
"""

REFUND_ORDER = f"""
mutation Refund($brand: String!, $channel: String!, $orderId: String!, $amount: Decimal, $key: String!) {{
  refundOrder(brand: $brand, channel: $channel, externalOrderId: $orderId, amount: $amount, idempotencyKey: $key) {{
    {REFUNDED}
  }}
}}
"""
