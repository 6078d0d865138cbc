"""Demo data: a realistic group of brands, bulk-loaded with COPY (`omnimember demo`).

Not part of the serving path: only the CLI's `demo` command imports this package (an
import-linter contract), and benchmarks use it to build their data.

- `build`: plans the group (brands, ids reserved per block), runs the load and reports.
- `loading`: makes the members in blocks, formats them in threads and copies them on one or more connections.
- `people`: who the members are, where they shop, what they bought (pure functions of a seed).
- `orders`: their orders and what they earn, the numbers both ledgers below write.
- `ledger`: the full ledger (postings, entries, lots, draws), as `store.ledger` would have written it.
- `opening`: the lighter ledger a brand moving from a legacy CRM imports (one opening posting).
- `ledger_rows`: what both ledgers share on the way in: ids, COPY text, the orders rows, COPY statements.
- `tags`: ~200 tags per brand and their skewed assignments.
"""
