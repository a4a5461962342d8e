"""Attribution: one server's measured memory, split into weights, KV, compute and overhead.

The split comes from the memory model (:func:`kvwall.budget.memory.plan_memory`) run with
the server's real configuration; the measurement from the snapshot: the driver's
per-process figure on a GPU, the process's resident memory (RSS) on the host or a unified
pool that reports no per-process figure. What the model cannot explain is shown as
``unattributed_bytes`` with a note, never hidden in the overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvwall.budget.memory import DeviceBudget, MemoryPlan
from kvwall.budget.report import Attribution
from kvwall.budget.units import format_whole_mib
from kvwall.monitors.snapshot import DeviceMemory, ServerState

GIB = 1024**3
# Overhead llama.cpp does not account for (CUDA context, cuBLAS, VMM pool, libraries,
# HTTP threads) is plausible up to max(OVERHEAD_MIN_BYTES, OVERHEAD_FRACTION * modeled).
OVERHEAD_MIN_BYTES = 1 * GIB
OVERHEAD_FRACTION = 0.25
# Measured below this fraction of the model: the model does not match the process.
SHORTFALL_FRACTION = 0.80

RSS_NOTE = (
    "measured as the process's resident memory (RSS): memory-mapped weights count only "
    "once touched, and pages the kernel evicted do not count"
)


@dataclass(frozen=True)
class _Split:
    """How a measurement compares with the model: overhead, unattributed, why."""

    overhead_bytes: int
    unattributed_bytes: int
    notes: tuple[str, ...]


def _compare(measured_bytes: int, modeled: int, weights: int, resident: bool) -> _Split:
    """Overhead when the excess is plausible, else unattributed bytes with a note."""
    diff = measured_bytes - modeled
    limit = max(OVERHEAD_MIN_BYTES, int(OVERHEAD_FRACTION * modeled))
    if 0 <= diff <= limit:
        return _Split(diff, 0, ())
    if diff > limit:
        return _Split(0, diff, (
            f"{format_whole_mib(diff)} more than the model explains (over {format_whole_mib(limit)} of plausible "
            "overhead): another model or context in the process (draft, projector), a "
            "grown GPU memory pool, or a configuration kvwall could not read",))
    if measured_bytes >= SHORTFALL_FRACTION * modeled:
        return _Split(0, diff, ())
    if resident and weights:
        return _Split(0, diff, (
            f"{format_whole_mib(-diff)} less than modeled: memory-mapped weights are not all "
            "resident (not touched yet, or evicted)",))
    return _Split(0, diff, (
        f"{format_whole_mib(-diff)} less than modeled: the running configuration may "
        "differ from the one kvwall read (e.g. --fit lowered -ngl or the "
        "context)",))


def split_measured(
    device_id: str,
    measured_bytes: int | None,
    rows: Sequence[DeviceBudget],
    *,
    resident: bool = False,
) -> Attribution:
    """Split one measurement by the modeled buffers of ``rows``.

    Args:
        device_id: the snapshot's memory pool id (``nvidia:0``, ``host``...).
        measured_bytes: what the pool reports for the process; None when unknown.
        rows: the plan's budget rows living in that pool (one GPU row, the Host row, or
            all rows on a unified pool). The output (logits) buffer counts as compute.
        resident: the measurement is RSS (mmap'd weights count only once touched).

    Returns:
        The attribution. Whenever ``measured_bytes`` is known,
        ``weights + kv + recurrent + compute + overhead + unattributed == measured``;
        ``unattributed_bytes`` is negative when the process holds less than modeled.
    """
    weights = sum(r.weights_bytes for r in rows)
    kv = sum(r.kv_bytes for r in rows)
    recurrent = sum(r.recurrent_bytes for r in rows)
    compute = sum(r.compute_bytes + r.output_bytes for r in rows)
    if measured_bytes is None:
        split = _Split(0, 0, ("the process's use of this pool is not reported; modeled "
                              "figures only",))
    else:
        split = _compare(measured_bytes, weights + kv + recurrent + compute, weights, resident)
    notes = split.notes + ((RSS_NOTE,) if resident and measured_bytes is not None else ())
    return Attribution(
        device_id=device_id,
        measured_bytes=measured_bytes,
        weights_bytes=weights,
        kv_bytes=kv,
        compute_bytes=compute,
        overhead_bytes=split.overhead_bytes,
        unattributed_bytes=split.unattributed_bytes,
        recurrent_bytes=recurrent,
        note="; ".join(notes) or None,
    )


def _process_bytes(device: DeviceMemory, pid: int | None) -> int | None:
    if pid is None:
        return None
    found = [p.used_bytes for p in device.processes if p.pid == pid]
    return sum(found) if found else None


def server_devices(server: ServerState, devices: Sequence[DeviceMemory]) -> list[DeviceMemory]:
    """The accelerator pools a server runs on, as far as the snapshot tells.

    A pool that lists the server's pid is one of them. When no pool lists it, a pool that
    cannot tell per-process use (Apple Silicon; a unified pool whose per-process figures
    could not be read) is assumed to hold it: llama.cpp offloads there by default. An
    empty process list on a pool that can tell means the server is not on it (a CPU
    build). Host RAM is never in the list.
    """
    pid = server.process.pid
    accelerators = [d for d in devices if d.kind != "host" and d.total_bytes is not None]
    listed = [d for d in accelerators if _process_bytes(d, pid) is not None]
    if listed:
        return listed
    if pid is None:
        return []
    return [
        d
        for d in accelerators
        if not d.processes and (d.kind == "apple" or (d.unified and d.error is not None))
    ]


def device_ids(server: ServerState, devices: Sequence[DeviceMemory]) -> tuple[str, ...]:
    """llama.cpp device ids (``CUDA0``...) of :func:`server_devices`, for the plan."""
    ids = []
    for i, dev in enumerate(server_devices(server, devices)):
        ids.append(dev.llama_device or f"{dev.kind.upper()}{i}")
    return tuple(ids)


def attribute(
    server: ServerState,
    plan: MemoryPlan | None,
    devices: Sequence[DeviceMemory],
    *,
    weights_hint_bytes: int | None = None,
) -> tuple[Attribution, ...]:
    """Attribute one server's memory on every memory pool it uses.

    Args:
        server: the server as polled (pid, RSS).
        plan: its memory plan with the real configuration (None: the model could not
            be read; then only measured figures and ``weights_hint_bytes`` are shown).
        devices: the snapshot's pools.
        weights_hint_bytes: the model size from ``/v1/models`` when there is no plan.

    Returns:
        One attribution per pool: each accelerator holding the server (its per-process
        figure against the plan's row for that device), then host RAM (RSS against the
        Host row). On a unified pool without per-process figures the whole plan is set
        against the RSS on that pool and there is no separate host row.
    """
    pid = server.process.pid
    host = next((d for d in devices if d.kind == "host"), None)
    host_id = host.id if host is not None else "host"
    on = server_devices(server, devices)
    if pid is None:
        # A remote or container server: nothing measured here.
        if plan is None:
            return ()
        return (split_measured(host_id if not on else on[0].id, None, plan.devices),)
    if plan is None:
        return _attribute_measured(server, on, host_id, weights_hint_bytes)
    gpu_rows = [r for r in plan.devices if not r.is_host]
    if gpu_rows and on and all(_process_bytes(d, pid) is None for d in on) and any(
        d.unified for d in on
    ):
        # Apple Silicon and friends: GPU buffers are system RAM and the only measurement
        # is the process's resident memory.
        return (split_measured(on[0].id, server.process.rss_bytes, plan.devices,
                               resident=True),)
    host_rows = [r for r in plan.devices if r.is_host]
    return (*_attribute_accelerators(pid, plan, on, devices),
            split_measured(host_id, server.process.rss_bytes, host_rows, resident=True))


def _attribute_measured(server: ServerState, on: Sequence[DeviceMemory], host_id: str,
                        weights_hint_bytes: int | None) -> tuple[Attribution, ...]:
    """Without a plan: what each pool measures, the model size from /v1/models on host."""
    pid = server.process.pid
    out = []
    for dev in on:
        measured = _process_bytes(dev, pid)
        if measured is not None:
            out.append(split_measured(dev.id, measured, ()))
    host_rows: tuple[DeviceBudget, ...] = ()
    if weights_hint_bytes and not out:
        host_rows = (DeviceBudget("Host", True, weights_hint_bytes, 0, 0, 0, 0,
                                  weights_hint_bytes),)
    out.append(split_measured(host_id, server.process.rss_bytes, host_rows, resident=True))
    return tuple(out)


def _attribute_accelerators(pid: int, plan: MemoryPlan, on: Sequence[DeviceMemory],
                            devices: Sequence[DeviceMemory]) -> list[Attribution]:
    """Each accelerator's per-process figure against the plan's row for that device."""
    remaining = [r for r in plan.devices if not r.is_host]
    out = []
    for i, dev in enumerate(on):
        row = next((r for r in remaining if r.name == dev.llama_device), None)
        if row is None and remaining and (dev.llama_device is None or i < len(remaining)):
            row = remaining[0]
        if row is not None:
            remaining.remove(row)
        out.append(split_measured(dev.id, _process_bytes(dev, pid), (row,) if row else ()))
    for row in remaining:
        match = next((d for d in devices if d.llama_device == row.name), None)
        out.append(split_measured(match.id if match else row.name, None, (row,)))
    return out
