"""Start and stop ``trayer``, the tray host of the tray tests, on an X display."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

TRAY_DEADLINE_S = 20.0


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

    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30,
                       env={**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"})
    return r.returncode == 0


def start_trayer(display: str) -> subprocess.Popen:
    """Start ``trayer`` on ``display`` and return once it owns the tray selection."""
    for tool in ("trayer", "xdotool"):
        if shutil.which(tool) is None:
            pytest.fail(f"tray tests need {tool}: apt-get install trayer xdotool "
                        "(./bootstrap.sh test installs them)")
    last_error = ""
    for _attempt in range(3):  # trayer exits at once if the display is still settling
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request",
             "--height", "28", "--SetDockType", "true", "--transparent", "false",
             "--tint", "0x2b2b2b", "--expand", "true", "--padding", "6"],
            env={**os.environ, "DISPLAY": display}, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + TRAY_DEADLINE_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err.seek(0)
                last_error = f"trayer exited with {proc.returncode}: " + err.read().decode(
                    errors="replace")[-500:]
                break
            if _tray_window(display) and _selection_owned(display):
                return proc
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        else:
            break
    if proc.poll() is not None:
        pytest.fail(last_error)
    stop_trayer(proc)
    pytest.fail(f"trayer did not map a tray window within {TRAY_DEADLINE_S:.0f} s")


def stop_trayer(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


