"""A fake nvidia-ml-py (``pynvml``) module: the functions kvwall calls, same signatures and
return shapes, raising pynvml's REAL error classes, never more forgiving than NVML.

What is mirrored from nvidia-ml-py 13.x (``pynvml.py``):

* ``nvmlInit()`` loads the library (``NVMLError_LibraryNotFound`` when it cannot) and counts
  references; ``nvmlShutdown()`` decrements them and raises ``NVMLError_Uninitialized``
  when nothing is initialised. Every other call before ``nvmlInit`` (or after the last
  ``nvmlShutdown``) raises ``NVMLError_Uninitialized``.
* ``nvmlDeviceGetHandleByIndex(i)`` raises ``NVMLError_InvalidArgument`` out of range;
  handles are opaque; a foreign object as handle raises ``NVMLError_InvalidArgument``.
* ``nvmlDeviceGetMemoryInfo(handle, version=None)`` returns the real ctypes structs
  ``c_nvmlMemory_t`` (total/free/used, ``used = total - free``, reserved included) or, with
  ``version=nvmlMemory_v2``, ``c_nvmlMemory_v2_t`` (version/total/reserved/free/used,
  ``total = reserved + used + free``). A driver without the v2 symbol raises
  ``NVMLError_FunctionNotFound``; a wrong version ``NVMLError_ArgumentVersionMismatch``.
* ``nvmlDeviceGet{Compute,Graphics}RunningProcesses(handle)`` return lists of real
  ``nvmlFriendlyObject`` with ``pid``, ``usedGpuMemory`` (None under Windows WDDM),
  ``gpuInstanceId``, ``computeInstanceId`` (0xFFFFFFFF outside MIG).
* Names and UUIDs are ``str`` (pynvml decodes them).

Figures (``h100_80gb``, ``rtx_4090``, ``gb10``):

* H100: name ``NVIDIA H100 80GB HBM3`` and total 85520809984 B (81559 MiB) as nvidia-smi
  and NVML report it on real SXM5 cards (driver 580.126.09). The reserved share (551 MiB)
  is representative of that driver, not a measurement of ours.
* RTX 4090: ``NVIDIA GeForce RTX 4090``, total 25757220864 B (24564 MiB) as NVML reports
  it; reserved (333 MiB) representative.
* DGX Spark: ``NVIDIA GB10``, driver 580.173.02: ``nvmlDeviceGetMemoryInfo`` and ``_v2``
  both return ``NVML_ERROR_NOT_SUPPORTED`` (public reports, e.g. XuehaiPan/nvitop#208;
  NVIDIA's DGX Spark known issues), compute processes report ``usedGpuMemory`` (e.g. a
  19135 MiB python process, mostlygeek/llama-swap#782). Host: MemTotal 127600748 kB,
  MemAvailable 118566368 kB (same report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml as _real

MiB = 1024 * 1024
NOT_MIG = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId outside MIG (NVML_VALUE_NOT_AVAILABLE)

# GB10 host figures from /proc/meminfo (kB) of the same report.
GB10_HOST_TOTAL_BYTES = 127600748 * 1024
GB10_HOST_AVAILABLE_BYTES = 118566368 * 1024


@dataclass
class FakeProcess:
    """One entry of a running-process list."""

    pid: int
    used_bytes: int | None  # None: WDDM "not available"
    gpu_instance_id: int = NOT_MIG
    compute_instance_id: int = NOT_MIG


@dataclass
class FakeCard:
    """One GPU as the fake driver sees it.

    ``used_bytes`` is NVML v2's ``used`` (allocations, reserved excluded). ``fault`` is an
    ``NVML_ERROR_*`` code every call on this card raises (GPU lost...), None when healthy.
    """

    name: str
    uuid: str
    total_bytes: int | None  # None: memory info NOT_SUPPORTED (unified)
    reserved_bytes: int = 0
    used_bytes: int = 0
    compute: list[FakeProcess] = field(default_factory=list)
    graphics: list[FakeProcess] = field(default_factory=list)
    graphics_supported: bool = True
    fault: int | None = None


def h100_80gb(used_bytes: int = 0, compute: list[FakeProcess] | None = None) -> FakeCard:
    return FakeCard(
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-3b84c06a-611d-8e07-2726-44a868f646fe",
        total_bytes=85520809984,
        reserved_bytes=551 * MiB,
        used_bytes=used_bytes,
        compute=list(compute or []),
    )


def rtx_4090(used_bytes: int = 0, compute: list[FakeProcess] | None = None,
             graphics: list[FakeProcess] | None = None) -> FakeCard:
    return FakeCard(
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-8a39f0ec-5884-45d9-f056-53ace5e57df8",
        total_bytes=25757220864,
        reserved_bytes=333 * MiB,
        used_bytes=used_bytes,
        compute=list(compute or []),
        graphics=list(graphics or []),
    )


def gb10(compute: list[FakeProcess] | None = None) -> FakeCard:
    return FakeCard(
        name="NVIDIA GB10",
        uuid="GPU-2dee1e25-b3b5-007e-2b55-79f2d0f2ebe5",
        total_bytes=None,
        compute=list(compute if compute is not None else [FakeProcess(114687, 19135 * MiB)]),
    )


class _Handle:
    """Opaque device handle (the real one is a ctypes pointer)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<fake c_nvmlDevice_t {self.index}>"


# Library states for nvmlInit.
LIBRARY_OK = "ok"
LIBRARY_MISSING = "missing"  # no libnvidia-ml.so.1
DRIVER_NOT_LOADED = "driver not loaded"
NO_PERMISSION = "no permission"


class FakeNvml(SimpleNamespace):
    """The fake module. Pass it as ``NvmlMonitor(nvml=FakeNvml([...]))``.

    Attributes beyond pynvml's: ``cards`` (mutable, to script faults), ``calls`` (names of
    the functions called, in order), ``library`` (one of the LIBRARY_* states, may be
    changed between calls), ``memory_v2`` (False: driver without the v2 symbol).
    """

    def __init__(self, cards: list[FakeCard] | None = None, *, library: str = LIBRARY_OK,
                 memory_v2: bool = True, driver_version: str = "580.126.09") -> None:
        super().__init__()
        # The real module's error classes and constants, so `except pynvml.NVMLError_X`
        # in the code under test catches exactly what it would catch in production.
        for name in dir(_real):
            if name.startswith(("NVMLError", "NVML_ERROR_", "NVML_SUCCESS")):
                setattr(self, name, getattr(_real, name))
        self.NVMLLibraryMismatchError = _real.NVMLLibraryMismatchError
        self.nvmlMemory_v2 = _real.nvmlMemory_v2
        self.cards = list(cards or [])
        self.library = library
        self.memory_v2 = memory_v2
        self.driver_version = driver_version
        self.calls: list[str] = []
        self._refcount = 0
        self._loaded = False

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _raise(code: int) -> None:
        # pynvml maps the code to its subclass in NVMLError.__new__.
        raise _real.NVMLError(code)

    def _check_init(self) -> None:
        if not self._loaded or self._refcount == 0:
            self._raise(_real.NVML_ERROR_UNINITIALIZED)

    def _card(self, handle: object) -> FakeCard:
        self._check_init()
        if not isinstance(handle, _Handle) or not 0 <= handle.index < len(self.cards):
            self._raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        card = self.cards[handle.index]
        if card.fault is not None:
            self._raise(card.fault)
        return card

    @property
    def initialized(self) -> bool:
        return self._refcount > 0

    # -- pynvml API ------------------------------------------------------------

    def nvmlInit(self):
        self.calls.append("nvmlInit")
        if self.library == LIBRARY_MISSING:
            self._raise(_real.NVML_ERROR_LIBRARY_NOT_FOUND)
        self._loaded = True
        if self.library == DRIVER_NOT_LOADED:
            self._raise(_real.NVML_ERROR_DRIVER_NOT_LOADED)
        if self.library == NO_PERMISSION:
            self._raise(_real.NVML_ERROR_NO_PERMISSION)
        self._refcount += 1
        return None

    def nvmlShutdown(self):
        self.calls.append("nvmlShutdown")
        if not self._loaded or self._refcount == 0:
            self._raise(_real.NVML_ERROR_UNINITIALIZED)
        self._refcount -= 1
        return None

    def nvmlSystemGetDriverVersion(self):
        self.calls.append("nvmlSystemGetDriverVersion")
        self._check_init()
        return self.driver_version

    def nvmlDeviceGetCount(self):
        self.calls.append("nvmlDeviceGetCount")
        self._check_init()
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index):
        self.calls.append("nvmlDeviceGetHandleByIndex")
        self._check_init()
        if not isinstance(index, int) or not 0 <= index < len(self.cards):
            self._raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        if self.cards[index].fault is not None:
            self._raise(self.cards[index].fault)
        return _Handle(index)

    def nvmlDeviceGetName(self, handle):
        self.calls.append("nvmlDeviceGetName")
        return self._card(handle).name

    def nvmlDeviceGetUUID(self, handle):
        self.calls.append("nvmlDeviceGetUUID")
        return self._card(handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        self.calls.append("nvmlDeviceGetMemoryInfo")
        card = self._card(handle)
        if version and not self.memory_v2:
            self._raise(_real.NVML_ERROR_FUNCTION_NOT_FOUND)
        if card.total_bytes is None:
            self._raise(_real.NVML_ERROR_NOT_SUPPORTED)
        free = card.total_bytes - card.reserved_bytes - card.used_bytes
        if not version:
            return _real.c_nvmlMemory_t(
                total=card.total_bytes, free=free, used=card.total_bytes - free
            )
        if version != _real.nvmlMemory_v2:
            self._raise(_real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return _real.c_nvmlMemory_v2_t(
            version=version,
            total=card.total_bytes,
            reserved=card.reserved_bytes,
            free=free,
            used=card.used_bytes,
        )

    @staticmethod
    def _friendly(procs: list[FakeProcess]) -> list:
        return [
            _real.nvmlFriendlyObject({
                "pid": p.pid,
                "usedGpuMemory": p.used_bytes,
                "gpuInstanceId": p.gpu_instance_id,
                "computeInstanceId": p.compute_instance_id,
            })
            for p in procs
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self.calls.append("nvmlDeviceGetComputeRunningProcesses")
        return self._friendly(self._card(handle).compute)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        self.calls.append("nvmlDeviceGetGraphicsRunningProcesses")
        card = self._card(handle)
        if not card.graphics_supported:
            self._raise(_real.NVML_ERROR_NOT_SUPPORTED)
        return self._friendly(card.graphics)
