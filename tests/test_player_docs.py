"""docs/players.md quotes the web players' set-up code the end-to-end tests run, verbatim.

Each snippet lives in a file of tests/e2e/web/ between `// snippet:start <name>` and
`// snippet:end`; the page includes it as `<!-- snippet: <file> <name> -->` followed by a
fenced block holding exactly those lines. A snippet that differs, one the page does not
include, or a reference to no snippet fails here. After changing a snippet, refresh the page:

    .venv/bin/python -m tests.test_player_docs --write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "players.md"
WEB = ROOT / "tests" / "e2e" / "web"
_START = re.compile(r"^// snippet:start (\S+)$")
_END = "// snippet:end"
# The reference, then the fenced block right after it (its body may be empty).
_INCLUDE = re.compile(
    r"^<!-- snippet: (?P<file>\S+) (?P<name>\S+) -->\n```(?P<lang>\w*)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)

Snippets = dict[tuple[str, str], str]


def file_snippets(path: Path) -> Snippets:
    """(file relative to the repository, name) -> the snippet's lines, newline-terminated."""
    found: Snippets = {}
    current: str | None = None
    lines: list[str] = []
    relative = path.relative_to(ROOT).as_posix()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        start = _START.match(line)
        if start:
            assert current is None, f"{relative}:{number}: snippet inside snippet {current}"
            current, lines = start.group(1), []
        elif line == _END:
            assert current is not None, f"{relative}:{number}: snippet:end without a start"
            assert (relative, current) not in found, f"{relative}: snippet {current} twice"
            found[relative, current] = "".join(f"{text}\n" for text in lines)
            current = None
        elif current is not None:
            lines.append(line)
    assert current is None, f"{relative}: snippet {current} never ends"
    return found


def web_snippets() -> Snippets:
    snippets: Snippets = {}
    for path in sorted(WEB.glob("*.js")):
        snippets |= file_snippets(path)
    return snippets


def doc_snippets(text: str) -> Snippets:
    included: Snippets = {}
    for match in _INCLUDE.finditer(text):
        key = (match["file"], match["name"])
        assert key not in included, f"docs/players.md includes {key} twice"
        included[key] = match["body"]
    return included


def write_doc() -> None:
    """Refresh every included snippet of the page from its file."""
    snippets = web_snippets()

    def fill(match: re.Match[str]) -> str:
        key = (match["file"], match["name"])
        if key not in snippets:
            raise SystemExit(f"docs/players.md includes {key}, which no file defines")
        head = f"<!-- snippet: {match['file']} {match['name']} -->\n```{match['lang']}\n"
        return head + snippets[key] + "```"

    DOC.write_text(_INCLUDE.sub(fill, DOC.read_text()))


def test_the_web_files_hold_the_snippets_the_players_run() -> None:
    snippets = web_snippets()
    assert {name for _, name in snippets} >= {"shaka", "shaka-fairplay", "hlsjs", "dashjs"}
    assert all(body.strip() for body in snippets.values())


def snippet_problems(snippets: Snippets, included: Snippets) -> list[str]:
    """What is wrong between the files' snippets and the page's copies (nothing: [])."""
    problems = [
        f"the page includes {key}, which no file defines"
        for key in included.keys() - snippets.keys()
    ]
    problems += [f"{key} is missing from the page" for key in snippets.keys() - included.keys()]
    problems += [
        f"{key} differs from its file"
        for key, body in snippets.items()
        if key in included and included[key] != body
    ]
    return sorted(problems)


def test_every_snippet_is_in_the_player_guide_exactly_as_the_tests_run_it() -> None:
    problems = snippet_problems(web_snippets(), doc_snippets(DOC.read_text()))
    hint = "run `.venv/bin/python -m tests.test_player_docs --write`"
    assert problems == [], f"docs/players.md: {'; '.join(problems)}; {hint}"


def test_a_changed_missing_or_unknown_snippet_is_a_problem() -> None:
    snippets = web_snippets()
    (file, name), body = next(iter(snippets.items()))
    only = {(file, name): body}
    block = f"<!-- snippet: {file} {name} -->\n```js\n{body}```\n"
    assert snippet_problems(only, doc_snippets(block)) == []
    drifted = doc_snippets(block.replace(body, body.replace("\n", "\n  ", 1)))
    assert snippet_problems(only, drifted) == [f"{(file, name)} differs from its file"]
    assert snippet_problems(only, {}) == [f"{(file, name)} is missing from the page"]
    unknown = doc_snippets(block.replace(f" {name} -->", " gone -->"))
    assert f"the page includes {(file, 'gone')}, which no file defines" in snippet_problems(
        only, unknown
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.test_player_docs --write")
    write_doc()
