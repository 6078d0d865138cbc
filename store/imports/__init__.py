"""Bulk imports: members, orders and tag assignments from CSV or NDJSON files, with COPY.

- `files`: reading a file's records with their line numbers and text (CSV with a header, NDJSON).
- `rows`: rejected rows, the checks rows share with the API, COPY's text format, staging tables.
- `staged`: a chunk between its check (a worker thread) and its merge (its transaction).
- `members`, `orders` (with `order_rounds`), `tags`: each kind's checks and set-based merge, giving
  what `registerMember`, `recordOrder` and `tagMembers` would give row after row.
- `checkpoints`, `rejects`: resuming an interrupted import; the reject file.
- `triggers`: merging without row triggers where that is safe (locks and audience queue by hand).
- `runner`: one import, chunk by chunk; `index`: the audience index caught up after it.

May use: every other data-layer package (members, ledger, tags, audiences and the shared
modules); nothing in the data layer uses it. docs/import.md describes the files and the command.
"""
