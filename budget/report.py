"""What a poll means for the user: attribution, forecasts and advice per server.

INTERFACE (frozen; fields may be added, never renamed). Built by ``kvwall.budget.engine``
from a ``kvwall.monitors.snapshot.Snapshot``; rendered by ``kvwall status`` and the GUI.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvwall.budget.config import ServerConfig
from kvwall.budget.memory import MemoryPlan
from kvwall.monitors.snapshot import DeviceMemory


@dataclass(frozen=True)
class Forecast:
    """When a slot (or the unified pool) will be full.

    Attributes:
        tokens_per_turn: mean KV cells added per finished request (None until seen).
        tokens_per_minute: growth rate over wall time (None until seen).
        turns_left: requests until full at that rate (None = unknown, 0 = full).
        seconds_left: seconds until full at that rate (None = unknown).
        confidence: 0..1; drops when growth is erratic or few turns are seen.
        turns_seen: finished requests that the forecast is based on.
    """

    tokens_per_turn: float | None = None
    tokens_per_minute: float | None = None
    turns_left: int | None = None
    seconds_left: float | None = None
    confidence: float = 0.0
    turns_seen: int = 0


@dataclass(frozen=True)
class SlotReport:
    """One slot: its context fill and forecast."""

    id: int
    n_ctx: int
    tokens: int | None
    is_processing: bool
    forecast: Forecast


@dataclass(frozen=True)
class Attribution:
    """One server's memory on one pool, split by what llama.cpp allocated.

    ``overhead_bytes = measured - (weights + kv + compute)`` when positive and plausible;
    ``unattributed_bytes`` is what overhead cannot explain (measured far above or
    below the model), with ``note`` saying so. It is negative when the process holds
    less than modeled; whenever ``measured_bytes`` is known, weights + kv + recurrent +
    compute + overhead + unattributed == measured. ``compute_bytes`` includes the host
    output (logits) buffer.
    """

    device_id: str
    measured_bytes: int | None
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    unattributed_bytes: int = 0
    recurrent_bytes: int = 0
    note: str | None = None


@dataclass(frozen=True)
class Advice:
    """A ranked suggestion.

    Attributes:
        action: stable machine id: ``cache-q8_0``, ``cache-q4_0``, ``flash-attn-on``,
            ``fewer-slots``, ``kv-unified``, ``cache-ram``, ``ubatch``, ``cpu-moe``.
        title: one line for people.
        saves_bytes: memory it frees (on the server's pool).
        max_ctx: the largest context that fits after it.
        command: the exact llama-server command line (the user's own, edited).
        caveat: the trade-off.
    """

    action: str
    title: str
    saves_bytes: int
    max_ctx: int
    command: str
    caveat: str


@dataclass(frozen=True)
class ServerReport:
    """Everything kvwall knows about one server after a poll."""

    key: str  # stable identity across polls: "pid:1234" or the URL
    pid: int | None
    url: str
    name: str  # model alias / file stem, for people
    model_path: str | None
    health: str
    plan: MemoryPlan | None
    memory: tuple[Attribution, ...]
    slots: tuple[SlotReport, ...]
    pool: SlotReport | None  # unified KV: the shared pool as one "slot" (n_ctx = cells)
    max_ctx: dict  # cache type -> largest context that fits on a restart
    more_servers_fit: int | None
    advice: tuple[Advice, ...]
    errors: tuple[str, ...]
    # Added by the engine (issue 3); defaults keep older constructors valid.
    config: ServerConfig | None = None  # the configuration the plan used (corrected from /slots)
    notes: tuple[str, ...] = ()  # assumptions and corrections, in the user's words
    more_slots_fit: int | None = None  # slots of the same per-slot context free memory holds


@dataclass(frozen=True)
class StatusReport:
    """One poll, analysed. ``timestamp`` is monotonic seconds, ``wall_time`` epoch."""

    timestamp: float
    wall_time: float
    devices: tuple[DeviceMemory, ...]
    servers: tuple[ServerReport, ...]
    errors: tuple[str, ...] = ()
