"""Planning: the steps from a model and a command line to a :class:`MemoryPlan`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kvwall.budget.config import ServerConfig
from kvwall.budget.memory.alloc import (
    Alloc,
    allocate,
    cpu_expert_layers,
    layers_per_device,
    placed_groups,
)
from kvwall.budget.memory.fit import FitResult, MiB, fit, placement_summary
from kvwall.budget.memory.layout import KV_PAD, Layout, model_layout, pad
from kvwall.budget.memory.refusals import check_config
from kvwall.budget.memory.resolve import NGL_DEFAULT_NOTE, Context, Resolved, context, resolve
from kvwall.budget.memory.results import DeviceBudget, MemoryPlan, Placement
from kvwall.monitors.gguf import ModelInfo
from kvwall.monitors.gguf.arch import SPECIAL_CACHE_ARCHS


@dataclass(frozen=True)
class _Request:
    """The context asked of llama_context (0 = the trained context), and why."""

    n_ctx_req: int
    note: str | None


@dataclass(frozen=True)
class _SlotCapacity:
    """The per-slot context the server reports, and a note when cells are wasted."""

    n_ctx_slot: int
    note: str | None


def plan_memory(
    model: ModelInfo,
    config: ServerConfig,
    *,
    gpu_names: Sequence[str] = (),
    free_bytes: int | None = None,
    device_free: Mapping[str, int] | None = None,
) -> MemoryPlan:
    """Predict what llama-server allocates for ``model`` run with ``config``.

    Args:
        model: the GGUF header.
        config: the parsed command line.
        gpu_names: llama.cpp device names the server will offload to (``("CUDA0",)``),
            in llama.cpp's order; empty for a CPU-only build/machine (everything lands in
            ``Host``).
        free_bytes: on a CPU-only machine, the host's *total* RAM (what common/fit.cpp
            compares against there); with GPUs and no ``device_free``, their free memory
            in total, taken as equal shares. None = unknown: ``--fit`` is not simulated
            (the full trained context is assumed to fit).
        device_free: free bytes per GPU as llama.cpp reads them (``--list-devices``): the
            split by free memory and ``--fit``'s per-device targets use them.

    Returns:
        The plan; refused configurations carry ``errors`` instead of numbers.
    """
    return plan_laid_out(
        model, config, gpu_names=gpu_names, free_bytes=free_bytes, layout=model_layout(model), device_free=device_free
    )


def _device_free(
    gpu_names: Sequence[str], free_bytes: int | None, device_free: Mapping[str, int] | None
) -> Mapping[str, int] | None:
    """Per-GPU free memory: as given, else ``free_bytes`` in equal shares, else unknown."""
    if device_free is not None or not gpu_names or free_bytes is None:
        return device_free
    return {g: free_bytes // len(gpu_names) for g in gpu_names}


def _sized_by_fit(config: ServerConfig) -> bool:
    """Whether ``--fit`` picks the context (no ``-c``, or ``-c 0``, and no per-slot size)."""
    if config.n_ctx is not None and config.n_ctx > 0:
        return False
    if config.n_ctx is None and config.kv_unified_per_slot and config.kv_unified_per_slot > 0:
        return False
    return config.fit


def _requested_context(model: ModelInfo, config: ServerConfig, rv: Resolved) -> _Request:
    """The context from ``-c`` or ``--kv-unified-per-slot`` (not ``--fit``)."""
    if config.n_ctx is not None and config.n_ctx > 0:
        return _Request(config.n_ctx, None)
    if config.n_ctx is None and config.kv_unified_per_slot and config.kv_unified_per_slot > 0:
        n_ctx_req = rv.n_seq * config.kv_unified_per_slot
        return _Request(
            n_ctx_req,
            f"-c not given: --kv-unified-per-slot sizes the pool to {rv.n_seq} x "
            f"{config.kv_unified_per_slot} = {n_ctx_req} cells",
        )
    return _Request(
        0,
        f"-c not given and --fit off: the trained context ({model.n_ctx_train} cells) in total"
        + (f", split over {rv.n_seq} slots" if not rv.unified and rv.n_seq > 1 else ""),
    )


def _config_notes(model: ModelInfo, config: ServerConfig, rv: Resolved, lay: Layout) -> list[str]:
    """Assumptions about an accepted configuration: guesses and flags with no effect."""
    notes: list[str] = []
    if config.flash_attn == "auto" and rv.fa == "auto" and lay.kv_layers and rv.gpu_names:
        notes.append(
            "-fa auto: assumed the GPU supports flash attention for this head size "
            "(llama.cpp turns it off otherwise, which needs a bigger compute buffer)"
        )
    if config.swa_full and not lay.has_swa_cache:
        notes.append("--swa-full has no effect: the model has no sliding-window layers")
    if model.architecture in SPECIAL_CACHE_ARCHS:
        notes.append(
            f"{model.architecture}: llama.cpp adds {SPECIAL_CACHE_ARCHS[model.architecture]}, "
            "not included in this estimate"
        )
    for flag in config.unknown_flags:
        if flag.startswith("-"):
            notes.append(f"{flag}: not a llama-server option of this build (ignored here; llama-server would refuse it)")
    return notes


def _slot_capacity(model: ModelInfo, config: ServerConfig, rv: Resolved, lay: Layout, ctx: Context) -> _SlotCapacity:
    """The per-slot context (capped by ``--kv-unified-per-slot`` and the trained context)."""
    n_ctx_slot = ctx.n_ctx_seq
    if config.kv_unified_per_slot and config.kv_unified_per_slot > 0:
        n_ctx_slot = min(n_ctx_slot, config.kv_unified_per_slot)
    n_ctx_slot = min(n_ctx_slot, model.n_ctx_train) if model.n_ctx_train else n_ctx_slot
    usable = n_ctx_slot * rv.n_seq
    # what -c usable would allocate: llama_context pads n_ctx, and split slots each
    smaller = pad(usable) if rv.unified else pad(pad(usable) // rv.n_seq) * rv.n_seq
    if not (lay.kv_layers and usable > 0 and smaller < ctx.n_ctx):
        return _SlotCapacity(n_ctx_slot, None)
    cap = (
        "--kv-unified-per-slot"
        if config.kv_unified_per_slot and n_ctx_slot == config.kv_unified_per_slot
        else f"the trained context, {model.n_ctx_train}"
    )
    return _SlotCapacity(
        n_ctx_slot,
        f"slots are capped at {n_ctx_slot} tokens ({cap}): at most {usable} of the "
        f"{ctx.n_ctx} KV cells can ever be in use; -c {usable} gives the same slots for less memory",
    )


def _device_rows(rv: Resolved, alloc: Alloc) -> tuple[DeviceBudget, ...]:
    names = [n for n in rv.gpu_names if rv.n_gpu_layers > 0 or alloc.device_total(n) > 0] + ["Host"]
    devices = []
    for name in names:
        is_host = name == "Host"
        w = alloc.weights.get(name, 0)
        k = alloc.kv.get(name, 0)
        r = alloc.rs.get(name, 0)
        c = alloc.compute.get(name, 0)
        o = alloc.output if is_host else 0
        devices.append(DeviceBudget(name, is_host, w, k, r, c, o, w + k + r + c + o))
    return tuple(devices)


def _assemble(
    config: ServerConfig, rv: Resolved, lay: Layout, alloc: Alloc, n_ctx_slot: int, notes: Sequence[str]
) -> MemoryPlan:
    ctx = alloc.ctx
    weights = sum(alloc.weights.values())
    kv = alloc.kv_k + alloc.kv_v
    compute = sum(alloc.compute.values())
    total = weights + kv + alloc.recurrent + compute + alloc.output
    # any negative --cache-ram means no limit (server-context.cpp); reported as -1
    cache_ram = config.cache_ram_mib * MiB if config.cache_ram_mib > 0 else max(config.cache_ram_mib, -1)
    return MemoryPlan(
        n_ctx=ctx.n_ctx,
        n_ctx_seq=ctx.n_ctx_seq,
        n_ctx_slot=n_ctx_slot,
        n_seq=rv.n_seq,
        n_stream=rv.n_stream,
        kv_unified=rv.unified,
        cache_type_k=config.cache_type_k,
        cache_type_v=config.cache_type_v,
        flash_attn=rv.fa,
        n_ubatch=ctx.n_ubatch,
        weights_bytes=weights,
        kv_bytes=kv,
        kv_k_bytes=alloc.kv_k,
        kv_v_bytes=alloc.kv_v,
        kv_swa_bytes=alloc.kv_swa,
        recurrent_bytes=alloc.recurrent,
        compute_bytes=compute,
        output_bytes=alloc.output,
        cache_ram_bytes=cache_ram,
        total_bytes=total,
        kv_bytes_per_cell=alloc.kv_per_cell,
        devices=_device_rows(rv, alloc),
        assumptions=tuple(dict.fromkeys(notes)),
        errors=(),
        kv_cells_swa=alloc.kv_cells_swa,
        kv_layers=len(lay.kv_layers),
        flash_attn_effective=rv.fa_effective,
        n_rs_seq=rv.n_rs_seq,
    )


def _empty_plan(
    config: ServerConfig, rv: Resolved, ctx: Context | None, notes: Sequence[str], error: str
) -> MemoryPlan:
    """A refused plan: no bytes, the reasons in ``errors``."""
    return MemoryPlan(
        n_ctx=ctx.n_ctx if ctx else 0,
        n_ctx_seq=ctx.n_ctx_seq if ctx else 0,
        n_ctx_slot=0,
        n_seq=rv.n_seq,
        n_stream=rv.n_stream,
        kv_unified=rv.unified,
        cache_type_k=config.cache_type_k,
        cache_type_v=config.cache_type_v,
        flash_attn=rv.fa,
        n_ubatch=ctx.n_ubatch if ctx else config.n_ubatch,
        weights_bytes=0,
        kv_bytes=0,
        kv_k_bytes=0,
        kv_v_bytes=0,
        kv_swa_bytes=0,
        recurrent_bytes=0,
        compute_bytes=0,
        output_bytes=0,
        cache_ram_bytes=0,
        total_bytes=0,
        kv_bytes_per_cell=0.0,
        devices=(),
        assumptions=tuple(dict.fromkeys(notes)),
        errors=(error,),
        flash_attn_effective=rv.fa_effective,
        n_rs_seq=rv.n_rs_seq,
    )


def plan_laid_out(
    model: ModelInfo,
    config: ServerConfig,
    *,
    gpu_names: Sequence[str],
    free_bytes: int | None,
    layout: Layout,
    quiet: bool = False,
    device_free: Mapping[str, int] | None = None,
) -> MemoryPlan:
    """:func:`plan_memory` with the model's layout already computed (for many plans of one
    model); ``quiet`` leaves out the notes that only describe the configuration."""
    rv = resolve(model, config, gpu_names, _device_free(gpu_names, free_bytes, device_free))
    notes = list(rv.notes)
    if config.n_ctx is not None and config.n_ctx < 0:
        return _empty_plan(config, rv, None, notes, (
            f"-c {config.n_ctx}: a negative context size; llama.cpp aborts "
            "(GGML_ASSERT(n_outputs >= 1) in llama-context.cpp)"
        ))  # fmt: skip
    by_fit = _sized_by_fit(config)
    request = _Request(0, None) if by_fit else _requested_context(model, config, rv)
    if request.note:
        notes.append(request.note)
    verdict = check_config(model, config, rv, request.n_ctx_req)  # before --fit sizes anything
    rv = verdict.rv
    notes.extend(verdict.notes)
    if verdict.error:
        ctx = None if by_fit else context(model, config, rv, request.n_ctx_req)
        return _empty_plan(config, rv, ctx, notes, verdict.error)
    n_ctx_req = request.n_ctx_req
    fitted: FitResult | None = None
    if config.fit:
        fitted = fit(model, config, rv, layout, n_ctx_req, None if rv.gpu_names else free_bytes)
        rv, n_ctx_req = fitted.rv, fitted.n_ctx
        notes.extend(fitted.notes)
        if fitted.status == "layers":
            notes = [n for n in notes if n != NGL_DEFAULT_NOTE]
    if not quiet:
        notes.extend(_config_notes(model, config, rv, layout))
    alloc = allocate(model, config, rv, layout, n_ctx_req)
    slots = _slot_capacity(model, config, rv, layout, alloc.ctx)
    if slots.note and not quiet:
        notes.append(slots.note)
    plan = _assemble(config, rv, layout, alloc, slots.n_ctx_slot, notes)
    return dataclasses.replace(plan, placement=_placement(model, config, rv, fitted, n_ctx_req))


def _placement(model: ModelInfo, config: ServerConfig, rv: Resolved, fitted: FitResult | None,
               n_ctx: int) -> Placement:
    """Layers per device, experts kept on the host, and how to pin what --fit chose."""
    layers = layers_per_device(rv, model)
    cpu_experts = cpu_expert_layers(model, placed_groups(model, config, rv), rv)
    status = fitted.status if fitted else "off"
    pinned: tuple[tuple[str, object], ...] = ()
    summary = ""
    if fitted and status == "layers":
        summary = placement_summary(model, config, rv, n_ctx)
        overrides = tuple(f"{p}={b}" for p, b in (rv.fit_overrides or ()))
        pinned = (("n_gpu_layers", rv.n_gpu_layers),)
        if rv.splits:
            pinned += (("tensor_split", rv.splits),)
        if overrides:
            pinned += (("override_tensor", overrides),)
    return Placement(rv.n_gpu_layers, layers, tuple(cpu_experts), status, summary, pinned)


def budget_total(plan: MemoryPlan, gpu_names: Sequence[str]) -> int:
    """The bytes compared with a memory budget: GPU rows when offloading, else everything."""
    gpu_rows = [d for d in plan.devices if not d.is_host]
    if gpu_names and gpu_rows:
        return sum(d.total_bytes for d in gpu_rows)
    return plan.total_bytes


def largest_fitting(fits: Callable[[int], bool], hi: int) -> int:
    """The largest ``k`` in ``1..hi`` with ``fits(k)``, for ``fits`` true up to some point
    and false after it (memory grows with the context); 0 when ``fits(1)`` is false.
    Binary search: about log2(hi) plans."""
    if not fits(1):
        return 0
    if fits(hi):
        return hi
    lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def max_context(
    model: ModelInfo,
    config: ServerConfig,
    memory_bytes: int,
    *,
    gpu_names: Sequence[str] = (),
    device_free: Mapping[str, int] | None = None,
    placed: MemoryPlan | None = None,
) -> int:
    """The largest ``-c`` (multiple of 256 per stream) whose plan fits in ``memory_bytes``
    (and on each GPU in its ``device_free``, when given); 0 when even the smallest context
    does not fit.

    The placement is the one llama-server would load with now: what ``--fit`` chose is
    kept, so a larger context is not bought by moving more layers to the CPU. The search
    stops at the trained context per slot (``n_ctx_train`` x slots): more cells than that
    cannot be used by any slot. ``placed``: the plan of ``config`` when already made (its
    placement is pinned without planning it again).
    """
    lay = model_layout(model)
    pinned = _pinned_config(model, config, gpu_names, device_free, lay, placed)
    rv = resolve(model, pinned, gpu_names, device_free)
    step = KV_PAD * rv.n_stream
    hi_ctx = max(model.n_ctx_train, KV_PAD) * rv.n_seq
    hi = max(1, hi_ctx // step)

    def slack(k: int) -> int | None:
        plan = plan_laid_out(
            model, pinned.replace(n_ctx=k * step), gpu_names=gpu_names, free_bytes=None, layout=lay,
            quiet=True, device_free=device_free,
        )  # fmt: skip
        return room_left(plan, memory_bytes, gpu_names, device_free) if plan.ok else None

    return largest_with_room(slack, hi) * step


def room_left(
    plan: MemoryPlan, memory_bytes: int, gpu_names: Sequence[str], device_free: Mapping[str, int] | None
) -> int:
    """The tightest margin of ``plan`` under the budget: in total, and on each GPU in its
    free memory (negative: it does not fit by that much)."""
    margins = [memory_bytes - budget_total(plan, gpu_names)]
    if device_free:
        margins += [device_free[d.name] - d.total_bytes for d in plan.devices if d.name in device_free]
    return min(margins)


def largest_with_room(slack: Callable[[int], int | None], hi: int) -> int:
    """The largest ``k`` in ``1..hi`` with ``slack(k) >= 0`` (None: refused), for a slack
    that falls as ``k`` grows; 0 when ``slack(1) < 0``. Memory grows almost linearly with
    the context, so each probe aims where the slack reaches 0 between the bounds (false
    position, halving when that does not narrow them): a few plans instead of log2(hi)."""
    s_lo = slack(1)
    if s_lo is None or s_lo < 0:
        return 0
    s_hi = slack(hi)
    if s_hi is not None and s_hi >= 0:
        return hi
    lo = 1
    while hi - lo > 1:
        guess = lo + (hi - lo) // 2
        if s_hi is not None and s_lo > s_hi:
            guess = lo + int((hi - lo) * s_lo / (s_lo - s_hi))
        mid = min(max(guess, lo + 1), hi - 1)
        s_mid = slack(mid)
        if s_mid is not None and s_mid >= 0:
            lo, s_lo = mid, s_mid
            if mid + 1 < hi:  # the root is usually just past the guess: check it at once
                s_next = slack(mid + 1)
                if s_next is None or s_next < 0:
                    return mid
                lo, s_lo = mid + 1, s_next
        else:
            hi, s_hi = mid, s_mid
    return lo


def _pinned_config(
    model: ModelInfo,
    config: ServerConfig,
    gpu_names: Sequence[str],
    device_free: Mapping[str, int] | None,
    lay: Layout,
    placed: MemoryPlan | None = None,
) -> ServerConfig:
    """``config`` with ``--fit``'s placement written out and ``--fit`` off."""
    if not config.fit:
        return config
    plan = placed or plan_laid_out(model, config, gpu_names=gpu_names, free_bytes=None, layout=lay,
                                   quiet=True, device_free=device_free)  # fmt: skip
    changes: dict[str, object] = dict(plan.placement.pinned) if plan.placement else {}
    changes["fit"] = False
    return config.replace(**changes)


def fits_devices(
    plan: MemoryPlan, memory_bytes: int, gpu_names: Sequence[str], device_free: Mapping[str, int] | None
) -> bool:
    """Whether ``plan`` fits the budget: in total, and on each GPU in its free memory."""
    return room_left(plan, memory_bytes, gpu_names, device_free) >= 0
