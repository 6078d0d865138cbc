"""Bounds on the size of a query, shared by the text parser and the structured filter reader.

They keep every phase's recursion shallow (a deep input is refused before any phase recurses on
it, so no RecursionError escapes) and a bitmap plan small: each term, and each value of an IN list,
is one operand of the compiled query.
"""

from __future__ import annotations

MAX_LENGTH = 4_000
"""Characters of input text, and of the canonical text of any accepted query (what is saved)."""

MAX_TERMS = 200
"""Terms in one query; each value of an IN list counts as one."""

MAX_DEPTH = 32
"""Nesting: parentheses and NOTs in text; and / or / not objects in a structured filter."""
