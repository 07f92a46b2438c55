"""The documentation cannot drift from the code: README.md and docs/*.md are read here, not rendered.

What is checked, and by which rule (so that a failure says what to fix):

* **Links.** Every markdown link and image, ``[text](target)`` or ``![alt](target)``, outside code spans
  and code blocks. Targets starting with ``http://``, ``https://`` or ``mailto:`` are not followed (tests
  never touch the network). A relative target must name an existing file or folder, relative to the page
  it is on; an anchor (``page.md#heading`` or ``#heading``) must be the GitHub slug of a heading of that
  page.
* **Commands.** Every ``python -m core ...`` shown, optionally after ``.venv/bin/``: in each line of a
  fenced code block (a trailing ``\\`` continues it on the next line, ``#`` starts a comment) and in
  each inline code span. The words after ``python -m core`` must parse with the real parser,
  `core.cli.build_parser`. One rule lets prose name a command: a span of ``python -m core <command>``
  alone only has to name an existing command (its required options are not asked for). A bare
  ``python -m core`` names the program. Nothing else is skipped, so a shown command never has
  placeholders: write a real value (``--n 200``), and show alternatives as separate commands.
* **docs/cli.md.** One ``### python -m core <command>`` section per command, in the order of
  `core.cli.COMMANDS`. Its options table (the table whose header's first cell is ``option``) has one
  row per option of that command's parser, no more and no fewer: the first cell is the option in
  backticks (``--model``, or a positional's name), the second its default as `shown_default` writes it,
  and every value the parser allows (``choices``) appears in the row.
* **Python.** Every ```` ```python ```` block compiles (it is not run: it would load a model).
* **docs/metrics.md** holds the row `metric_row` makes for every metric of `core.metrics.METRICS`.
* **Tiles.** Every ``st.metric`` tile of the app (``.metric(`` calls in views/ and ui/) passes ``help=``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from core.cli import COMMANDS, build_parser
from core.metrics import METRICS, Metric

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
COMMAND = re.compile(r"(?:^|[\s(])(?:\.venv/bin/)?python -m core(?=\s|$)(.*)", re.DOTALL)
EXTERNAL = ("http://", "https://", "mailto:")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _parts(page: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The page's prose as paragraphs (first line number, text joined by newlines) and its code-block lines."""
    paragraphs: list[tuple[int, str]] = []
    code: list[tuple[int, str]] = []
    current: list[str] = []
    start, fenced = 0, False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            code.append((number, line))
        elif line.strip():
            if not current:
                start = number
            current.append(line)
            continue
        if current:
            paragraphs.append((start, "\n".join(current)))
            current = []
    if current:
        paragraphs.append((start, "\n".join(current)))
    return paragraphs, code


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text (links and code marks removed), lower case, punctuation dropped
    (letters, digits, ``_``, ``-`` and spaces stay), spaces turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of ``page``'s headings; a repeated heading gets ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, paragraph in _parts(page)[0]:
        for line in paragraph.splitlines():
            if m := HEADING.match(line):
                base = slug(m.group(2))
                count = seen.get(base, 0)
                seen[base] = count + 1
                out.add(base if count == 0 else f"{base}-{count}")
    return out


def _links(page: Path) -> list[tuple[int, str]]:
    found = []
    for number, paragraph in _parts(page)[0]:
        prose = SPAN.sub(lambda m: " " * len(m.group(0)), paragraph)
        found += [(number, m.group(1)) for m in LINK.finditer(prose)]
    return found


def test_the_pages_are_there() -> None:
    names = {p.name for p in DOCS.glob("*.md")}
    for name in ("README.md", "views.md", "cli.md", "library.md", "metrics.md", "uncertainty.md",
                 "explanations.md", "strategies.md", "models-and-data.md", "scaling.md", "measurements.md",
                 "architecture.md"):
        assert name in names, f"docs/{name} is missing"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in DOCS.glob("*.md") if f"docs/{p.name}" not in readme]
    assert not missing, f"the README's documentation map does not link {missing}: add a line for each"
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and f"({p.name}" not in index]
    assert not missing, f"docs/README.md does not list {missing}: add a line for each"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for number, target in _links(page):
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{_rel(page)}:{number}: '{target}': no file {file.relative_to(ROOT)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{_rel(page)}:{number}: '{target}': {file.name} has no heading with the anchor "
                          f"'#{anchor}' (anchors are GitHub slugs of headings, e.g. '#{slug('Two traps')}')")
    assert not broken, "broken links; fix the target or the heading:\n" + "\n".join(broken)


def _commands(page: Path) -> list[tuple[int, str, bool]]:
    """(line, the words after ``python -m core``, shown in an inline span) for every command ``page`` shows."""
    found = []
    paragraphs, code = _parts(page)
    for number, paragraph in paragraphs:
        for span in SPAN.finditer(paragraph):
            if m := COMMAND.search(" ".join(span.group(2).split())):
                found.append((number, m.group(1), True))
    lines = iter(code)
    for number, line in lines:
        while line.rstrip().endswith("\\"):
            line = line.rstrip()[:-1] + " " + next(lines, (number, ""))[1]
        if m := COMMAND.search(line):
            found.append((number, m.group(1), False))
    return found


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _parse_error(words: list[str]) -> str | None:
    """None when ``words`` parse as ``python -m core`` arguments; otherwise what argparse said."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(words)
    except SystemExit as exit_:
        if exit_.code:
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exit_.code}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_command_shown_parses(page: Path) -> None:
    commands = _subparsers()
    bad = []
    for number, rest, inline in _commands(page):
        try:
            words = shlex.split(rest, comments=True)
        except ValueError as err:
            bad.append(f"{_rel(page)}:{number}: 'python -m core{rest}': {err}")
            continue
        if not words:
            continue
        if inline and len(words) == 1 and not words[0].startswith("-"):
            if words[0] not in commands:
                bad.append(f"{_rel(page)}:{number}: 'python -m core {words[0]}': no such command "
                           f"(the commands are {', '.join(commands)})")
            continue
        if (error := _parse_error(words)) is not None:
            bad.append(f"{_rel(page)}:{number}: 'python -m core {' '.join(words)}': {error}")
    assert not bad, ("commands that do not parse; write them as a user would type them (real values, no "
                     "brackets or '|' alternatives):\n" + "\n".join(bad))


def shown_default(action: argparse.Action) -> str:
    """How docs/cli.md writes an option's default: ``required``, ``off`` (a flag), ``none`` (None, empty), or the
    value in backticks."""
    if action.required:
        return "required"
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if action.default is None or action.default == "" or action.default == []:
        return "none"
    return f"`{action.default}`"


def _option_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def _cli_sections() -> dict[str, list[tuple[int, list[str]]]]:
    """docs/cli.md's ``### python -m core <command>`` sections in order, each with its options table's rows."""
    sections: dict[str, list[tuple[int, list[str]]]] = {}
    current: list[tuple[int, list[str]]] | None = None
    header: str | None = None
    fenced = False
    lines = (DOCS / "cli.md").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            fenced = not fenced
        if fenced:
            continue
        if m := HEADING.match(line):
            if len(m.group(1)) <= 3:
                current = None
            if len(m.group(1)) == 3 and (c := re.fullmatch(r"`?python -m core (\S+?)`?", m.group(2))):
                current = sections.setdefault(c.group(1), [])
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells[0].lower()
            continue
        if current is not None and header == "option" and not set(cells[0]) <= {"-", ":", " "}:
            current.append((number, cells))
    return sections


def test_cli_md_has_one_section_per_command_in_help_order() -> None:
    commands = list(_subparsers())
    assert len(commands) == len(COMMANDS)
    documented = list(_cli_sections())
    assert documented == commands, (
        f"docs/cli.md's '### python -m core <command>' sections are {documented}; they must be {commands} "
        "(the order of core.cli.COMMANDS)")


@pytest.mark.parametrize("command", list(_subparsers()))
def test_cli_md_documents_exactly_the_options_of_each_command(command: str) -> None:
    parser = _subparsers()[command]
    actions = {_option_name(a): a for a in parser._actions if not isinstance(a, argparse._HelpAction)}
    rows = _cli_sections().get(command, [])
    rows_by_name: dict[str, tuple[int, list[str]]] = {}
    problems = []
    for number, cells in rows:
        m = re.fullmatch(r"`([^`]+)`", cells[0])
        if not m:
            problems.append(f"docs/cli.md:{number}: the first cell must be one option in backticks, got {cells[0]!r}")
            continue
        if m.group(1) in rows_by_name:
            problems.append(f"docs/cli.md:{number}: {m.group(1)} is listed twice")
        rows_by_name[m.group(1)] = (number, cells)
    undocumented = [name for name in actions if name not in rows_by_name]
    if undocumented:
        problems.append(f"'{command}' has options docs/cli.md does not document: {undocumented}; add a row "
                        "'| `OPTION` | DEFAULT | what it means |' to its options table for each")
    for name, (number, cells) in rows_by_name.items():
        if name not in actions:
            problems.append(f"docs/cli.md:{number}: '{command}' has no option {name}: remove the row (or add it "
                            "to the parser)")
            continue
        action = actions[name]
        if len(cells) < 3 or cells[1] != shown_default(action):
            problems.append(f"docs/cli.md:{number}: {name}'s default cell must read {shown_default(action)!r} "
                            f"(the parser's default), got {cells[1] if len(cells) > 1 else None!r}")
        row = " ".join(cells)
        missing = [str(c) for c in action.choices or () if str(c) not in row]
        if missing:
            problems.append(f"docs/cli.md:{number}: {name} allows {list(action.choices)}; the row does not say "
                            f"{missing}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_python_block_compiles(page: Path) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)
    for i, block in enumerate(blocks, 1):
        try:
            compile(block, f"{_rel(page)}, python block {i}", "exec")
        except SyntaxError as err:
            pytest.fail(f"{_rel(page)}: python block {i} does not compile: {err}")


def metric_row(m: Metric) -> str:
    """The row of docs/metrics.md's table for metric ``m``."""
    values = f"{m.range[0]:g} or more" if m.range[1] == float("inf") else f"{m.range[0]:g} to {m.range[1]:g}"
    return f"| `{m.key}` | {m.title} | {m.better} | {values} | {m.meaning} |"


def test_metrics_md_has_every_metric_of_the_table() -> None:
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    missing = [metric_row(m) for m in METRICS.values() if metric_row(m) not in text]
    assert not missing, ("docs/metrics.md's metrics table lacks these rows (or they no longer match "
                         "core.metrics.METRICS); paste them in:\n" + "\n".join(missing))


def test_every_tile_has_help() -> None:
    bare = []
    for path in sorted([*(ROOT / "views").glob("*.py"), *(ROOT / "ui").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "metric"
                    and not any(k.arg == "help" for k in node.keywords)):
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bare, ("tiles without help text (give each help=, from core.metrics.METRICS[key].meaning where it "
                      "shows a metric): " + ", ".join(bare))
