"""The package's public surface is deliberate: adding or removing a name must be a visible change."""

from __future__ import annotations

import tagquery


def test_all_is_pinned() -> None:
    assert sorted(tagquery.__all__) == [
        "Catalog",
        "ErrorCode",
        "GRAMMAR_VERSION",
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


def test_every_exported_name_exists() -> None:
    for name in tagquery.__all__:
        assert getattr(tagquery, name) is not None


def test_error_classes_share_one_base() -> None:
    for error in (
        tagquery.QuerySyntaxError,
        tagquery.UnknownNameError,
        tagquery.QueryTypeError,
        tagquery.QueryLimitError,
    ):
        assert issubclass(error, tagquery.TagQueryError)
