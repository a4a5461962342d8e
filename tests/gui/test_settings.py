"""Settings round-trip through a private file, recover from corruption with a visible
message, and never leak API keys."""

from __future__ import annotations

import json
import logging
import os
import stat

import gui_factories as f
import pytest
from kvwall.app.desktop.settings import SettingsStore, autostart_enabled, set_autostart
from kvwall.widgets.viewmodels.settings_model import SCHEMA, InvalidSetting, defaults

KEY = "sk-very-secret-123"


class FixedClock:
    def __call__(self) -> float:
        return 1_760_000_000.0


def test_round_trip_private_file(tmp_path):
    store = SettingsStore(tmp_path / "kvwall" / "settings.json")
    s = defaults().replace(poll_interval_s=1.5, slot_warn_turns=8,
                           notify_kinds=["slot_full", "free_memory"],
                           servers=[{"url": "gpu-box:8080", "api_key": KEY}],
                           start_on_login=True)
    store.save(s)
    mode = stat.S_IMODE(os.stat(store.path).st_mode)
    assert mode == 0o600
    loaded = store.load()
    assert loaded.message is None and loaded.backup is None
    assert loaded.settings == s
    assert loaded.settings.servers[0].url == "http://gpu-box:8080"
    assert loaded.settings.servers[0].api_key == KEY
    assert loaded.settings["notify_kinds"] == ("free_memory", "slot_full")
    assert KEY not in repr(loaded.settings) and KEY not in repr(loaded.settings.servers)


def test_default_location_is_the_platform_config_dir():
    store = SettingsStore()
    assert store.path.parent.name == "kvwall"
    assert str(store.path).startswith(os.environ["XDG_CONFIG_HOME"])
    assert store.load().settings == defaults()


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"values": 3}', "", '{"values": {}}'])
def test_corrupt_file_is_kept_aside_and_defaults_used(tmp_path, garbage):
    path = tmp_path / "settings.json"
    path.write_text(garbage)
    store = SettingsStore(path, clock=FixedClock())
    result = store.load()
    assert result.settings == defaults()
    assert result.backup is not None and result.backup.name.startswith("settings.json.bak-")
    assert result.backup.read_text() == garbage
    assert result.backup.name in result.message and "unreadable" in result.message
    # The recovered file is valid again: the next start is silent.
    assert SettingsStore(path).load().message is None


def test_older_file_is_migrated_with_a_backup(tmp_path):
    path = tmp_path / "settings.json"
    old = {"schema": 1, "values": {"poll_interval_ms": 3000, "urls": ["10.0.0.5:8080"],
                                   "free_warn_percent": 20}}
    path.write_text(json.dumps(old))
    result = SettingsStore(path, clock=FixedClock()).load()
    assert result.settings["poll_interval_s"] == 3.0
    assert result.settings["free_warn_percent"] == 20.0
    assert [s.url for s in result.settings.servers] == ["http://10.0.0.5:8080"]
    assert "older kvwall" in result.message
    assert json.loads(result.backup.read_text()) == old


def test_invalid_values_are_reset_and_named(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"schema": 2, "values": {
        "poll_interval_s": -4, "slot_warn_turns": "five", "grab_percent": 25,
        "servers": [{"url": "ftp://nope"}]}}))
    result = SettingsStore(path, clock=FixedClock()).load()
    assert result.settings["poll_interval_s"] == defaults()["poll_interval_s"]
    assert result.settings["grab_percent"] == 25.0
    assert result.settings.servers == ()
    assert "poll every" in result.message and "extra servers" in result.message


def test_replace_validates():
    with pytest.raises(InvalidSetting, match="poll_interval_s"):
        defaults().replace(poll_interval_s=0)
    with pytest.raises(InvalidSetting, match="not an http"):
        defaults().replace(servers=[{"url": "ftp://x"}])
    with pytest.raises(KeyError):
        defaults().replace(nonsense=1)


def test_autostart_desktop_entry(tmp_path):
    set_autostart(True, tmp_path, command=["/opt/kvwall/bin/kvwall"])
    entry = (tmp_path / "autostart" / "kvwall.desktop").read_text()
    assert "Exec=/opt/kvwall/bin/kvwall" in entry and "Type=Application" in entry
    assert autostart_enabled(tmp_path)
    set_autostart(False, tmp_path)
    assert not autostart_enabled(tmp_path)


def test_recovery_message_is_shown_in_the_window(qtbot, tmp_path):
    from kvwall.app.desktop.gui import KvwallApp

    path = tmp_path / "settings.json"
    path.write_text("\x00\x01garbage")
    app = KvwallApp(lambda resumed: f.report(), SettingsStore(path), use_tray=False)
    qtbot.addWidget(app.window)
    app.start(show_window=True)
    try:
        text = app.window.statusBar().currentMessage()
        assert "kept as settings.json.bak-" in text
        assert list(tmp_path.glob("settings.json.bak-*"))
    finally:
        app.stop()


def test_settings_dialog_is_generated_from_the_schema(qtbot, caplog):
    from kvwall.widgets.settings_dialog import SettingsDialog

    caplog.set_level(logging.DEBUG)
    s = defaults().replace(servers=[{"url": "http://box:8080", "api_key": KEY}])
    dialog = SettingsDialog(s)
    qtbot.addWidget(dialog)
    assert set(dialog.editors) == {fld.key for fld in SCHEMA}
    dialog.editors["poll_interval_s"].setValue(5.0)
    dialog.editors["notify_kinds"].checks["process_grab"].setChecked(False)
    dialog.editors["servers"].add_row("127.0.0.1:9000", "")
    new = dialog.result_settings()
    assert new["poll_interval_s"] == 5.0
    assert "process_grab" not in new["notify_kinds"]
    assert [x.url for x in new.servers] == ["http://box:8080", "http://127.0.0.1:9000"]
    assert new.servers[0].api_key == KEY
    # The key column shows dots, not the key.
    table = dialog.editors["servers"].table
    shown = table.itemDelegateForColumn(1).displayText(KEY, None)
    assert KEY not in shown
    # A bad URL keeps the dialog open with the reason.
    dialog.editors["servers"].add_row("ftp://bad", "")
    dialog.accept()
    assert dialog.new_settings is None and "not an http" in dialog.error_label.text()
    assert KEY not in caplog.text


@pytest.mark.parametrize("damage", ["fifo", "nested", "bad-utf8"])
def test_the_real_entry_point_starts_whatever_settings_json_holds(tmp_path, damage):
    import subprocess
    import sys

    config = tmp_path / "config"
    cfg = config / "kvwall"
    cfg.mkdir(parents=True)
    path = cfg / "settings.json"
    if damage == "fifo":
        os.mkfifo(path)
    elif damage == "nested":
        path.write_text("[" * 100_000)
    else:
        path.write_bytes(b'{"schema": 2, "values": {"servers": [{"url": ["\xff"]}]}}')
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(config)}
    proc = subprocess.run([sys.executable, "-m", "kvwall.app", "--quit-after", "2"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    log_file = os.path.join(os.environ["XDG_STATE_HOME"], "kvwall", "log", "kvwall.log")
    text = open(log_file, encoding="utf-8").read()
    assert "settings recovered" in text or "settings not read" in text
