"""Every link in the README and docs/*.md resolves: files and folders exist, anchors name a heading.

Links are `[text](target)`, `[label]: target` definitions and `<https://...>` autolinks outside code
(fenced blocks and `inline code` are text, not links). A relative target must exist relative to the
page (a leading `/` means the repository root) and stay inside the repository; a `#fragment` must
be the GitHub slug of a heading of the target page (or a line anchor `#L12` of another file).
External links are only checked to be well-formed: no network.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)  # within a paragraph
INLINE_LINK = re.compile(
    r"""\[ (?P<text> (?:[^\[\]] | \[[^\[\]]*\])* ) \]  # [text], one level of nested brackets
        \( \s* (?P<target> <[^>\n]*> | [^)\s]+ ) (?:\s+"[^"]*")? \s* \)  # (target "title")""",
    re.X,
)
DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(?P<target>\S+)", re.M)
AUTOLINK = re.compile(r"<(?P<target>[a-zA-Z][a-zA-Z0-9+.-]*:[^<>\s]*)>")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(?P<text>.*?)(?:[ \t]+#+)?[ \t]*$")
LINE_ANCHOR = re.compile(r"L(?P<start>\d+)(?:-L(?P<end>\d+))?")
EXTERNAL_SCHEMES = {"http", "https", "mailto"}


@dataclass(frozen=True, slots=True)
class Link:
    target: str
    line: int


def prose(markdown: str) -> str:
    """The text outside fenced code blocks; fenced lines become empty so line numbers stay."""
    kept: list[str] = []
    fence: str | None = None
    for line in markdown.split("\n"):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
            kept.append("")
        elif fence is not None:
            closing = FENCE.match(line)
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
                fence = None
            kept.append("")
        else:
            kept.append(line)
    return "\n".join(kept)


def without_code_spans(text: str) -> str:
    """Inline code replaced by as many spaces (newlines kept): paths in backticks are not links."""
    return CODE_SPAN.sub(lambda span: re.sub(r"[^\n]", " ", span.group(0)), text)


def links(markdown: str) -> list[Link]:
    text = without_code_spans(prose(markdown))
    found: list[tuple[int, str]] = []
    for pattern in (INLINE_LINK, DEFINITION, AUTOLINK):
        found += [(match.start(), match.group("target")) for match in pattern.finditer(text)]
    return [Link(target.strip("<>"), text.count("\n", 0, at) + 1) for at, target in sorted(found)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped except `-` and `_`,
    spaces as `-` (letters of every script kept)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link reads as its text
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings; a repeated one gets -1, -2 ... as on GitHub."""
    seen: Counter[str] = Counter()
    found: set[str] = set()
    for line in prose(markdown).split("\n"):
        heading = HEADING.match(line)
        if heading is None:
            continue
        base = slug(heading.group("text"))
        found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def problem(page: Path, target: str, root: Path = ROOT) -> str | None:
    """What is wrong with one link of `page`, or None."""
    parts = urlsplit(target)
    if parts.scheme:
        if parts.scheme not in EXTERNAL_SCHEMES:
            return f"unexpected scheme {parts.scheme!r}"
        if parts.scheme != "mailto" and not parts.netloc:
            return "malformed URL (no host)"
        return None
    path = unquote(parts.path)
    if not path:
        resolved = page
    elif path.startswith("/"):
        resolved = (root / path.lstrip("/")).resolve()
    else:
        resolved = (page.parent / path).resolve()
    if not resolved.is_relative_to(root.resolve()):
        return "points outside the repository"
    if not resolved.exists():
        return f"no such file or folder: {resolved.relative_to(root.resolve())}"
    return None if not parts.fragment else _anchor_problem(resolved, unquote(parts.fragment))


def _anchor_problem(resolved: Path, fragment: str) -> str | None:
    if resolved.is_dir():
        return f"an anchor on a folder: #{fragment}"
    text = resolved.read_text(encoding="utf-8")
    if resolved.suffix == ".md":
        return None if fragment in anchors(text) else f"no heading with anchor #{fragment} in {resolved.name}"
    lines = LINE_ANCHOR.fullmatch(fragment)
    if lines is None:
        return f"#{fragment} is not a line anchor of {resolved.name}"
    last = int(lines.group("end") or lines.group("start"))
    return None if 1 <= int(lines.group("start")) <= last <= len(text.splitlines()) else f"no line #{fragment}"


def problems(page: Path, root: Path = ROOT) -> list[str]:
    found: list[str] = []
    for link in links(page.read_text(encoding="utf-8")):
        wrong = problem(page, link.target, root)
        if wrong is not None:
            found.append(f"{page.relative_to(root)}:{link.line}: ({link.target}) {wrong}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=[page.relative_to(ROOT).as_posix() for page in PAGES])
def test_every_link_resolves(page: Path) -> None:
    found = problems(page)
    assert not found, "broken links:\n" + "\n".join(found)


def test_the_readme_links_to_every_page_of_the_docs() -> None:
    targets = {link.target.partition("#")[0] for link in links((ROOT / "README.md").read_text(encoding="utf-8"))}
    unlinked = [page.name for page in PAGES[1:] if f"docs/{page.name}" not in targets]
    assert not unlinked, f"README links none of: {unlinked}"


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Lots and expiry\n\n## 标签 目录\n")
    (tmp_path / "code.py").write_text("a = 1\nb = 2\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n"
        "[ok](docs/other.md#lots-and-expiry) [ok](docs/other.md#标签-目录) [ok](#title) [ok](docs/)\n"
        "[ok](code.py#L2) <http://127.0.0.1:8000/graphql> [ok](https://example.com/a?b=c)\n"
        "`[not a link](missing.md)` and\n\n```bash\n[not a link](missing.md)\n# Not a heading\n```\n\n"
        "[gone](docs/missing.md) [gone](#not-a-heading) [gone](docs/other.md#lots)\n"
        "[gone](code.py#L3) [gone](https:///nohost) [gone](../outside.md) [gone](docs/#top)\n"
        "[ref]: docs/also-missing.md\n"
    )
    reported = [re.match(r"README\.md:(\d+): \((.*?)\) ", line) for line in problems(page, tmp_path)]
    assert [(int(m[1]), m[2]) for m in reported if m] == [
        (12, "docs/missing.md"),
        (12, "#not-a-heading"),
        (12, "docs/other.md#lots"),
        (13, "code.py#L3"),
        (13, "https:///nohost"),
        (13, "../outside.md"),
        (13, "docs/#top"),
        (14, "docs/also-missing.md"),
    ]


def test_slugs_follow_github() -> None:
    assert slug("Facts: what each name means") == "facts-what-each-name-means"
    assert slug("A five-minute tour") == "a-five-minute-tour"
    assert slug("`store/` and [links](x.md)") == "store-and-links"
    assert slug("会员 标签_v2") == "会员-标签_v2"
    assert anchors("# Same\n## Same\n### Same\n") == {"same", "same-1", "same-2"}
