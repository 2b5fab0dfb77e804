"""The documentation says what the code does.

Checked both ways where it is cheap: every device command and status code is
in docs/PROTOCOL.md with its value, and the document lists no other; every
status code has a row in the cashier table of docs/operating.md; every chain
error code is the `ErrorCode` enum of docs/chain-openapi.yaml and a row of
operating.md's rejection table; the metrics and configuration keys
operating.md names exist; every `taxctl ...` command in README.md and
operating.md parses with the real argument parser; every relative link
points at a file (and heading) that exists. No processes, no network.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from device.protocol.commands import Command
from device.protocol.status import Status
from hostsim.chain.errors import Code
from syncd import config as config_mod
from syncd.metrics import SyncdMetrics
from syncd.refusals import for_status
from taxctl.cli import build_parser
from taxctl_base import exits

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"
OPERATING = ROOT / "docs" / "operating.md"
OPENAPI = ROOT / "docs" / "chain-openapi.yaml"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


# --- reading Markdown --------------------------------------------------------------------


def prose_lines(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def code_blocks(text: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def inline_code(text: str) -> list[str]:
    spans = re.findall(r"`([^`\n]+)`", "\n".join(prose_lines(text)))
    return [s.replace("\\|", "|") for s in spans]


def section(text: str, title: str) -> str:
    """The part of `text` under the heading that starts with `title`, up to the next
    heading of the same or a higher level."""
    out: list[str] = []
    level = 0
    for line in prose_lines(text):
        m = HEADING.match(line)
        if m and level and len(m.group(1)) <= level:
            break
        if level:
            out.append(line)
        elif m and m.group(2).startswith(title):
            level = len(m.group(1))
    assert level, f"no heading starting with {title!r}"
    return "\n".join(out)


def cells(line: str) -> list[str]:
    inner = line.strip().strip("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table as a list of rows keyed by the header's cells."""
    found: list[list[dict[str, str]]] = []
    lines = list(prose_lines(text))
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|?[\s:|-]+\|?", lines[i + 1].strip()):
            header = [h.lower() for h in cells(lines[i])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, cells(lines[i]), strict=False)))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def one_table(text: str, first_column: str) -> list[dict[str, str]]:
    matching = [t for t in tables(text) if t and first_column in t[0]]
    assert len(matching) == 1, f"expected one table with a {first_column!r} column"
    return matching[0]


def hex_names(rows: list[dict[str, str]], value_column: str, name_column: str) -> dict[str, int]:
    """{NAME: value} from rows like | `0x10` | ISSUE | ...; a name listed twice fails."""
    out: dict[str, int] = {}
    for row in rows:
        value = re.fullmatch(r"`0x([0-9A-Fa-f]{2})`", row[value_column])
        assert value, f"not a `0xNN` value: {row[value_column]!r}"
        name = row[name_column].strip("`")
        assert name not in out, f"{name} listed twice"
        out[name] = int(value.group(1), 16)
    return out


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


# --- the wire protocol -------------------------------------------------------------------


def test_protocol_lists_exactly_the_commands() -> None:
    rows = one_table(section(PROTOCOL.read_text(encoding="utf-8"), "4. Commands"), "value")
    documented = hex_names(rows, "value", "command")
    assert documented == {c.name: c.value for c in Command}


def test_protocol_lists_exactly_the_status_codes() -> None:
    rows = one_table(section(PROTOCOL.read_text(encoding="utf-8"), "5. Status codes"), "code")
    documented = hex_names(rows, "code", "name")
    assert documented == {s.name: s.value for s in Status}


STATEMENT = re.compile(r'<a id="(s-[a-z0-9-]+)"></a>')
COVERS = re.compile(r"@covers\(([^)]*)\)")


def covered_statements() -> dict[str, list[str]]:
    """{statement id: the test files whose covers decorators name it}, from the sources."""
    out: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for args in COVERS.findall(path.read_text(encoding="utf-8")):
            for statement in re.findall(r'"([^"]+)"', args):
                out.setdefault(statement, []).append(path.name)
    return out


def test_every_protocol_statement_has_a_test_and_every_test_a_statement() -> None:
    """Statements a client depends on are tagged <a id="s-..."></a> in docs/PROTOCOL.md;
    a test checking one is decorated with `covers` and that id (tests/statements.py).
    Both ways, so a tagged rule nobody tests, or a test of a rule the document dropped,
    fails here."""
    tagged = STATEMENT.findall(PROTOCOL.read_text(encoding="utf-8"))
    assert len(tagged) == len(set(tagged)), "a statement id is used twice"
    assert len(tagged) >= 20, "the statement tags went missing"
    covered = covered_statements()
    untested = sorted(set(tagged) - set(covered))
    assert not untested, f"docs/PROTOCOL.md statements without a test: {untested}"
    unknown = {s: files for s, files in covered.items() if s not in tagged}
    assert not unknown, f"tests cover statements docs/PROTOCOL.md does not make: {unknown}"


# --- operating.md ------------------------------------------------------------------------


def test_cashier_table_has_every_status_with_its_http_status_and_an_action() -> None:
    text = section(OPERATING.read_text(encoding="utf-8"), "Device status codes")
    rows = one_table(text, "code")
    assert hex_names(rows, "code", "name") == {s.name: s.value for s in Status}
    for row in rows:
        status = Status[row["name"]]
        assert row["what it means"] and row["what the cashier does"], row
        if status is not Status.OK:
            assert row["http"] == str(for_status(status).http), row


def test_rejection_table_has_exactly_the_chain_codes() -> None:
    text = section(OPERATING.read_text(encoding="utf-8"), "Chain rejection codes")
    rows = one_table(text, "code")
    listed = [code for row in rows for code in ticked(row["code"])]
    assert len(listed) == len(set(listed)), "a code is listed twice"
    assert set(listed) == {c.value for c in Code}
    for row in rows:
        assert row["what it means"] and row["what the operator does"], row


def test_exit_code_table_is_the_code_table() -> None:
    text = section(OPERATING.read_text(encoding="utf-8"), "Exit codes")
    rows = one_table(text, "exit")
    listed = [(int(r["exit"]), r["name"].strip("`"), r["meaning"]) for r in rows]
    assert listed == [tuple(e) for e in exits.TABLE]


def test_help_lists_every_exit_code() -> None:
    shown = build_parser().format_help()
    for e in exits.TABLE:
        assert re.search(rf"^\s+{e.code}\s+{e.name}\s", shown, re.M), e


def emitted_metrics() -> set[str]:
    """syncd's own metrics (the standard process_* ones are not in the table)."""
    return set(re.findall(r"^# TYPE (taxctl_syncd_\S+) ", SyncdMetrics().render(), re.M))


def test_operating_names_every_metric_and_only_real_ones() -> None:
    text = OPERATING.read_text(encoding="utf-8")
    rows = one_table(text, "metric")
    assert {row["metric"].strip("`") for row in rows} == emitted_metrics()
    mentioned = set(re.findall(r"\btaxctl_syncd_\w+", text))
    suffixes = re.compile(r"_(bucket|sum|count)$")
    unknown = {m for m in mentioned if m not in emitted_metrics()}
    unknown = {m for m in unknown if suffixes.sub("", m) not in emitted_metrics()}
    assert not unknown, f"operating.md names metrics syncd does not emit: {sorted(unknown)}"


def test_operating_config_table_matches_the_options() -> None:
    rows = one_table(section(OPERATING.read_text(encoding="utf-8"), "Configuration"), "key")
    documented = {row["key"].strip("`"): row for row in rows}
    assert set(documented) == set(config_mod.BY_KEY)
    for key, row in documented.items():
        option = config_mod.BY_KEY[key]
        assert row["flag"].strip("`") == option.flag, key
        assert row["default"].lower() == str(option.default).lower(), key


def test_operating_mentions_only_real_config_keys() -> None:
    text = OPERATING.read_text(encoding="utf-8")
    extra = {"chain.urls", "api.socket"}
    sections = "|".join(sorted(config_mod.SECTIONS))
    mentioned = set(re.findall(rf"`((?:{sections})\.[a-z_]+)`", text))
    unknown = mentioned - set(config_mod.BY_KEY) - extra
    assert not unknown, f"operating.md names configuration keys that do not exist: {unknown}"


# --- the chain API -----------------------------------------------------------------------


def test_openapi_error_code_enum_is_exactly_the_chain_codes() -> None:
    doc = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    enum = doc["components"]["schemas"]["ErrorCode"]["enum"]
    assert len(enum) == len(set(enum))
    assert set(enum) == {c.value for c in Code}

    def listed(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "x-error-codes":
                    yield from value
                else:
                    yield from listed(value)
        elif isinstance(node, list):
            for item in node:
                yield from listed(item)

    per_response = set(listed(doc))
    assert per_response, "no x-error-codes found"
    assert per_response <= set(enum), per_response - set(enum)


# --- taxctl commands in README.md and operating.md ---------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def invocations(text: str) -> Iterator[list[str]]:
    """The words after each `taxctl` that starts a shell command in `text`."""
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line)
        for part in re.split(r"&&|\|\||[|;&]", line):
            words = part.split()
            while words and (words[0] == "sudo" or re.fullmatch(r"\w+=\S*", words[0])):
                value = words[0].partition("=")[2]  # X=$(taxctl ...): the command is inside
                words = ([value] if value.startswith("$(") else []) + words[1:]
            if words:
                words[0] = words[0].lstrip("$(")
            if words and re.fullmatch(r"(?:\S*/)?taxctl", words[0]):
                yield words[1:]


def check_invocation(parser: argparse.ArgumentParser, words: list[str]) -> tuple[str, str | None]:
    """The subcommand path the words name, and a problem (None if they parse)."""
    path = ["taxctl"]
    rest = list(words)
    while rest:
        action = subcommands(parser)
        word = rest[0]
        if action is None or word.startswith("-") or word in ("…", "..."):
            break
        if word not in action.choices:
            return " ".join(path), f"{' '.join(path)} has no subcommand {word!r}"
        parser = action.choices[word]
        path.append(word)
        rest.pop(0)
    for word in rest:
        flag = re.match(r"\[?(--[a-z][a-z0-9-]*)", word)
        if flag and flag.group(1) not in parser._option_string_actions:
            return " ".join(path), f"{' '.join(path)} has no option {flag.group(1)}"
    return " ".join(path), None


@pytest.mark.parametrize("doc", [README, OPERATING], ids=lambda p: p.name)
def test_taxctl_commands_in_docs_exist(doc: Path) -> None:
    parser = build_parser()
    text = doc.read_text(encoding="utf-8")
    seen: set[str] = set()
    problems: list[str] = []
    for snippet in code_blocks(text) + inline_code(text):
        for words in invocations(snippet):
            path, problem = check_invocation(parser, words)
            seen.add(path)
            if problem:
                problems.append(f"{problem}: taxctl {' '.join(words)}")
    assert not problems, "\n".join(problems)
    if doc == README:
        assert {"taxctl demo", "taxctl syncd status", "taxctl device receipt"} <= seen, seen
    else:
        assert {"taxctl ports", "taxctl syncd register", "taxctl syncd run"} <= seen, seen


def test_invocation_checker_catches_a_wrong_command() -> None:
    parser = build_parser()
    [words] = list(invocations("taxctl syncd statuz --api 127.0.0.1:1 &"))
    assert check_invocation(parser, words)[1]
    [words] = list(invocations("taxctl device receipt --port X --colour red"))
    assert check_invocation(parser, words)[1]
    [words] = list(invocations("sudo /usr/local/bin/taxctl hostsim chain verify --data D"))
    assert check_invocation(parser, words) == ("taxctl hostsim chain verify", None)
    [words] = list(invocations("X=$(taxctl ports --jsn)"))
    assert check_invocation(parser, words) == ("taxctl ports", "taxctl ports has no option --jsn")


# --- links -------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: p.name)
def test_relative_links_point_at_files_that_exist(doc: Path) -> None:
    text = "\n".join(prose_lines(doc.read_text(encoding="utf-8")))
    text = re.sub(r"`[^`\n]*`", "", text)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    broken = []
    for link in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", link):
            continue  # http:, https:, mailto:
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)
