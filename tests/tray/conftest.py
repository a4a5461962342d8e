"""Tray tests: Xvfb (from pytest-xvfb) plus a real tray host, ``trayer``.

Every test here is marked ``tray``. The Qt side of each test runs in its own process with
the xcb platform, because the GUI tests in the same session run offscreen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

TRAY_DEADLINE_S = 20.0


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.tray)


def _tray_window(display: str) -> str | None:
    out = subprocess.run(["xdotool", "search", "--class", "trayer"], capture_output=True,
                         text=True, env={**os.environ, "DISPLAY": display}, timeout=10)
    ids = out.stdout.split()
    return ids[0] if ids else None


def _selection_owned(display: str) -> bool:
    """True once a tray host owns the _NET_SYSTEM_TRAY_S0 selection (what Qt checks)."""
    probe = ("from PySide6.QtWidgets import QApplication, QSystemTrayIcon;"
             "app = QApplication(['probe']);"
             "raise SystemExit(0 if QSystemTrayIcon.isSystemTrayAvailable() else 1)")
    import sys

    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30,
                       env={**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"})
    return r.returncode == 0


@pytest.fixture
def tray_host(xvfb):
    """A running ``trayer`` on the test display; yields the DISPLAY value."""
    if xvfb is None or not os.environ.get("DISPLAY"):
        pytest.fail("tray tests need pytest-xvfb's display (do not pass --no-xvfb)")
    for tool in ("trayer", "xdotool"):
        if shutil.which(tool) is None:
            pytest.fail(f"tray tests need {tool}: apt-get install trayer xdotool "
                        "(./bootstrap.sh test installs them)")
    display = os.environ["DISPLAY"]
    proc = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request",
         "--height", "28", "--SetDockType", "true", "--transparent", "false",
         "--tint", "0x2b2b2b", "--expand", "true", "--padding", "6"],
        env={**os.environ, "DISPLAY": display}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TRAY_DEADLINE_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"trayer exited with {proc.returncode}")
            if _tray_window(display) and _selection_owned(display):
                break
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        else:
            pytest.fail(f"trayer did not map a tray window within {TRAY_DEADLINE_S:.0f} s")
        yield display
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
