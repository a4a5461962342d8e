"""AMD GPUs and APUs from recorded sysfs trees and /proc fdinfo samples."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvwall.monitors.amd import (
    AmdCard,
    AmdMonitor,
    amd_device,
    parse_fdinfo,
    read_process_memory,
    scan_cards,
)
from kvwall.monitors.hostmem import HostPool

FIX = Path(__file__).resolve().parents[1] / "fixtures"
STRIX = FIX / "sysfs" / "strix_halo"
STRIX_PROC = FIX / "proc" / "strix_halo"
XTX = FIX / "sysfs" / "rx7900xtx"
XTX_PROC = FIX / "proc" / "rx7900xtx"
KiB, MiB, GiB = 1024, 1024**2, 1024**3
BIG_HOST = HostPool(128 * GiB, 80 * GiB)


def test_strix_halo_pool_is_gtt_not_the_vram_carve_out():
    (dev,), errors = AmdMonitor(STRIX, proc_root=STRIX_PROC, hip_visible_devices=None).read(
        BIG_HOST
    )
    assert errors == ()
    assert dev.id == "amd:card1"
    assert dev.kind == "amd"
    assert dev.unified is True
    assert "8060S" in dev.name and dev.name.endswith("(GTT)")
    assert dev.total_bytes == 96 * GiB
    assert dev.used_bytes == 43620761600
    assert dev.free_bytes == 96 * GiB - 43620761600
    assert dev.llama_device == "ROCm0"
    assert dev.error is None


def test_apu_free_space_is_bounded_by_host_available_memory():
    tight = HostPool(128 * GiB, 20 * GiB)  # the CPU side holds the rest
    (dev,), _ = AmdMonitor(STRIX, proc_root=STRIX_PROC).read(tight)
    assert dev.free_bytes == 20 * GiB
    assert dev.used_bytes + dev.free_bytes == dev.total_bytes


def test_strix_halo_processes_from_fdinfo():
    (dev,), _ = AmdMonitor(STRIX, proc_root=STRIX_PROC).read(BIG_HOST)
    got = {p.pid: (p.used_bytes, p.name) for p in dev.processes}
    assert got == {
        # fd 5 and its dup fd 6 are one client (71); fd 7 is a second client (72)
        4242: ((262144 + 41943040 + 4096 + 2048) * KiB, "llama-server"),
        # generic keys: resident, not total
        5151: ((8192 + 16) * MiB, "python3"),
    }


def test_process_scan_limited_to_given_pids():
    got = read_process_memory(STRIX_PROC, pids=[5151, 6000, 99999])
    assert set(got["0000:c5:00.0"]) == {5151}


def test_rx7900xtx_is_a_discrete_vram_pool_and_ignores_the_intel_igpu():
    (dev,), errors = AmdMonitor(XTX, proc_root=XTX_PROC, hip_visible_devices=None).read(
        BIG_HOST
    )
    assert errors == ()
    assert dev.id == "amd:card0"
    assert dev.unified is False
    assert "7900 XTX" in dev.name
    assert dev.total_bytes == 24 * GiB
    assert dev.used_bytes == 22079905792
    assert dev.free_bytes == 24 * GiB - 22079905792
    assert dev.llama_device == "ROCm0"
    # the forked child shares client 12: counted once, for the parent; only VRAM counts
    assert [(p.pid, p.used_bytes) for p in dev.processes] == [(7001, 20 * GiB)]


def test_hip_visible_devices_hides_the_card_name():
    (dev,), _ = AmdMonitor(XTX, proc_root=XTX_PROC, hip_visible_devices="").read(BIG_HOST)
    assert dev.llama_device is None
    assert dev.total_bytes == 24 * GiB
    assert AmdMonitor(XTX, hip_visible_devices="").gpu_names() == ()
    assert AmdMonitor(XTX, hip_visible_devices=None).gpu_names() == ("ROCm0",)


def test_garbage_sysfs_file_is_an_error_naming_the_card_not_a_crash():
    devices, errors = AmdMonitor(FIX / "sysfs" / "broken_amd", proc_root=STRIX_PROC).read(None)
    assert devices == ()
    assert len(errors) == 1
    assert "card0" in errors[0] and "mem_info_vram_total" in errors[0]


def test_no_sysfs_means_no_amd_devices(tmp_path):
    assert AmdMonitor(tmp_path).read(BIG_HOST) == ((), ())
    assert scan_cards(tmp_path) == ([], [])


def _card(**kw) -> AmdCard:
    base = {"card": "card0", "pci_address": "0000:03:00.0", "device_id": 0x9999,
                "vram_total_bytes": 8 * GiB, "vram_used_bytes": GiB,
                "gtt_total_bytes": 16 * GiB, "gtt_used_bytes": 0, "vram_vendor": "samsung"}
    base.update(kw)
    return AmdCard(**base)


@pytest.mark.parametrize(
    "card, apu",
    [
        # an 8 GiB dGPU in a 32 GiB host has a larger GTT: still a dGPU
        (_card(), False),
        # unknown id, no memory vendor, carve-out smaller than GTT: an APU
        (_card(vram_vendor=None, vram_total_bytes=512 * MiB), True),
        (_card(vram_vendor="unknown", vram_total_bytes=2 * GiB), True),
        # a known APU id wins whatever the sizes
        (_card(device_id=0x1586, vram_total_bytes=96 * GiB, gtt_total_bytes=16 * GiB), True),
    ],
)
def test_apu_rule(card, apu):
    assert card.is_apu is apu


def test_apu_with_a_large_firmware_carve_out_uses_the_vram_pool():
    card = _card(device_id=0x1586, vram_vendor=None, vram_total_bytes=96 * GiB,
                 vram_used_bytes=40 * GiB, gtt_total_bytes=16 * GiB, gtt_used_bytes=GiB)
    dev = amd_device(card, 0, BIG_HOST)
    assert dev.unified is True
    assert dev.total_bytes == 96 * GiB
    assert dev.used_bytes == 40 * GiB
    assert dev.name.endswith("(VRAM carve-out)")


def test_parse_fdinfo_units_and_other_drivers():
    text = "drm-driver:\tamdgpu\ndrm-pdev:\t0000:03:00.0\ndrm-client-id:\t5\n"
    assert parse_fdinfo(text + "drm-memory-vram:\t4096\n").vram_bytes == 4096
    assert parse_fdinfo(text + "drm-memory-vram:\t4 KiB\n").vram_bytes == 4096
    assert parse_fdinfo(text + "drm-memory-gtt:\t3 MiB\n").gtt_bytes == 3 * MiB
    assert parse_fdinfo(text + "drm-memory-gtt:\tlots\n").gtt_bytes == 0
    assert parse_fdinfo("drm-driver:\ti915\ndrm-total-system0:\t1 MiB\n") is None
    assert parse_fdinfo("pos:\t0\nflags:\t02\n") is None


def test_unreadable_descriptive_file_does_not_cost_the_card(tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(XTX, root)
    # reading FRU data fails on some boards (EINVAL/ENODEV); here: EISDIR
    (root / "sys/class/drm/card0/device/product_name").mkdir()
    (dev,), errors = AmdMonitor(root, proc_root=XTX_PROC).read(BIG_HOST)
    assert errors == ()
    assert dev.total_bytes == 24 * GiB and "7900 XTX" in dev.name
