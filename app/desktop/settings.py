"""The settings store: a JSON file in the platform config dir (mode 0600), recovery, autostart.

Qt-free. What a setting is (schema, validation, defaults, migration) lives in
``kvwall.widgets.viewmodels.settings_model``. API keys live in the same file, which only
the user can read; they never appear in ``repr``, logs or messages.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvwall.widgets.viewmodels.settings_model import (
    SCHEMA,
    SCHEMA_VERSION,
    InvalidSetting,
    Settings,
    defaults,
    migrate_v1,
    to_json,
    validate,
)

log = logging.getLogger(__name__)

APP_NAME = "kvwall"
SETTINGS_FILE = "settings.json"


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
            values = migrate_v1(values)
            reasons.append(f"they came from an older kvwall (format {version})")
        elif version > SCHEMA_VERSION:
            reasons.append(f"they came from a newer kvwall (format {version})")
        merged = dict(defaults().values)
        bad = []
        for f in SCHEMA:
            if f.key not in values:
                continue
            try:
                merged[f.key] = validate(f, values[f.key])
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
                json.dump(to_json(settings), fh, indent=2)
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
