"""Tokens: kinds, values and positions."""

from __future__ import annotations

from tagquery.lexer import tokenize
from tagquery.tokens import Token, TokenKind

K = TokenKind


def kinds(text: str) -> list[TokenKind]:
    return [token.kind for token in tokenize(text)]


def test_tokens_carry_kind_text_span_line_and_column() -> None:
    assert tokenize("tier:gold AND\n  points >= 1000") == [
        Token(K.WORD, "tier", 0, 4, 1, 1),
        Token(K.COLON, ":", 4, 5, 1, 5),
        Token(K.WORD, "gold", 5, 9, 1, 6),
        Token(K.AND, "AND", 10, 13, 1, 11),
        Token(K.WORD, "points", 16, 22, 2, 3),
        Token(K.OP, ">=", 23, 25, 2, 10),
        Token(K.WORD, "1000", 26, 30, 2, 13),
        Token(K.EOF, "", 30, 30, 2, 17),
    ]


def test_keywords_are_case_insensitive_and_ascii_only() -> None:
    assert kinds("and Or nOT in Between within TAG") == [
        K.AND,
        K.OR,
        K.NOT,
        K.IN,
        K.BETWEEN,
        K.WITHIN,
        K.TAG,
        K.EOF,
    ]
    # Dotless i upper-cases to 'I': without the ASCII check this word would read as the keyword IN.
    assert kinds("\u0131n") == [K.WORD, K.EOF]


def test_words_take_letters_of_any_script_digits_and_date_punctuation() -> None:
    words = [token.text for token in tokenize("价格敏感 618_buyer 2024-01-31 12.50 -5 30d")[:-1]]
    assert words == ["价格敏感", "618_buyer", "2024-01-31", "12.50", "-5", "30d"]


def test_operators_longest_first() -> None:
    assert [token.text for token in tokenize("<= >= != < > =")[:-1]] == ["<=", ">=", "!=", "<", ">", "="]
    assert [token.text for token in tokenize("a<=1")] == ["a", "<=", "1", ""]


def test_full_width_punctuation_and_ideographic_space() -> None:
    assert kinds("tag\uff1a价格敏感\u3000\uff08a\uff0c b\uff09") == [
        K.TAG,
        K.COLON,
        K.WORD,
        K.LPAREN,
        K.WORD,
        K.COMMA,
        K.WORD,
        K.RPAREN,
        K.EOF,
    ]


def test_strings_decode_escapes_and_keep_their_source_span() -> None:
    [token, _] = tokenize(r'"a \"b\" \\ \n\t\r 上海"')
    assert token.kind is K.STRING
    assert token.text == 'a "b" \\ \n\t\r 上海'
    assert (token.start, token.end) == (0, 22)


def test_columns_count_code_points_after_wide_characters() -> None:
    tokens = tokenize("city:上海 OR x")
    assert [(token.text, token.column) for token in tokens] == [
        ("city", 1),
        (":", 5),
        ("上海", 6),
        ("OR", 9),
        ("x", 12),
        ("", 13),
    ]
