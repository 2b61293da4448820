"""What the README and docs/ tell a newcomer and an operator (issue 24)."""

from __future__ import annotations

import re

from helpers import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = "```"
#: ``python -m server`` run outside the clone runs any ``server/`` folder of the
#: current folder instead (issue 24, point 6).
MODULE_COMMAND = re.compile(r"\bpython3? -m (server|client)\b")


def fenced_lines(text: str) -> list[str]:
    """The lines inside the ``` blocks of a Markdown text."""
    inside = False
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith(FENCE):
            inside = not inside
        elif inside:
            found.append(line)
    return found


def test_commands_in_readme_and_docs_are_the_installed_ones():
    for document in DOCUMENTS:
        for line in fenced_lines(document.read_text()):
            assert not MODULE_COMMAND.search(line), f"{document.name}: {line}"


def opening(text: str) -> str:
    """The README's text before its first section."""
    return text[:text.index("\n## ")]


def test_the_opening_says_what_the_protocol_protects_and_what_not():
    text = opening((REPO / "README.md").read_text())
    assert "end to end" not in text  # the server is never authenticated (docs/SECURITY.md)
    [paragraph] = [p for p in text.split("\n\n") if "(docs/SECURITY.md)" in p]
    words = " ".join(paragraph.split())
    assert "only listens" in words and "never authenticated" in words and "no MAC" in words
    assert words.count(". ") + 1 == 2  # two sentences


def section(text: str, title: str) -> str:
    """A README section, from its title to the next one."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_the_performance_figures_name_their_date_and_no_moving_tree():
    performance = section((REPO / "README.md").read_text(), "Performance")
    for moving in ("this tree", "today", "this round", "this session"):
        assert moving not in performance, moving
    assert re.search(r"measured on \d{4}-\d{2}-\d{2}", performance)
    assert "python bench/" in performance


def test_the_readme_says_which_connects_are_logged_and_how_long_the_tests_take():
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "one line per event (connect," not in readme  # most connected lines are DEBUG
    assert "`--log-level DEBUG` shows every connect" in readme
    tests = " ".join(section((REPO / "README.md").read_text(), "Tests").split())
    assert re.search(r"took \d+ minutes .*machine on \d{4}-\d{2}-\d{2}", tests)  # measured, dated


def test_the_client_help_does_not_promise_end_to_end_encryption(capsys):
    from client.__main__ import main
    assert main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "end to end" not in help_text and "the server is not authenticated" in help_text


def test_the_first_command_serves_this_machine_only():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split(f"{FENCE}sh\n", 1)[1].split(FENCE, 1)[0]
    first_command = next(line for line in first_block.splitlines() if line.strip())
    assert "cipherdrop-server" in first_command and "--host 127.0.0.1" in first_command


def test_the_client_exit_code_1_names_the_files_retry_budget():
    # issue 23 point 9: one budget per file; "3 retries of a step" was stale
    rows = {document.name: next(line for line in document.read_text().splitlines()
                                if line.startswith("| 1 |"))
            for document in (REPO / "README.md", REPO / "docs" / "CLIENT.md")}
    for name, row in rows.items():
        assert "3 retries of the file" in row and not row.endswith("of a step |"), f"{name}: {row}"


def test_the_readme_does_not_say_the_client_switches_layout_once():
    # the fallbacks are a ladder, each rung taken at most once (docs/CLIENT.md)
    text = " ".join((REPO / "README.md").read_text().split())
    assert "switches layout once" not in text
    assert "each switch at most once in a run" in text
