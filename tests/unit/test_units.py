"""budget/units.py: the one place sizes and durations are parsed and printed."""

from __future__ import annotations

import pytest
from kvwall.budget.units import format_bytes, format_duration, format_mib, parse_size

GiB = 1 << 30
MiB = 1 << 20


@pytest.mark.parametrize(("n", "text"), [
    (None, "?"), (900, "900 B"), (1536, "1.50 KiB"), (4 * GiB, "4.00 GiB"),
    (int(12.5 * GiB), "12.5 GiB"), (512 * MiB, "512 MiB"), (-2 * GiB, "-2.00 GiB"),
])
def test_bytes_in_three_significant_figures(n, text):
    assert format_bytes(n) == text


def test_status_columns_keep_one_decimal():
    assert format_bytes(8 * GiB, max_decimals=1) == "8.0 GiB"
    assert format_bytes(512 * MiB, max_decimals=1) == "512 MiB"


def test_mib_as_llama_cpp_logs_them():
    assert format_mib(1536 * 1024) == "1.50 MiB"


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "?"), (-3, "0 s"), (45, "45 s"), (14 * 60, "14 min"), (2 * 3600 + 5 * 60, "2 h 05 min"),
    (3 * 86400, "3 days"),
])
def test_one_duration_style_for_every_front_end(seconds, text):
    assert format_duration(seconds) == text


def test_sizes_as_people_write_them():
    assert parse_size("8G") == parse_size("8GiB") == 8 * GiB
    assert parse_size("7.5GB") == 7_500_000_000
    with pytest.raises(ValueError, match="not a memory size"):
        parse_size("8Q")


def test_sanitize_escapes_terminal_control_sequences() -> None:
    from kvwall.budget.units import sanitize

    assert sanitize("model\x1b]0;pwned\x07\x1b[2J") == "model\\x1b]0;pwned\\x07\\x1b[2J"
    assert sanitize("a\nFAKE LINE\r\tb") == "a\\nFAKE LINE\\r\\tb"
    assert sanitize("c1\x9bm del\x7f") == "c1\\x9bm del\\x7f"
    assert sanitize("ls\u2028x\u202eevil") == "ls\\u2028x\\u202eevil"
    assert sanitize("Qwen3 8B – ünïcode 模型") == "Qwen3 8B – ünïcode 模型"


def test_sanitize_cuts_long_text_and_says_how_much() -> None:
    from kvwall.budget.units import sanitize

    assert sanitize("x" * 500) == "x" * 500
    assert sanitize("x" * 100_000) == "x" * 500 + " … (99500 more characters)"
    assert sanitize("abcdef", limit=3) == "abc … (3 more characters)"
    # an escape is never split: it either fits whole or is left out
    assert sanitize("ab\x1b", limit=4) == "ab … (1 more characters)"
