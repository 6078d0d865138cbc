"""Errors of the tag language: one base class, four kinds, stable codes.

Codes are public (clients branch on them, the GraphQL layer returns them):

| code              | class              | raised when                                                   |
|-------------------|--------------------|---------------------------------------------------------------|
| SYNTAX            | QuerySyntaxError   | the text does not follow the grammar                          |
| INVALID_FILTER    | QuerySyntaxError   | a structured filter has the wrong shape (error carries a path)|
| UNKNOWN_TAG       | UnknownNameError   | `tag:x` names no tag code or display name of the brand         |
| UNKNOWN_DIMENSION | UnknownNameError   | `x:value` names no dimension                                  |
| UNKNOWN_FIELD     | UnknownNameError   | `x >= 1`, `x IN (...)` ... names no field (or dimension)      |
| UNKNOWN_VALUE     | UnknownNameError   | `tier:x` names no value of that dimension                     |
| TYPE_MISMATCH     | QueryTypeError     | a value or an operator does not fit the field or dimension    |
| OUT_OF_RANGE      | QueryTypeError     | a number, amount or window is too large to mean anything      |
| TOO_LONG          | QueryLimitError    | the text (or its canonical form) exceeds the length limit     |
| TOO_DEEP          | QueryLimitError    | parentheses / NOT / and-or-not objects nest too deep          |
| TOO_MANY_TERMS    | QueryLimitError    | the query has too many terms (each IN value counts as one)     |
"""

from __future__ import annotations

import enum
import unicodedata

Span = tuple[int, int]


class ErrorCode(enum.StrEnum):
    SYNTAX = "SYNTAX"
    INVALID_FILTER = "INVALID_FILTER"
    UNKNOWN_TAG = "UNKNOWN_TAG"
    UNKNOWN_DIMENSION = "UNKNOWN_DIMENSION"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    UNKNOWN_VALUE = "UNKNOWN_VALUE"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    TOO_LONG = "TOO_LONG"
    TOO_DEEP = "TOO_DEEP"
    TOO_MANY_TERMS = "TOO_MANY_TERMS"


class TagQueryError(Exception):
    """Base of every error the tag language raises on bad input.

    `message` names the problem without position; `str()` adds the position (line:column for text,
    `path` for structured filters), the suggestion for an unknown name, a hint on how to write it
    (for an unknown name with nothing close, the valid names), and the source line with carets
    under the offending span.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode,
        source: str | None = None,
        span: Span | None = None,
        suggestion: str | None = None,
        hint: str | None = None,
        path: str | None = None,
        valid_values: tuple[str, ...] = (),
        valid_count: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.source = source
        self.span = span
        self.suggestion = suggestion
        self.hint = hint
        self.path = path
        # For an unknown name: the valid ones (all of them, or the closest few when there are many)
        # and how many there are.
        self.valid_values = valid_values
        self.valid_count = valid_count

    @property
    def line(self) -> int | None:
        return None if self.source is None or self.span is None else position(self.source, self.span[0])[0]

    @property
    def column(self) -> int | None:
        return None if self.source is None or self.span is None else position(self.source, self.span[0])[1]

    @property
    def snippet(self) -> str:
        """The source line and a caret line under the offending span ('' without a source)."""
        return "" if self.source is None or self.span is None else caret_snippet(self.source, self.span)

    def __str__(self) -> str:
        where = ""
        if self.line is not None:
            where = f" at {self.line}:{self.column}"
        elif self.path is not None:
            where = f" at {self.path}"
        suggestion = f", did you mean '{self.suggestion}'?" if self.suggestion else ""
        hint = f"; {self.hint}" if self.hint else ""
        head = f"{self.message}{where}{suggestion}{hint}"
        return f"{head}\n{self.snippet}" if self.snippet else head


class QuerySyntaxError(TagQueryError):
    """The text does not follow the grammar, or a structured filter has the wrong shape."""


class UnknownNameError(TagQueryError):
    """A tag, dimension, field or dimension value the catalog does not know."""


class QueryTypeError(TagQueryError):
    """A value or operator that does not fit the field or dimension it is applied to."""


class QueryLimitError(TagQueryError):
    """The query exceeds a bound on length, nesting depth or number of terms."""


def position(source: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of `offset`; columns count code points, lines end at '\\n'."""
    line_start = source.rfind("\n", 0, offset) + 1
    return source.count("\n", 0, offset) + 1, offset - line_start + 1


def caret_snippet(source: str, span: Span) -> str:
    start, end = span
    line, column = position(source, start)
    text = source.split("\n")[line - 1].rstrip("\r")
    marked = text[column - 1 : column - 1 + (end - start)]
    # Pad with the same display width as the text above, so carets line up under CJK characters
    # (two terminal cells each) and after tabs.
    pad = "".join("\t" if char == "\t" else " " * _width(char) for char in text[: column - 1])
    carets = "^" * max(1, sum(_width(char) for char in marked))
    return f"{text}\n{pad}{carets}"


def _width(char: str) -> int:
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
