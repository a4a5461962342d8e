"""The engine plans a live server for the devices its own executable lists, asked once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kvwall.app.demo.tinymodels import write_model
from kvwall.budget.engine import Engine
from kvwall.monitors.snapshot import (
    HEALTH_OK,
    DeviceMemory,
    MemorySnapshot,
    ServerProcess,
    ServerState,
    Snapshot,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the fake binaries are sh scripts")

GIB = 1 << 30
TWO_VULKAN = """Available devices:
  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)
  Vulkan1: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)
"""


def fake_server_binary(tmp_path: Path, listing: str, name: str = "llama-server") -> Path:
    """A stand-in for the server's executable: prints ``listing`` for --list-devices only
    when GGML_VK_VISIBLE_DEVICES is what the server had, and counts its runs."""
    (tmp_path / "listing.txt").write_text(listing)
    exe = tmp_path / "bin" / name
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(
        f'#!/bin/sh\necho "$@" >> "{tmp_path}/runs"\n'
        '[ "$GGML_VK_VISIBLE_DEVICES" = "0,0" ] || { echo "Available devices:"; echo "  (none)"; exit 0; }\n'
        f'case "$1" in --list-devices) cat "{tmp_path}/listing.txt";; '
        '--version) echo "version: 0.1.0-dev (build 1, commit 7e4c0a9)";; esac\n')
    exe.chmod(0o755)
    return exe


def runs(tmp_path: Path) -> int:
    file = tmp_path / "runs"
    return len(file.read_text().splitlines()) if file.exists() else 0


def server(model: Path, exe: Path | None, env: dict[str, str] | None = None) -> ServerState:
    argv = (str(exe or "llama-server"), "-m", str(model), "-c", "2048", "-np", "1")
    proc = ServerProcess(url="http://127.0.0.1:8123", pid=4321, argv=argv, rss_bytes=50 << 20,
                         name="llama-server", exe=str(exe) if exe else None,
                         device_env=env or {})
    return ServerState(proc, 0.0, HEALTH_OK)


def snap(*states: ServerState) -> Snapshot:
    host = DeviceMemory("host", "host", "Host RAM", True, 16 * GIB, 8 * GIB, 8 * GIB)
    return Snapshot(0.0, MemorySnapshot(0.0, (host,)), states)


@pytest.fixture
def model(tmp_path):
    return write_model("llama", tmp_path / "tiny.gguf")


def test_a_live_server_is_planned_for_its_executables_devices_asked_once(tmp_path, model):
    exe = fake_server_binary(tmp_path, TWO_VULKAN)
    engine = Engine()
    state = server(model, exe, {"GGML_VK_VISIBLE_DEVICES": "0,0"})
    (report,) = engine.analyse(snap(state)).servers
    assert report.device_ids == ("Vulkan0", "Vulkan1")
    assert report.plan is not None
    assert [d.name for d in report.plan.devices] == ["Vulkan0", "Vulkan1", "Host"]
    assert runs(tmp_path) == 2  # --list-devices and --version, side by side
    for _ in range(3):
        engine.analyse(snap(state))
    assert runs(tmp_path) == 2, "a poll ran the binary again"
    assert Engine().analyse(snap(state)).servers[0].device_ids == ("Vulkan0", "Vulkan1")
    assert runs(tmp_path) == 2, "a new engine did not use the disk cache"


def test_the_servers_own_environment_decides_its_devices(tmp_path, model):
    exe = fake_server_binary(tmp_path, TWO_VULKAN)
    (report,) = Engine().analyse(snap(server(model, exe, {"GGML_VK_VISIBLE_DEVICES": "0"}))).servers
    assert report.device_ids == () and report.plan is not None
    assert [d.name for d in report.plan.devices] == ["Host"]


@pytest.mark.parametrize("why", ["writable by others", "not a llama.cpp program", "no executable"])
def test_an_executable_kvwall_may_not_run_is_not_run(tmp_path, model, why):
    exe: Path | None = fake_server_binary(tmp_path, TWO_VULKAN,
                                          name="python3" if "program" in why else "llama-server")
    if why == "writable by others" and exe is not None:
        exe.chmod(0o777)
    if why == "no executable":
        exe = None
    (report,) = Engine().analyse(snap(server(model, exe, {"GGML_VK_VISIBLE_DEVICES": "0,0"}))).servers
    assert runs(tmp_path) == 0
    assert report.device_ids == () and report.plan is not None and not report.errors


def test_a_broken_executable_leaves_the_measured_devices_and_no_error(tmp_path, model):
    exe = tmp_path / "bin" / "llama-server"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\necho x >> "{tmp_path}/runs"\necho "\x1b[2J garbage"\nexit 1\n')
    exe.chmod(0o755)
    engine = Engine()
    (report,) = engine.analyse(snap(server(model, exe))).servers
    assert report.device_ids == () and report.plan is not None and not report.errors
    engine.analyse(snap(server(model, exe)))
    assert runs(tmp_path) == 2, "a failed query is asked again at every poll"
