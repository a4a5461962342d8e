"""The settings model: the schema that drives validation and the preferences dialog.

Qt-free and free of file I/O (the store, ``kvwall.app.desktop.settings``, reads and writes
the file). API keys live in :class:`ServerEntry`; they never appear in ``repr``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kvwall.monitors.api_key import api_key_problem

SCHEMA_VERSION = 2  # the settings file's format; version 1 is migrated by migrate_v1

# Notification kinds, in the user's words (ids are stable, used as keys in the file).
NOTIFY_KINDS: dict[str, str] = {
    "free_memory": "Free memory below the threshold",
    "pool_forecast": "A memory pool (or a unified KV pool) forecast to run out",
    "slot_forecast": "A slot forecast to fill soon",
    "slot_full": "A slot that is full",
    "server_unreachable": "A server that became unreachable",
    "process_grab": "Another process took a large share of a GPU",
    "refused_requests": "A server refused a request: its context was exceeded",
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
    """Validated settings; build a changed copy with :meth:`replace`.

    ``unknown_values`` and ``unknown_fields`` hold what a newer kvwall wrote that this one
    does not know (keys of ``values``, and keys beside ``schema``/``values``): they are
    written back unchanged, never validated, and take no part in equality.
    """

    values: Mapping[str, Any] = field(repr=False)
    unknown_values: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    unknown_fields: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
        return Settings(merged, self.unknown_values, self.unknown_fields)

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
        InvalidSetting: the value does not fit the field (for a list of servers: the
            first entry that does not).
    """
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise InvalidSetting(f"{f.key}: expected true/false")
        return value
    if f.kind in ("int", "float"):
        return _validate_number(f, value)
    if f.kind == "kinds":
        if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
            raise InvalidSetting(f"{f.key}: expected a list")
        unknown = [v for v in value if not isinstance(v, str) or v not in NOTIFY_KINDS]
        if unknown:
            raise InvalidSetting(f"{f.key}: unknown kind {_quote(unknown[0])}")
        return tuple(k for k in NOTIFY_KINDS if k in set(value))
    if f.kind == "servers":
        entries, problems = read_entries(f, value)
        if problems:
            raise InvalidSetting(problems[0])
        return entries
    raise InvalidSetting(f"{f.key}: unknown field kind {f.kind}")


def _validate_number(f: SettingField, value: Any) -> int | float:
    """An ``int``/``float`` field's value: finite, whole where it must be, in bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSetting(f"{f.key}: expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSetting(f"{f.key}: {value} is not a finite number")
    # Bounds first, on the value as given: a 400-digit integer has no float.
    if f.minimum is not None and value < f.minimum:
        raise InvalidSetting(f"{f.key}: below {f.minimum:g}")
    if f.maximum is not None and value > f.maximum:
        raise InvalidSetting(f"{f.key}: above {f.maximum:g}")
    if f.kind == "int":
        if int(value) != value:
            raise InvalidSetting(f"{f.key}: expected a whole number")
        return int(value)
    return float(value)


def read_entries(f: SettingField, value: Any) -> tuple[tuple[ServerEntry, ...], tuple[str, ...]]:
    """A ``servers`` field read entry by entry: (the good entries, one problem per bad one).

    Each problem names the entry (its position and URL, never its key) and why it was
    dropped; a bad entry never costs the others.

    Raises:
        InvalidSetting: ``value`` is not a list at all.
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidSetting(f"{f.key}: expected a list")
    out: list[ServerEntry] = []
    problems: list[str] = []
    for n, item in enumerate(value, 1):
        try:
            out.append(_entry(item))
        except InvalidSetting as exc:
            problems.append(f"{f.label.lower()} entry {n}{_entry_name(item)}: {exc}")
    return tuple(out), tuple(problems)


def _entry(item: object) -> ServerEntry:
    url: object
    key: object
    if isinstance(item, ServerEntry):
        url, key = item.url, item.api_key
    elif isinstance(item, Mapping):
        url, key = item.get("url"), item.get("api_key")
    else:
        raise InvalidSetting("expected an object with a url")
    if key is not None and key != "":
        problem = api_key_problem(key)
        if problem is not None:
            raise InvalidSetting(f"its API key {problem}")
    return ServerEntry(normalise_url(url), key if isinstance(key, str) and key else None)


def _entry_name(item: object) -> str:
    url = item.get("url") if isinstance(item, Mapping) else getattr(item, "url", None)
    return f" ({_quote(url)})" if isinstance(url, str) else ""


def _quote(value: object, limit: int = 60) -> str:
    """``repr`` of a value from the file, cut short (a message stays one readable line)."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


def normalise_url(url: Any) -> str:
    """A server base URL, as :func:`kvwall.monitors.discovery.normalize_url` writes it.

    Raises:
        InvalidSetting: not an http(s) URL with a host, or holding a blank or control
            character.
    """
    from kvwall.monitors.discovery import normalize_url

    if url is not None and not isinstance(url, str):
        raise InvalidSetting(f"server URL: expected text, not a {type(url).__name__}")
    text = (url or "").strip()
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise InvalidSetting(f"server URL: {_quote(url)} holds a blank or control character")
    try:
        return normalize_url(text)
    except ValueError as exc:  # InvalidURL, and urlsplit's own (an unclosed "[" of IPv6)
        raise InvalidSetting(f"server URL: {exc}") from None


def to_json(settings: Settings) -> dict[str, Any]:
    """The settings file's object: ``{"schema": SCHEMA_VERSION, "values": {...}}``.

    Unknown keys (from a newer kvwall) are written back as they were read.
    """
    values: dict[str, Any] = dict(settings.unknown_values)
    for f in SCHEMA:
        v = settings.values[f.key]
        if f.kind == "servers":
            v = [{"url": s.url, **({"api_key": s.api_key} if s.api_key else {})} for s in v]
        elif f.kind == "kinds":
            v = list(v)
        values[f.key] = v
    return {**settings.unknown_fields, "schema": SCHEMA_VERSION, "values": values}


# --- reading a settings file's document ----------------------------------------------

MAX_REPORTED_PROBLEMS = 6  # a message lists this many dropped entries, then "and N more"


@dataclass(frozen=True)
class Decoded:
    """A settings document read field by field.

    Attributes:
        settings: the values that fit, defaults for the rest, unknown keys kept aside.
        version: the document's ``schema`` (format) number.
        problems: one line per dropped value or entry, naming it and the default used;
            never an API key.
    """

    settings: Settings
    version: int
    problems: tuple[str, ...]


class UnreadableSettings(ValueError):
    """Bytes that are not a kvwall settings document at all (the message says why)."""


def parse_document(data: bytes) -> tuple[Mapping[str, Any], int]:
    """The settings file's bytes as (its top-level object, its schema version).

    Raises:
        UnreadableSettings: not UTF-8, not JSON (or nested too deep for the parser), not
            an object with a ``values`` object and an integer ``schema``.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableSettings(f"not UTF-8 text at byte {exc.start}") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise UnreadableSettings("nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, and ints longer than Python allows
        raise UnreadableSettings(str(exc).splitlines()[0][:120] or "not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict):
        raise UnreadableSettings("not a kvwall settings object")
    version = doc.get("schema")
    if not isinstance(version, int) or isinstance(version, bool):
        raise UnreadableSettings("no schema version")
    return doc, version


def decode(doc: Mapping[str, Any], version: int) -> Decoded:
    """Each field of ``doc`` validated on its own (older formats migrated first).

    A value that does not fit is dropped (its default used) and named in ``problems``;
    a bad server entry is dropped alone. Keys this kvwall does not know are kept in
    ``Settings.unknown_values`` / ``unknown_fields`` when they can be written back.
    """
    values: Mapping[str, Any] = doc["values"]
    if version < SCHEMA_VERSION:
        values = migrate_v1(values)
    merged = dict(defaults().values)
    problems: list[str] = []
    for f in SCHEMA:
        if f.key not in values:
            continue
        try:
            if f.kind == "servers":
                merged[f.key], entry_problems = read_entries(f, values[f.key])
                problems += [f"{p} (entry dropped)" for p in entry_problems]
            else:
                merged[f.key] = validate(f, values[f.key])
        except InvalidSetting as exc:
            problems.append(f"{f.label.lower()}: {exc}{_default_used(f)}")
    unknown_values = _writable({k: v for k, v in values.items() if k not in FIELDS})
    unknown_fields = _writable({k: v for k, v in doc.items() if k not in ("schema", "values")})
    return Decoded(Settings(merged, unknown_values, unknown_fields), version, tuple(problems))


def _default_used(f: SettingField) -> str:
    if f.kind in ("int", "float", "bool"):
        default = str(f.default).lower() if f.kind == "bool" else f"{f.default:g}"
        return f" (the default, {default}, is used)"
    return " (the default is used)"


def _writable(extra: Mapping[str, Any]) -> dict[str, Any]:
    """The unknown keys that survive being written (a deep structure may not)."""
    out = {}
    for key, value in extra.items():
        try:
            json.dumps(value, indent=2, allow_nan=True)
        except (RecursionError, ValueError, TypeError):
            continue
        out[key] = value
    return out


def summarise(problems: Sequence[str]) -> str:
    """The dropped entries as one line: the first few, then "and N more"."""
    shown = list(problems[:MAX_REPORTED_PROBLEMS])
    if len(problems) > MAX_REPORTED_PROBLEMS:
        shown.append(f"and {len(problems) - MAX_REPORTED_PROBLEMS} more")
    return "; ".join(shown)


def migrate_v1(values: Mapping[str, Any]) -> dict[str, Any]:
    """Version 1 kept the poll interval in milliseconds and URLs as plain strings."""
    out = dict(values)
    if "poll_interval_ms" in out:
        ms = out.pop("poll_interval_ms")
        if isinstance(ms, (int, float)) and not isinstance(ms, bool):
            # A huge integer has no float: keep it for validation to refuse by name.
            out["poll_interval_s"] = ms / 1000.0 if abs(ms) < 1e300 else ms
    if isinstance(out.get("urls"), list):
        out["servers"] = [{"url": u} for u in out.pop("urls") if isinstance(u, str)]
    return out
