"""Tokens of the tag language and the character classes the lexer and the printer share.

The printer decides whether a value needs quotes with the same predicates the lexer uses to read a
bare word, so canonical text always lexes back to the value it was printed from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TokenKind(enum.Enum):
    WORD = "word"
    STRING = "string"
    OP = "comparison"
    COLON = "':'"
    COMMA = "','"
    LPAREN = "'('"
    RPAREN = "')'"
    AND = "AND"
    OR = "OR"
    NOT = "NOT"
    IN = "IN"
    BETWEEN = "BETWEEN"
    WITHIN = "WITHIN"
    TAG = "tag"
    EOF = "end of input"


KEYWORDS: dict[str, TokenKind] = {
    kind.value: kind
    for kind in (
        TokenKind.AND,
        TokenKind.OR,
        TokenKind.NOT,
        TokenKind.IN,
        TokenKind.BETWEEN,
        TokenKind.WITHIN,
    )
} | {"TAG": TokenKind.TAG}

# Characters that may continue a bare word besides letters and digits: dates (2024-01-01),
# decimals (12.50), snake_case codes.
WORD_PUNCTUATION = frozenset("_-.")


@dataclass(frozen=True, slots=True)
class Token:
    """One token. `text` is the token's value: as written for words, decoded for strings."""

    kind: TokenKind
    text: str
    start: int
    end: int
    line: int
    column: int


def is_word_char(char: str) -> bool:
    return char.isalnum() or char in WORD_PUNCTUATION


def keyword(word: str) -> TokenKind | None:
    # ASCII only: str.upper() maps some non-ASCII letters onto ASCII (dotless i + 'n' -> 'IN').
    return KEYWORDS.get(word.upper()) if word.isascii() else None


def is_bare_word(text: str) -> bool:
    """True when `text` lexes as one WORD token, so it needs no quotes."""
    return bool(text) and all(is_word_char(char) for char in text) and keyword(text) is None
