"""Members: one profile per person per brand, whatever channel they came from.

- `unification`: bind a channel identity to the right member (existing binding, phone match, or a
  new prospect), settled by unique constraints.
- `profiles`: batched reads of members and identities for the DataLoaders.
- `merges`: merge two members of a brand and undo it exactly.
- `phones`: normalise, hash, encrypt and mask phone numbers (never stored in clear).
- `consent`: marketing consent per touch channel, and a guardian's consent for minors (PIPL).
- `erasure`: erase a member's personal data on request (PIPL), keeping its ledger (docs/privacy.md).

May use: the shared modules, `store.ledger` (a merge moves lots and orders) and `store.tags` (a
merge moves assignments). Never `store.audiences`: the index follows members through triggers.
"""
