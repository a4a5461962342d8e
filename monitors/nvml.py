"""NVIDIA GPUs through NVML: the one choke point for every nvidia-ml-py (``pynvml``) call.

Three failure tiers, three experiences:

* absent: no ``pynvml`` module, no ``libnvidia-ml.so.1``, driver not loaded, no permission,
  driver/library version mismatch. The monitor reports no NVIDIA device and a status with
  a hint; host monitoring goes on. Retried rarely (a driver may load later).
* unsupported, per metric: ``NVMLError_NotSupported`` (or ``NoPermission``) on one query.
  That figure is unavailable and a fallback is used: no memory info means a unified-memory
  device (DGX Spark GB10, Jetson) whose pool is host RAM; its per-process figures still
  count.
* transient: ``GPULost``, ``Unknown``, ``Timeout`` and other errors on a device. That device
  reports ``error`` and is retried with exponential back-off on later reads.

CUDA device order: llama.cpp names NVIDIA devices ``CUDA<i>`` where ``i`` is the CUDA
ordinal. NVML enumerates in PCI bus order; CUDA's default order (``CUDA_DEVICE_ORDER``
unset = ``FASTEST_FIRST``) matches it on machines with one GPU or identical GPUs, and
always with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. ``CUDA_VISIBLE_DEVICES`` (integer lists and
``GPU-<uuid>`` prefixes) renumbers and hides devices: see :func:`cuda_ordinals`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from kvwall.monitors.hostmem import HostPool, process_name
from kvwall.monitors.snapshot import DeviceMemory, ProcessMemory

log = logging.getLogger(__name__)

NvmlState = Literal["not started", "ok", "absent", "error"]
"""Where the NVML monitor stands (see :class:`NvmlStatus`)."""
STATE_NOT_STARTED: NvmlState = "not started"
STATE_OK: NvmlState = "ok"
STATE_ABSENT: NvmlState = "absent"
STATE_ERROR: NvmlState = "error"

NvmlErrorKind = Literal["unsupported", "fallback", "uninitialized", "transient"]
"""How an NVML error is handled: see :func:`_classify`."""

NO_GPU = "no NVIDIA GPU"

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
# An absent driver is probed again this rarely (a driver may be loaded after start-up).
ABSENT_RETRY_S = 300.0


@dataclass(frozen=True)
class NvmlStatus:
    """Where the NVML monitor stands.

    Attributes:
        state: ``not started`` | ``ok`` | ``absent`` | ``error``.
        message: a sentence for the user (``no NVIDIA GPU: ...``), None when ok.
        hint: what the user can do about it, else None.
        driver_version: the NVIDIA driver version when known.
    """

    state: NvmlState
    message: str | None = None
    hint: str | None = None
    driver_version: str | None = None


def import_pynvml() -> ModuleType:
    """Import nvidia-ml-py's ``pynvml`` module (without loading the driver library).

    Returns:
        The module. Importing it never touches ``libnvidia-ml``; ``nvmlInit`` loads it.

    Raises:
        ImportError: nvidia-ml-py is not installed.
    """
    import pynvml

    module: ModuleType = pynvml
    return module


def cuda_ordinals(
    visible: str | None, count: int, uuids: Sequence[str | None] | None = None
) -> dict[int, int]:
    """Map NVML indices to CUDA ordinals under a ``CUDA_VISIBLE_DEVICES`` value.

    Follows CUDA's rules: entries are comma-separated; parsing stops at the first entry
    that is not a valid device (out of range, repeated, unknown UUID, MIG id); an empty
    value hides every device; unset (None) shows all in NVML order.

    Args:
        visible: the variable's value, or None when unset.
        count: number of NVML devices.
        uuids: NVML UUIDs (``GPU-...``) by NVML index, to resolve UUID entries.

    Returns:
        ``{nvml_index: cuda_ordinal}`` for the visible devices only.
    """
    if visible is None:
        return {i: i for i in range(count)}
    mapping: dict[int, int] = {}
    for raw in visible.split(","):
        entry = raw.strip()
        index: int | None = None
        if entry.lstrip("+").isdigit():
            index = int(entry)
        elif entry.upper().startswith("GPU-") and uuids:
            matches = [
                i for i, u in enumerate(uuids) if u and u.upper().startswith(entry.upper())
            ]
            index = matches[0] if len(matches) == 1 else None
        if index is None or index >= count or index in mapping:
            break
        mapping[index] = len(mapping)
    return mapping


def _classify(nvml: Any, exc: BaseException) -> NvmlErrorKind:
    """``unsupported`` | ``fallback`` | ``uninitialized`` | ``transient``."""

    def is_(name: str) -> bool:
        cls = getattr(nvml, name, None)
        return isinstance(cls, type) and isinstance(exc, cls)

    if is_("NVMLError_NotSupported") or is_("NVMLError_NoPermission"):
        return "unsupported"
    if is_("NVMLError_FunctionNotFound") or is_("NVMLError_ArgumentVersionMismatch"):
        return "fallback"
    if isinstance(exc, getattr(nvml, "NVMLLibraryMismatchError", ())):
        return "fallback"
    if is_("NVMLError_Uninitialized"):
        return "uninitialized"
    return "transient"


def _absent_message(nvml: Any, exc: BaseException) -> tuple[str, str | None] | None:
    """(message, hint) when an ``nvmlInit`` failure means "no usable NVIDIA GPU"."""

    def is_(name: str) -> bool:
        cls = getattr(nvml, name, None)
        return isinstance(cls, type) and isinstance(exc, cls)

    if is_("NVMLError_LibraryNotFound"):
        return (
            f"{NO_GPU}: the NVIDIA driver library (libnvidia-ml) was not found",
            "Install the NVIDIA driver if this machine has an NVIDIA GPU; in a container, "
            "start it with the NVIDIA runtime (--gpus all).",
        )
    if is_("NVMLError_DriverNotLoaded"):
        return (
            f"{NO_GPU}: the NVIDIA kernel driver is not loaded",
            "Load the driver (sudo modprobe nvidia) or reboot after installing it; "
            "check `nvidia-smi`.",
        )
    if is_("NVMLError_NoPermission"):
        return (
            f"{NO_GPU}: no permission to open the NVIDIA driver",
            "Run kvwall as a user that may open /dev/nvidia* (the video group on some "
            "distributions).",
        )
    if is_("NVMLError_LibRmVersionMismatch"):
        return (
            f"{NO_GPU}: the NVIDIA driver library and kernel module versions differ",
            "The driver was updated without a reboot: reboot the machine.",
        )
    if is_("NVMLError_GpuNotFound") or is_("NVMLError_NotFound"):
        return (f"{NO_GPU}: the driver found no GPU", None)
    return None


@dataclass
class _DeviceState:
    """What the monitor remembers per NVML index between reads (mutable, private)."""

    handle: Any = None
    name: str | None = None
    uuid: str | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None


def _sentence(parts: Sequence[str]) -> str | None:
    """Join notes into one sentence for ``DeviceMemory.error`` (None when there are none)."""
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _memory_error_sentence(label: str, exc: BaseException) -> str:
    return f"{label} is not responding ({exc})"


class NvmlMonitor:
    """Reads NVIDIA devices through NVML; the only place kvwall calls ``pynvml``.

    Thread-safe: every call holds one lock. ``nvmlInit`` runs lazily on the first read,
    once; :meth:`close` calls ``nvmlShutdown`` once.

    Args:
        nvml: a ``pynvml``-compatible module (tests pass ``tests.fakes.fake_pynvml``);
            None imports nvidia-ml-py lazily on first use.
        clock: monotonic seconds, for back-off.
        cuda_visible_devices: the ``CUDA_VISIBLE_DEVICES`` value that decides the
            ``CUDA<i>`` names; defaults to this process's environment at construction.
            Pass the server's own value when it differs.
        process_name: pid -> executable name, for per-process entries.
        backoff_initial_s, backoff_max_s: retry delays after a transient device error
            (doubling from the first to the cap).
    """

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        cuda_visible_devices: str | object | None = ...,
        process_name: Callable[[int], str] = process_name,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self._nvml_injected = nvml
        # the pynvml module (untyped) or a test's fake of it; None until first use
        self._nvml: Any = None
        self._clock = clock
        if cuda_visible_devices is ...:
            cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._cuda_visible: str | None = cuda_visible_devices  # type: ignore[assignment]
        self._process_name = process_name
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._lock = threading.Lock()
        self._initialized = False
        self._closed = False
        self._status = NvmlStatus(STATE_NOT_STARTED)
        self._init_retry_at = 0.0
        self._init_failures = 0
        self._devices: list[_DeviceState] = []
        self._count_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def status(self) -> NvmlStatus:
        """The monitor's state after the last read (``not started`` before the first)."""
        return self._status

    def close(self) -> None:
        """Shut NVML down (once). Later reads report nothing; never raises."""
        with self._lock:
            self._closed = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._initialized and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:  # noqa: BLE001 - a lost GPU may fail shutdown too; nothing to do
                log.debug("nvmlShutdown failed: %s", exc)
        self._initialized = False
        for dev in self._devices:
            dev.handle = None

    def _ensure_init(self) -> bool:
        """Initialise NVML if needed; False (status set) when it is absent or failing."""
        if self._initialized:
            return True
        now = self._clock()
        if now < self._init_retry_at:
            return False
        if self._nvml is None:
            if self._nvml_injected is not None:
                self._nvml = self._nvml_injected
            else:
                try:
                    self._nvml = import_pynvml()
                except ImportError:
                    self._set_absent(
                        f"{NO_GPU}: the nvidia-ml-py package is not installed",
                        "pip install nvidia-ml-py (kvwall's NVIDIA support)",
                        retry=False,
                    )
                    return False
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVML raises its own error classes and ctypes errors alike
            absent = _absent_message(nvml, exc)
            if absent is not None:
                message, hint = absent
                permanent = isinstance(exc, getattr(nvml, "NVMLError_LibraryNotFound", ()))
                self._set_absent(message, hint, retry=not permanent)
            else:
                self._init_failures += 1
                delay = min(
                    self._backoff_max, self._backoff_initial * 2 ** (self._init_failures - 1)
                )
                self._init_retry_at = now + delay
                self._status = NvmlStatus(
                    STATE_ERROR,
                    f"NVIDIA driver did not start: {exc}; retrying in {delay:.0f} s",
                    None,
                )
                log.warning("nvmlInit failed: %s", exc)
            return False
        self._initialized = True
        self._init_failures = 0
        driver = None
        try:
            driver = str(nvml.nvmlSystemGetDriverVersion())
        except Exception:  # noqa: BLE001 - NVML raises its own error classes and ctypes errors alike
            driver = None
        self._status = NvmlStatus(STATE_OK, driver_version=driver)
        return True

    def _set_absent(self, message: str, hint: str | None, *, retry: bool) -> None:
        if self._status.message != message:
            log.info("%s", message)
        self._status = NvmlStatus(STATE_ABSENT, message, hint)
        self._init_retry_at = self._clock() + ABSENT_RETRY_S if retry else float("inf")
        self._devices = []

    # ------------------------------------------------------------------ reads

    def gpu_names(self) -> tuple[str, ...]:
        """llama.cpp names (``CUDA0``...) of the visible NVIDIA devices; cheap after the
        first call (names are cached). Never raises; ``()`` when NVML is absent."""
        with self._lock:
            if self._closed or not self._ensure_init():
                return ()
            if not self._devices and not self._refresh_count():
                return ()
            ordinals = self._ordinals()
            return tuple(f"CUDA{o}" for _, o in sorted(ordinals.items(), key=lambda kv: kv[1]))

    def read(self, host: HostPool | None = None) -> tuple[DeviceMemory, ...]:
        """One reading of every NVIDIA device. Never raises.

        Args:
            host: this poll's host pool, used as the pool of unified-memory devices whose
                memory NVML does not report (DGX Spark). None leaves their figures None.

        Returns:
            One DeviceMemory per NVML device (``id`` ``nvidia:<nvml index>``), in NVML
            order; ``()`` when NVML is absent (see :attr:`status`). A device in error has
            None figures and ``error`` set.
        """
        with self._lock:
            if self._closed or not self._ensure_init():
                return ()
            if not self._refresh_count():
                return tuple(
                    self._error_device(i, dev, self._count_error or "NVML failed")
                    for i, dev in enumerate(self._devices)
                )
            ordinals = self._ordinals()
            return tuple(
                self._read_device(i, dev, ordinals.get(i), host)
                for i, dev in enumerate(self._devices)
            )

    def _refresh_count(self) -> bool:
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:  # noqa: BLE001 - NVML raises its own error classes and ctypes errors alike
            kind = _classify(nvml, exc)
            self._count_error = f"NVIDIA driver is not responding ({exc})"
            self._status = NvmlStatus(STATE_ERROR, self._count_error)
            if kind == "uninitialized":
                self._initialized = False
            return False
        self._count_error = None
        if self._status.state != STATE_OK:
            self._status = NvmlStatus(STATE_OK, driver_version=self._status.driver_version)
        if count != len(self._devices):
            self._devices = [_DeviceState() for _ in range(count)]
            # Names and UUIDs (CUDA_VISIBLE_DEVICES=GPU-..., exporter labels): read once.
            for i, dev in enumerate(self._devices):
                self._identify(i, dev)
        return True

    def _identify(self, index: int, dev: _DeviceState) -> None:
        """Fetch handle, name and (when needed) UUID; errors are left for the read."""
        nvml = self._nvml
        try:
            if dev.handle is None:
                dev.handle = nvml.nvmlDeviceGetHandleByIndex(index)
            if dev.name is None:
                dev.name = str(nvml.nvmlDeviceGetName(dev.handle))
            if dev.uuid is None:  # CUDA_VISIBLE_DEVICES=GPU-..., and exporters' joins
                dev.uuid = str(nvml.nvmlDeviceGetUUID(dev.handle))
        except Exception as exc:  # noqa: BLE001 - NVML raises its own error classes and ctypes errors alike
            log.debug("NVML device %d identification failed: %s", index, exc)

    def _ordinals(self) -> dict[int, int]:
        return cuda_ordinals(
            self._cuda_visible, len(self._devices), [d.uuid for d in self._devices]
        )

    def _label(self, index: int, dev: _DeviceState) -> str:
        return f"GPU {index} ({dev.name})" if dev.name else f"GPU {index}"

    def _error_device(
        self, index: int, dev: _DeviceState, error: str, ordinal: int | None = None
    ) -> DeviceMemory:
        return DeviceMemory(
            id=f"nvidia:{index}",
            kind="nvidia",
            name=dev.name or f"NVIDIA GPU {index}",
            unified=False,
            total_bytes=None,
            used_bytes=None,
            free_bytes=None,
            llama_device=None if ordinal is None else f"CUDA{ordinal}",
            error=error,
        )

    def _read_device(
        self, index: int, dev: _DeviceState, ordinal: int | None, host: HostPool | None
    ) -> DeviceMemory:
        now = self._clock()
        if dev.failures and now < dev.retry_at:
            wait = dev.retry_at - now
            return self._error_device(
                index, dev, f"{dev.last_error}; retrying in {wait:.0f} s", ordinal
            )
        try:
            if dev.handle is None or dev.name is None:
                dev.handle = None
                self._identify(index, dev)
                if dev.handle is None:
                    dev.handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                if dev.name is None:
                    dev.name = str(self._nvml.nvmlDeviceGetName(dev.handle))
            result = self._query(index, dev, ordinal, host)
        except Exception as exc:  # noqa: BLE001 - NVML raises its own error classes and ctypes errors alike
            kind = _classify(self._nvml, exc)
            if kind == "uninitialized":
                # Someone shut NVML down under us: start again on the next read.
                self._initialized = False
            dev.failures += 1
            dev.handle = None  # a lost GPU may come back with a new handle
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (dev.failures - 1))
            dev.retry_at = now + delay
            dev.last_error = _memory_error_sentence(self._label(index, dev), exc)
            if dev.failures == 1:
                log.warning("%s", dev.last_error)
            return self._error_device(
                index, dev, f"{dev.last_error}; retrying in {delay:.0f} s", ordinal
            )
        if dev.failures:
            log.info("%s is back after %d failed reads", self._label(index, dev), dev.failures)
        dev.failures = 0
        dev.last_error = None
        return result

    def _memory_info(self, handle: Any) -> tuple[int, int] | Literal["unified", "denied"]:
        """(total, free) bytes, or why not: ``unified`` when the device does not support
        memory info (its pool is host RAM), ``denied`` when NVML refuses the query.

        Tries ``nvmlDeviceGetMemoryInfo`` v2 first (``version=nvmlMemory_v2``), then v1
        when the driver lacks v2 or refuses it.

        Raises:
            NVMLError: transient errors, for the caller's back-off.
        """
        nvml = self._nvml
        v2 = getattr(nvml, "nvmlMemory_v2", None)
        if v2 is not None:
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle, version=v2)
                return int(info.total), int(info.free)
            except Exception as exc:
                if _classify(nvml, exc) not in ("fallback", "unsupported"):
                    raise
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:
            if isinstance(exc, getattr(nvml, "NVMLError_NotSupported", ())):
                return "unified"
            if _classify(nvml, exc) == "unsupported":
                return "denied"
            raise
        return int(info.total), int(info.free)

    def _processes(self, handle: Any) -> tuple[tuple[ProcessMemory, ...], list[str]]:
        """Per-process use from the compute and graphics lists, merged per pid.

        A process in both lists is counted once (the larger figure); MIG instances of one
        process are summed. ``usedGpuMemory`` None (Windows WDDM) leaves that process out
        and says so.

        Raises:
            NVMLError: transient errors, for the caller's back-off.
        """
        nvml = self._nvml
        per_pid: dict[int, dict[tuple[Any, Any], int]] = {}
        unknown: set[int] = set()
        notes: list[str] = []
        for fn_name in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            try:
                procs = getattr(nvml, fn_name)(handle)
            except Exception as exc:
                kind = _classify(nvml, exc)
                if kind in ("unsupported", "fallback"):
                    continue
                raise
            for p in procs:
                pid = int(p.pid)
                used = getattr(p, "usedGpuMemory", None)
                if used is None:
                    unknown.add(pid)
                    continue
                key = (getattr(p, "gpuInstanceId", None), getattr(p, "computeInstanceId", None))
                slot = per_pid.setdefault(pid, {})
                slot[key] = max(slot.get(key, 0), int(used))
        unknown -= set(per_pid)
        if unknown:
            notes.append(
                f"the driver does not report per-process memory for {len(unknown)} "
                f"process(es) (pids {', '.join(str(p) for p in sorted(unknown))})"
            )
        processes = tuple(
            ProcessMemory(pid=pid, used_bytes=sum(parts.values()), name=self._process_name(pid))
            for pid, parts in sorted(per_pid.items())
        )
        return processes, notes

    def _query(
        self, index: int, dev: _DeviceState, ordinal: int | None, host: HostPool | None
    ) -> DeviceMemory:
        memory = self._memory_info(dev.handle)
        processes, notes = self._processes(dev.handle)
        unified = memory == "unified"
        total_o: int | None
        used: int | None
        free_o: int | None
        if isinstance(memory, tuple):
            total, free = memory
            total_o, used, free_o = total, total - free, free
        elif memory == "denied":
            total_o = used = free_o = None
            notes.append("NVML refused to report this device's memory (no permission)")
        elif host is not None:
            # Unified memory (DGX Spark GB10, Jetson): NVML has no device pool; the GPU
            # allocates from host RAM, so the host pool is the one that fills up.
            total_o, used, free_o = host.total_bytes, host.used_bytes, host.available_bytes
        else:
            total_o = used = free_o = None
            notes.append("memory figures are not reported (unified memory; host RAM unknown)")
        return DeviceMemory(
            id=f"nvidia:{index}",
            kind="nvidia",
            name=dev.name or f"NVIDIA GPU {index}",
            unified=unified,
            total_bytes=total_o,
            used_bytes=used,
            free_bytes=free_o,
            processes=processes,
            llama_device=None if ordinal is None else f"CUDA{ordinal}",
            error=_sentence(notes),
            uuid=dev.uuid,
        )
