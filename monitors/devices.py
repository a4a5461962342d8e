"""Every memory pool at once: NVIDIA (NVML), AMD (sysfs), Apple (sysctl) and host RAM,
composed into one immutable MemorySnapshot per poll that never raises."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from kvwall.monitors.amd import AmdMonitor
from kvwall.monitors.apple import AppleMonitor
from kvwall.monitors.hostmem import (
    HostMemoryError,
    HostPool,
    VirtualMemory,
    host_device,
    host_device_error,
    read_host_pool,
)
from kvwall.monitors.nvml import STATE_ABSENT, STATE_ERROR, NvmlMonitor
from kvwall.monitors.snapshot import DeviceMemory, MemorySnapshot

log = logging.getLogger(__name__)

_T = TypeVar("_T")

NVIDIA_VENDOR = "0x10de"


def nvidia_pci_present(root: str | os.PathLike[str] = "/") -> bool:
    """True when sysfs lists an NVIDIA display/3D controller (PCI class 0x03xxxx).

    Used to tell "this machine has no NVIDIA GPU" (silence) from "it has one but the
    driver is not usable" (an error with a hint). Never raises; False off Linux.
    """
    devices = Path(root, "sys/bus/pci/devices")
    try:
        entries = list(devices.iterdir())
    except OSError:
        return False
    for dev in entries:
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
            if vendor != NVIDIA_VENDOR:
                continue
            if (dev / "class").read_text().strip().lower().startswith("0x03"):
                return True
        except OSError:
            continue
    return False


class MemorySources:
    """Polls every memory source and returns one MemorySnapshot; never raises.

    Args:
        clock: monotonic seconds for the snapshot timestamp (and the sources' back-off).
        nvml: the NVIDIA monitor; None builds ``NvmlMonitor(clock=clock)``.
        amd: the AMD monitor; None builds ``AmdMonitor(root)``.
        apple: the Apple monitor; None builds ``AppleMonitor(clock=clock)``.
        virtual_memory: ``psutil.virtual_memory``-like callable for the host pool.
        root: filesystem root for sysfs/procfs (tests pass recorded trees).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        nvml: NvmlMonitor | None = None,
        amd: AmdMonitor | None = None,
        apple: AppleMonitor | None = None,
        virtual_memory: Callable[[], VirtualMemory] | None = None,
        root: str | os.PathLike[str] = "/",
    ) -> None:
        self._clock = clock
        self._root = root
        self.nvml = nvml if nvml is not None else NvmlMonitor(clock=clock)
        self.amd = amd if amd is not None else AmdMonitor(root)
        self.apple = apple if apple is not None else AppleMonitor(clock=clock)
        self._virtual_memory = virtual_memory
        self._lock = threading.Lock()
        self._nvidia_pci: bool | None = None
        self._logged: set[str] = set()

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s", message)

    def _guard(self, what: str, fn: Callable[[], _T], errors: list[str]) -> _T | None:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a source's bug must never cost the whole poll
            message = f"{what} could not be read: {exc}"
            self._log_once(message)
            errors.append(message)
            return None

    def poll(self, pids: Iterable[int] | None = None) -> MemorySnapshot:
        """Read every pool now.

        Args:
            pids: processes whose per-process GPU memory matters (the llama servers);
                only AMD needs it (procfs scan); None scans every process there. NVML
                always reports all its processes.

        Returns:
            A MemorySnapshot stamped with the injected clock: the ``host`` pool first
            (always present, with ``error`` when unreadable), then NVIDIA, AMD and Apple
            pools. Sources that failed are named in ``errors``; an absent NVIDIA driver on
            a machine without NVIDIA hardware is not an error.
        """
        with self._lock:
            errors: list[str] = []
            devices: list[DeviceMemory] = []
            host: HostPool | None = None
            try:
                host = read_host_pool(self._virtual_memory)
                devices.append(host_device(host))
            except HostMemoryError as exc:
                devices.append(host_device_error(str(exc)))
                errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - one source's failure must never cost the whole poll
                message = f"host memory could not be read: {exc}"
                devices.append(host_device_error(message))
                errors.append(message)

            nvidia = self._guard("NVIDIA GPUs", lambda: self.nvml.read(host), errors) or ()
            devices.extend(nvidia)
            self._nvml_status_errors(errors)

            amd = self._guard("AMD GPUs", lambda: self.amd.read(host, pids), errors)
            if amd:
                amd_devices, amd_errors = amd
                devices.extend(amd_devices)
                errors.extend(amd_errors)

            apple = self._guard("Apple GPU", lambda: self.apple.read(host), errors) or ()
            devices.extend(apple)

            try:
                timestamp = float(self._clock())
            except Exception:  # noqa: BLE001 - one source's failure must never cost the whole poll
                timestamp = time.monotonic()
            return MemorySnapshot(timestamp=timestamp, devices=tuple(devices), errors=tuple(errors))

    def _nvml_status_errors(self, errors: list[str]) -> None:
        status = self.nvml.status
        if status.state == STATE_ERROR and status.message:
            errors.append(status.message)
        elif status.state == STATE_ABSENT and status.message:
            if self._nvidia_pci is None:
                self._nvidia_pci = nvidia_pci_present(self._root)
            if self._nvidia_pci:
                text = status.message + (f". {status.hint}" if status.hint else "")
                errors.append(text)

    def gpu_names(self) -> tuple[str, ...]:
        """llama.cpp device names of the GPUs present (``CUDA0``, ``ROCm0``, ``MTL0``).

        Cheap: NVML names are cached after the first call, AMD reads a few sysfs files,
        Apple one cached sysctl. Never raises.
        """
        names: list[str] = []
        for fn in (self.nvml.gpu_names, self.amd.gpu_names):
            try:
                names.extend(fn())
            except Exception as exc:  # noqa: BLE001 - one source's failure must never cost the whole poll
                log.debug("gpu_names: %s", exc)
        if self.apple.present():
            names.append("MTL0")
        return tuple(names)

    def close(self) -> None:
        """Release NVML (``nvmlShutdown`` once). Never raises."""
        try:
            self.nvml.close()
        except Exception as exc:  # noqa: BLE001 - one source's failure must never cost the whole poll
            log.debug("NVML close failed: %s", exc)
