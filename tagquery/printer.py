"""A syntax tree to canonical text: the form saved with an audience and shown back to operators.

Rules: keywords upper case (`tag` lower case); one space around AND / OR / IN / BETWEEN / WITHIN and
comparison operators, none around ':'; IN lists as `(a, b)` in the given order; parentheses only
where precedence needs them (OR < AND < NOT < term: an OR inside an AND, an AND or OR under NOT);
values bare when they lex back as one word, otherwise double-quoted with `\\" \\\\ \\n \\t \\r` escaped.
"""

from __future__ import annotations

from tagquery.ast import TAG, And, Between, Compare, Dimension, In, Node, Not, Or, Tag, Within
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
        case Dimension(name, value):
            return f"{name}:{value_text(value)}"
        case Compare(field, op, value):
            return f"{field} {op} {value_text(value)}"
        case In(name, values):
            return f"{name} IN ({', '.join(map(value_text, values))})"
        case Between(field, low, high):
            return f"{field} BETWEEN {value_text(low)} AND {value_text(high)}"
        case Within(field, amount, unit):
            return f"{field} WITHIN {amount}{unit}"
    raise TypeError(f"not a tag query node: {node!r}")
