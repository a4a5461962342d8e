"""End to end under Xvfb with a real tray host and a real llama-server with a growing
agent: the tray icon appears, the window lists the server and its slots with a forecast,
a notification fires as the slot nears its limit, and the q8_0 what-if's command line,
started as a second llama-server, allocates exactly the KV size the what-if promised."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port

HERE = Path(__file__).parent
SCREENSHOTS = HERE.parent.parent / "docs" / "screenshots"


def test_tray_window_forecast_notification_and_what_if(tray_host, tmp_path):
    from kvwall.app.demo.llamabin import INSTALL_HINT, find_llama_server

    if find_llama_server() is None:
        pytest.fail(INSTALL_HINT)
    shots = SCREENSHOTS if os.environ.get("KVWALL_SCREENSHOTS") else tmp_path / "shots"
    env = {**os.environ, "DISPLAY": tray_host, "QT_QPA_PLATFORM": "xcb"}
    proc = subprocess.run([sys.executable, str(HERE / "scenario.py"), str(tmp_path),
                           str(shots)], env=env, capture_output=True, text=True, timeout=300)
    result_file = tmp_path / "result.json"
    assert result_file.exists(), proc.stderr[-3000:]
    r = json.loads(result_file.read_text())
    assert r["ok"], r.get("traceback") or r.get("error")

    # The tray icon is embedded in the tray host and has a size.
    assert r["tray_available"] and r["tray_geometry"][2] > 0
    # The window lists the server and its two slots.
    rows = r["table_rows"]
    assert rows[0][0] == "kvwall-demo" and rows[0][2].startswith("4,096 × 2")
    assert [row[0].strip() for row in rows[1:]] == ["slot 0", "slot 1"]
    # A forecast shows in the table and in the tray tooltip.
    fc = [f for f in r["forecast"] if f["turns_left"]]
    assert fc and fc[0]["n_ctx"] == 4096
    assert any(row[5].startswith("~") or row[5] == "next request"
               for row in r["table_rows_with_forecast"][1:])
    assert ("of kvwall-demo full in ~" in r["tray_tooltip"]
            or "of kvwall-demo: the next request fills it" in r["tray_tooltip"])
    # A notification fired for the demo slot, and the tray showed it.
    key = f"pid:{r['server_pid']}"
    ours = [n for n in r["notifications"] if n["server_key"] == key]
    assert ours and ours[0]["kind"] in ("slot_forecast", "slot_full")
    assert any(m["title"] == ours[0]["title"] for m in r["shown_messages"])
    # The what-if gave a command line; copied as shown.
    wi = r["what_if"]
    assert not wi["refused"] and "-ctk q8_0" in wi["command"] and "-ctv q8_0" in wi["command"]
    assert wi["shown_command"] == wi["command"] == r["clipboard"]

    # Started as a second llama-server, it allocates the KV the what-if promised.
    from oracles.llamalog import MIB, parse_load_log

    argv = shlex.split(wi["command"])
    argv[argv.index("--port") + 1] = str(free_port())
    argv += ["-lv", "4"]
    log_path = tmp_path / "second.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 60
        parsed = None
        while time.monotonic() < deadline:
            parsed = parse_load_log(log_path.read_text(errors="replace"))
            if parsed.kv_caches or server.poll() is not None:
                break
            try:
                server.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    finally:
        server.terminate()
        server.wait(timeout=15)
    assert parsed is not None and parsed.kv_caches, log_path.read_text()[-3000:]
    assert parsed.n_ctx == wi["n_ctx"]
    assert parsed.kv_total_mib == pytest.approx(wi["kv_bytes"] / MIB, abs=0.01)
    assert {c.type_k for c in parsed.kv_caches} == {"q8_0"}


def test_no_tray_at_start_then_a_tray_appears(display, tmp_path):
    import time

    from tray_host import start_trayer, stop_trayer

    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    app = subprocess.Popen([sys.executable, str(HERE / "late_tray.py"), str(tmp_path)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    trayer = None
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert app.poll() is None, app.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "kvwall did not start"
            try:
                app.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        trayer = start_trayer(display)
        app.wait(timeout=120)
    finally:
        if app.poll() is None:
            app.kill()
        if trayer is not None:
            stop_trayer(trayer)
    r = json.loads((tmp_path / "result.json").read_text())
    # Without a tray: a normal window, and closing it would quit.
    assert r["tray_at_start"] is False and r["window_visible_at_start"]
    assert r["close_quits_at_start"]
    # The tray host arrives: kvwall moves into it; closing the window no longer quits.
    assert r["tray_later"] and r["close_hides_later"] and r["still_running_after_close"]
