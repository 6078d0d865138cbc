"""The data layer: the system of record in PostgreSQL and every write that must be atomic.

Split by domain; each package's docstring says what it owns and what it may use:

- `store.members`: identities unified into one member per brand, merges and their undo, phones.
- `store.ledger`: the points ledger (postings, entries, lots), orders and refunds, tiers, batching.
- `store.tags`: the tag catalog and who carries which tag until when.
- `store.audiences`: the bitmap index and everything answered from it (counts, samples, saved
  audiences, exports).

The shared modules below them: `tables` (SQLAlchemy Core tables, the one schema), `sql` (statements
compiled once and run on psycopg), `transactions` (retry on lost races), `errors` (DomainError and
its codes), `brands` (groups, brands, tiers and rules), `urls`, `migrate`.

Rules (import-linter, pyproject.toml): members may use ledger and tags (a merge moves lots and tags);
ledger, tags and audiences never import each other; all may use the shared modules and `tagquery`,
and nothing here imports `api`, `schema`, `resolvers` or the `demo` generators.
"""
