"""AMD GPUs and APUs from sysfs (amdgpu ``mem_info_*``) and per-process use from
``/proc/<pid>/fdinfo`` (DRM client memory stats).

Which pool a model can use:

* discrete GPU (RX 7900 XTX, Instinct): the VRAM pool, ``mem_info_vram_total/used``.
* APU (Strix Halo, Strix Point, Phoenix, ...): "VRAM" is a carve-out of system RAM set in
  the firmware (often 512 MiB); ROCm and Vulkan allocate the model from GTT, system RAM
  mapped for the GPU, whose size is ``mem_info_gtt_total`` (raised by
  ``amdgpu.gttsize``/``ttm.pages_limit``). The pool is the larger of the two (a firmware
  carve-out of 96 GiB with a small GTT is also seen), and it is unified: its free space is
  also bounded by what host RAM has available.

APU rule (sysfs has no "is APU" flag; the driver's ``AMD_IS_APU`` is only visible through
an ioctl): a card is an APU when its PCI device id is a known AMD APU graphics id
(:data:`APU_DEVICE_IDS`), or, for ids we do not know, when the driver reports no VRAM
vendor (``mem_info_vram_vendor`` missing or ``unknown``: carve-out memory has no memory
chip vendor) and its VRAM is smaller than its GTT. A size-only rule such as "VRAM <= 8 GiB
and GTT larger" is not used: an 8 GiB RX 7600 in a 32 GiB machine has a 16 GiB GTT too.

llama.cpp device names: ROCm builds name AMD GPUs ``ROCm<i>`` in HIP order, Vulkan builds
``Vulkan<i>`` in Vulkan order; which build a server runs is not knowable from sysfs. We
name them ``ROCm<i>`` by PCI address order (HIP's usual order), renumbered by
``HIP_VISIBLE_DEVICES`` (integer lists), and say so here: treat it as a best guess.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kvwall.monitors.hostmem import HostPool
from kvwall.monitors.nvml import cuda_ordinals
from kvwall.monitors.snapshot import DeviceMemory, ProcessMemory

log = logging.getLogger(__name__)

AMD_VENDOR = 0x1002

# PCI device ids of AMD APU graphics (integrated GPUs sharing system RAM).
APU_DEVICE_IDS: Mapping[int, str] = {
    0x1586: "AMD Radeon 8060S / 8050S (Strix Halo)",
    0x150E: "AMD Radeon 890M / 880M (Strix Point)",
    0x1114: "AMD Radeon 860M / 840M (Krackan Point)",
    0x15BF: "AMD Radeon 780M / 760M (Phoenix)",
    0x15C8: "AMD Radeon 740M (Phoenix 2)",
    0x1681: "AMD Radeon 680M / 660M (Rembrandt)",
    0x164E: "AMD Radeon Graphics (Raphael)",
    0x13C0: "AMD Radeon Graphics (Granite Ridge)",
    0x1506: "AMD Radeon 610M (Mendocino)",
    0x163F: "AMD Custom GPU 0405 (Van Gogh)",
    0x1636: "AMD Radeon Graphics (Renoir)",
    0x1638: "AMD Radeon Graphics (Cezanne)",
    0x164C: "AMD Radeon Graphics (Lucienne)",
    0x15E7: "AMD Radeon Graphics (Barcelo)",
    0x15D8: "AMD Radeon Vega Graphics (Picasso)",
    0x15DD: "AMD Radeon Vega Graphics (Raven Ridge)",
}

# Friendly names of common discrete cards (pci.ids has chip names like "Navi 31 [...]").
DGPU_DEVICE_NAMES: Mapping[int, str] = {
    0x744C: "AMD Radeon RX 7900 XTX / XT / GRE",
    0x7448: "AMD Radeon Pro W7900",
    0x7550: "AMD Radeon RX 9070 XT / 9070",
    0x73BF: "AMD Radeon RX 6900 XT / 6800 XT / 6800",
    0x7480: "AMD Radeon RX 7600 / 7600 XT",
    0x740F: "AMD Instinct MI210",
    0x74A1: "AMD Instinct MI300X",
}

_CARD_RE = re.compile(r"^card(\d+)$")
_UNIT = {"": 1, "b": 1, "kib": 1024, "kb": 1024, "mib": 1024**2, "mb": 1024**2,
         "gib": 1024**3, "gb": 1024**3}


class AmdReadError(OSError):
    """A card's memory files could not be read (unreadable sysfs, garbage contents)."""


@dataclass(frozen=True)
class AmdCard:
    """One amdgpu card as sysfs describes it (bytes; None when a file is missing).

    Attributes:
        card: DRM card name (``card1``).
        pci_address: ``0000:c5:00.0`` (matches fdinfo's ``drm-pdev``), "" when unknown.
        device_id: PCI device id (``0x1586``).
        vram_total_bytes, vram_used_bytes: ``mem_info_vram_total`` / ``_used``.
        gtt_total_bytes, gtt_used_bytes: ``mem_info_gtt_total`` / ``_used``.
        vram_vendor: ``mem_info_vram_vendor`` (``samsung``, ``hynix``...), None if absent.
        product_name: ``product_name`` (FRU, some boards only), None if absent.
    """

    card: str
    pci_address: str
    device_id: int | None
    vram_total_bytes: int | None
    vram_used_bytes: int | None
    gtt_total_bytes: int | None
    gtt_used_bytes: int | None
    vram_vendor: str | None = None
    product_name: str | None = None

    @property
    def is_apu(self) -> bool:
        """The APU rule of the module docstring."""
        if self.device_id in APU_DEVICE_IDS:
            return True
        no_vendor = self.vram_vendor in (None, "", "unknown")
        return bool(
            no_vendor
            and self.vram_total_bytes is not None
            and self.gtt_total_bytes is not None
            and self.vram_total_bytes < self.gtt_total_bytes
        )

    @property
    def display_name(self) -> str:
        if self.product_name:
            return self.product_name
        if self.device_id is not None:
            known = APU_DEVICE_IDS.get(self.device_id) or DGPU_DEVICE_NAMES.get(self.device_id)
            if known:
                return known
            return f"AMD GPU [1002:{self.device_id:04x}]"
        return f"AMD GPU ({self.card})"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AmdReadError(f"{path}: {exc.strerror or exc}") from exc


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError as exc:
        raise AmdReadError(f"{path}: not a number: {text[:40]!r}") from exc


def _read_optional(path: Path) -> str | None:
    """A descriptive file (``product_name``, ``uevent``...): any failure means "absent"
    (some boards answer EINVAL/ENODEV for FRU data); it never costs the card."""
    try:
        return _read_text(path)
    except AmdReadError:
        return None


def _pci_address(device_dir: Path) -> str:
    uevent = _read_optional(device_dir / "uevent") or ""
    for line in uevent.splitlines():
        if line.startswith("PCI_SLOT_NAME="):
            return line.split("=", 1)[1].strip().lower()
    try:
        return device_dir.resolve().name.lower() if device_dir.is_symlink() else ""
    except OSError:
        return ""


def _device_id(device_dir: Path) -> int | None:
    text = _read_optional(device_dir / "device")
    try:
        return int(text, 0) if text else None
    except ValueError:
        return None


def scan_cards(root: str | os.PathLike[str] = "/") -> tuple[list[AmdCard], list[str]]:
    """Find amdgpu cards under ``<root>/sys/class/drm``.

    Args:
        root: filesystem root (tests pass a recorded tree).

    Returns:
        (cards in PCI address order, errors): a card whose files cannot be read is left out
        and named in ``errors`` (one sentence each). No ``/sys/class/drm`` means no cards.
    """
    drm = Path(root, "sys/class/drm")
    cards: list[AmdCard] = []
    errors: list[str] = []
    try:
        entries = sorted(drm.iterdir()) if drm.is_dir() else []
    except OSError as exc:
        return [], [f"AMD GPUs: {drm} could not be listed ({exc.strerror or exc})"]
    for entry in entries:
        if not _CARD_RE.match(entry.name):
            continue  # connectors (card1-eDP-1), render nodes, version
        device = entry / "device"
        try:
            vendor = _read_int(device / "vendor")
            if vendor != AMD_VENDOR:
                continue
            vram_total = _read_int(device / "mem_info_vram_total")
            gtt_total = _read_int(device / "mem_info_gtt_total")
            if vram_total is None and gtt_total is None:
                continue  # not amdgpu (radeon driver) or memory info not exposed
            cards.append(
                AmdCard(
                    card=entry.name,
                    pci_address=_pci_address(device),
                    device_id=_device_id(device),
                    vram_total_bytes=vram_total,
                    vram_used_bytes=_read_int(device / "mem_info_vram_used"),
                    gtt_total_bytes=gtt_total,
                    gtt_used_bytes=_read_int(device / "mem_info_gtt_used"),
                    vram_vendor=_read_optional(device / "mem_info_vram_vendor"),
                    product_name=_read_optional(device / "product_name") or None,
                )
            )
        except AmdReadError as exc:
            errors.append(f"AMD GPU {entry.name} could not be read: {exc}")
    cards.sort(key=lambda c: (c.pci_address or "~", c.card))
    return cards, errors


# ---------------------------------------------------------------------- fdinfo


@dataclass(frozen=True)
class DrmClient:
    """One DRM client (an open GPU file) from ``/proc/<pid>/fdinfo/<fd>`` (bytes)."""

    pdev: str
    client_id: str
    vram_bytes: int
    gtt_bytes: int


def _parse_size(text: str) -> int | None:
    parts = text.split()
    if not parts:
        return None
    try:
        value = int(parts[0])
    except ValueError:
        return None
    unit = parts[1].lower() if len(parts) > 1 else ""
    factor = _UNIT.get(unit)
    return None if factor is None or value < 0 else value * factor


def parse_fdinfo(text: str) -> DrmClient | None:
    """Parse one fdinfo file; None when it is not an amdgpu DRM client.

    Reads ``drm-memory-vram``/``drm-memory-gtt`` (amdgpu's keys, resident memory) and,
    where a kernel only prints the generic keys, ``drm-resident-<region>`` then
    ``drm-total-<region>``. Units: none (bytes), ``KiB``, ``MiB`` (``GiB`` accepted).
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if fields.get("drm-driver") != "amdgpu":
        return None

    def region(name: str) -> int:
        for key in (f"drm-memory-{name}", f"drm-resident-{name}", f"drm-total-{name}"):
            if key in fields:
                size = _parse_size(fields[key])
                if size is not None:
                    return size
        return 0

    return DrmClient(
        pdev=fields.get("drm-pdev", "").lower(),
        client_id=fields.get("drm-client-id", ""),
        vram_bytes=region("vram"),
        gtt_bytes=region("gtt"),
    )


def _pid_dirs(proc: Path, pids: Iterable[int] | None) -> list[Path]:
    if pids is not None:
        return [proc / str(p) for p in sorted(set(pids))]
    try:
        return sorted(
            (p for p in proc.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
    except OSError:
        return []


def read_process_memory(
    root: str | os.PathLike[str] = "/", pids: Iterable[int] | None = None
) -> dict[str, dict[int, tuple[int, int, str]]]:
    """Per-process AMD GPU memory from ``<root>/proc/<pid>/fdinfo``.

    Only file descriptors that point at ``/dev/dri/*`` are read (when the ``fd`` link is
    readable). A DRM client opened once and shared (``dup``, ``fork``) is counted once per
    device (deduplicated by ``drm-client-id``), for the first pid that shows it.
    Unreadable processes (other users', vanished) are skipped.

    Args:
        root: filesystem root.
        pids: the processes to look at; None scans every process (slower).

    Returns:
        ``{pci_address: {pid: (vram_bytes, gtt_bytes, name)}}``.
    """
    proc = Path(root, "proc")
    result: dict[str, dict[int, tuple[int, int, str]]] = {}
    seen: set[tuple[str, str]] = set()
    for pid_dir in _pid_dirs(proc, pids):
        pid = int(pid_dir.name)
        fdinfo = pid_dir / "fdinfo"
        try:
            fds = sorted(fdinfo.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
        except OSError:
            continue
        name: str | None = None
        for info in fds:
            try:
                target = os.readlink(pid_dir / "fd" / info.name)
                if not target.startswith("/dev/dri/"):
                    continue
            except OSError:
                pass  # link not readable: let the fdinfo contents decide
            try:
                text = info.read_text(encoding="ascii", errors="replace")
            except OSError:
                continue
            client = parse_fdinfo(text)
            if client is None:
                continue
            key = (client.pdev, client.client_id)
            if client.client_id and key in seen:
                continue
            seen.add(key)
            if name is None:
                name = _read_text_quiet(pid_dir / "comm")
            per_dev = result.setdefault(client.pdev, {})
            vram, gtt, _ = per_dev.get(pid, (0, 0, ""))
            per_dev[pid] = (vram + client.vram_bytes, gtt + client.gtt_bytes, name)
    return result


def _read_text_quiet(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------- devices


def amd_device(
    card: AmdCard,
    ordinal: int | None,
    host: HostPool | None,
    processes: Mapping[int, tuple[int, int, str]] | None = None,
) -> DeviceMemory:
    """The pool a model can use on one card, as a DeviceMemory.

    Args:
        card: the card.
        ordinal: its ``ROCm<i>`` number, None when hidden by ``HIP_VISIBLE_DEVICES``.
        host: this poll's host pool; bounds the free space of an APU's pool. None: not
            bounded.
        processes: ``{pid: (vram_bytes, gtt_bytes, name)}`` on this card.

    Returns:
        ``id`` ``amd:<card>``; dGPU: the VRAM pool; APU: the larger of GTT and the VRAM
        carve-out, ``unified=True``, ``used = total - free`` where free is
        ``min(pool headroom, host available)``.
    """
    procs = processes or {}
    pool = _apu_pool(card, host, procs) if card.is_apu else _dgpu_pool(card, procs)
    return DeviceMemory(
        id=f"amd:{card.card}",
        kind="amd",
        name=pool.name,
        unified=card.is_apu,
        total_bytes=pool.total_bytes,
        used_bytes=pool.used_bytes,
        free_bytes=pool.free_bytes,
        processes=pool.processes,
        llama_device=None if ordinal is None else f"ROCm{ordinal}",
        error=("AMD GPU " + "; ".join(pool.notes) + ".") if pool.notes else None,
    )


@dataclass(frozen=True)
class _Pool:
    """The memory pool of one card, as :func:`amd_device` reports it."""

    name: str
    total_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None
    processes: tuple[ProcessMemory, ...]
    notes: tuple[str, ...]


def _apu_pool(
    card: AmdCard, host: HostPool | None, procs: Mapping[int, tuple[int, int, str]]
) -> _Pool:
    """An APU: the larger of GTT and the VRAM carve-out, its free space bounded by host RAM."""
    use_gtt = (card.gtt_total_bytes or 0) >= (card.vram_total_bytes or 0)
    total = card.gtt_total_bytes if use_gtt else card.vram_total_bytes
    used = card.gtt_used_bytes if use_gtt else card.vram_used_bytes
    label = "GTT" if use_gtt else "VRAM carve-out"
    notes: tuple[str, ...] = ()
    free: int | None = None
    if total is not None and used is not None:
        free = max(0, total - used)
        if host is not None and host.available_bytes < free:
            free = host.available_bytes
        used = total - free
    else:
        notes = (f"{label} usage could not be read",)
    per_process = tuple(
        ProcessMemory(pid=pid, used_bytes=vram + gtt, name=pname)
        for pid, (vram, gtt, pname) in sorted(procs.items())
    )
    return _Pool(f"{card.display_name} ({label})", total, used, free, per_process, notes)


def _dgpu_pool(card: AmdCard, procs: Mapping[int, tuple[int, int, str]]) -> _Pool:
    """A discrete GPU: its VRAM."""
    total = card.vram_total_bytes
    used = card.vram_used_bytes
    free = None if total is None or used is None else max(0, total - used)
    notes = ("VRAM usage could not be read",) if free is None else ()
    per_process = tuple(
        ProcessMemory(pid=pid, used_bytes=vram, name=pname)
        for pid, (vram, _gtt, pname) in sorted(procs.items())
    )
    return _Pool(card.display_name, total, used, free, per_process, notes)


class AmdMonitor:
    """Reads AMD GPUs/APUs from sysfs and procfs under an injectable root.

    Args:
        root: filesystem root holding ``sys/`` (``/`` in production).
        proc_root: root holding ``proc/``; defaults to ``root``.
        hip_visible_devices: ``HIP_VISIBLE_DEVICES`` deciding the ``ROCm<i>`` names;
            defaults to this process's environment at construction.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        *,
        proc_root: str | os.PathLike[str] | None = None,
        hip_visible_devices: str | object | None = ...,
    ) -> None:
        self._root = root
        self._proc_root = root if proc_root is None else proc_root
        if hip_visible_devices is ...:
            hip_visible_devices = os.environ.get("HIP_VISIBLE_DEVICES")
        self._hip_visible: str | None = hip_visible_devices  # type: ignore[assignment]

    def cards(self) -> tuple[list[AmdCard], list[str]]:
        """The cards and per-card read errors (see :func:`scan_cards`)."""
        return scan_cards(self._root)

    def gpu_names(self) -> tuple[str, ...]:
        """``ROCm<i>`` names of the visible AMD GPUs (sysfs only; cheap). Never raises."""
        try:
            cards, _ = scan_cards(self._root)
        except Exception:  # noqa: BLE001 - sysfs surprises mean no AMD device, never a failed poll
            return ()
        ordinals = cuda_ordinals(self._hip_visible, len(cards))
        return tuple(f"ROCm{o}" for o in sorted(ordinals.values()))

    def read(
        self, host: HostPool | None = None, pids: Iterable[int] | None = None
    ) -> tuple[tuple[DeviceMemory, ...], tuple[str, ...]]:
        """One reading of every AMD card.

        Args:
            host: this poll's host pool (bounds APU pools).
            pids: processes whose GPU memory to attribute; None scans all processes.

        Returns:
            (devices in PCI order, errors as sentences).

        Raises:
            Nothing: unreadable files become errors.
        """
        cards, errors = scan_cards(self._root)
        if not cards:
            return (), tuple(errors)
        try:
            per_device = read_process_memory(self._proc_root, pids)
        except Exception as exc:  # noqa: BLE001 - procfs surprises must not cost the device figures
            per_device = {}
            errors.append(f"AMD per-process memory could not be read: {exc}")
        ordinals = cuda_ordinals(self._hip_visible, len(cards))
        devices = tuple(
            amd_device(card, ordinals.get(i), host, per_device.get(card.pci_address))
            for i, card in enumerate(cards)
        )
        return devices, tuple(errors)
