"""API keys for the servers a headless command polls, kept off its command line.

Three sources, later ones overriding earlier ones for the same URL: the environment
variable :data:`ENV_VAR` (``URL=KEY`` pairs separated by commas or white space), each
``--api-key-file URL=PATH`` (the first line of a small regular file the user owns), and
each ``--api-key URL=KEY`` (visible to every local user in ``ps``; kept for scripts).
No message ever quotes a key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from kvwall.monitors.api_key import api_key_problem
from kvwall.monitors.files import UnsafeFile, read_user_file

ENV_VAR = "KVWALL_API_KEY"
MAX_KEY_FILE_BYTES = 64 * 1024  # a key is a line; anything larger is not a key file

KEY_HELP = (f"API keys, safest first: the environment variable {ENV_VAR}="
            "URL=KEY[,URL=KEY...]; --api-key-file URL=PATH (the key is the first line of "
            "PATH, a regular file you own); --api-key URL=KEY (shows the key to every local "
            "user in `ps`). A key is sent only to its own URL and never printed.")


class KeySourceError(ValueError):
    """A bad key source (one line, never the key; exit code 2)."""


def _url(url: str, source: str) -> str:
    """``url`` as the poller keys servers (kvwall's one URL normaliser)."""
    from kvwall.monitors.discovery import normalize_url  # only when a key is given

    try:
        return normalize_url(url, require_scheme=True)
    except ValueError as exc:  # InvalidURL, and urlsplit's own (an unclosed "[")
        raise KeySourceError(f"{source}: {exc}") from None


def _checked(key: str, source: str) -> str:
    problem = api_key_problem(key)
    if problem is not None:
        raise KeySourceError(f"{source}: the key {problem}")
    return key


def keys_from_args(items: Sequence[str]) -> dict[str, str]:
    """``--api-key URL=KEY`` values, split at the first ``=`` (a base64 key may end in one).

    Raises:
        KeySourceError: an item is not ``URL=KEY`` with an http(s) URL.
    """
    keys: dict[str, str] = {}
    for item in items:
        url, eq, key = item.partition("=")
        if not eq or not url or not key:
            raise KeySourceError("--api-key: expected URL=KEY (e.g. http://127.0.0.1:8080=$KEY)")
        keys[_url(url, "--api-key")] = _checked(key, "--api-key")
    return keys


def keys_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``URL=KEY`` pairs of :data:`ENV_VAR` (none when it is unset or empty).

    Raises:
        KeySourceError: a pair is not ``URL=KEY`` (the message gives its position only).
    """
    keys: dict[str, str] = {}
    for n, item in enumerate(re.split(r"[,\s]+", environ.get(ENV_VAR, "").strip()), 1):
        if not item:
            continue
        # Split at "=" after the URL's host: the key itself may hold "=".
        url, eq, key = item.partition("=")
        if not eq or not key or not url.startswith(("http://", "https://")):
            raise KeySourceError(f"{ENV_VAR}: entry {n} is not URL=KEY "
                                 "(e.g. http://127.0.0.1:8080=KEY)")
        keys[_url(url, f"{ENV_VAR} entry {n}")] = _checked(key, f"{ENV_VAR} entry {n}")
    return keys


def keys_from_files(items: Sequence[str]) -> dict[str, str]:
    """``--api-key-file URL=PATH`` values: each key is the first line of PATH, stripped.

    PATH must be a regular file owned by the user, at most :data:`MAX_KEY_FILE_BYTES`.

    Raises:
        KeySourceError: a bad item, or a file that cannot be read or holds no key.
    """
    keys: dict[str, str] = {}
    for item in items:
        url, eq, path = item.partition("=")
        if not eq or not url or not path:
            raise KeySourceError("--api-key-file: expected URL=PATH "
                                 "(e.g. http://127.0.0.1:8080=~/.config/llama/key)")
        source = f"--api-key-file {os.path.expanduser(path)!r}"
        keys[_url(url, "--api-key-file")] = _checked(_first_line(path, source), source)
    return keys


def _first_line(path: str, source: str) -> str:
    try:
        data = read_user_file(os.path.expanduser(path), MAX_KEY_FILE_BYTES, own_only=True)
    except UnsafeFile as e:
        raise KeySourceError(f"{source}: {e}") from None
    except OSError as e:
        raise KeySourceError(f"{source}: cannot read it ({e.strerror or e})") from None
    try:
        line = data.decode("utf-8").split("\n", 1)[0].strip()
    except UnicodeDecodeError:
        raise KeySourceError(f"{source}: not UTF-8 text") from None
    if not line:
        raise KeySourceError(f"{source}: the first line holds no key")
    return line


def api_keys(key_args: Sequence[str], key_files: Sequence[str],
             environ: Mapping[str, str]) -> dict[str, str]:
    """Every key by URL: environment, then files, then ``--api-key`` (the later wins).

    Raises:
        KeySourceError: any source is malformed or unreadable.
    """
    return {**keys_from_env(environ), **keys_from_files(key_files),
            **keys_from_args(key_args)}


__all__ = ["ENV_VAR", "KEY_HELP", "MAX_KEY_FILE_BYTES", "KeySourceError", "api_keys",
           "keys_from_args", "keys_from_env", "keys_from_files"]
