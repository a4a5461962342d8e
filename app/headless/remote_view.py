"""``kvwall status --remote URL``: other machines' exporters, read in parallel, shown by host.

Each remote is read within one deadline; a remote that is down is shown as down and never
fails the command. Its pools and servers are added to the status object under
``remotes[]`` (``docs/json-schema.md``) and to the text screen, labelled with the host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvwall.app.headless.status import bar
from kvwall.budget.units import format_bytes
from kvwall.monitors.remote import DEFAULT_DEADLINE_S, RemoteGroup, RemoteStatus


def remote_json(remote: RemoteStatus) -> dict[str, Any]:
    """One ``remotes[]`` entry: the remote's devices, servers and forecasts, or why not."""
    status: Mapping[str, Any] = remote.status or {}
    return {
        "url": remote.url,
        "host": remote.host,
        "up": remote.up,
        "error": remote.error,
        "time": status.get("time"),
        "devices": list(status.get("devices", [])),
        "servers": list(status.get("servers", [])),
        "pool_forecasts": list(status.get("pool_forecasts", [])),
        "errors": list(status.get("errors", [])),
    }


def _gib(n: Any) -> str:
    return format_bytes(n if isinstance(n, (int, float)) else None, max_decimals=1)


def _device_line(host: str, d: Mapping[str, Any]) -> str:
    total, used = d.get("total_bytes"), d.get("used_bytes")
    label = f"{host}: {d.get('name')} ({d.get('id')})"
    if isinstance(total, int) and total > 0 and isinstance(used, int):
        return (f"  {label:<44} {bar(used / total)} {_gib(used)} / {_gib(total)} used, "
                f"{_gib(d.get('free_bytes'))} free")
    return f"  {label:<44} unknown"


def _server_lines(host: str, s: Mapping[str, Any]) -> list[str]:
    managed = f"  (managed by {s['managed_by']})" if s.get("managed_by") else ""
    memory = s.get("memory") or {}
    lines = [f"  {host}: {s.get('name')}  {s.get('url')}  [{s.get('health')}]{managed}",
             f"    memory   weights {_gib(memory.get('weights_bytes'))} + KV "
             f"{_gib(memory.get('kv_bytes'))} + compute {_gib(memory.get('compute_bytes'))}"
             f", measured {_gib(memory.get('measured_bytes'))}"]
    for slot in ([s["pool"]] if s.get("pool") else []) + list(s.get("slots", [])):
        n_ctx, tokens = slot.get("n_ctx") or 0, slot.get("tokens")
        frac = tokens / n_ctx if isinstance(tokens, int) and n_ctx else None
        turns = (slot.get("forecast") or {}).get("turns_left")
        label = "pool" if slot.get("id") == -1 else f"#{slot.get('id')}"
        lines.append(f"    {label:<6} {bar(frac, 16)} {tokens if tokens is not None else '?'}"
                     f"/{n_ctx}" + (f"  {turns} turn(s) left" if turns is not None else ""))
    return lines


def remote_text(remotes: Sequence[RemoteStatus]) -> str:
    """The remotes' part of the text screen ("" when no remote was asked for)."""
    lines: list[str] = []
    for r in remotes:
        if not r.up:
            lines += [f"Remote {r.host}  {r.url}  [down]", f"  ! {r.error}", ""]
            continue
        obj = remote_json(r)
        lines.append(f"Remote {r.host}  {r.url}")
        lines += [_device_line(r.host, d) for d in obj["devices"]]
        for s in obj["servers"]:
            lines += _server_lines(r.host, s)
        if not obj["servers"]:
            lines.append(f"  {r.host}: no llama.cpp server")
        lines += [f"  ! {r.host}: {e}" for e in obj["errors"]]
        lines.append("")
    return "\n".join(lines)


def with_remotes(obj: dict[str, Any], text: str, group: RemoteGroup | None
                 ) -> tuple[dict[str, Any], str]:
    """The status object and screen with the remotes added (unchanged without any)."""
    if group is None or not group.readers:
        return obj, text
    remotes = group.read()
    return ({**obj, "remotes": [remote_json(r) for r in remotes]},
            text.rstrip("\n") + "\n\n" + remote_text(remotes).rstrip("\n") + "\n")


def remote_group(urls: Sequence[str], token_file: str | None, deadline_s: float | None,
                 secrets: set[str]) -> RemoteGroup | None:
    """The ``--remote`` readers, the token (added to ``secrets``) read from ``token_file``.

    Raises:
        ValueError: a bad URL, or an unreadable or empty token file.
    """
    if not urls:
        return None
    token = None
    if token_file is not None:
        from kvwall.monitors.files import read_user_file

        try:  # a regular file of the user's, at most 64 KiB (a FIFO must not hang us)
            data = read_user_file(token_file, 1 << 16, own_only=True)
            token = data.decode("utf-8", errors="replace").split("\n", 1)[0].strip()
        except OSError as e:
            raise ValueError(f"--remote-token-file: cannot read {token_file!r} "
                             f"({e.strerror or e})") from None
        if not token:
            raise ValueError(f"--remote-token-file: {token_file!r} holds no token")
        secrets.add(token)
    try:
        return RemoteGroup([(u, token) for u in urls], deadline_s or DEFAULT_DEADLINE_S)
    except ValueError as e:
        raise ValueError(f"--remote: {e}") from None


__all__ = ["remote_group", "remote_json", "remote_text", "with_remotes"]
