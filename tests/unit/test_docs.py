"""The documentation against the code: the state machine and the links."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from wanbalanced.slave import TRANSITIONS, Event, State

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
STATES_MD = DOCS / "states.md"

# "- `absent` + `adopted` -> `up`: explanation"
_TRANSITION = re.compile(r"- `([a-z_]+)` \+ `([a-z_]+)` -> `([a-z_]+)`(?::|$)")
# A table row whose first cell is a code span: "| `up` | yes | ... |"
_ROW = re.compile(r"\|\s*`([a-z_]+)`\s*\|")
# An inline link or image: [text](target) or [text](target "title")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)


def section(text: str, title: str) -> str:
    """The body of the level-2 section `## title`, up to the next `## `."""
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m is not None, f"no '## {title}' section in {STATES_MD.name}"
    return m.group(1)


def documented_transitions() -> dict[tuple[State, Event], State]:
    body = section(STATES_MD.read_text(encoding="utf-8"), "Transitions")
    found: dict[tuple[State, Event], State] = {}
    for line in body.splitlines():
        if not line.startswith("- "):
            continue  # continuation lines and prose
        m = _TRANSITION.match(line)
        assert m is not None, f"malformed transition line in {STATES_MD.name}: {line!r}"
        old, event, new = State(m[1]), Event(m[2]), State(m[3])
        assert (old, event) not in found, f"{STATES_MD.name} lists {old.value} + {event.value} twice"
        found[(old, event)] = new
    return found


def table_names(title: str) -> list[str]:
    body = section(STATES_MD.read_text(encoding="utf-8"), title)
    return [m[1] for line in body.splitlines() if (m := _ROW.match(line.strip()))]


def test_transition_list_is_the_code_table() -> None:
    documented = documented_transitions()
    missing = {f"{o.value} + {e.value} -> {n.value}" for (o, e), n in TRANSITIONS.items()
               if documented.get((o, e)) is not n}
    extra = {f"{o.value} + {e.value} -> {n.value}" for (o, e), n in documented.items()
             if TRANSITIONS.get((o, e)) is not n}
    assert not missing and not extra, f"docs/states.md is missing {sorted(missing)}, wrong or extra: {sorted(extra)}"
    assert documented == TRANSITIONS


def test_every_state_is_in_the_states_table() -> None:
    names = table_names("States")
    assert sorted(names) == sorted(s.value for s in State), names
    assert len(names) == len(set(names))


def test_every_event_is_in_the_events_table() -> None:
    names = table_names("Events")
    assert sorted(names) == sorted(e.value for e in Event), names
    assert len(names) == len(set(names))


def markdown_files() -> list[Path]:
    files = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    assert all(f.is_file() for f in files)
    return files


def relative_links(path: Path) -> list[str]:
    """Link targets in a Markdown file that are paths, not URLs or anchors;
    fenced code blocks are left out."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    out = []
    for target in _LINK.findall(text):
        url = urlparse(target)
        if url.scheme or url.netloc or not url.path:
            continue  # https://..., mailto:, or "#anchor" within the page
        out.append(unquote(url.path))
    return out


def test_relative_links_point_to_existing_files() -> None:
    broken = []
    seen = 0
    for md in markdown_files():
        for target in relative_links(md):
            seen += 1
            resolved = (md.parent / target).resolve()
            if not resolved.exists():
                broken.append(f"{md.relative_to(REPO)}: {target}")
            elif REPO not in resolved.parents and resolved != REPO:
                broken.append(f"{md.relative_to(REPO)}: {target} (outside the repository)")
    assert seen > 0, "no relative link found: the link pattern is broken"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_doc() -> None:
    readme = REPO / "README.md"
    linked = {(readme.parent / t).resolve() for t in relative_links(readme)}
    unlinked = [d.name for d in sorted(DOCS.glob("*.md")) if d.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"
