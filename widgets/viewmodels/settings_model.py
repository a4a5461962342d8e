"""The settings model: the schema that drives validation and the preferences dialog.

Qt-free and free of file I/O (the store, ``kvwall.app.desktop.settings``, reads and writes
the file). API keys live in :class:`ServerEntry`; they never appear in ``repr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 2  # the settings file's format; version 1 is migrated by migrate_v1

# Notification kinds, in the user's words (ids are stable, used as keys in the file).
NOTIFY_KINDS: dict[str, str] = {
    "free_memory": "Free memory below the threshold",
    "pool_forecast": "A memory pool (or a unified KV pool) forecast to run out",
    "slot_forecast": "A slot forecast to fill soon",
    "slot_full": "A slot that is full",
    "server_unreachable": "A server that became unreachable",
    "process_grab": "Another process took a large share of a GPU",
}


FieldKind = Literal["int", "float", "bool", "kinds", "servers"]


@dataclass(frozen=True)
class SettingField:
    """One setting: its key, type, default, bounds and the words the dialog shows.

    ``kind`` is ``int`` | ``float`` | ``bool`` | ``kinds`` (a subset of NOTIFY_KINDS) |
    ``servers`` (a list of ``{"url", "api_key"}``).
    """

    key: str
    label: str
    kind: FieldKind
    default: Any
    group: str
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""
    help: str = ""


SCHEMA: tuple[SettingField, ...] = (
    SettingField("poll_interval_s", "Poll every", "float", 2.0, "Polling", 0.5, 60.0, "s",
                 "How often kvwall reads memory and asks each server for its slots."),
    SettingField("free_warn_percent", "Warn when free memory is below", "float", 10.0,
                 "Thresholds", 0.0, 100.0, "%", "Share of a pool that is still free."),
    SettingField("free_critical_percent", "Critical when free memory is below", "float", 5.0,
                 "Thresholds", 0.0, 100.0, "%"),
    SettingField("slot_warn_turns", "Warn when a slot fills within", "int", 5, "Thresholds",
                 1, 1000, "requests",
                 "Requests left before the slot's context is full, counting the one that "
                 "fills it (1: the next request)."),
    SettingField("slot_critical_turns", "Critical when a slot fills within", "int", 2,
                 "Thresholds", 0, 1000, "requests"),
    SettingField("slot_warn_minutes", "Warn when a slot fills within", "float", 15.0,
                 "Thresholds", 0.0, 1440.0, "min"),
    SettingField("slot_critical_minutes", "Critical when a slot fills within", "float", 5.0,
                 "Thresholds", 0.0, 1440.0, "min"),
    SettingField("slot_full_percent", "A slot counts as full at", "float", 95.0, "Thresholds",
                 50.0, 100.0, "%"),
    SettingField("grab_percent", "Warn when another process takes at least", "float", 10.0,
                 "Thresholds", 1.0, 100.0, "% of a GPU",
                 "Growth of other processes' memory within a minute."),
    SettingField("notify_kinds", "Notify about", "kinds", tuple(NOTIFY_KINDS), "Notifications"),
    SettingField("servers", "Extra servers", "servers", (), "Servers",
                 help="Servers kvwall cannot find by itself (remote, containers). "
                      "The API key is sent only to its own server."),
    SettingField("remotes", "Remote machines", "servers", (), "Remote machines",
                 help="Other machines running `kvwall exporter` (http://host:9766); the key "
                      "column holds its --token-file token, sent only to that machine."),
    SettingField("start_on_login", "Start kvwall when I log in", "bool", False, "General"),
)

FIELDS: dict[str, SettingField] = {f.key: f for f in SCHEMA}


@dataclass(frozen=True)
class ServerEntry:
    """A server URL the user added, with its API key (never shown in repr)."""

    url: str
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    """Validated settings; build a changed copy with :meth:`replace`."""

    values: Mapping[str, Any] = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __repr__(self) -> str:  # keys masked: the servers list holds API keys
        shown = {k: v for k, v in self.values.items() if k != "servers"}
        shown["servers"] = [s.url for s in self.values.get("servers", ())]
        return f"Settings({shown!r})"

    def replace(self, **changes: Any) -> Settings:
        merged = dict(self.values)
        for key, value in changes.items():
            if key not in FIELDS:
                raise KeyError(f"unknown setting {key!r}")
            merged[key] = validate(FIELDS[key], value)
        return Settings(merged)

    @property
    def servers(self) -> tuple[ServerEntry, ...]:
        servers: tuple[ServerEntry, ...] = self.values["servers"]
        return servers


def defaults() -> Settings:
    """Every field at its default."""
    return Settings({f.key: validate(f, f.default) for f in SCHEMA})


class InvalidSetting(ValueError):
    """A value that does not fit its field (message names the field)."""


def validate(f: SettingField, value: Any) -> Any:
    """``value`` checked against ``f`` and normalised (numbers, kinds in order, entries).

    Raises:
        InvalidSetting: the value does not fit the field.
    """
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise InvalidSetting(f"{f.key}: expected true/false")
        return value
    if f.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidSetting(f"{f.key}: expected a number")
        if f.kind == "int":
            if int(value) != value:
                raise InvalidSetting(f"{f.key}: expected a whole number")
            value = int(value)
        else:
            value = float(value)
        if f.minimum is not None and value < f.minimum:
            raise InvalidSetting(f"{f.key}: below {f.minimum:g}")
        if f.maximum is not None and value > f.maximum:
            raise InvalidSetting(f"{f.key}: above {f.maximum:g}")
        return value
    if f.kind == "kinds":
        if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
            raise InvalidSetting(f"{f.key}: expected a list")
        unknown = [v for v in value if v not in NOTIFY_KINDS]
        if unknown:
            raise InvalidSetting(f"{f.key}: unknown kind {unknown[0]!r}")
        return tuple(k for k in NOTIFY_KINDS if k in set(value))
    if f.kind == "servers":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise InvalidSetting(f"{f.key}: expected a list")
        out = []
        for item in value:
            url: object
            key: object
            if isinstance(item, ServerEntry):
                url, key = item.url, item.api_key
            elif isinstance(item, Mapping):
                url, key = item.get("url"), item.get("api_key")
            else:
                raise InvalidSetting(f"{f.key}: expected url entries")
            out.append(ServerEntry(normalise_url(url), key or None))
        return tuple(out)
    raise InvalidSetting(f"{f.key}: unknown field kind {f.kind}")


def normalise_url(url: Any) -> str:
    """A server base URL, as :func:`kvwall.monitors.discovery.normalize_url` writes it.

    Raises:
        InvalidSetting: not an http(s) URL with a host.
    """
    from kvwall.monitors.discovery import InvalidURL, normalize_url

    if not isinstance(url, str):
        raise InvalidSetting("server URL: not text")
    try:
        return normalize_url(url)
    except InvalidURL as exc:
        raise InvalidSetting(f"server URL: {exc}") from None


def to_json(settings: Settings) -> dict[str, Any]:
    """The settings file's object: ``{"schema": SCHEMA_VERSION, "values": {...}}``."""
    values: dict[str, Any] = {}
    for f in SCHEMA:
        v = settings.values[f.key]
        if f.kind == "servers":
            v = [{"url": s.url, **({"api_key": s.api_key} if s.api_key else {})} for s in v]
        elif f.kind == "kinds":
            v = list(v)
        values[f.key] = v
    return {"schema": SCHEMA_VERSION, "values": values}


def migrate_v1(values: Mapping[str, Any]) -> dict[str, Any]:
    """Version 1 kept the poll interval in milliseconds and URLs as plain strings."""
    out = dict(values)
    if "poll_interval_ms" in out:
        ms = out.pop("poll_interval_ms")
        if isinstance(ms, (int, float)) and not isinstance(ms, bool):
            out["poll_interval_s"] = ms / 1000.0
    if isinstance(out.get("urls"), list):
        out["servers"] = [{"url": u} for u in out.pop("urls") if isinstance(u, str)]
    return out
