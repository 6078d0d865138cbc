"""Tags: a brand's catalog and who carries which tag until when.

- `catalog`: define tags, read definitions and live member counts; `unexpired` is the one rule of
  what counts as carried.
- `assignments`: tag and untag members (by ids, set-based), read a member's tags, sweep expired
  assignments, move them on merges and back on unmerge.

May use: the shared modules and `tagquery.tokens` (a code is one word of the tag language). Never
members, ledger or audiences.
"""
