"""Sizes and durations as people write them (``8G``, ``7.5GB``) and as every kvwall front end prints them."""

from __future__ import annotations

import re
import unicodedata

_BINARY = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DECIMAL = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse a memory size.

    ``K``/``M``/``G``/``T`` and ``KiB``/``MiB``/``GiB``/``TiB`` are binary (powers of 1024,
    as llama.cpp and most memory tools mean them); ``KB``/``MB``/``GB``/``TB`` are decimal;
    a bare number is bytes.

    Args:
        text: e.g. ``"8G"``, ``"8GiB"``, ``"8192M"``, ``"7.5GB"``, ``"123456789"``.

    Returns:
        The size in bytes (rounded down).

    Raises:
        ValueError: not a size (the message names the text and shows examples).
    """
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a memory size: {text!r} (examples: 8G, 8GiB, 8192M, 7.5GB)")
    number, prefix, suffix = m.group(1), m.group(2).upper(), m.group(3).upper()
    if suffix == "I" or (suffix and not prefix and suffix != "B"):
        raise ValueError(f"not a memory size: {text!r} (examples: 8G, 8GiB, 8192M, 7.5GB)")
    decimal = suffix == "B" and prefix != ""
    scale = _DECIMAL[prefix] if decimal else _BINARY[prefix]
    return int(float(number) * scale)


_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: int | float | None, *, max_decimals: int = 2) -> str:
    """Bytes for people, in binary units with three significant figures.

    The tray, the window and ``kvwall plan`` print ``1.50 GiB``, ``12.5 GiB``, ``512 MiB``;
    ``kvwall status`` passes ``max_decimals=1`` so its columns stay narrow (``8.0 GiB``).

    Args:
        n: a size in bytes; negative sizes keep their sign; None is unknown.
        max_decimals: the most digits after the point (a value under 10 would get 2).

    Returns:
        e.g. ``"1.50 GiB"``, ``"-512 MiB"``, ``"900 B"``; ``"?"`` for None.
    """
    if n is None:
        return "?"
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in _BINARY_UNITS:
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{int(value)} B"
            digits = min(max_decimals, 2 if value < 10 else 1 if value < 100 else 0)
            return f"{sign}{value:.{digits}f} {unit}"
        value /= 1024
    raise AssertionError("unreachable: the loop returns at TiB")


def format_mib(n: int | float) -> str:
    """Bytes as MiB with two decimals, exactly as llama.cpp prints buffer sizes."""
    return f"{n / (1 << 20):.2f} MiB"


def format_whole_mib(n: int | float) -> str:
    """Bytes as whole MiB with thousands separators (``1,536 MiB``), as llama.cpp's
    ``--fit`` messages say them: kvwall's notes on fit and attribution use it."""
    return f"{n / (1 << 20):,.0f} MiB"


def format_duration(seconds: float | None) -> str:
    """A time span for people: ``45 s``, ``14 min``, ``2 h 05 min``, ``3 days``.

    Args:
        seconds: the span; negative spans read as ``0 s``; None is unknown.

    Returns:
        The span in its largest sensible unit; ``"?"`` for None.
    """
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    if s < 90:
        return f"{s} s"
    m = s // 60
    if m < 90:
        return f"{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m:02d} min"
    return f"{h // 24} days"


# Bidirectional overrides and isolates are format characters (Cf) that reorder what a
# terminal or a Qt label shows, so a name could display as something it is not.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    """One character as it may be shown: itself, or a visible escape (``\\x1b``)."""
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    category = unicodedata.category(ch)
    if category in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS:
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def sanitize(text: str, limit: int = 500) -> str:
    """Text from outside (a server, a model file, an error) made safe to print or show.

    Control characters (C0, DEL, C1, line and paragraph separators, bidirectional
    overrides) are escaped visibly, so an escape sequence cannot set a terminal's title,
    clear its screen or forge a line; the result is one line. Text longer than ``limit``
    shown characters is cut, and says how much was left out.

    Args:
        text: any text; it may hold anything a hostile server or file put there.
        limit: the most characters shown before the cut (escapes count as shown).

    Returns:
        e.g. ``"model\\x1b[2J"``, or ``"aaaa … (99500 more characters)"``.
    """
    pieces: list[str] = []
    shown = 0
    # Each character shows as at least one, so no more than `limit` of them are looked at:
    # a 100 MB error message costs no more than a short one.
    for index, ch in enumerate(text[: limit + 1]):
        piece = _escape_char(ch)
        if shown + len(piece) > limit:
            return "".join(pieces) + f" … ({len(text) - index} more characters)"
        pieces.append(piece)
        shown += len(piece)
    return "".join(pieces)
