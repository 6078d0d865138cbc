"""The tag language: audiences written as text or sent as a structured filter, one syntax tree.

    parse(text) / from_filter(data)  ->  Node (tagquery.ast)   syntax only, no catalog needed
    to_text(node)                    ->  canonical text        what a saved audience stores
    bind(node, catalog)              ->  Bound (tagquery.bound) names resolved, values typed
    evaluate(bound, facts, today)    ->  bool                  the reference implementation
    compile_bitmap.BitmapCompiler    ->  bitwise SQL (pivot)   the engine, over the bitmap index
    compile_rows.compile_rows        ->  WHERE clause          the reference, over the system of record

The compilers are submodules, not exports: the bitmap compiler reads the index table of the data
layer (store.tables), and callers expand derived dimensions first (store.audiences.facts.expand_derived).

Grammar (EBNF; keywords and `tag` are case-insensitive, everything else case-sensitive)::

    query      = or ;
    or         = and , { "OR" , and } ;
    and        = unary , { "AND" , unary } ;
    unary      = "NOT" , unary | "(" , or , ")" | term ;
    term       = "tag" , ":" , value
               | "tag" , "IN" , list , [ window ]
               | name , ":" , value , [ window ]         (* tier:gold, bought:tea WITHIN 90d, entered:at_risk *)
               | subject , cmp , value                   (* field: points >= 1000, spend_90d:tea >= 500 *)
               | subject , "IN" , list , [ window ]      (* dimension or field *)
               | subject , "BETWEEN" , value , "AND" , value
               | name , "WITHIN" , duration ;            (* date field: last_purchase WITHIN 30d *)
    subject    = name , [ ":" , value ] ;                (* a field, qualified: orders_90d:snacks *)
    window     = "WITHIN" , duration ;                   (* a dated dimension's window (bought, entered) *)
    list       = "(" , value , { "," , value } , ")" ;
    cmp        = "=" | "!=" | "<" | "<=" | ">" | ">=" ;
    value      = word | string ;
    name       = word - keyword ;
    keyword    = "AND" | "OR" | "NOT" | "IN" | "BETWEEN" | "WITHIN" | "TAG" ;
    duration   = digit , { digit } , ( "d" | "w" | "m" | "y" ) ;
    word       = word char , { word char } ;             (* letter or digit of any script, "_" "-" "." *)
    string     = '"' , { any char but '"' "\\" newline | escape } , '"' ;
    escape     = "\\" , ( '"' | "\\" | "n" | "t" | "r" ) ;

A word is typed by the binder, not the lexer: `1000`, `12.50`, `2024-01-01` and `gold` are all words
(so tag codes such as `618_buyer` need no quotes). The full-width colon, comma and parentheses
(U+FF1A, U+FF0C, U+FF08, U+FF09) that Chinese input methods type read as their ASCII forms.
`tag:x` accepts a tag code or a tag's display name (`tag:价格敏感`). Windows and qualifiers
(issue 15) parse anywhere the grammar allows them; the binder decides where they mean something (a
window on a dated dimension, `bought` or `entered`, a category qualifying `spend_<N>d` /
`orders_<N>d`). The grammar only grew (every older text parses to the same tree), so GRAMMAR_VERSION stays 1.

Decisions:
- NULL rule: a term on a missing fact is False, NOT is boolean negation; `e` / `NOT e` partition
  the members (see `tagquery.bound`).
- Canonical text: keywords upper case, minimal parentheses, values quoted only when needed, lists in
  the order given; `parse(to_text(node)) == node` (spans take no part in equality).
- Limits (`tagquery.limits`): 4,000 characters (input and canonical form), 200 terms (each IN value
  counts), depth 32 (parentheses and NOTs); exceeding one raises QueryLimitError, never
  RecursionError.
- Errors: `TagQueryError` subclasses with a stable `code` (table in `tagquery.errors`), 1-based
  line and column, the offending span, a caret snippet and, for unknown names, a suggestion.

Saved audiences store `to_text(node)` with GRAMMAR_VERSION, never compiled SQL.
"""

from __future__ import annotations

from tagquery.binder import bind
from tagquery.catalog import Catalog, member_catalog
from tagquery.errors import (
    ErrorCode,
    QueryLimitError,
    QuerySyntaxError,
    QueryTypeError,
    TagQueryError,
    UnknownNameError,
)
from tagquery.evaluate import evaluate
from tagquery.filters import from_filter
from tagquery.parser import parse
from tagquery.printer import to_text

GRAMMAR_VERSION = 1

__all__ = [
    "GRAMMAR_VERSION",
    "Catalog",
    "ErrorCode",
    "QueryLimitError",
    "QuerySyntaxError",
    "QueryTypeError",
    "TagQueryError",
    "UnknownNameError",
    "bind",
    "evaluate",
    "from_filter",
    "member_catalog",
    "parse",
    "to_text",
]
