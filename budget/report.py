"""What a poll means for the user: attribution, forecasts and advice per server.

A stable contract: fields may be added (with defaults), never renamed. Built by ``kvwall.budget.engine``
from a ``kvwall.monitors.snapshot.Snapshot``; rendered by ``kvwall status`` and the GUI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: keeps this module (and budget.forecast) light to import
    from collections.abc import Mapping

    from kvwall.budget.config import ServerConfig
    from kvwall.budget.memory import MemoryPlan
    from kvwall.monitors.snapshot import DeviceMemory, Health


# SlotReport.id of a unified server's shared KV pool (ServerReport.pool).
KV_POOL_SLOT_ID = -1

# MemoryEvent.kind: the kinds of memory event (one so far).
MemoryEventKind = Literal["process_grab"]

# Advice.action: a stable machine id (JSON ``advice[].action``).
AdviceAction = Literal["cache-q8_0", "cache-q4_0", "flash-attn-on", "fewer-slots",
                       "kv-unified", "cache-ram", "ubatch", "cpu-moe",
                       "larger-context", "cache-q8_0-larger-context",
                       "fewer-slots-more-context", "gpu-layers", "no-kv-offload",
                       "tensor-split"]

# Advice.solves: the kind of problem a piece of advice solves (JSON ``advice[].solves``).
AdviceSolves = Literal["context", "memory", "host-ram"]


@dataclass(frozen=True)
class Forecast:
    """When a slot (or a unified server's shared KV pool) will be full.

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
    # Added for issue 9: the slot's last task id (the history store replays it).
    id_task: int | None = None


@dataclass(frozen=True)
class Attribution:
    """One server's memory on one memory pool, split by what llama.cpp allocated.

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
            ``fewer-slots``, ``kv-unified``, ``cache-ram``, ``ubatch``, ``cpu-moe``
            (``-ncmoe``/``-ot``), ``gpu-layers`` (``-ngl``), ``no-kv-offload``
            (``-nkvo``), ``tensor-split`` (``-ts``), and the context fixes.
        title: one line for people.
        saves_bytes: memory it frees (on the server's memory pool).
        max_ctx: the largest context that fits after it.
        command: the exact llama-server command line (the user's own, edited).
        caveat: the trade-off.
        solves: the problem it solves: ``context``, ``memory`` or ``host-ram``.
        n_ctx_slot: each slot's context after the change (None when unknown).
        turns_left: requests until the fullest slot is full after the change (context
            advice with a forecast; None otherwise).
    """

    action: AdviceAction
    title: str
    saves_bytes: int
    max_ctx: int
    command: str
    caveat: str
    solves: AdviceSolves = "memory"
    n_ctx_slot: int | None = None
    turns_left: int | None = None


@dataclass(frozen=True)
class RefusedRequests:
    """Requests the server refused because the context was exceeded.

    Attributes:
        count: refused requests seen.
        last_time: epoch seconds of the last one (None when unknown).
    """

    count: int
    last_time: float | None


@dataclass(frozen=True)
class StoppedServer:
    """A server kvwall followed that is gone: listed greyed, with what restarts it.

    Attributes:
        key: its ``ServerReport.key`` while it ran.
        name: its name for people.
        url: where it answered.
        command: the command line that started it ("" when unknown, e.g. a URL).
        stopped_time: epoch seconds of the last poll that saw it.
        last_fill: the share of its fullest slot's context in use then (0..1), None when
            unknown.
    """

    key: str
    name: str
    url: str
    command: str
    stopped_time: float
    last_fill: float | None


@dataclass(frozen=True)
class ServerReport:
    """Everything kvwall knows about one server after a poll."""

    key: str  # stable identity across polls: "pid:1234" or the URL
    pid: int | None
    url: str
    name: str  # model alias / file stem, for people
    model_path: str | None
    health: Health
    plan: MemoryPlan | None
    memory: tuple[Attribution, ...]
    slots: tuple[SlotReport, ...]
    # The shared KV pool of a unified server (--kv-unified) as one "slot" (n_ctx = cells);
    # not a memory pool. The name is the JSON field's ("pool"), kept by the contract.
    pool: SlotReport | None
    max_ctx: dict[str, int]  # cache type -> largest context that fits on a restart
    more_servers_fit: int | None
    advice: tuple[Advice, ...]
    errors: tuple[str, ...]
    # Added by the engine (issue 3); defaults keep older constructors valid.
    config: ServerConfig | None = None  # the configuration the plan used (corrected from /slots)
    notes: tuple[str, ...] = ()  # assumptions and corrections, in the user's words
    more_slots_fit: int | None = None  # slots of the same per-slot context free memory holds
    # Added for the what-if panel: what the engine's own budget and advice used.
    restart_budget_bytes: int | None = None  # free memory on its memory pool + what it holds there
    device_ids: tuple[str, ...] = ()  # llama.cpp device ids it offloads to (CUDA0...)
    device_room: Mapping[str, int] | None = None  # each GPU's free memory on a restart
    # Added for issue 11: the program that started it (``ollama``, ``llama-swap``), if any.
    managed_by: str | None = None
    # Added for issue 9: requests refused with exceed_context_size_error (None: none seen).
    refused_requests: RefusedRequests | None = None
    # Added for issue 9: unique among servers: the alias the user gave, else "name:port"
    # ("" from older constructors: use ``name``).
    label: str = ""


@dataclass(frozen=True)
class PoolForecast:
    """When a memory pool's free memory runs out, from its trend over the last minutes.

    Attributes:
        device_id: the memory pool (``DeviceMemory.id``: ``host``, ``nvidia:0``...).
        free_bytes: free memory now (the latest sample).
        bytes_per_minute: growth of the used memory (bytes per minute) fitted over the
            last minutes; negative when memory is being freed; None until enough samples.
        seconds_left: seconds until free memory reaches ``floor_bytes`` at that rate; 0 when
            already there; None when the trend is flat or shrinking, or unknown.
        confidence: 0..1, from the fit quality (R squared), the span of the samples and
            whether the growth is steady (a single jump, such as a model being loaded, is
            not a trend).
        span_s: seconds of history the fit used.
        floor_bytes: the free memory counted as "run out" (0 unless configured).
    """

    device_id: str
    free_bytes: int | None
    bytes_per_minute: float | None = None
    seconds_left: float | None = None
    confidence: float = 0.0
    span_s: float = 0.0
    floor_bytes: int = 0


@dataclass(frozen=True)
class MemoryEvent:
    """Another process (not a known server) suddenly took a large share of a memory pool.

    Attributes:
        kind: ``process_grab``.
        device_id: the memory pool (``nvidia:0``...).
        pid: the process; name its executable name ("" when unknown).
        grown_bytes: bytes it took within ``window_s`` seconds.
        used_bytes: what it holds now.
        share: ``grown_bytes`` as a fraction of the pool's total (0..1; 0 when the total
            is unknown).
        window_s: seconds between its lowest sample in the window and now.
        timestamp: monotonic seconds of the poll that saw it.
    """

    kind: MemoryEventKind
    device_id: str
    pid: int
    name: str
    grown_bytes: int
    used_bytes: int
    share: float
    window_s: float
    timestamp: float


@dataclass(frozen=True)
class StatusReport:
    """One poll, analysed. ``timestamp`` is monotonic seconds, ``wall_time`` epoch."""

    timestamp: float
    wall_time: float
    devices: tuple[DeviceMemory, ...]
    servers: tuple[ServerReport, ...]
    errors: tuple[str, ...] = ()
    # Added for issue 4's warnings; defaults keep older constructors valid.
    pool_forecasts: tuple[PoolForecast, ...] = ()  # one per pool whose free memory is known
    memory_events: tuple[MemoryEvent, ...] = ()  # other processes that grew suddenly
    # Added for issue 9: servers the history store knows that are not running now.
    stopped_servers: tuple[StoppedServer, ...] = ()
