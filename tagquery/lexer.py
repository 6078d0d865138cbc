"""Text to tokens.

Whitespace is anything `str.isspace` accepts (the ideographic space U+3000 included); lines end at
'\\n'. The full-width forms of `: , ( )` that Chinese input methods produce are read as their ASCII
counterparts. A quoted string may not contain a raw line break: a missing closing quote is then
reported on the line where the string starts, not at the end of the input.
"""

from __future__ import annotations

from tagquery.errors import ErrorCode, QuerySyntaxError
from tagquery.tokens import Token, TokenKind, is_word_char, keyword

_PUNCTUATION = {
    ":": TokenKind.COLON,
    "\uff1a": TokenKind.COLON,  # full-width colon
    ",": TokenKind.COMMA,
    "\uff0c": TokenKind.COMMA,  # full-width comma
    "(": TokenKind.LPAREN,
    "\uff08": TokenKind.LPAREN,  # full-width parentheses
    ")": TokenKind.RPAREN,
    "\uff09": TokenKind.RPAREN,
}
# Two-character operators first, so that '<=' is not read as '<' followed by '='.
_OPERATORS = ("<=", ">=", "!=", "<", ">", "=")
ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def tokenize(source: str) -> list[Token]:
    """All tokens of `source`, ending with one EOF token."""
    return _Lexer(source).run()


class _Lexer:
    def __init__(self, source: str) -> None:
        self._source = source
        self._pos = 0
        self._line = 1
        self._line_start = 0

    def run(self) -> list[Token]:
        tokens: list[Token] = []
        while not tokens or tokens[-1].kind is not TokenKind.EOF:
            self._skip_space()
            tokens.append(self._token())
        return tokens

    def _skip_space(self) -> None:
        source = self._source
        while self._pos < len(source) and source[self._pos].isspace():
            if source[self._pos] == "\n":
                self._line += 1
                self._line_start = self._pos + 1
            self._pos += 1

    def _token(self) -> Token:
        start = self._pos
        if start == len(self._source):
            return self._make(TokenKind.EOF, "", start)
        char = self._source[start]
        if char in _PUNCTUATION:
            self._pos += 1
            return self._make(_PUNCTUATION[char], char, start)
        if char == '"':
            return self._string(start)
        if is_word_char(char):
            return self._word(start)
        return self._operator(start)

    def _word(self, start: int) -> Token:
        source = self._source
        while self._pos < len(source) and is_word_char(source[self._pos]):
            self._pos += 1
        text = source[start : self._pos]
        return self._make(keyword(text) or TokenKind.WORD, text, start)

    def _operator(self, start: int) -> Token:
        for op in _OPERATORS:
            if self._source.startswith(op, start):
                self._pos += len(op)
                return self._make(TokenKind.OP, op, start)
        raise self._error(f"unexpected character {self._source[start]!r}", start, start + 1)

    def _string(self, start: int) -> Token:
        source = self._source
        self._pos += 1
        parts: list[str] = []
        while self._pos < len(source) and source[self._pos] not in '"\n':
            parts.append(self._escape() if source[self._pos] == "\\" else source[self._pos])
            self._pos += 1
        if self._pos == len(source) or source[self._pos] == "\n":
            raise self._error("unterminated string", start, self._pos)
        self._pos += 1
        return self._make(TokenKind.STRING, "".join(parts), start)

    def _escape(self) -> str:
        """Decode the escape at the backslash under the cursor, leaving the cursor on its last char."""
        code = self._source[self._pos + 1 : self._pos + 2]
        if code in ("", "\n"):
            return "\\"  # the string is unterminated; _string reports it at the opening quote
        if code not in ESCAPES:
            raise self._error(f"unknown escape '\\{code}' in string", self._pos, self._pos + 2)
        self._pos += 1
        return ESCAPES[code]

    def _make(self, kind: TokenKind, text: str, start: int) -> Token:
        return Token(kind, text, start, self._pos, self._line, start - self._line_start + 1)

    def _error(self, message: str, start: int, end: int) -> QuerySyntaxError:
        return QuerySyntaxError(message, code=ErrorCode.SYNTAX, source=self._source, span=(start, end))
