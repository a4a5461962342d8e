"""Apple Silicon unified memory from ``sysctl``: the share of RAM Metal lets the GPU use.

The pool is Metal's working-set limit (``MTLDevice.recommendedMaxWorkingSetSize``, which
llama.cpp logs at start-up and warns against exceeding):

* ``iogpu.wired_limit_mb`` > 0 (set with ``sudo sysctl iogpu.wired_limit_mb=N``, macOS 14+;
  ``debug.iogpu.wired_limit`` in bytes on macOS 13): that value, in MiB. Metal's
  recommendation follows it exactly.
* 0 (the default): macOS's own share, which sysctl does not expose. We use the rule
  observed on macOS 13-15: 2/3 of RAM on machines with at most 36 GiB, 3/4 above
  (16 GiB -> 10.67 GiB, 32 GiB -> 21.33 GiB, 64 GiB -> 48 GiB, 192 GiB -> 144 GiB).
  macOS 26 reports more on large machines (107.52 GiB of 128 GiB, 84%), so on new
  systems this estimate is conservative. The device's ``hint`` says it is an estimate and
  how to make it exact; a caller that knows the real figure (from the server's log line
  ``recommendedMaxWorkingSetSize = N MB``) passes it as ``working_set_bytes``.

Free space is ``min(limit, host available)`` (psutil), used is ``limit - free``: the
GPU's allocations and everyone else's RAM both count, as on any unified pool.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvwall.monitors.hostmem import HostPool
from kvwall.monitors.snapshot import DeviceMemory

log = logging.getLogger(__name__)

GiB = 1024**3
MiB = 1024**2
SYSCTL = "/usr/sbin/sysctl"
# The wired limit can be changed at run time; re-read it this often (seconds).
WIRED_LIMIT_REFRESH_S = 30.0


class SysctlError(OSError):
    """``sysctl`` could not be run or returned garbage."""


def run_sysctl(key: str, *, timeout_s: float = 2.0) -> str | None:
    """``/usr/sbin/sysctl -n KEY`` on macOS.

    Args:
        key: the sysctl name (``hw.memsize``).
        timeout_s: give up after this long.

    Returns:
        The value as text, or None when the key does not exist or this is not macOS.

    Raises:
        SysctlError: sysctl could not be run or timed out.
    """
    if sys.platform != "darwin":
        return None
    try:
        done = subprocess.run(
            [SYSCTL, "-n", key], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SysctlError(f"sysctl {key} failed: {exc}") from exc
    if done.returncode != 0:
        return None  # "unknown oid"
    return done.stdout.strip()


def default_working_set_bytes(memsize_bytes: int) -> int:
    """macOS's default GPU working-set share when ``iogpu.wired_limit_mb`` is 0 (bytes).

    2/3 of RAM up to 36 GiB, 3/4 above (see the module docstring for its limits).
    """
    if memsize_bytes <= 36 * GiB:
        return memsize_bytes * 2 // 3
    return memsize_bytes * 3 // 4


@dataclass(frozen=True)
class AppleLimits:
    """What sysctl says about the machine (bytes).

    Attributes:
        memsize_bytes: ``hw.memsize``.
        wired_limit_bytes: ``iogpu.wired_limit_mb`` * MiB (or ``debug.iogpu.wired_limit``),
            0 when at the default.
        chip: ``machdep.cpu.brand_string`` (``Apple M3 Max``), "" when unknown.
    """

    memsize_bytes: int
    wired_limit_bytes: int
    chip: str = ""

    @property
    def working_set_bytes(self) -> int:
        if self.wired_limit_bytes > 0:
            return min(self.wired_limit_bytes, self.memsize_bytes)
        return default_working_set_bytes(self.memsize_bytes)


def _int(value: str | None, key: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise SysctlError(f"sysctl {key} is not a number: {value[:40]!r}") from exc


class AppleMonitor:
    """The Apple Silicon GPU pool (``apple``, ``MTL0``).

    Args:
        sysctl: key -> value text or None (unknown key); may raise SysctlError. Defaults
            to :func:`run_sysctl`, which does nothing off macOS.
        clock: monotonic seconds (the wired limit is re-read every 30 s).
        working_set_bytes: Metal's ``recommendedMaxWorkingSetSize`` when the caller knows
            it (e.g. from llama-server's log); overrides the sysctl rule.
    """

    def __init__(
        self,
        sysctl: Callable[[str], str | None] = run_sysctl,
        *,
        clock: Callable[[], float] = time.monotonic,
        working_set_bytes: int | None = None,
    ) -> None:
        self._sysctl = sysctl
        self._clock = clock
        self.working_set_bytes = working_set_bytes
        self._static: tuple[bool, int, str] | None = None  # (apple silicon, memsize, chip)
        self._wired: int | None = None
        self._wired_at = float("-inf")

    def _read_static(self) -> tuple[bool, int, str]:
        if self._static is None:
            arm = _int(self._sysctl("hw.optional.arm64"), "hw.optional.arm64")
            memsize = _int(self._sysctl("hw.memsize"), "hw.memsize")
            if not arm or not memsize:
                self._static = (False, memsize or 0, "")
            else:
                chip = self._sysctl("machdep.cpu.brand_string") or ""
                self._static = (True, memsize, chip.strip())
        return self._static

    def _read_wired(self) -> int:
        now = self._clock()
        if self._wired is None or now - self._wired_at >= WIRED_LIMIT_REFRESH_S:
            mb = _int(self._sysctl("iogpu.wired_limit_mb"), "iogpu.wired_limit_mb")
            if mb is not None:
                wired = mb * MiB
            else:  # macOS 13 (Ventura) name, in bytes
                wired = _int(self._sysctl("debug.iogpu.wired_limit"), "debug.iogpu.wired_limit") or 0
            self._wired, self._wired_at = max(0, wired), now
        return self._wired or 0

    def limits(self) -> AppleLimits | None:
        """The machine's limits, or None when this is not Apple Silicon.

        Raises:
            SysctlError: sysctl failed or printed garbage.
        """
        apple, memsize, chip = self._read_static()
        if not apple:
            return None
        return AppleLimits(memsize, self._read_wired(), chip)

    def present(self) -> bool:
        """True on Apple Silicon (cheap after the first call). Never raises."""
        try:
            return self._read_static()[0]
        except Exception:  # noqa: BLE001 - sysctl surprises mean no Apple pool, never a failed poll
            return False

    def read(self, host: HostPool | None = None) -> tuple[DeviceMemory, ...]:
        """The Apple GPU pool, or ``()`` off Apple Silicon.

        Args:
            host: this poll's host pool (free space); None leaves used/free unknown.

        Returns:
            One DeviceMemory ``apple`` (unified, ``MTL0``), or ``()``.

        Raises:
            SysctlError: sysctl failed or printed garbage (the caller reports it).
        """
        limits = self.limits()
        if limits is None:
            return ()
        hint = None
        if self.working_set_bytes:
            total = self.working_set_bytes
        else:
            total = limits.working_set_bytes
            if limits.wired_limit_bytes == 0:
                hint = (
                    "GPU memory limit estimated from macOS's default share of RAM; "
                    "set `sudo sysctl iogpu.wired_limit_mb=<MiB>` to fix it exactly."
                )
        free = used = None
        error = None
        if host is not None:
            free = min(total, host.available_bytes)
            used = total - free
        else:
            error = "Host memory unknown: free GPU memory cannot be estimated."
        chip = limits.chip or "Apple Silicon"
        return (
            DeviceMemory(
                id="apple",
                kind="apple",
                name=f"{chip} GPU (unified)",
                unified=True,
                total_bytes=total,
                used_bytes=used,
                free_bytes=free,
                llama_device="MTL0",
                error=error,
                hint=hint,
            ),
        )
