"""Advice: the problems in view on a server, and the changes that solve them.

:func:`problems_in_view` names the problems (a slot filling, requests refused, a memory
pool short, host RAM taken); :func:`advice_options` simulates every fix with the memory
model (:func:`kvwall.budget.whatif.simulate`), dropping what llama.cpp would refuse;
:func:`advice_in_view` keeps only the fixes for the problems in view, cheapest for the
user first (memory, then speed, quality, concurrency). :func:`advise` lists the changes
that free memory, most bytes first (the what-if options).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from kvwall.budget.alerts import Thresholds
from kvwall.budget.cachetypes import TYPE_SIZES, CacheType, cache_type_changes
from kvwall.budget.config import ServerConfig
from kvwall.budget.memory import KV_PAD, MemoryPlan, largest_fitting, plan_memory
from kvwall.budget.memory.plan import fits_devices
from kvwall.budget.report import (
    Advice,
    AdviceAction,
    AdviceSolves,
    PoolForecast,
    RefusedRequests,
    SlotReport,
)
from kvwall.budget.units import format_bytes, format_duration
from kvwall.budget.whatif import (
    Changes,
    OffloadKind,
    WhatIf,
    offload_for_context,
    offload_table,
    simulate,
    slot_count_changes,
)
from kvwall.monitors.gguf import ModelInfo
from kvwall.monitors.snapshot import DeviceMemory, SlotState

MIB = 1024**2
# Which memory pool a server's savings count on (a memory pool, not a shared KV pool).
MemoryPoolKind = Literal["total", "gpu"]
POOL_TOTAL: MemoryPoolKind = "total"  # one pool: host RAM or unified memory
POOL_GPU: MemoryPoolKind = "gpu"  # discrete accelerators: only the non-host rows count

# bytes per element of each cache type (ggml type size / block size)
_CACHE_BPE = {name: size / blck for name, (blck, size) in TYPE_SIZES.items()}

CAVEATS: dict[AdviceAction, str] = {
    "cache-q8_0": "Halves the KV cache; the quality cost is negligible for almost every model.",
    "cache-q4_0": (
        "Quarters the KV cache; quality loss depends on the task (long-context recall, code "
        "and maths suffer first): try it on your own workload."
    ),
    "flash-attn-on": (
        "Needs a backend that runs flash attention for this model's head size; where it "
        "cannot, that work falls back to the CPU and gets much slower."
    ),
    "fewer-slots": "Fewer requests run at once; the others wait in the queue.",
    "kv-unified": (
        "Slots share one pool: each can still reach its old context alone, but busy slots "
        "together can run out of cells (requests then fail with 'Context size has been "
        "exceeded')."
    ),
    "cache-ram": (
        "The host-RAM prompt cache keeps fewer idle conversations; returning to an evicted "
        "one re-processes its whole prompt."
    ),
    "ubatch": "Prompt processing gets slower (smaller batches per pass); generation is unchanged.",
}

# Advice must free at least this fraction of what the server holds on its pool.
MIN_SAVING_FRACTION = 0.01

PlanFn = Callable[..., MemoryPlan]
SimulateFn = Callable[..., WhatIf]


def pool_bytes(plan: MemoryPlan, pool: MemoryPoolKind = POOL_TOTAL) -> int:
    """What ``plan`` allocates on the server's pool (bytes).

    Args:
        plan: a memory plan.
        pool: :data:`POOL_TOTAL` (host or unified memory: everything) or :data:`POOL_GPU`
            (discrete accelerators: the non-host rows).
    """
    if pool == POOL_GPU:
        return sum(r.total_bytes for r in plan.devices if not r.is_host)
    return plan.total_bytes


def largest_context(
    model: ModelInfo,
    config: ServerConfig,
    budget_bytes: int,
    *,
    gpu_names: Sequence[str] = (),
    pool: MemoryPoolKind = POOL_TOTAL,
    plan_fn: PlanFn = plan_memory,
) -> int:
    """The largest ``-c`` whose plan fits ``budget_bytes`` on the server's pool.

    Searches multiples of 256 cells per KV stream, up to the trained context for every
    slot (a larger context gives no slot more room).

    Args:
        model: the GGUF header.
        config: the configuration to vary (its ``n_ctx`` is ignored).
        budget_bytes: memory the server may use on its pool.
        gpu_names: llama.cpp device names it offloads to.
        pool: see :func:`pool_bytes`.
        plan_fn: the memory model (injectable for tests).

    Returns:
        The context (total cells, as ``-c`` takes it); 0 when even 256 cells per stream
        do not fit or the configuration is refused.
    """
    probe = plan_fn(model, config.replace(n_ctx=256), gpu_names=gpu_names)
    if probe.errors:
        return 0
    step = 256 * max(1, probe.n_stream)
    n_seq = max(1, probe.n_seq)
    k_max = max(1, math.ceil(max(model.n_ctx_train, 256) * n_seq / step))

    def fits(k: int) -> bool:
        p = plan_fn(model, config.replace(n_ctx=k * step), gpu_names=gpu_names)
        return not p.errors and pool_bytes(p, pool) <= budget_bytes

    return largest_fitting(fits, k_max) * step


@dataclass(frozen=True)
class _Candidate:
    action: AdviceAction
    title: str
    changes: dict[str, object]


def _candidates(
    model: ModelInfo,
    config: ServerConfig,
    plan: MemoryPlan,
    slots: Sequence[SlotState] | None,
    pool: MemoryPoolKind,
) -> list[_Candidate]:
    out: list[_Candidate] = []
    fa_off = config.flash_attn == "off"
    bpe_k = _CACHE_BPE.get(plan.cache_type_k, 2.0)
    bpe_v = _CACHE_BPE.get(plan.cache_type_v, 2.0)
    cache_actions: tuple[tuple[CacheType, AdviceAction], ...] = (
        ("q8_0", "cache-q8_0"), ("q4_0", "cache-q4_0"))
    for ctype, action in cache_actions:
        if max(bpe_k, bpe_v) <= _CACHE_BPE[ctype]:
            continue
        changes: dict[str, object] = dict(cache_type_changes(ctype, config.flash_attn))
        title = f"{ctype} KV cache (-ctk {ctype} -ctv {ctype})"
        if "flash_attn" in changes:
            title += " with flash attention"
        out.append(_Candidate(action, title, changes))
    if fa_off:
        out.append(_Candidate("flash-attn-on", "flash attention on (-fa on)", {"flash_attn": "on"}))
    n_seq = plan.n_seq
    unified = plan.kv_unified
    if n_seq > 1:
        fewer = max(1, n_seq // 2)
        changes = slot_count_changes(plan, fewer)  # each slot keeps its context
        out.append(_Candidate("fewer-slots", f"{fewer} slot{'s' * (fewer > 1)} instead of "
                                             f"{n_seq} (-np {fewer})", changes))
    if not unified and n_seq > 1 and slots is not None:
        active = sum(1 for s in slots if s.is_processing or (s.n_tokens or 0) > 0)
        if active <= n_seq // 2:
            share = max(1, active, math.ceil(n_seq / 2))
            cells = plan.n_ctx_seq * share
            out.append(_Candidate(
                "kv-unified",
                f"one shared KV pool of {cells} cells (-kvu -c {cells}): {active} of {n_seq} "
                "slots in use",
                {"kv_unified": True, "n_ctx": cells},
            ))
    if plan.n_ubatch > 64:
        ub = max(64, plan.n_ubatch // 2)
        out.append(_Candidate("ubatch", f"smaller micro-batch (-ub {ub})", {"n_ubatch": ub}))
    return out


def advise(
    model: ModelInfo,
    config: ServerConfig,
    plan: MemoryPlan,
    *,
    budget_bytes: int,
    gpu_names: Sequence[str] = (),
    pool: MemoryPoolKind = POOL_TOTAL,
    slots: Sequence[SlotState] | None = None,
    host_total_bytes: int | None = None,
    host_free_bytes: int | None = None,
    plan_fn: PlanFn = plan_memory,
    simulate_fn: SimulateFn = simulate,
    device_free: Mapping[str, int] | None = None,
    offload: Sequence[WhatIf] | None = None,
) -> tuple[Advice, ...]:
    """Ranked advice for one server.

    Args:
        model: the GGUF header.
        config: the server's real configuration (as parsed, corrected from ``/slots``).
        plan: its current memory plan.
        budget_bytes: memory the server could use on its pool after a restart (free now
            plus what it holds), for each suggestion's largest context.
        gpu_names: llama.cpp device names it offloads to.
        pool: :data:`POOL_TOTAL` or :data:`POOL_GPU` (where savings count).
        slots: ``/slots`` now (for unified-KV advice), None when unknown.
        host_total_bytes, host_free_bytes: host RAM, for ``--cache-ram`` advice.
        plan_fn, simulate_fn: the memory model (injectable for tests).
        device_free: free bytes per GPU (llama.cpp names), when known: offload fixes
            must fit each GPU.
        offload: :func:`kvwall.budget.whatif.offload_table`'s rows, if already computed.

    Returns:
        Advice that frees memory on the pool, valid for llama.cpp, most bytes saved
        first. On a GPU pool, one offload fix per lever (``-ngl``, ``-ncmoe``/``-ot``,
        ``-nkvo``, ``-ts``): its row that moves the least off the GPUs and fits.
        ``--cache-ram`` advice frees host RAM (its ``saves_bytes`` is the lowered
        ceiling, what the cache may hold at most) and ranks last on a discrete GPU.
        Empty when the plan itself is refused.
    """
    if plan.errors:
        return ()
    current = pool_bytes(plan, pool)
    results: list[Advice] = []
    for cand in _candidates(model, config, plan, slots, pool):
        what = simulate_fn(model, config, cand.changes, memory_bytes=budget_bytes,
                           gpu_names=gpu_names, label=cand.title)
        if what.plan.errors:
            continue
        saves = current - pool_bytes(what.plan, pool)
        if saves <= 0 or saves < MIN_SAVING_FRACTION * current:
            continue  # a change for a few bytes is not worth a restart
        new_ctx = largest_context(model, what.config, budget_bytes, gpu_names=gpu_names,
                                  pool=pool, plan_fn=plan_fn)
        results.append(Advice(cand.action, cand.title, saves, new_ctx, what.command,
                              CAVEATS[cand.action]))
    if offload is None:
        offload = _offload_rows(model, config, budget_bytes, gpu_names, pool, device_free)
    results += _offload_memory_fixes(model, plan, offload, budget_bytes, gpu_names, pool, device_free)
    ram = _cache_ram_advice(model, config, plan, budget_bytes, gpu_names, pool,
                            host_total_bytes, host_free_bytes, plan_fn, simulate_fn)
    if ram is not None:
        results.append(ram)
    results.sort(key=lambda a: -a.saves_bytes)
    if ram is not None and pool == POOL_GPU:
        # Host RAM is not the pool that is short on a discrete GPU: rank it last.
        results.remove(ram)
        results.append(ram)
    return tuple(results)


# ---------------------------------------------------------------------------
# offload: the rows of whatif.offload_table that solve a problem

# Advice.action of each offload lever
_OFFLOAD_ACTIONS: dict[OffloadKind, AdviceAction] = {
    "gpu-layers": "gpu-layers",
    "cpu-moe": "cpu-moe",
    "no-kv-offload": "no-kv-offload",
    "tensor-split": "tensor-split",
}


def _offload_rows(model: ModelInfo, config: ServerConfig, budget_bytes: int, gpu_names: Sequence[str],
                  pool: MemoryPoolKind, device_free: Mapping[str, int] | None) -> list[WhatIf]:
    """The offload what-ifs of a server on a discrete GPU pool (none on host memory)."""
    if pool != POOL_GPU or not gpu_names:
        return []
    return offload_table(model, config, memory_bytes=budget_bytes, gpu_names=gpu_names,
                         device_free=device_free)


def _tokens(n_ctx: int) -> str:
    """``64k`` for 65536, else the number."""
    return f"{n_ctx // 1024}k" if n_ctx >= 1024 and n_ctx % 1024 == 0 else f"{n_ctx:,}-token"


def _offload_words(model: ModelInfo, row: WhatIf) -> str:
    """What an offload row moves, in words: ``the experts of 6 layers to the CPU``."""
    p = row.plan.placement
    if row.offload == "gpu-layers" and p is not None:
        n_all = model.n_layer_all
        return f"{min(n_all, n_all + 1 - p.n_gpu_layers)} of {n_all} layers to the CPU"
    if row.offload == "cpu-moe":
        n = row.changes.get("n_cpu_moe")
        return f"the experts of {n} layers to the CPU" if isinstance(n, int) else "every expert to the CPU"
    if row.offload == "no-kv-offload":
        return "the KV cache to host RAM"
    return "layers between the GPUs"


def _offload_memory_fixes(model: ModelInfo, plan: MemoryPlan, rows: Sequence[WhatIf], budget_bytes: int,
                          gpu_names: Sequence[str], pool: MemoryPoolKind,
                          device_free: Mapping[str, int] | None) -> list[Advice]:
    """Per lever, its first row (the least moved off the GPUs) that fits the budget and,
    when the server fits already, frees a worthwhile share of its pool."""
    current = pool_bytes(plan, pool)
    plan_fits = fits_devices(plan, budget_bytes, gpu_names, device_free)
    out: list[Advice] = []
    seen: set[OffloadKind] = set()
    for row in rows:
        if row.refused or row.offload is None or row.offload in seen:
            continue
        saves = current - pool_bytes(row.plan, pool)
        if not fits_devices(row.plan, budget_bytes, gpu_names, device_free):
            continue
        if plan_fits and saves < max(1.0, MIN_SAVING_FRACTION * current):
            continue
        seen.add(row.offload)
        title = (f"move {_offload_words(model, row)} ({row.label}): {_tokens(row.plan.n_ctx)} context fits "
                 f"in {format_bytes(budget_bytes)}")  # fmt: skip
        out.append(Advice(_OFFLOAD_ACTIONS[row.offload], title, saves, row.max_ctx, row.command, row.caveat,
                          n_ctx_slot=row.plan.n_ctx_slot))  # fmt: skip
    return out


def _reach(plan: MemoryPlan, model: ModelInfo) -> int:
    """The context one slot (or the shared pool) can reach, capped by the trained context."""
    reach = plan.n_ctx if plan.kv_unified else plan.n_ctx_slot
    return min(reach, model.n_ctx_train) if model.n_ctx_train else reach


def _offload_context_target(model: ModelInfo, plan: MemoryPlan) -> int:
    """The ``-c`` an offload context fix aims for: twice the context each slot has now
    (moving work to the CPU costs speed: it should buy a lot), at most the trained
    context per slot; 0 when the slots are at the trained context already."""
    per_slot_cap = model.n_ctx_train or 2 * plan.n_ctx
    cap = per_slot_cap if plan.kv_unified else per_slot_cap * plan.n_seq
    step = KV_PAD * max(1, plan.n_stream)
    target = min(2 * plan.n_ctx, cap) // step * step
    return target if _reach_of(target, plan, model) > _reach(plan, model) else 0


def _reach_of(n_ctx: int, plan: MemoryPlan, model: ModelInfo) -> int:
    per = n_ctx if plan.kv_unified else n_ctx // max(1, plan.n_seq)
    return min(per, model.n_ctx_train) if model.n_ctx_train else per


def _offload_context_fixes(model: ModelInfo, config: ServerConfig, plan: MemoryPlan, budget_bytes: int,
                           gpu_names: Sequence[str], pool: MemoryPoolKind,
                           device_free: Mapping[str, int] | None) -> list[Advice]:
    """Per lever (``-ncmoe``/``-ot``, ``-ngl``), the change that moves the least off the
    GPUs and doubles each slot's context (with the usual headroom). Not ``-nkvo``: its
    context would fill host RAM, which this budget does not see."""
    if pool != POOL_GPU or not gpu_names:
        return []
    n_ctx = _offload_context_target(model, plan)
    if not n_ctx:
        return []
    current = pool_bytes(plan, pool)
    out: list[Advice] = []
    for row in offload_for_context(model, config, n_ctx, memory_bytes=budget_bytes, gpu_names=gpu_names,
                                   device_free=device_free, headroom=CONTEXT_HEADROOM):  # fmt: skip
        assert row.offload is not None
        flags = f"{row.label} -c {n_ctx}"
        title = (f"move {_offload_words(model, row)} ({flags}): {_tokens(n_ctx)} context fits "
                 f"in {format_bytes(budget_bytes)}")
        out.append(Advice(_OFFLOAD_ACTIONS[row.offload], title, current - pool_bytes(row.plan, pool),
                          row.max_ctx, row.command, row.caveat, solves="context",
                          n_ctx_slot=row.plan.n_ctx_slot))
    return out


CACHE_RAM_SUGGESTED_MIB = 1024


def _cache_ram_advice(model: ModelInfo, config: ServerConfig, plan: MemoryPlan,
                      budget_bytes: int, gpu_names: Sequence[str], pool: MemoryPoolKind,
                      host_total: int | None, host_free: int | None, plan_fn: PlanFn,
                      simulate_fn: SimulateFn) -> Advice | None:
    mib = config.cache_ram_mib
    if mib == 0 or host_free is None:
        return None
    if mib == -1:
        if host_total is None:
            return None
        ceiling = host_total
    else:
        ceiling = mib * MIB
    new = CACHE_RAM_SUGGESTED_MIB
    saves = ceiling - new * MIB
    # Only when the cache could really grow into memory that is missing.
    if saves <= 0 or host_free >= ceiling:
        return None
    what = simulate_fn(model, config, {"cache_ram_mib": new}, memory_bytes=budget_bytes,
                       gpu_names=gpu_names, label="smaller prompt cache")
    if what.plan.errors:
        return None
    new_ctx = largest_context(model, what.config, budget_bytes, gpu_names=gpu_names, pool=pool,
                              plan_fn=plan_fn)
    old = "unlimited" if mib == -1 else f"{mib} MiB"
    return Advice("cache-ram", f"smaller host-RAM prompt cache (--cache-ram {new}, now {old}): "
                  f"frees up to {saves / 1024**3:.1f} GiB of host RAM",
                  saves, new_ctx, what.command, CAVEATS["cache-ram"])


# ---------------------------------------------------------------------------
# problem first: the problems in view, and only the changes that solve them

# What each change costs the user, lowest first (every one needs a restart): memory only,
# then speed, then quality, then concurrency, then a shared pool's risk of failures.
ADVICE_COST: dict[AdviceAction, int] = {
    "larger-context": 0,
    "flash-attn-on": 1,
    "ubatch": 2,
    "cache-ram": 2,
    "cache-q8_0-larger-context": 3,
    "cache-q8_0": 3,
    "fewer-slots-more-context": 4,
    "fewer-slots": 4,
    "kv-unified": 5,
    "cache-q4_0": 6,
    # offload: speed for memory; moving layers between GPUs costs about nothing, experts
    # on the CPU cost less speed than whole layers, the KV cache over PCIe the most
    "tensor-split": 1,
    "cpu-moe": 7,
    "gpu-layers": 8,
    "no-kv-offload": 9,
}
# A context fix leaves this share of the restart budget free (compute is an estimate).
CONTEXT_HEADROOM = 0.05

CONTEXT_CAVEATS: dict[AdviceAction, str] = {
    "larger-context": "Costs only memory: each slot gets more context.",
    "cache-q8_0-larger-context": (
        "About the same memory: the q8_0 cache holds about twice the cells; the quality "
        "cost is negligible for almost every model."),
    "fewer-slots-more-context": (
        "About the same KV memory: fewer requests run at once (the others wait in the "
        "queue), each with more context."),
    "kv-unified": CAVEATS["kv-unified"],
}


@dataclass(frozen=True)
class Problem:
    """A problem in view on one server.

    Attributes:
        solves: the kind of fix it needs (``context``, ``memory``, ``host-ram``).
        text: what is wrong, in the user's words.
    """

    solves: AdviceSolves
    text: str


@dataclass(frozen=True)
class AdviceOptions:
    """Every simulated fix for one server, by the kind of problem it solves.

    Expensive to build (each one is planned and its largest context searched), cheap to
    pick from: :func:`advice_in_view` chooses the ones the problems in view need.
    """

    context: tuple[Advice, ...] = ()
    memory: tuple[Advice, ...] = ()
    host_ram: tuple[Advice, ...] = ()


_NOTIFY = Thresholds()  # the notification defaults: advice and warnings see one wall


@dataclass(frozen=True)
class ProblemLimits:
    """When a slot, a memory pool or host RAM is a problem: at the warning levels of the
    notifications (:class:`kvwall.budget.alerts.Thresholds`), so advice appears when a
    warning does."""

    full_percent: float = _NOTIFY.slot_full_percent
    warn_turns: int = _NOTIFY.slot_warn_turns
    warn_minutes: float = _NOTIFY.slot_warn_minutes
    min_confidence: float = _NOTIFY.min_confidence
    free_warn_percent: float = _NOTIFY.free_warn_percent
    pool_warn_minutes: float = _NOTIFY.pool_warn_minutes
    pool_min_confidence: float = _NOTIFY.pool_min_confidence


@dataclass(frozen=True)
class ServerView:
    """What one server's problems are read from (built by the engine each poll).

    Attributes:
        slots: the slot reports with their forecasts.
        kv_pool: a unified server's shared KV pool, else None.
        refused: requests refused for an exceeded context, None when none seen.
        plan_bytes: what the plan allocates on the server's memory pool.
        budget_bytes: what the server could use on its pool (free + what it holds).
        pools: the memory pools it is on.
        pool_forecasts: their forecasts (any order; matched by ``device_id``).
        host: host RAM, when the prompt cache or checkpoints may take it.
        cache_ram_on: ``--cache-ram`` is not 0.
    """

    slots: tuple[SlotReport, ...]
    kv_pool: SlotReport | None
    refused: RefusedRequests | None
    plan_bytes: int
    budget_bytes: int | None
    pools: tuple[DeviceMemory, ...] = ()
    pool_forecasts: tuple[PoolForecast, ...] = ()
    host: DeviceMemory | None = None
    cache_ram_on: bool = False


def _slot_problem(slot: SlotReport, limits: ProblemLimits) -> str | None:
    """Why a slot (or the shared pool) is a problem, None when it is not."""
    what = "the shared KV pool" if slot.id < 0 else f"slot {slot.id}"
    if slot.tokens is not None and slot.n_ctx > 0 and (
            100.0 * slot.tokens / slot.n_ctx >= limits.full_percent):
        return f"{what} is full ({slot.tokens} of {slot.n_ctx} cells)"
    f = slot.forecast
    if f.confidence < limits.min_confidence:
        return None
    if f.turns_left is not None and 0 < f.turns_left <= limits.warn_turns:
        return f"{what} is forecast to fill in ~{f.turns_left} requests"
    if f.seconds_left is not None and f.seconds_left <= 60.0 * limits.warn_minutes:
        return f"{what} is forecast to fill in {format_duration(f.seconds_left)}"
    return None


def _pool_short(d: DeviceMemory, forecasts: Sequence[PoolForecast],
                limits: ProblemLimits) -> str | None:
    """Why a memory pool is a problem: short now, or forecast to run out soon."""
    if d.free_bytes is not None and d.total_bytes and (
            100.0 * d.free_bytes / d.total_bytes < limits.free_warn_percent):
        return f"{d.name} is short of memory ({format_bytes(d.free_bytes)} free)"
    fc = next((f for f in forecasts if f.device_id == d.id), None)
    if fc is not None and fc.seconds_left is not None and (
            fc.confidence >= limits.pool_min_confidence
            and fc.seconds_left <= 60.0 * limits.pool_warn_minutes):
        return f"{d.name} is forecast to run out of memory in {format_duration(fc.seconds_left)}"
    return None


def problems_in_view(view: ServerView, limits: ProblemLimits | None = None
                     ) -> tuple[Problem, ...]:
    """The problems of one server now: context, memory and host RAM, in that order.

    Args:
        view: the server's slots, forecasts, refusals and memory pools.
        limits: when a value is a problem (default: the notifications' defaults).

    Returns:
        One :class:`Problem` per thing in view; empty when nothing is.
    """
    limits = limits or ProblemLimits()
    out: list[Problem] = []
    slots = (*view.slots, view.kv_pool) if view.kv_pool is not None else view.slots
    for slot in slots:
        text = _slot_problem(slot, limits)
        if text:
            out.append(Problem("context", text))
    if view.refused is not None and view.refused.count > 0:
        out.append(Problem("context", f"{view.refused.count} request(s) refused: the "
                                      "context was exceeded"))
    if view.budget_bytes is not None and view.plan_bytes > view.budget_bytes:
        out.append(Problem("memory", "the configuration does not fit its memory pool"))
    for d in view.pools:
        text = _pool_short(d, view.pool_forecasts, limits)
        if text:
            out.append(Problem("memory", text))
    host = view.host
    if view.cache_ram_on and host is not None and host not in view.pools:
        text = _pool_short(host, (), limits)
        if text:
            out.append(Problem("host-ram", text + "; the prompt cache and checkpoints "
                                                  "live there"))
    return tuple(out)


def _fix(action: AdviceAction, title: str, what: WhatIf, current_bytes: int,
         pool: MemoryPoolKind, budget_bytes: int, model: ModelInfo, gpu_names: Sequence[str],
         plan_fn: PlanFn) -> Advice:
    """A simulated context fix as advice (its largest context searched on the budget)."""
    new_ctx = largest_context(model, what.config, budget_bytes, gpu_names=gpu_names,
                              pool=pool, plan_fn=plan_fn)
    return Advice(action, title, current_bytes - pool_bytes(what.plan, pool), new_ctx,
                  what.command, CONTEXT_CAVEATS[action], solves="context",
                  n_ctx_slot=what.plan.n_ctx_slot)


def _context_changes(model: ModelInfo, config: ServerConfig, plan: MemoryPlan,
                     budget_bytes: int, gpu_names: Sequence[str], pool: MemoryPoolKind,
                     plan_fn: PlanFn) -> list[tuple[AdviceAction, str, Changes]]:
    """The context fixes worth simulating: larger -c, q8_0 + larger -c, fewer slots, -kvu."""
    room = int(budget_bytes * (1.0 - CONTEXT_HEADROOM))
    out: list[tuple[AdviceAction, str, Changes]] = []
    bigger = largest_context(model, config, room, gpu_names=gpu_names, pool=pool,
                             plan_fn=plan_fn)
    if bigger > plan.n_ctx:
        out.append(("larger-context", f"a larger context (-c {bigger})", {"n_ctx": bigger}))
    q8: Changes = dict(cache_type_changes("q8_0", config.flash_attn))
    if max(_CACHE_BPE.get(plan.cache_type_k, 2.0), _CACHE_BPE.get(plan.cache_type_v, 2.0)) > 1.1:
        same = largest_context(model, config.replace(**q8), pool_bytes(plan, pool),
                               gpu_names=gpu_names, pool=pool, plan_fn=plan_fn)
        if same > plan.n_ctx:
            out.append(("cache-q8_0-larger-context",
                        f"q8_0 KV cache with a larger context (-ctk q8_0 -ctv q8_0 -c {same})",
                        {**q8, "n_ctx": same}))
    n_seq = plan.n_seq
    if n_seq > 1 and not plan.kv_unified:
        fewer = max(1, n_seq // 2)
        out.append(("fewer-slots-more-context",
                    f"{fewer} slot{'s' * (fewer > 1)} instead of {n_seq}, more context each "
                    f"(-np {fewer} -c {plan.n_ctx})", {"n_parallel": fewer, "n_ctx": plan.n_ctx}))
        out.append(("kv-unified", f"one shared KV pool of {plan.n_ctx} cells (-kvu -c "
                                  f"{plan.n_ctx}): any slot may use it all",
                    {"kv_unified": True, "n_ctx": plan.n_ctx}))
    return out


def context_options(model: ModelInfo, config: ServerConfig, plan: MemoryPlan, *,
                    budget_bytes: int, gpu_names: Sequence[str] = (),
                    pool: MemoryPoolKind = POOL_TOTAL, plan_fn: PlanFn = plan_memory,
                    simulate_fn: SimulateFn = simulate,
                    device_free: Mapping[str, int] | None = None) -> tuple[Advice, ...]:
    """Changes that give each slot more context, simulated, cheapest for the user first.

    A change is kept only when llama.cpp accepts it, it fits ``budget_bytes`` on the
    server's pool and each slot (or the shared pool) gets more context than now. On a GPU
    pool, offload levers (``-ncmoe``/``-ot``, ``-ngl``) buy context too: per lever, the
    change that moves the least off the GPUs and doubles each slot's context.

    Args:
        model, config, plan: the server's header, configuration and plan.
        budget_bytes: memory the server could use on its pool after a restart.
        gpu_names: llama.cpp device names it offloads to.
        pool: where the bytes count (see :func:`pool_bytes`).
        plan_fn, simulate_fn: the memory model (injectable for tests).
        device_free: free bytes per GPU (llama.cpp names), when known.
    """
    if plan.errors:
        return ()
    current = pool_bytes(plan, pool)
    reach = plan.n_ctx if plan.kv_unified else plan.n_ctx_slot
    out: list[Advice] = []
    for action, title, changes in _context_changes(model, config, plan, budget_bytes,
                                                   gpu_names, pool, plan_fn):
        what = simulate_fn(model, config, changes, memory_bytes=budget_bytes,
                           gpu_names=gpu_names, label=title)
        if what.plan.errors or pool_bytes(what.plan, pool) > budget_bytes:
            continue
        new_reach = what.plan.n_ctx if what.plan.kv_unified else what.plan.n_ctx_slot
        if min(new_reach, model.n_ctx_train or new_reach) <= min(reach, model.n_ctx_train or reach):
            continue  # the trained context caps it: no slot gets more room
        out.append(_fix(action, title, what, current, pool, budget_bytes, model, gpu_names,
                        plan_fn))
    out += _offload_context_fixes(model, config, plan, budget_bytes, gpu_names, pool, device_free)
    out.sort(key=lambda a: ADVICE_COST[a.action])
    return tuple(out)


def advice_options(model: ModelInfo, config: ServerConfig, plan: MemoryPlan, *,
                   budget_bytes: int, gpu_names: Sequence[str] = (),
                   pool: MemoryPoolKind = POOL_TOTAL, slots: Sequence[SlotState] | None = None,
                   host_total_bytes: int | None = None, host_free_bytes: int | None = None,
                   plan_fn: PlanFn = plan_memory,
                   simulate_fn: SimulateFn = simulate,
                   device_free: Mapping[str, int] | None = None) -> AdviceOptions:
    """Every fix for one server, simulated and sorted by kind (see :class:`AdviceOptions`).

    Memory fixes are :func:`advise`'s, ranked by cost to the user instead of bytes. The
    offload rows (GPU pools) are simulated once for both kinds.
    """
    offload = [] if plan.errors else _offload_rows(model, config, budget_bytes, gpu_names, pool, device_free)
    freeing = advise(model, config, plan, budget_bytes=budget_bytes, gpu_names=gpu_names,
                     pool=pool, slots=slots, host_total_bytes=host_total_bytes,
                     host_free_bytes=host_free_bytes, plan_fn=plan_fn, simulate_fn=simulate_fn,
                     device_free=device_free, offload=offload)
    current = pool_bytes(plan, pool)
    # A configuration that does not fit needs a fix that makes it fit, not just one that frees.
    memory = sorted((a for a in freeing if a.action != "cache-ram"
                     and (current <= budget_bytes or current - a.saves_bytes <= budget_bytes)),
                    key=lambda a: ADVICE_COST[a.action])
    host = tuple(replace(a, solves="host-ram") for a in freeing if a.action == "cache-ram")
    return AdviceOptions(
        context_options(model, config, plan, budget_bytes=budget_bytes, gpu_names=gpu_names,
                        pool=pool, plan_fn=plan_fn, simulate_fn=simulate_fn,
                        device_free=device_free),
        tuple(memory), host)


def _turns_after(advice: Advice, slots: Sequence[SlotReport], kv_pool: SlotReport | None
                 ) -> int | None:
    """Requests the fullest slot (or the shared pool) has left after a context fix."""
    from kvwall.budget.forecast import forecast_fill

    fullest = kv_pool if kv_pool is not None and kv_pool.forecast.tokens_per_turn else max(
        (s for s in slots if s.tokens is not None and s.forecast.tokens_per_turn),
        key=lambda s: s.tokens or 0, default=None)
    if fullest is None or advice.n_ctx_slot is None or fullest.forecast.tokens_per_turn is None:
        return None
    cells = advice.n_ctx_slot
    if fullest is kv_pool:  # the shared pool's cells are the changed -c
        cells = _command_ctx(advice) or cells
    return forecast_fill(cells, fullest.tokens, [fullest.forecast.tokens_per_turn],
                         []).turns_left


def _command_ctx(advice: Advice) -> int | None:
    """The ``-c`` of an advice's command (the shared pool's cells after the change)."""
    words = advice.command.split()
    for flag in ("-c", "--ctx-size"):
        if flag in words[:-1]:
            value = words[words.index(flag) + 1]
            return int(value) if value.isdigit() else None
    return None


def advice_in_view(options: AdviceOptions, problems: Sequence[Problem],
                   slots: Sequence[SlotReport] = (), kv_pool: SlotReport | None = None
                   ) -> tuple[Advice, ...]:
    """The fixes for the problems in view, best first; ``()`` when nothing is in view.

    Context fixes come first when a slot is the problem (each with the turns it buys),
    then memory, then host RAM; within a kind, cheapest for the user first.

    Args:
        options: the server's simulated fixes (:func:`advice_options`).
        problems: :func:`problems_in_view`.
        slots, kv_pool: the slot reports, for the turns each context fix buys.
    """
    kinds = {p.solves for p in problems}
    out: list[Advice] = []
    if "context" in kinds:
        out += [replace(a, turns_left=_turns_after(a, slots, kv_pool)) for a in options.context]
    if "memory" in kinds:
        out += options.memory
    if "host-ram" in kinds:
        out += options.host_ram
    return tuple(out)
