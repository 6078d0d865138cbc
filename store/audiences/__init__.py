"""Audiences: boolean expressions over a brand's members, answered from a bitmap index.

- `selections`: an expression (text or filter) checked against the brand's catalog (`catalogs`).
- `engine`: count, sample, breakdown, funnel and member ids, compiled by `tagquery.compile_bitmap`
  over the index table.
- `facts`: what every name of the tag language means in the system of record (one place).
- `index_facts`, `bitmaps`: building the index; `deltas`: keeping it current from the change queue.
- `saved`: saved audiences and frozen snapshots.
- `export`: members of an audience as CSV or NDJSON; `offline`: count and export from the CLI.
- `reach`: who of an audience may be contacted on a touch channel (consent, minors), for counts
  and touch-channel exports.
- `overlap`: how a brand's channels share members (from the index) and a group's brands share
  persons (through the phone).

- `rule_tags`: rule tags computed from their rules (on a change, after each delta, each brand day)
  into `member_tags`: the one table of another domain it writes, as the tags' source `rule`.

May use: the shared modules and `tagquery`. Never members, ledger or tags: it reads their tables
(through `store.tables`), and writers reach it only through the change-queue triggers.
"""
