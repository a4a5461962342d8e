"""What-ifs: a configuration change simulated with the memory model, and the standard grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kvwall.budget.cachetypes import CACHE_TYPES, cache_type_changes
from kvwall.budget.cmdline.edit import render_command
from kvwall.budget.config import ServerConfig
from kvwall.budget.memory.layout import model_layout
from kvwall.budget.memory.plan import budget_total, max_context, plan_laid_out
from kvwall.budget.memory.results import MemoryPlan
from kvwall.monitors.gguf import ModelInfo

Changes = dict[str, object]  # ServerConfig field -> new value


@dataclass(frozen=True)
class WhatIf:
    """One simulated change to a server's configuration.

    Attributes:
        label: e.g. ``"q8_0 cache"``, ``"2 slots"``, ``"q4_0 cache, 2 slots"``.
        changes: ServerConfig field changes applied.
        config: the changed configuration.
        plan: its memory plan (``plan.errors`` set when llama.cpp would refuse it).
        saves_bytes: current total minus new total (negative = costs more).
        max_ctx: largest ``-c`` that fits in the memory budget with this change.
        command: the exact llama-server command line (user's argv edited).
        caveat: the quality/speed trade-off, one sentence.
    """

    label: str
    changes: Changes
    config: ServerConfig
    plan: MemoryPlan
    saves_bytes: int
    max_ctx: int
    command: str
    caveat: str

    @property
    def refused(self) -> bool:
        """True when llama.cpp would refuse the changed configuration."""
        return bool(self.plan.errors)


_CAVEATS = {
    "f16": "full-precision cache (llama.cpp's default)",
    "bf16": "same size as f16, needs hardware with fast bf16",
    "f32": "twice the memory of f16 for no practical quality gain",
    "q8_0": "about half of f16, quality loss is usually negligible",
    "q5_1": "about 38% of f16, small quality loss",
    "q5_0": "about 34% of f16, small quality loss",
    "q4_1": "about 31% of f16, noticeable quality loss on long contexts",
    "q4_0": "about 28% of f16, noticeable quality loss on long contexts",
    "iq4_nl": "about 28% of f16, not supported by CUDA flash attention (runs on the CPU)",
}


def simulate(
    model: ModelInfo,
    config: ServerConfig,
    changes: Mapping[str, object],
    *,
    memory_bytes: int,
    gpu_names: Sequence[str] = (),
    label: str | None = None,
    base: MemoryPlan | None = None,
    device_free: Mapping[str, int] | None = None,
) -> WhatIf:
    """Apply ``changes`` (ServerConfig field names) and predict the result.

    The current context is kept as an explicit ``-c`` (the user's own value when given,
    else the cells planned; so the comparison is fair and the command reproduces it)
    unless ``changes`` sets ``n_ctx``.

    Args:
        model: the GGUF header.
        config: the current configuration.
        changes: field -> new value, e.g. ``{"cache_type_k": "q8_0", "cache_type_v": "q8_0"}``.
        memory_bytes: the budget ``max_ctx`` is searched against.
        gpu_names, device_free: as for :func:`kvwall.budget.memory.plan_memory`.
        label: the row label; default derived from ``changes``.
        base: the current plan, if already computed.

    Raises:
        KeyError: a change names a field without a llama-server flag.
    """
    lay = model_layout(model)
    if base is None:
        base = plan_laid_out(model, config, gpu_names=gpu_names, free_bytes=None, layout=lay, device_free=device_free)
    applied: Changes = dict(changes)
    if "n_ctx" not in applied and base.ok:
        # The user's own -c when given: llama.cpp derives more than the cells from it
        # (``-c 8`` also caps the batch sizes), so the padded cell count would not agree.
        applied["n_ctx"] = config.n_ctx if config.n_ctx is not None else base.n_ctx
    new_config = config.replace(**applied)
    plan = plan_laid_out(model, new_config, gpu_names=gpu_names, free_bytes=None, layout=lay, device_free=device_free)
    saves = (budget_total(base, gpu_names) - budget_total(plan, gpu_names)) if plan.ok and base.ok else 0
    best = max_context(model, new_config, memory_bytes, gpu_names=gpu_names, device_free=device_free) if plan.ok else 0
    command = render_command(config.command_line(**applied))
    return WhatIf(
        label=label or _label(applied, config),
        changes=applied,
        config=new_config,
        plan=plan,
        saves_bytes=saves,
        max_ctx=best,
        command=command,
        caveat=_caveat(applied, config, plan),
    )


def _label(changes: Changes, config: ServerConfig) -> str:
    parts = []
    if "cache_type_k" in changes or "cache_type_v" in changes:
        k = changes.get("cache_type_k", config.cache_type_k)
        v = changes.get("cache_type_v", config.cache_type_v)
        parts.append(f"{k} cache" if k == v else f"K {k} / V {v} cache")
    if "n_parallel" in changes:
        n = changes["n_parallel"]
        parts.append(f"{n} slot" + ("s" if n != 1 else ""))
    if "flash_attn" in changes:
        parts.append(f"-fa {changes['flash_attn']}")
    for name in changes:
        if name not in ("cache_type_k", "cache_type_v", "n_parallel", "flash_attn", "n_ctx", "kv_unified"):
            parts.append(f"{name}={changes[name]}")
    return ", ".join(parts) or "current"


def _caveat(changes: Changes, config: ServerConfig, plan: MemoryPlan) -> str:
    if plan.errors:
        return "llama.cpp refuses this: " + plan.errors[0]
    bits = []
    t = changes.get("cache_type_v", changes.get("cache_type_k"))
    if isinstance(t, str) and t != "f16":
        bits.append(_CAVEATS.get(t, ""))
    n = changes.get("n_parallel")
    current_slots = 4 if config.n_parallel < 0 else config.n_parallel
    if isinstance(n, int) and n < current_slots:
        bits.append(f"only {n} request{'s' if n != 1 else ''} served at a time")
        if plan.kv_unified:
            bits.append("the shared KV pool stays the same size")
    if changes.get("flash_attn") == "on" and config.flash_attn == "off":
        bits.append("needs flash attention (-fa on)")
    bits = [b for b in bits if b]
    return "; ".join(bits) if bits else "no trade-off"


def _slot_options(n_now: int) -> list[int]:
    """The current slot count and fewer (half, one fewer, one), most first."""
    options = [n_now]
    for n in (n_now // 2, n_now - 1, 1):
        if 1 <= n < n_now and n not in options:
            options.append(n)
    options.sort(reverse=True)
    return options


def slot_count_changes(base: MemoryPlan, n_slots: int) -> Changes:
    """The changes that run ``n_slots`` slots instead of ``base.n_seq``, pool kind kept.

    The one rule for every "fewer slots" what-if (the CLI table, the GUI buttons and
    advice agree): a unified pool keeps its size (``-kvu``, same ``-c``: fewer slots share
    it); split slots keep their context each (``-c`` = per-slot context x slots).

    Args:
        base: the current plan.
        n_slots: the new slot count (``-np``).
    """
    changes: Changes = {"n_parallel": n_slots}
    if base.kv_unified:
        changes["kv_unified"] = True  # same shared pool, fewer slots
    elif base.ok:
        changes["n_ctx"] = base.n_ctx_seq * n_slots  # same context per slot
    return changes


def _row_changes(config: ServerConfig, base: MemoryPlan, cache_type: str, n_slots: int) -> Changes:
    """The changes of one grid row: the cache type, then the slot count (pool kind kept)."""
    changes: Changes = {}
    if cache_type != config.cache_type_k or cache_type != config.cache_type_v:
        changes.update(cache_type_changes(cache_type, config.flash_attn))
    if n_slots != base.n_seq:
        changes.update(slot_count_changes(base, n_slots))
    return changes


def what_if_table(
    model: ModelInfo,
    config: ServerConfig,
    *,
    memory_bytes: int,
    gpu_names: Sequence[str] = (),
    extra_cache_types: Sequence[str] = (),
    device_free: Mapping[str, int] | None = None,
) -> list[WhatIf]:
    """The standard what-if grid: cache types f16/q8_0/q4_0 (+ extras) crossed with the
    current slot count and fewer slots (half, one fewer, one).

    A cache type llama.cpp refuses gets one row (its reason), not one per slot count; a
    model without a KV cache (recurrent only) gets slot rows only.

    Rows that change the slot count keep the pool kind: a unified pool keeps its size
    (``-kvu``, same ``-c``: fewer slots share it), split slots keep their context each
    (``-c`` = per-slot context x slots).

    Raises:
        ValueError: an extra cache type llama.cpp does not accept.
    """
    for t in extra_cache_types:
        if t not in CACHE_TYPES:
            raise ValueError(f"Unsupported cache type: {t} (allowed: {', '.join(CACHE_TYPES)})")
    lay = model_layout(model)
    base = plan_laid_out(model, config, gpu_names=gpu_names, free_bytes=None, layout=lay, device_free=device_free)
    types = list(dict.fromkeys(["f16", "q8_0", "q4_0", *extra_cache_types]))
    if not lay.kv_layers:  # recurrent only: the cache type changes nothing
        types = [config.cache_type_k]
    n_now = base.n_seq
    rows: list[WhatIf] = []
    for t in types:
        for n in _slot_options(n_now):
            if n != n_now and base.ok and rows and rows[-1].refused and rows[-1].plan.n_seq == n_now:
                break  # refused for the cache type: fewer slots cannot help, one row says it
            changes = _row_changes(config, base, t, n)
            rows.append(simulate(model, config, changes, memory_bytes=memory_bytes, gpu_names=gpu_names, base=base,
                                 device_free=device_free))  # fmt: skip
    return rows
