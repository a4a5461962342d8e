"""What the what-if panel needs to simulate a server: its model header and configuration.

Qt-free. :class:`WhatIfInputs` is built on the poll thread (reading a GGUF header is file
I/O) and travels to the GUI with the report; :func:`run_what_if` calls
``kvwall.budget.whatif.simulate`` and the forecast (pure, fast) on the GUI thread;
:func:`offload_rows` calls ``kvwall.budget.whatif.offload_table`` (the rows ``kvwall plan``
prints; a few hundred plans: run it off the GUI thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kvwall.budget.cachetypes import cache_type_changes
from kvwall.budget.config import ServerConfig
from kvwall.budget.memory import MemoryPlan
from kvwall.budget.report import ServerReport, SlotReport
from kvwall.budget.units import format_bytes
from kvwall.budget.whatif import WhatIf, slot_count_changes
from kvwall.monitors.gguf import ModelInfo

log = logging.getLogger(__name__)

QUICK_CHANGES = ("q8_0", "q4_0", "one_fewer_slot", "half_slots", "fa_on")
QUICK_LABELS = {
    "q8_0": "q8_0 cache",
    "q4_0": "q4_0 cache",
    "one_fewer_slot": "One fewer slot",
    "half_slots": "Half the slots",
    "fa_on": "Flash attention on",
}


@dataclass(frozen=True)
class WhatIfInputs:
    """A server's model and configuration, and the memory a restart could use.

    Attributes:
        server_key: the ServerReport key it belongs to.
        model: the GGUF header.
        config: the server's parsed command line.
        memory_bytes: bytes the server could have on a restart (its pool's free memory
            plus what it holds now), the budget for "largest context".
        gpu_names: llama.cpp device names it offloads to (empty: CPU only).
        device_free: free bytes per GPU (llama.cpp names) when known, for ``--fit`` and
            the per-GPU fit of the offload rows.
    """

    server_key: str
    model: ModelInfo
    config: ServerConfig
    memory_bytes: int
    gpu_names: tuple[str, ...] = ()
    device_free: Mapping[str, int] | None = None


def quick_changes(kind: str, plan: MemoryPlan, config: ServerConfig) -> dict[str, Any] | None:
    """The ServerConfig changes of a one-click what-if; None when it does not apply.

    Fewer slots come from :func:`kvwall.budget.whatif.slot_count_changes`, as the CLI's
    table and advice do (split slots keep their context each).
    """
    if kind in ("q8_0", "q4_0"):
        return dict(cache_type_changes(kind, config.flash_attn))
    if kind == "one_fewer_slot":
        return slot_count_changes(plan, plan.n_seq - 1) if plan.n_seq > 1 else None
    if kind == "half_slots":  # with two slots, half is one fewer: that button says it
        half = plan.n_seq // 2
        return slot_count_changes(plan, half) if 1 <= half < plan.n_seq - 1 else None
    if kind == "fa_on":
        return None if config.flash_attn == "on" else {"flash_attn": "on"}
    raise ValueError(f"unknown what-if {kind!r}")


@dataclass(frozen=True)
class WhatIfResult:
    """A simulated change, with the turns the fullest slot would have left."""

    what_if: WhatIf
    turns_left_now: int | None
    turns_left_after: int | None


def _fullest(slots: tuple[SlotReport, ...]) -> SlotReport | None:
    known = [s for s in slots if s.tokens is not None and s.forecast.tokens_per_turn]
    return max(known, key=lambda s: s.tokens or 0, default=None)


def run_what_if(
    inputs: WhatIfInputs,
    server: ServerReport | None,
    changes: dict[str, Any],
    label: str | None = None,
    simulate: Callable[..., WhatIf] | None = None,
) -> WhatIfResult:
    """Simulate ``changes`` and forecast the fullest slot against its new limit."""
    if simulate is None:
        from kvwall.budget.whatif import simulate as default_simulate

        simulate = default_simulate
    wi = simulate(inputs.model, inputs.config, changes, memory_bytes=inputs.memory_bytes,
                  gpu_names=inputs.gpu_names, label=label, device_free=inputs.device_free)
    return with_turns(wi, server)


@dataclass(frozen=True)
class OffloadRow:
    """One offload what-if as the panel lists it.

    Attributes:
        result: the simulated row, with the turns the fullest slot has left.
        text: one line for its list entry: ``-ngl 31: frees 4.59 GiB of GPU memory,
            largest -c 82,176``.
    """

    result: WhatIfResult
    text: str


def offload_rows(
    inputs: WhatIfInputs,
    server: ServerReport | None,
    table: Callable[..., list[WhatIf]] | None = None,
) -> tuple[OffloadRow, ...]:
    """The offload what-ifs of a server on GPUs (none for a CPU-only one): the rows of
    ``kvwall plan``'s offload table (a few hundred plans: call it off the GUI thread)."""
    if not inputs.gpu_names:
        return ()
    if table is None:
        from kvwall.budget.whatif import offload_table

        table = offload_table
    rows = table(inputs.model, inputs.config, memory_bytes=inputs.memory_bytes,
                 gpu_names=inputs.gpu_names, device_free=inputs.device_free)
    return tuple(OffloadRow(with_turns(r, server), offload_text(r)) for r in rows if not r.refused)


def offload_text(wi: WhatIf) -> str:
    """``-ngl 31: frees 4.59 GiB of GPU memory, largest -c 82,176``."""
    memory = (f"frees {format_bytes(wi.saves_bytes)}" if wi.saves_bytes >= 0
              else f"takes {format_bytes(-wi.saves_bytes)} more")
    best = f"largest -c {wi.max_ctx:,}" if wi.max_ctx else "does not fit"
    return f"{wi.label}: {memory} of GPU memory, {best}"


def with_turns(wi: WhatIf, server: ServerReport | None) -> WhatIfResult:
    """``wi`` with the requests the server's fullest slot has left now and would have
    under it (cheap: call it again on each poll to keep the figures current)."""
    from kvwall.budget.forecast import forecast_fill

    now = after = None
    slot = _fullest(server.slots) if server is not None else None
    if slot is not None:
        now = slot.forecast.turns_left
        per_turn = slot.forecast.tokens_per_turn
        if not wi.refused and per_turn and slot.tokens is not None:  # as _fullest chose it
            after = forecast_fill(wi.plan.n_ctx_seq, slot.tokens, [per_turn], []).turns_left
    return WhatIfResult(wi, now, after)
