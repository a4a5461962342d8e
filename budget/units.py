"""Byte sizes as people write them (``8G``, ``8GiB``, ``8192M``, ``7.5GB``) and as kvwall prints them."""

from __future__ import annotations

import re

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


def format_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.50 KiB"``; MiB and GiB with two decimals, like llama.cpp's logs."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{int(n)} B"


def format_mib(n: int | float) -> str:
    """Bytes as MiB with two decimals, exactly as llama.cpp prints buffer sizes."""
    return f"{n / (1 << 20):.2f} MiB"
