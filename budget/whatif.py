"""What-ifs: a configuration change simulated with the memory model, and the standard grid."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from kvwall.budget.cachetypes import CACHE_TYPES, cache_type_changes
from kvwall.budget.cmdline.edit import render_command
from kvwall.budget.config import ServerConfig
from kvwall.budget.memory.layout import Layout, model_layout
from kvwall.budget.memory.plan import (
    budget_total,
    fits_devices,
    largest_fitting,
    max_context,
    plan_laid_out,
)
from kvwall.budget.memory.results import MemoryPlan
from kvwall.budget.memory.tensors import LLM_FFN_EXPS_REGEX
from kvwall.budget.units import format_bytes
from kvwall.monitors.gguf import ModelInfo

Changes = dict[str, object]  # ServerConfig field -> new value

OffloadKind = Literal["gpu-layers", "cpu-moe", "no-kv-offload", "tensor-split"]
"""The lever an offload row pulls: ``-ngl``, ``-ncmoe``/``-ot`` (MoE experts), ``-nkvo``, ``-ts``."""

# What users write as ``-ot exps=CPU``, in llama.cpp's own spelling (what --cpu-moe adds).
EXPERTS_ON_CPU = f"{LLM_FFN_EXPS_REGEX}=CPU"


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
        caveat: the quality/speed trade-off, one sentence (for an offload row, the speed
            cost in plain words).
        device_saves: (device, bytes freed) per device of either plan, GPUs in
            llama.cpp's order then ``Host`` (negative = holds more there); empty when
            either plan is refused.
        offload: the lever of an offload row (:func:`offload_table`), None for others.
    """

    label: str
    changes: Changes
    config: ServerConfig
    plan: MemoryPlan
    saves_bytes: int
    max_ctx: int
    command: str
    caveat: str
    device_saves: tuple[tuple[str, int], ...] = ()
    offload: OffloadKind | None = None

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
    best = max_context(model, new_config, memory_bytes, gpu_names=gpu_names, device_free=device_free,
                       placed=plan) if plan.ok else 0  # fmt: skip
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
        device_saves=_device_saves(base, plan),
    )


def _device_saves(base: MemoryPlan, plan: MemoryPlan) -> tuple[tuple[str, int], ...]:
    """Bytes freed on each device of either plan, GPUs first, ``Host`` last."""
    if not (base.ok and plan.ok):
        return ()
    before = {d.name: d.total_bytes for d in base.devices}
    after = {d.name: d.total_bytes for d in plan.devices}
    names = sorted(dict.fromkeys([*before, *after]), key=lambda n: n == "Host")
    return tuple((n, before.get(n, 0) - after.get(n, 0)) for n in names)


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


# ---------------------------------------------------------------------------
# offload: the levers that move weights or the KV cache off the GPUs


@dataclass(frozen=True)
class _Room:
    """The memory an offload row must fit: the budget in total and each GPU's free memory."""

    memory_bytes: int
    gpu_names: tuple[str, ...]
    device_free: Mapping[str, int] | None
    layout: Layout

    def fits(self, model: ModelInfo, config: ServerConfig) -> bool:
        """Whether llama.cpp accepts ``config`` and its plan fits this room."""
        plan = plan_laid_out(model, config, gpu_names=self.gpu_names, free_bytes=None, layout=self.layout,
                             quiet=True, device_free=self.device_free)  # fmt: skip
        return plan.ok and fits_devices(plan, self.memory_bytes, self.gpu_names, self.device_free)


@dataclass(frozen=True)
class _Lever:
    """One offload row to simulate: its label, lever and configuration changes."""

    label: str
    kind: OffloadKind
    changes: Changes


def offload_table(
    model: ModelInfo,
    config: ServerConfig,
    *,
    memory_bytes: int,
    gpu_names: Sequence[str],
    device_free: Mapping[str, int] | None = None,
) -> list[WhatIf]:
    """The offload what-ifs of a server that uses GPUs: what moving work to the CPU buys.

    Rows, each keeping the current context as an explicit ``-c`` (as :func:`simulate`):

    - ``-ngl N``: what ``--fit`` (or the command) chose minus and plus a tenth of the
      layers, half of them, none; when the plan does not fit, also the most that fit;
    - MoE models: ``-ncmoe N`` with the fewest expert layers on the CPU that let the
      asked context fit (``-c``, else the trained context), and a few layers either side;
      ``-ot exps=CPU`` (every expert tensor, llama.cpp's ``--cpu-moe`` regex);
    - ``-nkvo``: the KV cache in host RAM (``--fit`` may then keep more layers on the GPUs);
    - two or more GPUs: ``-ts`` by free memory (when the command sets another ``-ts``)
      and a sixteenth of the layers moved between GPUs (both ways for two, else from
      the GPU with the least room per layer to the one with the most), ``--fit``'s
      other choices (``-ngl``, its tensor overrides) written out with it.

    A row that llama.cpp would load exactly as now is left out.

    Setting ``-ngl``, ``-ncmoe``, ``-ot`` or ``-ts`` stops ``--fit`` from moving layers
    (common/fit.cpp), so those rows are exactly the placement their command asks for.

    Args:
        model: the GGUF header.
        config: the current configuration.
        memory_bytes: the budget (GPU memory in total) each row's fit and largest
            context are measured against.
        gpu_names, device_free: as for :func:`kvwall.budget.memory.plan_memory`.

    Returns:
        The rows (:attr:`WhatIf.offload` names the lever, :attr:`WhatIf.caveat` the speed
        cost); empty for a CPU-only server or a plan llama.cpp refuses.
    """
    if not gpu_names:
        return []
    lay = model_layout(model)
    base = plan_laid_out(model, config, gpu_names=gpu_names, free_bytes=None, layout=lay, device_free=device_free)
    if not base.ok or base.placement is None:
        return []
    room = _Room(memory_bytes, tuple(gpu_names), device_free, lay)
    levers = [
        *_layer_levers(model, config, base, room),
        *_expert_levers(model, config, base, room),
        *_kv_levers(config, lay),
        *_split_levers(config, base, room),
    ]
    rows: list[WhatIf] = []
    for lever in levers:
        wi = simulate(model, config, lever.changes, memory_bytes=memory_bytes, gpu_names=gpu_names,
                      label=lever.label, base=base, device_free=device_free)  # fmt: skip
        if wi.refused:
            rows.append(replace(wi, offload=lever.kind))
            continue
        if _same_placement(base, wi):
            continue  # llama.cpp would load it as now (a -ts that is the split already)
        freed = sum(b for name, b in wi.device_saves if name != "Host")
        caveat = offload_cost(model, base, wi.plan, wi.config, wi.max_ctx)
        rows.append(replace(wi, offload=lever.kind, caveat=caveat, saves_bytes=freed))
    return rows


def _same_placement(base: MemoryPlan, wi: WhatIf) -> bool:
    """Whether a row places everything as now (same layers, same bytes on every device)."""
    return (
        base.placement is not None
        and wi.plan.placement is not None
        and base.placement.layers == wi.plan.placement.layers
        and base.placement.cpu_expert_layers == wi.plan.placement.cpu_expert_layers
        and all(b == 0 for _, b in wi.device_saves)
    )


def _kept_ctx(config: ServerConfig, base: MemoryPlan) -> int:
    """The context a row keeps: the user's ``-c``, else the cells planned now."""
    return config.n_ctx if config.n_ctx is not None and config.n_ctx > 0 else base.n_ctx


def _fewest(fits: Callable[[int], bool], hi: int) -> int | None:
    """The smallest ``n`` in ``0..hi`` with ``fits(n)``, for ``fits`` false up to some
    point and true after it (more on the CPU frees more); None when ``fits(hi)`` is false."""
    found = largest_fitting(lambda k: fits(hi + 1 - k), hi + 1)
    return None if found == 0 else hi + 1 - found


def _most_layers(model: ModelInfo, config: ServerConfig, n_ctx: int, room: _Room, hi: int) -> int | None:
    """The largest ``-ngl`` in ``1..hi`` whose plan with ``-c n_ctx`` fits; None if none
    (``-ngl 0`` has a row of its own: nothing but compute is left on the GPUs)."""
    if hi < 1:
        return None
    probe = config.replace(fit=False, n_ctx=n_ctx)  # an explicit -ngl: --fit moves no layers
    most = largest_fitting(lambda k: room.fits(model, probe.replace(n_gpu_layers=k)), hi)
    return most if most > 0 else None


def _fewest_experts(model: ModelInfo, config: ServerConfig, n_ctx: int, room: _Room) -> int | None:
    """The smallest ``-ncmoe`` whose plan with ``-c n_ctx`` fits (0: it fits as it is,
    ``n_layer``: every expert must go); None when even that does not fit."""
    probe = config.replace(fit=False, n_ctx=n_ctx)  # -ncmoe N > 0: --fit moves no layers
    return _fewest(lambda n: room.fits(model, probe.replace(n_cpu_moe=n)), model.n_layer)


def _layer_levers(model: ModelInfo, config: ServerConfig, base: MemoryPlan, room: _Room) -> list[_Lever]:
    """``-ngl N``: a tenth of the layers fewer and more, half, none, and the most that fit."""
    assert base.placement is not None
    n_max = model.n_layer_all + 1  # the output layer counts
    now = min(base.placement.n_gpu_layers, n_max)
    step = max(1, round(n_max / 10))
    options = {now - step, min(now + step, n_max), 0}
    half = n_max // 2
    if abs(half - now) >= max(1, step // 2):
        options.add(half)
    if not fits_devices(base, room.memory_bytes, room.gpu_names, room.device_free):
        most = _most_layers(model, config, _kept_ctx(config, base), room, now - 1)
        if most is not None:
            options.add(most)
    chosen = sorted((n for n in options if 0 <= n <= n_max and n != now), reverse=True)
    return [_Lever(f"-ngl {n}", "gpu-layers", {"n_gpu_layers": n}) for n in chosen]


def _asked_context(model: ModelInfo, config: ServerConfig, plan: MemoryPlan) -> int:
    """The context the user asked for: ``-c``, else the trained context (what llama-server
    loads without ``--fit``)."""
    if config.n_ctx is not None and config.n_ctx > 0:
        return config.n_ctx
    return max(model.n_ctx_train, 1) * plan.n_stream


def _expert_levers(model: ModelInfo, config: ServerConfig, base: MemoryPlan, room: _Room) -> list[_Lever]:
    """``-ncmoe N`` around the fewest expert layers on the CPU that let the asked context
    fit, and every expert on the CPU (``-ot exps=CPU``)."""
    if model.n_expert <= 0 or config.cpu_moe:
        return []
    n_layer = model.n_layer
    need = _fewest_experts(model, config, _asked_context(model, config, base), room)
    step = max(1, round(n_layer / 16))
    if need is None or need >= n_layer:
        options = [n_layer // 2]  # the asked context needs more: -ot moves every expert
    elif need == 0:
        options = [n_layer // 4, n_layer // 2]  # it fits already: what more context costs
    else:
        options = [need - step, need, need + step]
    chosen = sorted({n for n in options if 0 < n < n_layer and n != config.n_cpu_moe})
    levers = [_Lever(f"-ncmoe {n}", "cpu-moe", {"n_cpu_moe": n}) for n in chosen]
    if EXPERTS_ON_CPU not in config.override_tensor:
        ot = (*config.override_tensor, EXPERTS_ON_CPU)
        levers.append(_Lever("-ot exps=CPU", "cpu-moe", {"override_tensor": ot}))
    return levers


def offload_for_context(
    model: ModelInfo,
    config: ServerConfig,
    n_ctx: int,
    *,
    memory_bytes: int,
    gpu_names: Sequence[str],
    device_free: Mapping[str, int] | None = None,
    headroom: float = 0.0,
) -> list[WhatIf]:
    """Per lever (``-ncmoe`` or ``-ot exps=CPU`` for a MoE, then ``-ngl``), the change that
    moves the least off the GPUs and lets ``-c n_ctx`` fit: the rows advice offers to buy
    context.

    Args:
        model, config: the GGUF header and the current configuration.
        n_ctx: the context (``-c``) to reach.
        memory_bytes, gpu_names, device_free: as for :func:`offload_table`.
        headroom: the share of the budget (and of each GPU's free memory) to leave free.

    Returns:
        The rows, ``-c n_ctx`` among their changes; none for a lever that cannot reach it
        (or already does without moving anything).
    """
    if not gpu_names:
        return []
    keep = 1.0 - headroom
    free = {g: int(b * keep) for g, b in device_free.items()} if device_free else None
    room = _Room(int(memory_bytes * keep), tuple(gpu_names), free, model_layout(model))
    levers: list[_Lever] = []
    if model.n_expert > 0 and not config.cpu_moe:
        need = _fewest_experts(model, config, n_ctx, room)
        if need is not None and 0 < need < model.n_layer:
            levers.append(_Lever(f"-ncmoe {need}", "cpu-moe", {"n_cpu_moe": need}))
        elif need == model.n_layer and EXPERTS_ON_CPU not in config.override_tensor:
            ot = (*config.override_tensor, EXPERTS_ON_CPU)
            levers.append(_Lever("-ot exps=CPU", "cpu-moe", {"override_tensor": ot}))
    most = _most_layers(model, config, n_ctx, room, model.n_layer_all + 1)
    if most is not None:
        levers.append(_Lever(f"-ngl {most}", "gpu-layers", {"n_gpu_layers": most}))
    base = plan_laid_out(model, config, gpu_names=gpu_names, free_bytes=None, layout=room.layout,
                         device_free=device_free)  # fmt: skip
    rows = []
    for lever in levers:
        wi = simulate(model, config, {**lever.changes, "n_ctx": n_ctx}, memory_bytes=memory_bytes,
                      gpu_names=gpu_names, label=lever.label, base=base, device_free=device_free)  # fmt: skip
        if not wi.refused:
            caveat = offload_cost(model, base, wi.plan, wi.config, wi.max_ctx)
            rows.append(replace(wi, offload=lever.kind, caveat=caveat))
    return rows


def _kv_levers(config: ServerConfig, lay: Layout) -> list[_Lever]:
    """``-nkvo``: the KV cache (and recurrent state) in host RAM."""
    if not config.kv_offload or not (lay.kv_layers or lay.recurrent_layers):
        return []
    return [_Lever("-nkvo", "no-kv-offload", {"kv_offload": False})]


def _split_levers(config: ServerConfig, base: MemoryPlan, room: _Room) -> list[_Lever]:
    """``-ts``: by free memory (when the split is not that now), and a few layers moved
    between GPUs: both ways for two, else from the tightest GPU to the roomiest."""
    assert base.placement is not None
    counts = dict(base.placement.layers)
    gpus = list(room.gpu_names)
    layers = [counts.get(g, 0) for g in gpus]
    if sum(1 for n in layers if n) < 2:
        return []
    pinned = {k: v for k, v in base.placement.pinned if k != "tensor_split"}
    levers: list[_Lever] = []
    free = room.device_free
    if free and all(g in free for g in gpus) and config.tensor_split:
        shares = tuple(round(free[g] / 2**30, 1) for g in gpus)
        levers.append(_split_lever(pinned, shares))
    k = max(1, round(sum(layers) / 16))
    for src, dst in _shifts(base, room, layers):
        if layers[src] > k:
            moved = list(layers)
            moved[src] -= k
            moved[dst] += k
            levers.append(_split_lever(pinned, tuple(float(n) for n in moved)))
    return levers


def _shifts(base: MemoryPlan, room: _Room, layers: Sequence[int]) -> list[tuple[int, int]]:
    """(from, to) GPU indexes to move layers between: both ways for two GPUs, else from
    the one with the least room per layer (the first to run out of KV cells) to the most."""
    if len(layers) == 2:
        return [(0, 1), (1, 0)]
    used = {d.name: d.total_bytes for d in base.devices}
    free = room.device_free
    per_layer = [
        ((free[g] if free and g in free else room.memory_bytes // len(layers)) - used.get(g, 0)) / max(1, n)
        for g, n in zip(room.gpu_names, layers, strict=True)
    ]
    src = min((i for i, n in enumerate(layers) if n), key=lambda i: per_layer[i])
    dst = max(range(len(layers)), key=lambda i: per_layer[i])
    return [(src, dst)] if src != dst else []


def _split_lever(pinned: Changes, shares: tuple[float, ...]) -> _Lever:
    """``-ts shares``, with ``--fit``'s other choices (``pinned``) written out."""
    text = ",".join(f"{v:g}" for v in shares)
    return _Lever(f"-ts {text}", "tensor-split", {**pinned, "tensor_split": shares})


def _cpu_layers(model: ModelInfo, plan: MemoryPlan) -> int:
    """Repeating layers on the CPU (the output layer goes with the last of them)."""
    assert plan.placement is not None
    return min(model.n_layer_all, model.n_layer_all + 1 - plan.placement.n_gpu_layers)


def _expert_layer_count(model: ModelInfo) -> int:
    return len({t.name.split(".")[1] for t in model.tensors
                if t.name.startswith("blk.") and "_exps" in t.name})


def offload_cost(
    model: ModelInfo, base: MemoryPlan, plan: MemoryPlan, config: ServerConfig, max_ctx: int = 0
) -> str:
    """What a placement costs in speed, in plain words, against the current one.

    Args:
        model: the GGUF header.
        base: the current plan.
        plan: the changed plan (accepted by llama.cpp).
        config: the changed configuration (for ``-nkvo``).
        max_ctx: the row's largest context (the host RAM its KV cache takes with ``-nkvo``).
    """
    if base.placement is None or plan.placement is None:
        return "no trade-off"
    parts = _layer_cost(model, base, plan) + _expert_cost(model, base, plan)
    if not config.kv_offload:
        size = format_bytes(plan.kv_bytes + plan.recurrent_bytes)
        if max_ctx > plan.n_ctx:
            at_max = plan.kv_bytes_per_cell * max_ctx / max(1, plan.n_stream)
            size += f"; {format_bytes(at_max)} at -c {max_ctx}"
        parts.append(f"the KV cache ({size}) in host RAM: attention reads it over PCIe, so every "
                     "token slows down as the context grows")
    parts += _shift_cost(base, plan)
    return "; ".join(parts) or "as much of the model on the CPU as now: about the same speed"


def _layer_cost(model: ModelInfo, base: MemoryPlan, plan: MemoryPlan) -> list[str]:
    """Whole layers on the CPU: generation runs at host-memory speed for them."""
    n_all = model.n_layer_all
    cpu_now, cpu_new = _cpu_layers(model, base), _cpu_layers(model, plan)
    if cpu_now == cpu_new:
        assert base.placement is not None and plan.placement is not None
        if base.placement.n_gpu_layers != plan.placement.n_gpu_layers and min(
                base.placement.n_gpu_layers, plan.placement.n_gpu_layers) == 0:
            where = "GPU" if plan.placement.n_gpu_layers else "CPU"
            return [f"the output layer on the {where}: a small change in speed"]
        return []
    if cpu_new == n_all:
        return [f"all {n_all} layers on the CPU (now {cpu_now}): generation runs at the speed of host memory "
                "(the GPU still speeds up prompt processing)"]  # fmt: skip
    if cpu_new:
        return [f"{cpu_new} of {n_all} layers on the CPU (now {cpu_now}): generation runs at roughly the "
                "speed of host memory for those layers"]  # fmt: skip
    return [f"every layer on the GPUs (now {cpu_now} on the CPU): faster generation"]


def _expert_cost(model: ModelInfo, base: MemoryPlan, plan: MemoryPlan) -> list[str]:
    assert base.placement is not None and plan.placement is not None
    e_now, e_new = len(base.placement.cpu_expert_layers), len(plan.placement.cpu_expert_layers)
    if e_new == e_now:
        return []
    if not e_new:
        return [f"every expert on the GPUs (now those of {e_now} layers on the CPU): faster generation"]
    n_moe = _expert_layer_count(model)
    which = "all" if e_new == n_moe else f"{e_new} of {n_moe}"
    return [f"the experts of {which} MoE layers on the CPU (now {e_now}): each token reads its "
            f"{model.n_expert_used} routed experts (of {model.n_expert}) there from host memory, a "
            "smaller slowdown than whole layers on the CPU"]


def _shift_cost(base: MemoryPlan, plan: MemoryPlan) -> list[str]:
    """Layers moved between GPUs: they stay on a GPU, so speed barely changes."""
    assert base.placement is not None and plan.placement is not None
    before, after = dict(base.placement.layers), dict(plan.placement.layers)
    gpus = [g for g in dict.fromkeys([*before, *after]) if g != "Host"]
    gained = [(g, after.get(g, 0) - before.get(g, 0)) for g in gpus if after.get(g, 0) > before.get(g, 0)]
    lost = [(g, before.get(g, 0) - after.get(g, 0)) for g in gpus if after.get(g, 0) < before.get(g, 0)]
    if not gained or not lost or before.get("Host", 0) != after.get("Host", 0):
        return []
    frm = ", ".join(f"{n} from {g}" for g, n in lost)
    to = ", ".join(g for g, _ in gained)
    return [f"layers move between GPUs ({frm} to {to}): they stay on a GPU, so speed barely changes"]
