"""The label people tell a server by: its alias, else its name and port (one rule for the
window, the tray, the CLI and notifications)."""

from __future__ import annotations

from urllib.parse import urlsplit

from kvwall.budget.report import ServerReport

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})


def server_label(server: ServerReport) -> str:
    """``server``'s unique label: the alias given with ``-a``, else ``name:port``.

    A server on another machine reads ``name@host:port``, since two machines may run the
    same model on the same port.

    Args:
        server: a server from a :class:`kvwall.budget.report.StatusReport`.

    Returns:
        The label, for example ``qwen`` (``-a qwen``), ``llama_gqa_f16:8081`` or
        ``llama_gqa_f16@gpu-box:8080``.
    """
    alias = server.config.alias if server.config is not None else None
    if alias:
        return alias
    parts = urlsplit(server.url if "//" in server.url else f"//{server.url}")
    try:
        port = parts.port
    except ValueError:  # a malformed port: the URL says more than a guess would
        return f"{server.name} ({server.url})"
    host = parts.hostname or ""
    where = f":{port}" if port is not None else ""
    if host and host not in LOCAL_HOSTS:
        where = f"@{host}{where}"
    return f"{server.name}{where}" if where else server.name
