"""README's flags table is true: every flag it lists for a command is in that command's `--help`,
and every flag `--help` shows is in the table (the console scripts themselves are run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[3] / "README.md"
BIN = Path(sys.executable).parent
_ROW = re.compile(r"^\| `([a-z][a-z -]*)` \| (.*) \|$")
_FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def table() -> dict[str, list[str]]:
    """command -> the flags README's "### Flags" table lists for it."""
    text = README.read_text()
    section = text[text.index("### Flags"):]
    section = section[: section.index("\n### ", 1)]
    rows = {}
    for line in section.splitlines():
        found = _ROW.match(line)
        if found:
            rows[found.group(1)] = re.findall(r"`(--?[\w-]+)`", found.group(2))
    return rows


def help_flags(command: str) -> set[str]:
    program, *sub = command.split()
    done = subprocess.run([str(BIN / program), *sub, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    options = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("-")]
    return {flag for line in options for flag in _FLAG.findall(line.split("  ")[0])} - {"-h", "--help"}


def test_the_table_covers_every_command() -> None:
    assert set(table()) == {
        "deployment-engine", "rollback-manager", "environment-manager", "safeship init", "safeship simulate",
        "safeship server", "safeship logs", "safeship pipeline run", "safeship pipeline history",
        "safeship token create", "safeship token list", "safeship token revoke", "safeship audit"}


@pytest.mark.parametrize("command", sorted(table()))
def test_every_flag_in_the_readme_exists_and_every_flag_is_in_the_readme(command: str) -> None:
    listed = table()[command]
    shown = help_flags(command)
    assert sorted(set(listed) - shown) == [], f"README lists flags {command} --help does not have"
    assert sorted(shown - set(listed)) == [], f"{command} --help has flags README's table does not list"
