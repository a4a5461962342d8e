"""User settings: a schema, a JSON file in the platform config dir (mode 0600), recovery.

Qt-free. The schema (:data:`SCHEMA`) drives both validation here and the preferences
dialog (``kvwall.widgets.settings_dialog``). API keys live in the same file, which only the
user can read; they never appear in ``repr``, logs or messages.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

APP_NAME = "kvwall"
SCHEMA_VERSION = 2
SETTINGS_FILE = "settings.json"

# Notification kinds, in the user's words (ids are stable, used as keys in the file).
NOTIFY_KINDS: dict[str, str] = {
    "free_memory": "Free memory below the threshold",
    "pool_forecast": "A memory pool (or a unified KV pool) forecast to run out",
    "slot_forecast": "A slot forecast to fill soon",
    "slot_full": "A slot that is full",
    "server_unreachable": "A server that became unreachable",
    "process_grab": "Another process took a large share of a GPU",
}


@dataclass(frozen=True)
class SettingField:
    """One setting: its key, type, default, bounds and the words the dialog shows.

    ``kind`` is ``int`` | ``float`` | ``bool`` | ``kinds`` (a subset of NOTIFY_KINDS) |
    ``servers`` (a list of ``{"url", "api_key"}``).
    """

    key: str
    label: str
    kind: str
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
            merged[key] = _validate(FIELDS[key], value)
        return Settings(merged)

    @property
    def servers(self) -> tuple[ServerEntry, ...]:
        return self.values["servers"]


def defaults() -> Settings:
    return Settings({f.key: _validate(f, f.default) for f in SCHEMA})


class InvalidSetting(ValueError):
    """A value that does not fit its field (message names the field)."""


def _validate(f: SettingField, value: Any) -> Any:
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
    """A server base URL: ``host:port`` gets ``http://``; trailing ``/`` dropped.

    Raises:
        InvalidSetting: not an http(s) URL with a host.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidSetting("server URL: empty")
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSetting(f"server URL: {url!r} is not an http(s) URL")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise InvalidSetting(f"server URL: {url!r} has a bad port") from exc
    return text.rstrip("/")


def _to_json(settings: Settings) -> dict:
    values: dict[str, Any] = {}
    for f in SCHEMA:
        v = settings.values[f.key]
        if f.kind == "servers":
            v = [{"url": s.url, **({"api_key": s.api_key} if s.api_key else {})} for s in v]
        elif f.kind == "kinds":
            v = list(v)
        values[f.key] = v
    return {"schema": SCHEMA_VERSION, "values": values}


def _migrate_v1(values: Mapping[str, Any]) -> dict[str, Any]:
    """Version 1 kept the poll interval in milliseconds and URLs as plain strings."""
    out = dict(values)
    if "poll_interval_ms" in out:
        ms = out.pop("poll_interval_ms")
        if isinstance(ms, (int, float)) and not isinstance(ms, bool):
            out["poll_interval_s"] = ms / 1000.0
    if isinstance(out.get("urls"), list):
        out["servers"] = [{"url": u} for u in out.pop("urls") if isinstance(u, str)]
    return out


@dataclass(frozen=True)
class LoadResult:
    """What loading found: the settings, plus a message for the user when the file had to
    be recovered (``backup`` is where the old file was kept)."""

    settings: Settings
    message: str | None = None
    backup: Path | None = None


def default_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME, appauthor=False)) / SETTINGS_FILE


class SettingsStore:
    """Reads and writes one settings file.

    Args:
        path: the JSON file (default: platformdirs' user config dir / settings.json).
        clock: wall-clock seconds, used to name backups (injected for tests).
    """

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._clock = clock

    def load(self) -> LoadResult:
        """Read the file; recover from anything wrong with it instead of raising."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return LoadResult(defaults())
        except OSError as exc:
            return LoadResult(defaults(), f"kvwall could not read its settings ({exc.strerror}); "
                                          "defaults are in use.")
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict):
                raise ValueError("not a kvwall settings object")
            version = doc.get("schema")
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError("no schema version")
        except ValueError as exc:
            backup = self._keep_aside()
            msg = (f"Your settings file was unreadable ({_short(exc)}). It was kept as "
                   f"{backup.name if backup else 'nothing'} and the defaults are in use.")
            log.warning("settings recovered: %s", _short(exc))
            settings = defaults()
            self._save_quietly(settings)
            return LoadResult(settings, msg, backup)

        values = doc["values"]
        reasons: list[str] = []
        if version < SCHEMA_VERSION:
            values = _migrate_v1(values)
            reasons.append(f"they came from an older kvwall (format {version})")
        elif version > SCHEMA_VERSION:
            reasons.append(f"they came from a newer kvwall (format {version})")
        merged = dict(defaults().values)
        bad = []
        for f in SCHEMA:
            if f.key not in values:
                continue
            try:
                merged[f.key] = _validate(f, values[f.key])
            except InvalidSetting:
                bad.append(f.label.lower() if f.kind != "servers" else "extra servers")
        if bad:
            reasons.append("some values were invalid and were reset: " + ", ".join(bad))
        settings = Settings(merged)
        if not reasons:
            return LoadResult(settings)
        backup = self._keep_aside()
        self._save_quietly(settings)
        msg = (f"Your settings were recovered: {'; '.join(reasons)}. The old file was kept as "
               f"{backup.name if backup else 'nothing'}.")
        log.warning("settings recovered: %s", "; ".join(reasons))
        return LoadResult(settings, msg, backup)

    def save(self, settings: Settings) -> None:
        """Write atomically with mode 0600 (the file holds API keys).

        Raises:
            OSError: the config dir cannot be written.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(_to_json(settings), fh, indent=2)
                fh.write("\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _save_quietly(self, settings: Settings) -> None:
        try:
            self.save(settings)
        except OSError as exc:
            log.warning("cannot write settings: %s", exc.strerror)

    def _keep_aside(self) -> Path | None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        backup = self.path.with_name(f"{self.path.name}.bak-{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = self.path.with_name(f"{self.path.name}.bak-{stamp}-{n}")
        try:
            os.replace(self.path, backup)
            os.chmod(backup, 0o600)
        except OSError as exc:
            log.warning("cannot keep the old settings aside: %s", exc.strerror)
            return None
        return backup


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


# --- start on login (XDG autostart) -------------------------------------------------

def autostart_path(config_home: Path | None = None) -> Path:
    if config_home is None:
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return Path(config_home) / "autostart" / "kvwall.desktop"


def launch_command() -> list[str]:
    """The command that starts this kvwall (the console script when installed)."""
    import shutil

    exe = shutil.which("kvwall")
    if exe:
        return [exe]
    return [sys.executable, "-m", "kvwall.app"]


def autostart_entry(command: Sequence[str]) -> str:
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=kvwall\n"
        "GenericName=LLM memory monitor\n"
        "Comment=Warns before local LLM agents hit the memory wall\n"
        f"Exec={shlex.join(command)}\n"
        "Icon=kvwall\n"
        "Terminal=false\n"
        "Categories=Utility;System;Monitor;\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def set_autostart(enabled: bool, config_home: Path | None = None,
                  command: Sequence[str] | None = None) -> Path:
    """Create or remove the XDG autostart entry; returns its path.

    Raises:
        OSError: the autostart folder cannot be written.
    """
    path = autostart_path(config_home)
    if enabled:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(autostart_entry(command or launch_command()), encoding="utf-8")
    else:
        path.unlink(missing_ok=True)
    return path


def autostart_enabled(config_home: Path | None = None) -> bool:
    return autostart_path(config_home).is_file()


# --- the application entry and icon (so the desktop shows kvwall's name and icon) ----

def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def install_desktop_entry(home: Path | None = None, command: Sequence[str] | None = None
                          ) -> tuple[Path, Path]:
    """Write ``applications/kvwall.desktop`` and the scalable icon under the XDG data dir
    (idempotent; only rewritten when different). Returns (entry, icon) paths.

    Raises:
        OSError: the data dir cannot be written.
    """
    from importlib.resources import files

    home = Path(home) if home is not None else data_home()
    entry = home / "applications" / "kvwall.desktop"
    icon = home / "icons" / "hicolor" / "scalable" / "apps" / "kvwall.svg"
    text = autostart_entry(command or launch_command()).replace(
        "X-GNOME-Autostart-enabled=true\n", "StartupWMClass=kvwall\n")
    svg = (files("kvwall.resources") / "kvwall.svg").read_bytes()
    for path, data in ((entry, text.encode()), (icon, svg)):
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return entry, icon
