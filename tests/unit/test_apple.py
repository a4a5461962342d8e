"""Apple Silicon's GPU pool from recorded sysctl outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kvwall.monitors.apple import (
    WIRED_LIMIT_REFRESH_S,
    AppleMonitor,
    SysctlError,
    default_working_set_bytes,
    run_sysctl,
)
from kvwall.monitors.hostmem import HostPool

SYSCTL = Path(__file__).resolve().parents[1] / "fixtures" / "sysctl"
GiB, MiB = 1024**3, 1024**2


class RecordedSysctl:
    """`sysctl -n KEY` answered from a recorded `key: value` file; unknown keys -> None."""

    def __init__(self, machine: str) -> None:
        self.values: dict[str, str] = {}
        for line in (SYSCTL / f"{machine}.txt").read_text().splitlines():
            key, _, value = line.partition(": ")
            self.values[key] = value
        self.calls: list[str] = []

    def __call__(self, key: str) -> str | None:
        self.calls.append(key)
        return self.values.get(key)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_default_limit_on_a_128gb_m3_max_is_an_estimate_with_a_hint():
    mon = AppleMonitor(RecordedSysctl("m3_max_128gb_default"))
    (dev,) = mon.read(HostPool(128 * GiB, 100 * GiB))
    assert dev.id == "apple" and dev.kind == "apple"
    assert dev.name == "Apple M3 Max GPU (unified)"
    assert dev.unified is True
    assert dev.llama_device == "MTL0"
    assert dev.total_bytes == 96 * GiB  # 3/4 of 128 GiB
    assert dev.free_bytes == 96 * GiB  # more RAM is available than the GPU may use
    assert dev.used_bytes == 0
    assert "iogpu.wired_limit_mb" in dev.hint


def test_free_space_is_what_the_host_has_left():
    (dev,) = AppleMonitor(RecordedSysctl("m3_max_128gb_default")).read(
        HostPool(128 * GiB, 30 * GiB)
    )
    assert dev.free_bytes == 30 * GiB
    assert dev.used_bytes == 66 * GiB


def test_raised_wired_limit_is_the_pool_exactly():
    (dev,) = AppleMonitor(RecordedSysctl("m2_ultra_192gb_raised")).read(
        HostPool(192 * GiB, 190 * GiB)
    )
    assert dev.total_bytes == 180000 * MiB
    assert dev.name.startswith("Apple M2 Ultra")
    assert dev.hint is None


def test_small_machines_get_two_thirds():
    (dev,) = AppleMonitor(RecordedSysctl("m1_16gb_default")).read(HostPool(16 * GiB, 8 * GiB))
    assert dev.total_bytes == 16 * GiB * 2 // 3
    assert default_working_set_bytes(32 * GiB) == 32 * GiB * 2 // 3
    assert default_working_set_bytes(64 * GiB) == 48 * GiB


def test_ventura_key_is_read_when_the_new_one_is_unknown():
    (dev,) = AppleMonitor(RecordedSysctl("m1_max_64gb_ventura")).read(
        HostPool(64 * GiB, 60 * GiB)
    )
    assert dev.total_bytes == 48 * GiB


def test_known_working_set_from_the_server_log_overrides_the_rule():
    mon = AppleMonitor(RecordedSysctl("m3_max_128gb_default"),
                       working_set_bytes=int(107.52 * GiB))
    (dev,) = mon.read(HostPool(128 * GiB, 120 * GiB))
    assert dev.total_bytes == int(107.52 * GiB)
    assert dev.hint is None


def test_intel_mac_and_other_systems_have_no_apple_pool():
    assert AppleMonitor(RecordedSysctl("intel_mac_16gb")).read(HostPool(16 * GiB, 8 * GiB)) == ()
    assert AppleMonitor(lambda key: None).read(HostPool(16 * GiB, 8 * GiB)) == ()
    assert AppleMonitor(lambda key: None).present() is False


def test_garbage_sysctl_output_raises_a_clear_error():
    with pytest.raises(SysctlError, match=r"hw.memsize"):
        AppleMonitor(RecordedSysctl("garbage")).read(HostPool(16 * GiB, 8 * GiB))


def test_unknown_host_leaves_free_unknown_but_total_known():
    (dev,) = AppleMonitor(RecordedSysctl("m1_16gb_default")).read(None)
    assert dev.total_bytes == 16 * GiB * 2 // 3
    assert dev.free_bytes is None and dev.used_bytes is None
    assert dev.error


def test_wired_limit_is_re_read_only_every_30_seconds():
    clock = Clock()
    sysctl = RecordedSysctl("m3_max_128gb_default")
    mon = AppleMonitor(sysctl, clock=clock)
    host = HostPool(128 * GiB, 120 * GiB)
    mon.read(host)
    sysctl.values["iogpu.wired_limit_mb"] = "110000"  # `sudo sysctl iogpu.wired_limit_mb=...`
    clock.t += 5
    assert mon.read(host)[0].total_bytes == 96 * GiB
    clock.t += WIRED_LIMIT_REFRESH_S
    assert mon.read(host)[0].total_bytes == 110000 * MiB
    assert sysctl.calls.count("hw.memsize") == 1
    assert sysctl.calls.count("iogpu.wired_limit_mb") == 2


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the non-macOS path")
def test_real_sysctl_runner_does_nothing_off_macos():
    assert run_sysctl("hw.memsize") is None
