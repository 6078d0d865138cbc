"""A syntax tree to canonical text: the form saved with an audience and shown back to operators.

Rules: keywords upper case (`tag` lower case); one space around AND / OR / IN / BETWEEN / WITHIN and
comparison operators, none around ':'; IN lists as `(a, b)` in the given order; parentheses only
where precedence needs them (OR < AND < NOT < term: an OR inside an AND, an AND or OR under NOT);
values bare when they lex back as one word, otherwise double-quoted with `\\" \\\\ \\n \\t \\r` escaped.
A qualifier follows its field after ':' (`spend_90d:snacks >= 500`), a window ends its term
(`bought:snacks WITHIN 30d`).
"""

from __future__ import annotations

from tagquery.ast import TAG, And, Between, Compare, Dimension, In, Node, Not, Or, Tag, Window, Within
from tagquery.lexer import ESCAPES
from tagquery.tokens import is_bare_word

_QUOTE = str.maketrans({char: f"\\{code}" for code, char in ESCAPES.items()})

# Binding strength: an operand binding more weakly than its context needs parentheses.
_OR, _AND, _NOT, _TERM = range(4)


def to_text(node: Node) -> str:
    match node:
        case Or(operands):
            return " OR ".join(_operand(operand, _AND) for operand in operands)
        case And(operands):
            return " AND ".join(_operand(operand, _NOT) for operand in operands)
        case Not(operand):
            return f"NOT {_operand(operand, _NOT)}"
        case _:
            return _term(node)


def value_text(value: str) -> str:
    return value if is_bare_word(value) else f'"{value.translate(_QUOTE)}"'


def _operand(node: Node, needed: int) -> str:
    text = to_text(node)
    return f"({text})" if _strength(node) < needed else text


def _strength(node: Node) -> int:
    match node:
        case Or():
            return _OR
        case And():
            return _AND
        case Not():
            return _NOT
        case _:
            return _TERM


def _term(node: Node) -> str:
    match node:
        case Tag(code):
            return f"{TAG}:{value_text(code)}"
        case Dimension(name, value, within):
            return f"{name}:{value_text(value)}{_window(within)}"
        case Compare(field, op, value, qualifier):
            return f"{_subject(field, qualifier)} {op} {value_text(value)}"
        case In(name, values, qualifier, within):
            return f"{_subject(name, qualifier)} IN ({', '.join(map(value_text, values))}){_window(within)}"
        case Between(field, low, high, qualifier):
            return f"{_subject(field, qualifier)} BETWEEN {value_text(low)} AND {value_text(high)}"
        case Within(field, amount, unit):
            return f"{field} WITHIN {amount}{unit}"
    raise TypeError(f"not a tag query node: {node!r}")


def _subject(name: str, qualifier: str | None) -> str:
    return name if qualifier is None else f"{name}:{value_text(qualifier)}"


def _window(within: Window | None) -> str:
    return "" if within is None else f" WITHIN {within[0]}{within[1]}"
