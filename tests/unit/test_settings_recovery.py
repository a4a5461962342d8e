"""Damaged settings never stop kvwall and are never lost (issue 10): each bad entry is
dropped alone and named, special files are never opened blocking or read unbounded,
backups are real copies, and a newer kvwall's file is never rewritten."""

from __future__ import annotations

import json
import math
import os
import stat
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvwall.app.desktop.settings import (
    MAX_SETTINGS_BYTES,
    SettingsNotWritten,
    SettingsStore,
)
from kvwall.monitors.api_key import api_key_problem
from kvwall.monitors.files import UnsafeFile, read_user_file
from kvwall.widgets.viewmodels.settings_model import (
    FIELDS,
    SCHEMA_VERSION,
    InvalidSetting,
    Settings,
    decode,
    defaults,
    normalise_url,
    parse_document,
    to_json,
)

KEY = "sk-very-secret-123"


def clock() -> float:
    return 1_760_000_000.0


def _store(tmp_path, doc=None, raw: bytes | None = None) -> SettingsStore:
    path = tmp_path / "settings.json"
    if raw is not None:
        path.write_bytes(raw)
    elif doc is not None:
        path.write_text(json.dumps(doc))
    return SettingsStore(path, clock=clock)


def _doc(**values) -> dict:
    return {"schema": SCHEMA_VERSION, "values": values}


def _run_bounded(fn, seconds=10.0):
    """``fn()`` on a daemon thread; fails the test (instead of hanging it) if it blocks."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(result=fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked"
    return box["result"]


# --- whatever the file holds, the app starts with a message ---------------------------

@pytest.mark.parametrize("raw", [
    b"\xff\xfe{\"schema\": 2}",                          # invalid UTF-8
    b"[" * 100_000 + b"]" * 100_000,                     # RecursionError in json
    b'{"schema": 2, "values": {"poll_interval_s": 1' + b"0" * 5000 + b'}}',  # int too long
    b'{"schema": true, "values": {}}',
])
def test_unparseable_bytes_are_kept_aside_and_defaults_used(tmp_path, raw):
    store = _store(tmp_path, raw=raw)
    result = store.load()
    assert result.settings == defaults()
    assert "unreadable" in result.message and result.backup.name in result.message
    assert result.backup.read_bytes() == raw  # a real copy of what was read
    assert stat.S_IMODE(os.stat(result.backup).st_mode) == 0o600
    assert SettingsStore(store.path).load().message is None


def test_a_fifo_never_blocks_the_start(tmp_path):
    path = tmp_path / "settings.json"
    os.mkfifo(path)
    result = _run_bounded(SettingsStore(path, clock=clock).load)
    assert result.settings == defaults()
    assert "not a regular file (a FIFO)" in result.message
    assert stat.S_ISFIFO(os.lstat(path).st_mode)  # left as it is
    assert not list(tmp_path.glob("settings.json.bak-*"))


def test_a_link_to_dev_zero_is_refused_unread_and_untouched(tmp_path):
    path = tmp_path / "settings.json"
    path.symlink_to("/dev/zero")
    before = os.stat("/dev/zero").st_mode
    result = _run_bounded(SettingsStore(path, clock=clock).load)
    assert result.settings == defaults()
    assert "not a regular file" in result.message and "left as it is" in result.message
    assert os.readlink(path) == "/dev/zero" and os.stat("/dev/zero").st_mode == before


def test_a_huge_file_is_refused_by_size(tmp_path):
    path = tmp_path / "settings.json"
    with open(path, "wb") as fh:  # sparse: costs nothing on disk
        fh.truncate(MAX_SETTINGS_BYTES + 1)
    result = SettingsStore(path, clock=clock).load()
    assert result.settings == defaults()
    assert f"larger than {MAX_SETTINGS_BYTES} bytes" in result.message
    assert path.stat().st_size == MAX_SETTINGS_BYTES + 1


def test_a_folder_is_a_message(tmp_path):
    (tmp_path / "settings.json").mkdir()
    result = SettingsStore(tmp_path / "settings.json").load()
    assert result.settings == defaults() and "a folder" in result.message


def test_read_user_file_checks_owner_and_budget(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert read_user_file(path, 3, own_only=True) == b"abc"
    with pytest.raises(UnsafeFile, match="larger than 2 bytes"):
        read_user_file(path, 2)
    with pytest.raises(FileNotFoundError):
        read_user_file(tmp_path / "missing", 10)


# --- each damaged entry is dropped on its own, named -----------------------------------

@pytest.mark.parametrize("value, why", [
    (float("nan"), "not a finite number"),
    (float("inf"), "not a finite number"),
    (10**400, "above 60"),
    (0.01, "below 0.5"),
])
def test_poll_interval_nan_inf_and_out_of_range_are_refused_by_name(tmp_path, value, why):
    raw = json.dumps(_doc(poll_interval_s=value, grab_percent=25)).encode()
    result = _store(tmp_path, raw=raw).load()
    assert result.settings["poll_interval_s"] == 2.0
    assert result.settings["grab_percent"] == 25.0  # the rest is kept
    assert "poll_interval_s" in result.message and why in result.message
    assert "the default, 2, is used" in result.message


@pytest.mark.parametrize("key", ["free_warn_percent", "free_critical_percent",
                                 "slot_warn_minutes", "slot_full_percent", "slot_warn_turns"])
@pytest.mark.parametrize("value", [float("nan"), float("-inf"), -1, 1e9])
def test_thresholds_refuse_nan_inf_and_out_of_range(key, value):
    with pytest.raises(InvalidSetting, match=key):
        defaults().replace(**{key: value})
    decoded = decode(_doc(**{key: value}), SCHEMA_VERSION)
    assert decoded.settings[key] == defaults()[key]
    assert len(decoded.problems) == 1 and key in decoded.problems[0]
    assert all(math.isfinite(decoded.settings[k]) for k in ("poll_interval_s", key))


def test_one_bad_server_entry_keeps_every_other_server_and_key(tmp_path):
    servers = [
        {"url": "http://a:8080", "api_key": KEY},
        {"url": "http://[::1"},                          # urlsplit raises ValueError
        {"url": ["http://b:8080"]},                      # a list where a string belongs
        {"url": "http://c:8080", "api_key": 12345},      # never "Bearer 12345"
        {"url": "http://d:8080", "api_key": ["a", "b"]},
        "http://e:8080",
        {"url": "http://f:8080", "api_key": "two\r\nlines"},
        {"url": "http://g:8080"},
    ]
    store = _store(tmp_path, _doc(servers=servers, notify_kinds=[["x"]],
                                  remotes=[{"url": "http://r:9766", "api_key": "tok-1234"}]))
    result = store.load()
    s = result.settings
    assert [(x.url, x.api_key) for x in s.servers] == [("http://a:8080", KEY),
                                                      ("http://g:8080", None)]
    assert [x.url for x in s["remotes"]] == ["http://r:9766"]
    assert s["notify_kinds"] == defaults()["notify_kinds"]
    msg = result.message
    for n in (2, 3, 4, 5, 6):
        assert f"extra servers entry {n}" in msg
    assert "and 1 more" in msg  # the notify kinds and six entries shown, entry 7 counted
    assert KEY not in msg and "12345" not in msg and "lines" not in msg
    # The live file keeps the good entries (and the key), the copy keeps everything.
    live = SettingsStore(store.path).load()
    assert live.message is None and live.settings == s
    assert json.loads(result.backup.read_text())["values"]["servers"] == servers


@pytest.mark.parametrize("key", [12345, ["a", "b"], {"k": 1}, True, "a\x00b"])
def test_non_string_api_keys_are_refused(key):
    assert api_key_problem(key) is not None
    with pytest.raises(InvalidSetting, match="API key"):
        defaults().replace(servers=[{"url": "http://x:1", "api_key": key}])


def test_api_key_problem_never_quotes_the_key():
    assert api_key_problem(KEY) is None
    assert KEY not in (api_key_problem(KEY + "\n") or "")


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1]:99999", "ftp://x", "http://a b",
                                 "http://\x1b[2Jx"])
def test_bad_urls_are_invalid_settings_never_other_errors(url):
    with pytest.raises(InvalidSetting, match="server URL"):
        normalise_url(url)


# --- unknown keys and newer formats ---------------------------------------------------

def test_unknown_keys_survive_a_save(tmp_path):
    doc = {**_doc(poll_interval_s=3, future_knob={"deep": [1, 2]}), "future_top": "x"}
    store = _store(tmp_path, doc)
    loaded = store.load()
    assert loaded.message is None
    store.save(loaded.settings.replace(poll_interval_s=4))
    written = json.loads(store.path.read_text())
    assert written["values"]["future_knob"] == {"deep": [1, 2]}
    assert written["future_top"] == "x" and written["values"]["poll_interval_s"] == 4.0


def test_unknown_keys_survive_a_repair(tmp_path):
    store = _store(tmp_path, _doc(poll_interval_s="fast", future_knob=7))
    result = store.load()
    assert "poll_interval_s" in result.message
    assert json.loads(store.path.read_text())["values"]["future_knob"] == 7


def test_a_newer_format_is_used_but_never_rewritten(tmp_path):
    doc = {"schema": SCHEMA_VERSION + 1, "values": {"poll_interval_s": 7, "new_thing": [1],
                                                    "servers": [{"url": "http://a:1"}, 3]}}
    store = _store(tmp_path, doc)
    before = store.path.read_bytes()
    result = store.load()
    assert result.settings["poll_interval_s"] == 7.0
    assert [x.url for x in result.settings.servers] == ["http://a:1"]
    assert "newer kvwall" in result.message and "will not overwrite" in result.message
    assert result.backup is None and not list(tmp_path.glob("settings.json.bak-*"))
    with pytest.raises(SettingsNotWritten, match="newer kvwall"):
        store.save(result.settings.replace(poll_interval_s=9))
    assert store.path.read_bytes() == before


# --- backups are real copies; links are never followed into a chmod ---------------------

def test_a_link_to_a_bad_file_keeps_target_and_its_mode(tmp_path):
    target = tmp_path / "dotfiles" / "kvwall.json"
    target.parent.mkdir()
    target.write_text('{"schema": 2, "values": {"poll_interval_s": NaN}}')
    os.chmod(target, 0o644)
    link = tmp_path / "settings.json"
    link.symlink_to(target)
    before = target.read_bytes()
    result = SettingsStore(link, clock=clock).load()
    assert result.settings["poll_interval_s"] == 2.0 and "poll_interval_s" in result.message
    assert "link" in result.message
    assert link.is_symlink() and target.read_bytes() == before
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644


def test_an_explicit_save_through_a_link_keeps_the_link(tmp_path):
    target = tmp_path / "real.json"
    link = tmp_path / "settings.json"
    link.symlink_to(target)
    store = SettingsStore(link)
    store.save(defaults().replace(poll_interval_s=3))
    assert link.is_symlink()
    assert json.loads(target.read_text())["values"]["poll_interval_s"] == 3.0
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_the_backup_copy_leaves_the_original_mode_alone_until_rewritten(tmp_path):
    store = _store(tmp_path, raw=b"{broken")
    os.chmod(store.path, 0o640)
    result = store.load()
    assert result.backup.read_bytes() == b"{broken"
    assert stat.S_IMODE(os.stat(result.backup).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600  # the repaired file


def test_no_copy_no_rewrite(tmp_path, monkeypatch):
    store = _store(tmp_path, raw=b"{broken")
    monkeypatch.setattr(store, "_keep_copy", lambda data: None)  # e.g. a read-only folder
    result = store.load()
    assert result.backup is None and "left the file as it is" in result.message
    assert store.path.read_bytes() == b"{broken"


def test_parse_document_names_what_is_wrong():
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_document(b"\xff")
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_document(b"[" * 100_000)


# --- any JSON at all: a message, never an exception -------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=20)
_values = st.dictionaries(st.sampled_from([*FIELDS, "future_knob", "poll_interval_ms", "urls"]),
                          _json | st.lists(st.dictionaries(st.sampled_from(["url", "api_key"]),
                                                           _json, max_size=2), max_size=3),
                          max_size=8)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=_values, version=st.integers(-1, SCHEMA_VERSION + 1))
def test_decode_never_raises_and_only_keeps_valid_values(values, version):
    decoded = decode({"schema": version, "values": values}, version)
    s = decoded.settings
    assert isinstance(s, Settings)
    for key in ("poll_interval_s", "free_warn_percent", "slot_warn_minutes"):
        assert math.isfinite(s[key])
    assert all(x.api_key is None or isinstance(x.api_key, str) for x in s.servers)
    text = json.dumps(to_json(s))  # what is kept can be written back
    assert decode(*parse_document(text.encode())).problems == ()
