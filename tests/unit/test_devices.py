"""MemorySources: every pool in one snapshot, a poll that never raises."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pynvml
from fakes.fake_pynvml import LIBRARY_MISSING, FakeNvml, FakeProcess, gb10, h100_80gb
from kvwall.monitors.amd import AmdMonitor
from kvwall.monitors.apple import AppleMonitor
from kvwall.monitors.devices import MemorySources, nvidia_pci_present
from kvwall.monitors.nvml import NvmlMonitor

FIX = Path(__file__).resolve().parents[1] / "fixtures"
GiB = 1024**3


class Clock:
    def __init__(self, t: float = 500.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def vm(total=128 * GiB, available=80 * GiB):
    return lambda: SimpleNamespace(total=total, available=available)


def sources(fake: FakeNvml, clock: Clock, *, sys_root=FIX / "sysfs" / "strix_halo",
            proc_root=FIX / "proc" / "strix_halo", virtual_memory=None,
            apple: AppleMonitor | None = None) -> MemorySources:
    return MemorySources(
        clock=clock,
        nvml=NvmlMonitor(fake, clock=clock, cuda_visible_devices=None),
        amd=AmdMonitor(sys_root, proc_root=proc_root, hip_visible_devices=None),
        apple=apple or AppleMonitor(lambda key: None, clock=clock),
        virtual_memory=virtual_memory or vm(),
        root=sys_root,
    )


def test_snapshot_has_host_nvidia_and_amd_pools_stamped_by_the_clock():
    clock = Clock(1234.5)
    src = sources(FakeNvml([h100_80gb(compute=[FakeProcess(4242, 30 * GiB)])]), clock)
    snap = src.poll(pids=[4242])
    assert snap.timestamp == 1234.5
    assert [d.id for d in snap.devices] == ["host", "nvidia:0", "amd:card1"]
    host, nvidia, amd = snap.devices
    assert host.total_bytes == 128 * GiB and host.free_bytes == 80 * GiB
    assert nvidia.total_bytes == 85520809984
    assert [p.pid for p in nvidia.processes] == [4242]
    assert amd.free_bytes <= 80 * GiB  # the APU pool is bounded by the host
    assert [p.pid for p in amd.processes] == [4242]  # only the pids asked for
    assert snap.errors == ()
    assert src.gpu_names() == ("CUDA0", "ROCm0")
    clock.t += 1
    assert src.poll().timestamp == 1235.5
    src.close()


def test_dgx_spark_device_uses_the_same_host_reading_as_the_host_pool():
    src = sources(FakeNvml([gb10()]), Clock(), sys_root=FIX / "sysfs" / "no_nvidia",
                  virtual_memory=vm(127600748 * 1024, 118566368 * 1024))
    host, spark = src.poll().devices
    assert spark.unified is True
    assert (spark.total_bytes, spark.used_bytes, spark.free_bytes) == (
        host.total_bytes, host.used_bytes, host.free_bytes)


def test_every_failing_source_is_reported_and_the_poll_goes_on():
    clock = Clock()

    def broken_psutil():
        raise OSError("psutil exploded")

    class BrokenAmd(AmdMonitor):
        def read(self, host=None, pids=None):
            raise RuntimeError("unexpected sysfs layout")

    card = h100_80gb()
    card.fault = pynvml.NVML_ERROR_UNKNOWN
    src = MemorySources(
        clock=clock,
        nvml=NvmlMonitor(FakeNvml([card]), clock=clock, cuda_visible_devices=None),
        amd=BrokenAmd(FIX / "sysfs" / "strix_halo"),
        apple=AppleMonitor(lambda key: "garbage"),  # sysctl printing nonsense
        virtual_memory=broken_psutil,
        root=FIX / "sysfs" / "no_nvidia",
    )
    snap = src.poll()
    host, nvidia = snap.devices
    assert host.id == "host" and host.total_bytes is None and "psutil exploded" in host.error
    assert nvidia.error and "Unknown Error" in nvidia.error
    text = " | ".join(snap.errors)
    assert "psutil exploded" in text
    assert "AMD GPUs could not be read: unexpected sysfs layout" in text
    assert "Apple GPU could not be read" in text


def test_absent_nvidia_driver_is_silent_without_nvidia_hardware():
    src = sources(FakeNvml([], library=LIBRARY_MISSING), Clock(),
                  sys_root=FIX / "sysfs" / "no_nvidia")
    snap = src.poll()
    assert [d.id for d in snap.devices] == ["host"]
    assert snap.errors == ()
    assert src.gpu_names() == ()


def test_absent_nvidia_driver_with_an_nvidia_card_says_so_with_a_hint():
    src = sources(FakeNvml([], library=LIBRARY_MISSING), Clock(),
                  sys_root=FIX / "sysfs" / "nvidia_no_driver")
    snap = src.poll()
    assert [d.id for d in snap.devices] == ["host"]
    (error,) = snap.errors
    assert error.startswith("no NVIDIA GPU") and "Install the NVIDIA driver" in error


def test_nvidia_pci_detection():
    assert nvidia_pci_present(FIX / "sysfs" / "nvidia_no_driver") is True
    assert nvidia_pci_present(FIX / "sysfs" / "no_nvidia") is False
    assert nvidia_pci_present(FIX / "sysfs" / "does-not-exist") is False


def test_apple_pool_joins_the_snapshot_and_gpu_names():
    values = {"hw.optional.arm64": "1", "hw.memsize": str(64 * GiB),
              "iogpu.wired_limit_mb": "0", "machdep.cpu.brand_string": "Apple M1 Max"}
    src = sources(FakeNvml([], library=LIBRARY_MISSING), Clock(),
                  sys_root=FIX / "sysfs" / "no_nvidia",
                  apple=AppleMonitor(values.get), virtual_memory=vm(64 * GiB, 40 * GiB))
    snap = src.poll()
    assert [d.id for d in snap.devices] == ["host", "apple"]
    assert snap.devices[1].total_bytes == 48 * GiB
    assert src.gpu_names() == ("MTL0",)


def test_close_shuts_nvml_down_once():
    fake = FakeNvml([h100_80gb()])
    src = sources(fake, Clock())
    src.poll()
    src.close()
    src.close()
    assert fake.calls.count("nvmlShutdown") == 1
    assert [d.id for d in src.poll().devices] == ["host", "amd:card1"]
