"""Test-wide isolation: no test reads or writes the user's settings, logs or servers."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import HealthCheck, settings

# Property tests check behaviour, not speed: no per-example deadline (a loaded 2-core CI
# machine would make them flaky). Under CI the examples are derandomized so a run can be
# reproduced; locally every run explores new ones.
settings.register_profile(
    "kvwall",
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("kvwall")


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Point platformdirs (XDG on Linux) at a fresh folder for every test, and drop any
    LLAMA_* variables of the developer's shell so configurations are the tests' own."""
    home = tmp_path_factory.mktemp("home")
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
    ):
        (home / sub).mkdir()
        monkeypatch.setenv(var, str(home / sub))
    for var in list(os.environ):
        if var.startswith("LLAMA_"):
            monkeypatch.delenv(var)
    yield


@pytest.fixture(autouse=True)
def _no_leaked_threads(request):
    """Fail a test that leaves a non-daemon thread running after a grace period."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=5.0)
    still = [t.name for t in leaked if t.is_alive()]
    if still:
        pytest.fail(f"test leaked running threads: {still}")
