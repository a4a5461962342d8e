"""Tray tests: Xvfb (from pytest-xvfb) plus a real tray host, ``trayer``.

Every test here is marked ``tray``. The Qt side of each test runs in its own process with
the xcb platform, because the GUI tests in the same session run offscreen.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tray_host import start_trayer, stop_trayer


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.tray)


@pytest.fixture
def display(xvfb):
    """pytest-xvfb's display (no tray host yet)."""
    if xvfb is None or not os.environ.get("DISPLAY"):
        pytest.fail("tray tests need pytest-xvfb's display (do not pass --no-xvfb)")
    return os.environ["DISPLAY"]


@pytest.fixture
def tray_host(display):
    """A running ``trayer`` on the test display; yields the DISPLAY value."""
    proc = start_trayer(display)
    try:
        yield display
    finally:
        stop_trayer(proc)
