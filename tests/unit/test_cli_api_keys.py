"""Keys off command lines (issue 10): ``--api-key-file URL=PATH`` and ``KVWALL_API_KEY``
reach the poller for their own URL, bad sources are one-line errors that never quote a
key, and --help says ``--api-key`` shows the key in ``ps``."""

from __future__ import annotations

import io
import os
import threading

import pytest
from kvwall.app.headless import exporter, status
from kvwall.app.headless.api_keys import (
    ENV_VAR,
    MAX_KEY_FILE_BYTES,
    KeySourceError,
    api_keys,
    keys_from_env,
    keys_from_files,
)
from kvwall.monitors.snapshot import DeviceMemory, MemorySnapshot, Snapshot

KEY = "sk-file-secret-7781"
OTHER = "sk-env-secret-9932"


class FakePoller:
    def poll(self):
        host = DeviceMemory("host", "host", "Host RAM", True, 1 << 34, 1 << 33, 1 << 33)
        return Snapshot(0.0, MemorySnapshot(0.0, (host,)), ())

    def close(self):
        pass


def _key_file(tmp_path, text=KEY + "\nsecond line ignored\n", name="key"):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def test_key_file_and_environment_reach_the_poller_for_their_url(tmp_path, monkeypatch):
    seen = {}

    def fake_poller(urls, keys, deadline):
        seen.update(urls=list(urls), keys=dict(keys))
        return FakePoller()

    monkeypatch.setattr(status, "_default_poller", fake_poller)
    path = _key_file(tmp_path)
    out = io.StringIO()
    code = status.main(["--json", "--api-key-file", f"http://a:8080/={path}"], out=out,
                       environ={ENV_VAR: f"http://b:8080={OTHER}, http://c:1=x=y"})
    assert code == 0
    assert seen["keys"] == {"http://a:8080": KEY, "http://b:8080": OTHER, "http://c:1": "x=y"}
    assert set(seen["urls"]) == {"http://a:8080", "http://b:8080", "http://c:1"}
    assert KEY not in out.getvalue() and OTHER not in out.getvalue()


def test_later_sources_win_for_the_same_url(tmp_path):
    path = _key_file(tmp_path)
    keys = api_keys([f"http://a:1={OTHER}"], [f"http://a:1={path}"], {ENV_VAR: "http://a:1=e"})
    assert keys == {"http://a:1": OTHER}
    assert api_keys([], [f"http://a:1={path}"], {ENV_VAR: "http://a:1=e"}) == {"http://a:1": KEY}


def test_environment_pairs_split_on_commas_and_white_space():
    env = {ENV_VAR: f" http://a:1={KEY}\nhttps://b:2/={OTHER},, "}
    assert keys_from_env(env) == {"http://a:1": KEY, "https://b:2": OTHER}
    assert keys_from_env({}) == {} and keys_from_env({ENV_VAR: "  "}) == {}


@pytest.mark.parametrize("value", [KEY, f"a:1={KEY}", f"http://a:1={KEY},{OTHER}"])
def test_a_bad_environment_entry_names_its_position_never_the_key(value):
    with pytest.raises(KeySourceError, match=ENV_VAR) as info:
        keys_from_env({ENV_VAR: value})
    assert KEY not in str(info.value) and OTHER not in str(info.value)


def test_key_file_must_be_a_small_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    box = {}

    def read_fifo():
        try:
            keys_from_files([f"http://a:1={fifo}"])
        except KeySourceError as e:
            box["error"] = str(e)

    t = threading.Thread(target=read_fifo, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "a FIFO blocked the key file read"
    assert "not a regular file" in box["error"]
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.truncate(MAX_KEY_FILE_BYTES + 1)
    with pytest.raises(KeySourceError, match="larger than"):
        keys_from_files([f"http://a:1={big}"])
    empty = _key_file(tmp_path, "\n" + KEY, "empty")
    with pytest.raises(KeySourceError, match="holds no key"):
        keys_from_files([f"http://a:1={empty}"])
    with pytest.raises(KeySourceError, match="cannot read"):
        keys_from_files([f"http://a:1={tmp_path / 'missing'}"])
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(KeySourceError, match="not UTF-8"):
        keys_from_files([f"http://a:1={binary}"])


def test_key_file_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    path = _key_file(tmp_path)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(path).st_uid + 1)
    with pytest.raises(KeySourceError, match="owned by another user") as info:
        keys_from_files([f"http://a:1={path}"])
    assert KEY not in str(info.value)


@pytest.mark.parametrize("args", [["--api-key-file", "http://a:1"],
                                  ["--api-key-file", "ftp://a:1=/x"],
                                  ["--api-key-file", "http://a:1=/nonexistent/key"]])
def test_bad_key_files_exit_2_with_one_line(args, capsys):
    assert status.main(args, poller=FakePoller(), out=io.StringIO(), environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvwall status: ") and err.count("\n") == 1


def test_a_bad_environment_exits_2_without_the_key(capsys):
    code = status.main([], poller=FakePoller(), out=io.StringIO(), environ={ENV_VAR: KEY})
    err = capsys.readouterr().err
    assert code == 2 and ENV_VAR in err and KEY not in err


def test_help_shows_the_safe_forms_and_warns_about_ps(capsys):
    with pytest.raises(SystemExit):
        status.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--api-key-file URL=PATH" in text and ENV_VAR in text
    assert "Visible to every local user in `ps`" in text
    assert text.index(ENV_VAR) < text.rindex("--api-key URL=KEY")


def test_the_exporter_takes_the_same_key_sources(tmp_path, monkeypatch):
    path = _key_file(tmp_path)
    monkeypatch.setenv(ENV_VAR, f"http://b:2={OTHER}")
    opts = exporter._options(["--api-key-file", f"http://a:1={path}"])
    assert opts.keys == {"http://b:2": OTHER, "http://a:1": KEY}
    assert "http://a:1" in opts.urls and "http://b:2" in opts.urls
