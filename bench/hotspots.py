"""Summarise a py-spy profile (``py-spy record --format raw``: collapsed stacks) into hotspots.

Each line is ``frame;frame;...;leaf count`` (root first) with frames ``function (path/file.py:line)``.
Self time goes to the leaf frame, a stage to the whole stack. Line numbers are dropped so that one
function is one entry.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*?)(?::\d+)?\)$")
# First match wins: where a frame's code lives, from its file path.
_CATEGORIES = (
    ("graphql-core", "/graphql/"),
    ("strawberry", "/strawberry/"),
    ("psycopg_pool", "/psycopg_pool/"),
    ("psycopg", "/psycopg/"),
    ("starlette", "/starlette/"),
    ("uvicorn", "/uvicorn/"),
    ("asyncio/uvloop", "/asyncio/"),
    ("asyncio/uvloop", "uvloop"),
    ("json", "/json/"),
    ("sqlalchemy", "/sqlalchemy/"),
)


# What a request spends its time on: the innermost frame of a stack that matches one of these
# (checked in order against ``function (path)``) names the stage; "event loop and other" otherwise.
_STAGES = (
    ("database driver and pool (psycopg)", ("(psycopg/", "(psycopg_pool/")),
    ("JSON (de)serialisation", ("(json/",)),
    ("GraphQL validation", ("(graphql/validation/", "validate_document (", "extensions/validation_cache.py")),
    ("GraphQL parsing", ("(graphql/language/parser", "(graphql/language/lexer", "extensions/parser_cache.py")),
    ("GraphQL execution (graphql-core, strawberry)", ("(graphql/execution/", "(strawberry/")),
    ("HTTP (uvicorn, starlette)", ("(uvicorn/", "(starlette/", "(httptools/")),
)
OWN_CODE = "omnimember code (resolvers, loaders, row mapping)"
OTHER_STAGE = "event loop and other"


@dataclass(frozen=True, slots=True)
class Hotspots:
    samples: int
    by_stage: list[tuple[str, int]]
    by_category: list[tuple[str, int]]  # self samples per library
    self_top: list[tuple[str, int]]

    def pct(self, samples: int) -> float:
        return 100 * samples / self.samples if self.samples else 0.0


def _short_path(path: str, root: Path) -> str:
    marker = "site-packages/"
    if marker in path:
        return path.split(marker, 1)[1]
    prefix = str(root) + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def _project_packages(root: Path) -> set[str]:
    return {init.parent.name for init in root.glob("*/__init__.py")}


def frame_name(frame: str, root: Path, packages: set[str]) -> tuple[str, str]:
    """(``function (short/path.py)``, category) of one collapsed-stack frame.

    py-spy writes paths relative to the sys.path entry they were found under, so the project's
    own code shows as ``api/app.py`` and a library's as ``graphql/language/visitor.py``.
    """
    match = _FRAME.match(frame)
    if match is None:
        return frame, "other"
    path = _short_path(match["path"], root)
    name = f"{match['func']} ({path})"
    if path.split("/", 1)[0] in packages:
        return name, "omnimember"
    category = next((cat for cat, marker in _CATEGORIES if marker in "/" + path), "other")
    return name, category


def parse(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def stage_of(names: list[tuple[str, str]]) -> str:
    """The stage of a stack (root first): its innermost frame that is own code or matches a stage."""
    for name, category in reversed(names):
        if category == "omnimember":
            return OWN_CODE
        for stage, markers in _STAGES:
            if any(marker in name for marker in markers):
                return stage
    return OTHER_STAGE


def summarise(text: str, root: Path, top: int = 15) -> Hotspots:
    self_time: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    packages = _project_packages(root)
    for frames, count in parse(text):
        names = [frame_name(frame, root, packages) for frame in frames]
        leaf, category = names[-1]
        self_time[leaf] += count
        categories[category] += count
        stages[stage_of(names)] += count
    return Hotspots(sum(stages.values()), stages.most_common(), categories.most_common(), self_time.most_common(top))


def render(hotspots: Hotspots) -> list[str]:
    """Markdown lines: time by stage, self time by library, and the top functions by self time."""
    lines = [
        f"{hotspots.samples} samples of the server's Python stacks, idle time excluded. A sample counts a thread "
        "that is running or waiting for a core: on a busy machine, a system call that wakes PostgreSQL (psycopg's "
        "send) collects the time the server waits for the core it handed over, not CPU work of its own.",
        "",
    ]
    for title, rows in (
        ("stage (innermost matching frame)", hotspots.by_stage),
        ("library (self time)", hotspots.by_category),
        ("function (self time)", [(f"`{name}`", n) for name, n in hotspots.self_top]),
    ):
        lines += [f"| {title} | share |", "|---|---:|"]
        lines += [f"| {name} | {hotspots.pct(n):.1f}% |" for name, n in rows]
        lines.append("")
    return lines[:-1]
