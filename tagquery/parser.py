"""Tokens to a syntax tree: recursive descent, one method per precedence level.

`_or → _and → _not → _atom`; `_atom` reads a parenthesized expression or a term. Each '(' and
each NOT counts one level of depth, checked before descending, so the recursion never exceeds
MAX_DEPTH levels whatever the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

from tagquery.ast import (
    TAG,
    Between,
    Compare,
    Dimension,
    In,
    Node,
    Not,
    Op,
    Tag,
    Term,
    Window,
    Within,
    conjoin,
    disjoin,
    parse_duration,
    term_weight,
)
from tagquery.errors import ErrorCode, QueryLimitError, QuerySyntaxError, Span
from tagquery.lexer import tokenize
from tagquery.limits import MAX_DEPTH, MAX_LENGTH, MAX_TERMS
from tagquery.printer import to_text
from tagquery.tokens import KEYWORDS, Token, TokenKind

TERM_HINT = "a term such as tag:code, tier:gold or points >= 100"
# Tokens that may follow a complete term: a word followed by one of them was meant as a term.
_TERM_ENDS = frozenset({TokenKind.EOF, TokenKind.AND, TokenKind.OR, TokenKind.RPAREN})
_VALUES = frozenset({TokenKind.WORD, TokenKind.STRING})
_KEYWORDS = frozenset(KEYWORDS.values())


def parse(text: str) -> Node:
    """Parse query text into a syntax tree; raises a TagQueryError subclass on bad input."""
    if len(text) > MAX_LENGTH:
        raise QueryLimitError(
            f"the query is longer than {MAX_LENGTH} characters",
            code=ErrorCode.TOO_LONG,
            source=text,
            span=(MAX_LENGTH, len(text)),
        )
    node = _Parser(text).parse()
    # Canonical text can be longer than the input (spaces around operators): refuse a query
    # whose saved form could not be read back.
    if len(to_text(node)) > MAX_LENGTH:
        raise QueryLimitError(
            f"the query is longer than {MAX_LENGTH} characters once written canonically",
            code=ErrorCode.TOO_LONG,
            source=text,
            span=(0, len(text)),
        )
    return node


class _Parser:
    def __init__(self, source: str) -> None:
        self._source = source
        self._tokens = tokenize(source)
        self._index = 0
        self._depth = 0
        self._terms = 0

    def parse(self) -> Node:
        if self.peek().kind is TokenKind.EOF:
            raise self._error("the query is empty", self.peek())
        node = self._or()
        self.expect(TokenKind.EOF, "AND, OR or end of input")
        return node

    # Precedence levels.

    def _or(self) -> Node:
        parts = [self._and()]
        while self.expect_optional(TokenKind.OR):
            parts.append(self._and())
        return disjoin(parts, span=_cover(parts))

    def _and(self) -> Node:
        parts = [self._not()]
        while self.expect_optional(TokenKind.AND):
            parts.append(self._not())
        return conjoin(parts, span=_cover(parts))

    def _not(self) -> Node:
        keyword = self.expect_optional(TokenKind.NOT)
        if keyword is None:
            return self._atom()
        with self._nested(keyword):
            operand = self._not()
        return Not(operand, span=_cover([keyword, operand]))

    def _atom(self) -> Node:
        token = self.peek()
        if token.kind is TokenKind.LPAREN:
            self.advance()
            with self._nested(token):
                inner = self._or()
            self.expect(TokenKind.RPAREN, f"')' to match the '(' opened at {token.line}:{token.column}")
            return inner
        if token.kind is TokenKind.TAG:
            return self._tag(self.advance())
        if token.kind is TokenKind.WORD:
            return self._term(self.advance())
        raise self.unexpected(TERM_HINT)

    # Terms: a name, then what follows it decides the form.

    def _tag(self, keyword: Token) -> Term:
        if self.peek().kind is TokenKind.IN:
            return self._counted(self._in(keyword, TAG))
        self.expect(TokenKind.COLON, "':' or IN after tag")
        code, span = self._value()
        return self._counted(Tag(code, span=(keyword.start, span[1]), value_spans=(span,)))

    def _term(self, name: Token) -> Term:
        form = self._FORMS.get(self.peek().kind)
        if form is not None:
            return self._counted(form(self, name))
        if self.peek().kind in _TERM_ENDS:
            hint = f"for a tag write tag:{name.text}"
            raise self._error(f"expected {TERM_HINT}, found the bare word '{name.text}'", name, hint)
        raise self.unexpected(f"':', a comparison, IN, BETWEEN or WITHIN after '{name.text}'")

    def _dimension(self, name: Token) -> Term:
        """`name:value`, then: a window (`bought:x WITHIN 90d`), or, when a comparison, IN or BETWEEN
        follows, `value` qualifies a field (`spend_90d:snacks >= 500`)."""
        self.advance()
        value, span = self._value()
        qualified = self._QUALIFIED.get(self.peek().kind)
        if qualified is not None:
            return qualified(self, name, value)
        within = self._window()
        end = span[1] if within is None else within[1][1]
        return Dimension(
            name.text, value, None if within is None else within[0], span=(name.start, end), value_spans=(span,)
        )

    def _compare(self, name: Token, qualifier: str | None = None) -> Term:
        op = Op(self.advance().text)
        value, span = self._value()
        return Compare(name.text, op, value, qualifier, span=(name.start, span[1]), value_spans=(span,))

    def _in(self, name: Token, subject: str | None = None, qualifier: str | None = None) -> Term:
        self.advance()
        self.expect(TokenKind.LPAREN, "'(' after IN")
        items = [self._value()]
        while self.expect_optional(TokenKind.COMMA):
            items.append(self._value())
        close = self.expect(TokenKind.RPAREN, "',' or ')' in the IN list")
        values = tuple(value for value, _ in items)
        spans = tuple(span for _, span in items)
        within = self._window()
        end = close.end if within is None else within[1][1]
        window = None if within is None else within[0]
        return In(subject or name.text, values, qualifier, window, span=(name.start, end), value_spans=spans)

    def _between(self, name: Token, qualifier: str | None = None) -> Term:
        self.advance()
        low, low_span = self._value()
        self.expect(TokenKind.AND, "AND between the bounds of BETWEEN")
        high, high_span = self._value()
        return Between(
            name.text, low, high, qualifier, span=(name.start, high_span[1]), value_spans=(low_span, high_span)
        )

    def _within(self, name: Token) -> Term:
        self.advance()
        duration, span = self._duration()
        return Within(name.text, *duration, span=(name.start, span[1]), value_spans=(span,))

    def _window(self) -> tuple[Window, Span] | None:
        """An optional `WITHIN <duration>` ending a dimension term or an IN list."""
        if self.expect_optional(TokenKind.WITHIN) is None:
            return None
        return self._duration()

    def _duration(self) -> tuple[Window, Span]:
        token = self.peek()
        duration = parse_duration(token.text) if token.kind is TokenKind.WORD else None
        if duration is None:
            raise self.unexpected("a duration such as 30d, 12w, 6m or 1y")
        self.advance()
        return duration, (token.start, token.end)

    _QUALIFIED: ClassVar[dict[TokenKind, Callable[[_Parser, Token, str], Term]]] = {
        TokenKind.OP: lambda parser, name, qualifier: parser._compare(name, qualifier),
        TokenKind.IN: lambda parser, name, qualifier: parser._in(name, None, qualifier),
        TokenKind.BETWEEN: lambda parser, name, qualifier: parser._between(name, qualifier),
    }

    _FORMS: ClassVar[dict[TokenKind, Callable[[_Parser, Token], Term]]] = {
        TokenKind.COLON: _dimension,
        TokenKind.OP: _compare,
        TokenKind.IN: _in,
        TokenKind.BETWEEN: _between,
        TokenKind.WITHIN: _within,
    }

    def _value(self) -> tuple[str, Span]:
        token = self.peek()
        if token.kind not in _VALUES:
            hint = f'to use a keyword as a value, quote it: "{token.text}"' if token.kind in _KEYWORDS else None
            raise self.unexpected("a value", hint)
        self.advance()
        return token.text, (token.start, token.end)

    # Limits.

    @contextmanager
    def _nested(self, token: Token) -> Iterator[None]:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            message = f"nested deeper than {MAX_DEPTH} levels of parentheses and NOT"
            raise self._limit(message, ErrorCode.TOO_DEEP, token)
        try:
            yield
        finally:
            self._depth -= 1

    def _counted(self, term: Term) -> Term:
        self._terms += term_weight(term)
        if self._terms > MAX_TERMS:
            raise self._limit(f"more than {MAX_TERMS} terms (IN values count one each)", ErrorCode.TOO_MANY_TERMS, term)
        return term

    # Token primitives.

    def peek(self) -> Token:
        return self._tokens[self._index]

    def advance(self) -> Token:
        token = self.peek()
        if token.kind is not TokenKind.EOF:
            self._index += 1
        return token

    def expect(self, kind: TokenKind, expected: str) -> Token:
        if self.peek().kind is not kind:
            raise self.unexpected(expected)
        return self.advance()

    def expect_optional(self, kind: TokenKind) -> Token | None:
        return self.advance() if self.peek().kind is kind else None

    def unexpected(self, expected: str, hint: str | None = None) -> QuerySyntaxError:
        token = self.peek()
        found = "end of input" if token.kind is TokenKind.EOF else f"'{self._source[token.start : token.end]}'"
        return self._error(f"expected {expected}, found {found}", token, hint)

    def _error(self, message: str, token: Token, hint: str | None = None) -> QuerySyntaxError:
        span = (token.start, token.end)
        return QuerySyntaxError(message, code=ErrorCode.SYNTAX, source=self._source, span=span, hint=hint)

    def _limit(self, message: str, code: ErrorCode, at: Token | Term) -> QueryLimitError:
        span = (at.start, at.end) if isinstance(at, Token) else at.span
        return QueryLimitError(message, code=code, source=self._source, span=span)


def _cover(parts: list[Node] | list[Token | Node]) -> Span | None:
    first, last = _span_of(parts[0]), _span_of(parts[-1])
    return None if first is None or last is None else (first[0], last[1])


def _span_of(part: Token | Node) -> Span | None:
    return (part.start, part.end) if isinstance(part, Token) else part.span
