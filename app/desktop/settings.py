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

from kvwall.monitors.files import UnsafeFile, read_user_file
from kvwall.widgets.viewmodels.settings_model import (
    SCHEMA_VERSION,
    Decoded,
    Settings,
    UnreadableSettings,
    decode,
    defaults,
    parse_document,
    summarise,
    to_json,
)

log = logging.getLogger(__name__)

APP_NAME = "kvwall"
SETTINGS_FILE = "settings.json"
MAX_SETTINGS_BYTES = 1 << 20  # a settings file is a few KB; /dev/zero never ends
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class LoadResult:
    """What loading found: the settings, plus a message for the user when the file could
    not be used as it was (``backup``: the copy kept before the file was repaired)."""

    settings: Settings
    message: str | None = None
    backup: Path | None = None


def default_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME, appauthor=False)) / SETTINGS_FILE


class SettingsNotWritten(OSError):
    """The store refuses to write: the file on disk is from a newer kvwall."""


class SettingsStore:
    """Reads and writes one settings file.

    Loading never raises and never loses the user's file: a damaged file is copied aside
    (a real copy, mode 0600; the original's mode and any link target are not touched)
    before a repaired one replaces it, and a file that is a link, a special file or from a
    newer kvwall is left as it is.

    Args:
        path: the JSON file (default: platformdirs' user config dir / settings.json).
        clock: wall-clock seconds, used to name backups (injected for tests).
    """

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._clock = clock
        self._newer_version: int | None = None  # set when the file is from a newer kvwall

    def load(self) -> LoadResult:
        """Read the file; recover from anything wrong with it instead of raising."""
        try:
            data = read_user_file(self.path, MAX_SETTINGS_BYTES)
        except FileNotFoundError:
            return LoadResult(defaults())
        except UnsafeFile as exc:  # a FIFO, a device, a folder, too large
            return self._not_read(f"{self.path.name} {exc}")
        except OSError as exc:
            return self._not_read(f"{self.path.name} could not be read "
                                  f"({exc.strerror or exc})")
        try:
            doc, version = parse_document(data)
        except UnreadableSettings as exc:
            return self._recover(data, defaults(), f"Your settings file was unreadable ({exc})",
                                 "It was kept as {backup} and the defaults are in use.")
        decoded = decode(doc, version)
        if version > SCHEMA_VERSION:
            return self._from_newer(decoded)
        reasons: list[str] = []
        if version < SCHEMA_VERSION:
            reasons.append(f"they came from an older kvwall (format {version})")
        if decoded.problems:
            reasons.append("some values were invalid and were dropped: "
                           + summarise(decoded.problems))
        if not reasons:
            return LoadResult(decoded.settings)
        return self._recover(data, decoded.settings,
                             f"Your settings were recovered: {'; '.join(reasons)}",
                             "A copy of the old file was kept as {backup}.")

    def _not_read(self, why: str) -> LoadResult:
        """Defaults, with the reason; the file is neither copied nor replaced."""
        log.warning("settings not read: %s", why)
        return LoadResult(defaults(), f"kvwall did not read its settings: {why}. The "
                                      "defaults are in use and the file was left as it is.")

    def _recover(self, data: bytes, settings: Settings, what: str, kept: str) -> LoadResult:
        """Keep a copy of ``data``, then write the repaired ``settings`` over the file.

        A link is neither followed nor replaced (its target may be shared, or a device):
        the settings are used for this run and the message says the file was left alone.
        Without a copy the file is not overwritten either.
        """
        log.warning("settings recovered: %s", what)
        if self.path.is_symlink():
            return LoadResult(settings, f"{what}. The file is a link, so kvwall left it as it "
                                        "is; fix or remove it to stop this message.")
        backup = self._keep_copy(data)
        if backup is None:
            return LoadResult(settings, f"{what}. No copy could be kept, so kvwall left the "
                                        "file as it is.")
        self._save_quietly(settings)
        return LoadResult(settings, f"{what}. {kept.format(backup=backup.name)}", backup)

    def _from_newer(self, decoded: Decoded) -> LoadResult:
        """A newer kvwall's file: use what fits, and never write over it."""
        self._newer_version = decoded.version
        skipped = f" (not: {summarise(decoded.problems)})" if decoded.problems else ""
        log.warning("settings from a newer kvwall (format %d): not written", decoded.version)
        return LoadResult(decoded.settings, (
            f"Your settings come from a newer kvwall (format {decoded.version}). This kvwall "
            f"uses what it understands{skipped} and will not overwrite the file: changes made "
            "here last until kvwall quits."))

    def save(self, settings: Settings) -> None:
        """Write atomically with mode 0600 (the file holds API keys).

        Keys this kvwall does not know are written back as they were read. Through a link
        to a regular file, the link's target is replaced (the link stays).

        Raises:
            SettingsNotWritten: the file is from a newer kvwall (it is never downgraded).
            OSError: the config dir cannot be written.
        """
        if self._newer_version is not None:
            raise SettingsNotWritten(
                f"{self.path.name} is from a newer kvwall (format {self._newer_version}), "
                "which this one does not overwrite; the change lasts until kvwall quits")
        text = json.dumps(to_json(settings), indent=2) + "\n"
        target = self._write_target()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.unlink(missing_ok=True)  # a stale one from a crash (or a planted link)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                os.fchmod(fh.fileno(), 0o600)  # the umask may have taken bits away
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_target(self) -> Path:
        """The file to replace: the path, or a link's target when that is a regular file
        or not there yet (a link to a device or folder is itself replaced)."""
        if self.path.is_symlink():
            real = Path(os.path.realpath(self.path))
            if real.is_file() or not real.exists():
                return real
        return self.path

    def _save_quietly(self, settings: Settings) -> None:
        try:
            self.save(settings)
        except OSError as exc:
            log.warning("cannot write settings: %s", exc.strerror or exc)

    def _keep_copy(self, data: bytes) -> Path | None:
        """A new file beside the settings holding ``data`` (never replacing anything)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        for n in range(1, 1000):
            suffix = "" if n == 1 else f"-{n}"
            backup = self.path.with_name(f"{self.path.name}.bak-{stamp}{suffix}")
            try:
                fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                log.warning("cannot keep the old settings aside: %s", exc.strerror)
                return None
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            except OSError as exc:
                log.warning("cannot keep the old settings aside: %s", exc.strerror)
                backup.unlink(missing_ok=True)
                return None
            return backup
        return None


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
