"""The schema is a contract (design §7): a breaking change against the last release's SDL fails
here unless CHANGELOG.md lists it, word for word, under Unreleased."""

from __future__ import annotations

import re

from graphql import BreakingChange, build_schema, find_breaking_changes

from schema.root import sdl
from tests.conftest import ROOT

RELEASED = ROOT / "schema" / "released.graphql"


def _unreleased() -> str:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    return changelog.split("## Unreleased", 1)[1].split("\n## ", 1)[0]


def _unlisted(changes: list[BreakingChange]) -> list[str]:
    listed = _unreleased()
    return [change.description for change in changes if change.description not in listed]


def test_no_breaking_change_against_the_last_release_goes_unlisted() -> None:
    changes = find_breaking_changes(build_schema(RELEASED.read_text()), build_schema(sdl()))
    assert not _unlisted(changes), "breaking changes not listed under Unreleased in CHANGELOG.md"


def test_the_check_sees_a_removed_field_that_the_changelog_does_not_list() -> None:
    released = build_schema(RELEASED.read_text())
    without = re.sub(r'\n  """(?:(?!""").)*"""\n  displayName: String\n', "\n", sdl(), count=1, flags=re.S)
    shrunk = build_schema(without)
    changes = find_breaking_changes(released, shrunk)
    assert [c.description for c in changes] == ["Field Member.displayName was removed."]
    assert _unlisted(changes) == ["Field Member.displayName was removed."]
