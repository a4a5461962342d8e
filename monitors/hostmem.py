"""Host RAM through psutil: the pool every process shares, and per-process resident memory."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kvwall.monitors.snapshot import DeviceMemory

log = logging.getLogger(__name__)

HOST_ID = "host"
HOST_NAME = "Host RAM"


class HostMemoryError(RuntimeError):
    """Host memory could not be read (psutil failed or returned nonsense)."""


@dataclass(frozen=True)
class HostPool:
    """Host RAM at one moment (bytes).

    Attributes:
        total_bytes: physical RAM the OS manages (``MemTotal`` on Linux, ``hw.memsize`` on
            macOS as psutil reports it).
        available_bytes: what a new allocation can get without swapping (``MemAvailable``).
        used_bytes: ``total_bytes - available_bytes`` (page cache that can be dropped is
            not counted as used).
    """

    total_bytes: int
    available_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.available_bytes


class VirtualMemory(Protocol):
    """What ``psutil.virtual_memory()`` returns, as far as kvwall reads it (bytes)."""

    @property
    def total(self) -> int: ...

    @property
    def available(self) -> int: ...


class _MemoryInfo(Protocol):
    @property
    def rss(self) -> int: ...


class ProcessInfo(Protocol):
    """What kvwall reads of a ``psutil.Process``."""

    def memory_info(self) -> _MemoryInfo: ...

    def name(self) -> str: ...


def _default_virtual_memory() -> VirtualMemory:
    import psutil

    return psutil.virtual_memory()


def read_host_pool(virtual_memory: Callable[[], VirtualMemory] | None = None) -> HostPool:
    """Read host RAM.

    Args:
        virtual_memory: a ``psutil.virtual_memory``-like callable returning an object with
            ``total`` and ``available`` (bytes). Defaults to psutil's.

    Returns:
        The host pool.

    Raises:
        HostMemoryError: psutil failed, or the figures are missing or inconsistent.
    """
    vm_fn = virtual_memory or _default_virtual_memory
    try:
        vm = vm_fn()
        total = int(vm.total)
        available = int(vm.available)
    except Exception as exc:  # psutil raises OSError, AttributeError on odd platforms...
        raise HostMemoryError(f"host memory could not be read: {exc}") from exc
    if total <= 0 or available < 0:
        raise HostMemoryError(
            f"host memory figures make no sense: total {total} B, available {available} B"
        )
    return HostPool(total_bytes=total, available_bytes=min(available, total))


def host_device(pool: HostPool) -> DeviceMemory:
    """The ``host`` pool as a DeviceMemory (unified by definition; no llama.cpp device)."""
    return DeviceMemory(
        id=HOST_ID,
        kind="host",
        name=HOST_NAME,
        unified=True,
        total_bytes=pool.total_bytes,
        used_bytes=pool.used_bytes,
        free_bytes=pool.available_bytes,
    )


def host_device_error(message: str) -> DeviceMemory:
    """The ``host`` pool when it could not be read: figures unknown, ``error`` says why."""
    return DeviceMemory(
        id=HOST_ID,
        kind="host",
        name=HOST_NAME,
        unified=True,
        total_bytes=None,
        used_bytes=None,
        free_bytes=None,
        error=message,
    )


def _default_process(pid: int) -> ProcessInfo:
    import psutil

    return psutil.Process(pid)


def process_rss(pid: int, process: Callable[[int], ProcessInfo] | None = None) -> int | None:
    """Resident memory of one process (bytes), or None when it is gone or not readable.

    Args:
        pid: the process id.
        process: a ``psutil.Process``-like factory (``memory_info().rss``). Defaults to
            psutil's.

    Returns:
        ``rss`` in bytes, or None (no such process, access denied, zombie).
    """
    factory = process or _default_process
    try:
        return int(factory(pid).memory_info().rss)
    except Exception:  # noqa: BLE001 - NoSuchProcess, AccessDenied, ZombieProcess, OSError
        return None


def process_name(pid: int, process: Callable[[int], ProcessInfo] | None = None) -> str:
    """The executable name of a process (``llama-server``), or ``""`` when not readable."""
    factory = process or _default_process
    try:
        return str(factory(pid).name())
    except Exception:  # noqa: BLE001 - psutil: NoSuchProcess, AccessDenied, ZombieProcess, OSError
        return ""
