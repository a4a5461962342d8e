"""NVIDIA through NVML: discrete and unified cards, absent drivers, lost GPUs, processes.

Driven by tests/fakes/fake_pynvml.py, which raises pynvml's real error classes."""

from __future__ import annotations

import ctypes.util

import pynvml
import pytest
from fakes.fake_pynvml import (
    DRIVER_NOT_LOADED,
    GB10_HOST_AVAILABLE_BYTES,
    GB10_HOST_TOTAL_BYTES,
    LIBRARY_MISSING,
    NO_PERMISSION,
    FakeNvml,
    FakeProcess,
    gb10,
    h100_80gb,
    rtx_4090,
)
from kvwall.monitors.hostmem import HostPool
from kvwall.monitors.nvml import (
    ABSENT_RETRY_S,
    STATE_ABSENT,
    STATE_OK,
    NvmlMonitor,
    cuda_ordinals,
)

GiB = 1024**3
MiB = 1024**2
H100_TOTAL = 85520809984
RTX4090_TOTAL = 25757220864
NAMES = {4242: "llama-server", 999: "Xorg", 114687: "python"}


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def monitor(fake: FakeNvml, clock: Clock | None = None, visible: str | None = None):
    return NvmlMonitor(
        fake,
        clock=clock or Clock(),
        cuda_visible_devices=visible,
        process_name=lambda pid: NAMES.get(pid, ""),
    )


# ------------------------------------------------------------------ the fake is strict


def test_fake_refuses_calls_before_init_and_double_shutdown():
    fake = FakeNvml([h100_80gb()])
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetHandleByIndex(1)
    info = fake.nvmlDeviceGetMemoryInfo(handle)
    assert isinstance(info, pynvml.c_nvmlMemory_t)
    assert info.total == H100_TOTAL and info.used == info.total - info.free
    v2 = fake.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    assert isinstance(v2, pynvml.c_nvmlMemory_v2_t)
    assert v2.total == v2.reserved + v2.used + v2.free
    fake.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetName(handle)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlShutdown()


# ------------------------------------------------------------------ discrete cards


def test_h100_reports_its_memory_as_nvidia_smi_does():
    used = 70 * GiB
    fake = FakeNvml([h100_80gb(used_bytes=used)])
    mon = monitor(fake)
    (dev,) = mon.read()
    free = H100_TOTAL - 551 * MiB - used
    assert dev.id == "nvidia:0"
    assert dev.kind == "nvidia"
    assert dev.name == "NVIDIA H100 80GB HBM3"
    assert dev.unified is False
    assert dev.total_bytes == H100_TOTAL
    assert dev.free_bytes == free
    # driver-reserved memory is not free: used covers it, total = used + free
    assert dev.used_bytes == H100_TOTAL - free
    assert dev.llama_device == "CUDA0"
    assert dev.error is None
    assert mon.status.state == STATE_OK
    assert mon.status.driver_version == "580.126.09"


def test_driver_without_memory_info_v2_falls_back_to_v1():
    fake = FakeNvml([rtx_4090(used_bytes=10 * GiB)], memory_v2=False)
    (dev,) = monitor(fake).read()
    assert dev.total_bytes == RTX4090_TOTAL
    assert dev.free_bytes == RTX4090_TOTAL - 333 * MiB - 10 * GiB
    assert dev.error is None


def test_two_cards_and_cuda_visible_devices_renumber_llama_names():
    cards = [h100_80gb(), rtx_4090()]
    devs = monitor(FakeNvml(cards)).read()
    assert [d.llama_device for d in devs] == ["CUDA0", "CUDA1"]

    devs = monitor(FakeNvml(cards), visible="1,0").read()
    assert [(d.name, d.llama_device) for d in devs] == [
        ("NVIDIA H100 80GB HBM3", "CUDA1"),
        ("NVIDIA GeForce RTX 4090", "CUDA0"),
    ]
    # hidden cards are still measured (other programs use them) but have no llama name
    devs = monitor(FakeNvml(cards), visible="1").read()
    assert [d.llama_device for d in devs] == [None, "CUDA0"]
    assert devs[0].total_bytes == H100_TOTAL
    devs = monitor(FakeNvml(cards), visible="GPU-8a39f0ec").read()
    assert [d.llama_device for d in devs] == [None, "CUDA0"]


def test_cuda_visible_devices_rules():
    assert cuda_ordinals(None, 3) == {0: 0, 1: 1, 2: 2}
    assert cuda_ordinals("", 3) == {}
    assert cuda_ordinals("-1", 3) == {}
    assert cuda_ordinals("2, 0", 3) == {2: 0, 0: 1}
    # CUDA stops at the first invalid entry
    assert cuda_ordinals("0,7,1", 3) == {0: 0}
    assert cuda_ordinals("1,1,0", 3) == {1: 0}
    assert cuda_ordinals("GPU-aa,1", 2, ["GPU-aa11", "GPU-bb22"]) == {0: 0, 1: 1}
    assert cuda_ordinals("GPU-", 2, ["GPU-aa11", "GPU-bb22"]) == {}  # ambiguous prefix
    assert cuda_ordinals("MIG-GPU-aa11/1/0", 2, ["GPU-aa11", "GPU-bb22"]) == {}


# ------------------------------------------------------------------ unified (DGX Spark)


def test_gb10_falls_back_to_the_host_pool_and_keeps_process_figures():
    fake = FakeNvml([gb10()], driver_version="580.173.02")
    host = HostPool(GB10_HOST_TOTAL_BYTES, GB10_HOST_AVAILABLE_BYTES)
    (dev,) = monitor(fake).read(host)
    assert dev.name == "NVIDIA GB10"
    assert dev.unified is True
    assert dev.total_bytes == 127600748 * 1024
    assert dev.free_bytes == 118566368 * 1024
    assert dev.used_bytes == (127600748 - 118566368) * 1024
    assert dev.error is None
    assert dev.llama_device == "CUDA0"
    assert [(p.pid, p.used_bytes, p.name) for p in dev.processes] == [
        (114687, 19135 * MiB, "python")
    ]


def test_gb10_without_a_host_reading_says_figures_are_unknown():
    (dev,) = monitor(FakeNvml([gb10()])).read(None)
    assert dev.unified is True
    assert dev.total_bytes is None and dev.free_bytes is None and dev.used_bytes is None
    assert "not reported" in dev.error
    assert dev.processes  # per-process figures still count


# ------------------------------------------------------------------ absent drivers


def test_library_not_found_is_a_quiet_absent_state_probed_once():
    clock = Clock()
    fake = FakeNvml([h100_80gb()], library=LIBRARY_MISSING)
    mon = monitor(fake, clock)
    assert mon.read() == ()
    assert mon.status.state == STATE_ABSENT
    assert mon.status.message.startswith("no NVIDIA GPU")
    assert "driver" in mon.status.hint
    clock.t += 10 * ABSENT_RETRY_S
    assert mon.read() == ()
    assert mon.gpu_names() == ()
    assert fake.calls.count("nvmlInit") == 1
    mon.close()  # nothing was initialised: no nvmlShutdown (the real one would raise)
    assert "nvmlShutdown" not in fake.calls


@pytest.mark.parametrize(
    "library, words", [(DRIVER_NOT_LOADED, "not loaded"), (NO_PERMISSION, "permission")]
)
def test_driver_problems_are_absent_with_a_hint_and_retried_later(library, words):
    clock = Clock()
    fake = FakeNvml([rtx_4090()], library=library)
    mon = monitor(fake, clock)
    assert mon.read() == ()
    assert mon.status.state == STATE_ABSENT
    assert words in mon.status.message
    assert mon.status.hint
    fake.library = "ok"  # the user loads the driver
    clock.t += ABSENT_RETRY_S / 2
    assert mon.read() == ()  # not yet probed again
    clock.t += ABSENT_RETRY_S
    (dev,) = mon.read()
    assert dev.total_bytes == RTX4090_TOTAL
    assert mon.status.state == STATE_OK


def test_real_pynvml_without_a_driver_reports_no_nvidia_gpu():
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this machine has an NVIDIA driver library")
    mon = NvmlMonitor()  # the real nvidia-ml-py, imported lazily
    assert mon.read() == ()
    assert mon.status.state == STATE_ABSENT
    assert mon.status.message.startswith("no NVIDIA GPU")
    mon.close()


# ------------------------------------------------------------------ transient errors


def test_gpu_lost_mid_poll_then_back_with_back_off():
    clock = Clock()
    card = h100_80gb(used_bytes=GiB)
    fake = FakeNvml([card, rtx_4090()])
    mon = monitor(fake, clock)
    assert all(d.error is None for d in mon.read())

    card.fault = pynvml.NVML_ERROR_GPU_IS_LOST
    lost, other = mon.read()
    assert lost.total_bytes is None and lost.used_bytes is None and lost.free_bytes is None
    assert lost.name == "NVIDIA H100 80GB HBM3"
    assert "GPU 0" in lost.error and "GPU is lost" in lost.error
    assert "retrying in 1 s" in lost.error
    assert lost.llama_device == "CUDA0"
    assert other.error is None and other.total_bytes == RTX4090_TOTAL  # the other card goes on

    # within the back-off the lost card is not queried again
    queried = fake.calls.count("nvmlDeviceGetMemoryInfo")
    clock.t += 0.5
    lost, _ = mon.read()
    assert "GPU is lost" in lost.error
    assert fake.calls.count("nvmlDeviceGetMemoryInfo") == queried + 1  # only the 4090

    clock.t += 1.0  # retried, still lost: the back-off doubles
    lost, _ = mon.read()
    assert "retrying in 2 s" in lost.error

    card.fault = None  # the GPU is back (after a reset)
    clock.t += 2.0
    back, _ = mon.read()
    assert back.error is None
    assert back.total_bytes == H100_TOTAL
    assert fake.calls.count("nvmlInit") == 1


def test_timeout_on_device_count_keeps_known_devices_with_an_error():
    fake = FakeNvml([h100_80gb()])
    mon = monitor(fake)
    mon.read()

    def timeout():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    fake.nvmlDeviceGetCount = timeout
    (dev,) = mon.read()
    assert dev.total_bytes is None
    assert "Timeout" in dev.error
    assert mon.status.message and "not responding" in mon.status.message


# ------------------------------------------------------------------ per-process


def test_per_process_memory_merges_compute_and_graphics_lists():
    procs_compute = [
        FakeProcess(4242, 20 * GiB),
        FakeProcess(77, 3 * GiB, gpu_instance_id=1, compute_instance_id=0),
        FakeProcess(77, 5 * GiB, gpu_instance_id=2, compute_instance_id=0),
    ]
    procs_graphics = [FakeProcess(4242, 20 * GiB), FakeProcess(999, 300 * MiB)]
    fake = FakeNvml([rtx_4090(compute=procs_compute, graphics=procs_graphics)])
    (dev,) = monitor(fake).read()
    got = {p.pid: (p.used_bytes, p.name) for p in dev.processes}
    assert got == {
        4242: (20 * GiB, "llama-server"),  # in both lists: counted once
        77: (8 * GiB, ""),  # two MIG instances: summed
        999: (300 * MiB, "Xorg"),
    }
    assert dev.error is None


def test_wddm_processes_without_figures_are_left_out_and_named():
    card = rtx_4090(compute=[FakeProcess(4242, 8 * GiB), FakeProcess(31337, None)])
    (dev,) = monitor(FakeNvml([card])).read()
    assert [p.pid for p in dev.processes] == [4242]
    assert "31337" in dev.error and "per-process" in dev.error
    assert dev.total_bytes == RTX4090_TOTAL


def test_graphics_list_not_supported_still_reports_compute_processes():
    card = gb10()
    card.graphics_supported = False
    (dev,) = monitor(FakeNvml([card])).read(HostPool(100 * GiB, 50 * GiB))
    assert [p.pid for p in dev.processes] == [114687]
    assert dev.error is None


# ------------------------------------------------------------------ lifecycle


def test_init_once_shutdown_once_and_nothing_after_close():
    fake = FakeNvml([h100_80gb()])
    mon = monitor(fake)
    for _ in range(3):
        mon.read()
    assert mon.gpu_names() == ("CUDA0",)
    assert fake.calls.count("nvmlInit") == 1
    mon.close()
    mon.close()
    assert fake.calls.count("nvmlShutdown") == 1
    assert not fake.initialized
    assert mon.read() == ()
