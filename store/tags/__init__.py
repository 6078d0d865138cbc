"""Tags: a brand's catalog and who carries which tag until when.

- `catalog`: define tags, read definitions and live member counts; `unexpired` is the one rule of
  what counts as carried.
- `assignments`: tag and untag members (by ids, set-based), read a member's tags, sweep expired
  assignments, move them on merges and back on unmerge; refuse rule tags.
- `rules`: rule tags' rules by version, and the check that rules never form a cycle (the engine
  that computes them is store.audiences.rule_tags).

May use: the shared modules and `tagquery` (a code is one word of the tag language). Never
members, ledger or audiences.
"""
