"""Advice: ranked configuration changes that free memory, each a valid llama-server command.

Every suggestion is simulated with the memory model (:func:`kvwall.budget.whatif.simulate`);
anything llama.cpp would refuse, or that saves nothing on the server's pool, is dropped.
The rest is ranked by the bytes it frees, most first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from kvwall.budget.cachetypes import TYPE_SIZES, CacheType, cache_type_changes
from kvwall.budget.config import ServerConfig
from kvwall.budget.memory import MemoryPlan, largest_fitting, plan_memory
from kvwall.budget.report import Advice, AdviceAction
from kvwall.budget.whatif import WhatIf, simulate
from kvwall.monitors.gguf import ModelInfo
from kvwall.monitors.snapshot import SlotState

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
    "cpu-moe": (
        "Expert weights move to host RAM and run on the CPU: generation slows down and host "
        "RAM must hold them."
    ),
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
        changes = {"n_parallel": fewer}
        if unified:
            changes["kv_unified"] = True
        else:
            changes["n_ctx"] = plan.n_ctx_seq * fewer  # each slot keeps its context
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
    if model.n_expert > 0 and pool == POOL_GPU and not config.cpu_moe:
        out.append(_Candidate("cpu-moe", "all expert weights on the CPU (-cmoe)",
                              {"cpu_moe": True}))
        half = model.n_layer // 2
        if half > 0 and config.n_cpu_moe < half:
            out.append(_Candidate("cpu-moe", f"expert weights of the first {half} layers on the "
                                             f"CPU (-ncmoe {half})", {"n_cpu_moe": half}))
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

    Returns:
        Advice that frees memory on the pool, valid for llama.cpp, most bytes saved
        first. ``--cache-ram`` advice frees host RAM (its ``saves_bytes`` is the lowered
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
