"""What an API key may be before kvwall sends it as ``Authorization: Bearer KEY``."""

from __future__ import annotations

MAX_API_KEY_CHARS = 4096  # far above any real key; a bigger "key" is a mistake, not a key


def api_key_problem(key: object) -> str | None:
    """Why ``key`` cannot be sent as a bearer token, or None when it can.

    A key is a non-empty string of at most :data:`MAX_API_KEY_CHARS` characters without
    control characters (they would break or forge the HTTP header). The reason never
    quotes the key.

    Args:
        key: a value read from a settings file, a key file or the environment.

    Returns:
        None for a usable key, else a short reason ("is not a string", ...).
    """
    if not isinstance(key, str):
        return f"is not a string (type {type(key).__name__})"
    if not key:
        return "is empty"
    if len(key) > MAX_API_KEY_CHARS:
        return f"is longer than {MAX_API_KEY_CHARS} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "holds a control character"
    return None


__all__ = ["MAX_API_KEY_CHARS", "api_key_problem"]
