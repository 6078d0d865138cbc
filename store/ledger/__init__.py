"""The points ledger: one balance per member that is never lost or double-counted.

- `journal`: postings under idempotency keys, append-only entries, expiring lots and their draws;
  the invariants (balance = entries = open lots, never negative) and the one lock order every
  posting follows (member rows by id first) are in its docstring.
- `postings`: an earn, a redemption or an adjustment as one statement outside a transaction.
- `points`: the operations a client asks for (earn, redeem, cancel, adjust, expire).
- `orders`: orders from every channel earn points and growth; refunds take them back.
- `tiers`: qualification over 365 days, upgrades at once, downgrades on review.
- `history`: reads of entries, orders and tier changes.
- `batching`, `batched`, `batched_orders`, `batchers`: postings that arrive together share one
  set-based statement.
- `jobs`: scheduled expiry and tier review.

May use: the shared modules only (`tables`, `sql`, `errors`, `brands`, ...). Never members, tags
or audiences.
"""
