"""A free loopback TCP port for a server a test starts (shared by every test folder)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
