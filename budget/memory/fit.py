"""``--fit``: what common/fit.cpp changes before llama-server loads the model.

A port of ``common_params_fit_impl`` (llama.cpp b11434, ``common/fit.cpp``). llama.cpp
measures each candidate by loading the model and a context with ``no_alloc``; here each
candidate is measured by :func:`~kvwall.budget.memory.alloc.allocate`, so the solver makes
the same decisions from the same numbers:

1. with the defaults (all layers on the GPUs, split by free memory, the full trained
   context when ``-c`` is not given): nothing changes when every device keeps its margin
   (``-fitt``, 1024 MiB by default) free;
2. else, when ``-c`` is not given, the context shrinks (linear interpolation between
   ``-fitc`` and the trained context, rounded down to 256 per stream);
3. else, unless the user set ``-ngl``, ``-ts`` or tensor overrides (then it gives up and
   the server starts with what it has), layers are filled back to front, whole layers for
   a dense model and the dense part of each layer for a MoE (its experts on the CPU);
4. for a MoE whose dense part fits, the experts of the front layers move back onto the
   GPUs, front to back, with one layer split by its feed-forward tensors.

Without GPUs only step 2 runs, against the host's total RAM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kvwall.budget.config import ServerConfig
from kvwall.budget.memory.alloc import (
    Alloc,
    allocate,
    cpu_expert_layers,
    layers_per_device,
    placed_groups,
    user_overrides,
)
from kvwall.budget.memory.layout import Layout
from kvwall.budget.memory.resolve import Resolved
from kvwall.budget.units import format_whole_mib
from kvwall.monitors.gguf import ModelInfo

MiB = 1024 * 1024
_DEFAULT_MARGIN_MIB = 1024

FitStatus = Literal["unchanged", "context", "layers", "failed", "not_simulated"]
"""What ``--fit`` did: nothing, shrank the context, moved tensors, gave up, or (without
the device memory) what kvwall could not simulate."""

Fraction = Literal["attn", "up", "gate", "moe"]
"""The part of a layer that stays on its device when the rest overflows (fit.cpp's
``LAYER_FRACTION_*``): attention only, + up, + gate, everything but the experts."""

_OVERFLOW_PATTERNS: dict[Fraction, str] = {
    "attn": r"blk\.{il}\.ffn_(gate|up|gate_up|down).*",
    "up": r"blk\.{il}\.ffn_(gate|gate_up|down).*",
    "gate": r"blk\.{il}\.ffn_down.*",
    "moe": r"blk\.{il}\.ffn_(up|down|gate_up|gate)_(ch|)exps",
}
_MOE_ALL = r"blk\.\d+\.ffn_(up|down|gate_up|gate)_(ch|)exps"


@dataclass(frozen=True)
class DeviceLayers:
    """Layers ``--fit`` gives one device (fit.cpp's ``ngl_t``).

    Attributes:
        n_layer: layers on the device (the output layer counts on the last device).
        n_part: of those, the layers whose experts (or more) overflow elsewhere.
        overflow: what stays of the first overflowing layer.
    """

    n_layer: int = 0
    n_part: int = 0
    overflow: Fraction = "moe"

    @property
    def n_full(self) -> int:
        """Whole layers."""
        return self.n_layer - self.n_part


@dataclass(frozen=True)
class FitResult:
    """What ``--fit`` hands to the model loader and llama_context.

    Attributes:
        status: what it did.
        n_ctx: the context it requests (0 = the trained context).
        rv: the configuration with its placement applied.
        notes: its decisions, in the user's words.
        layers: per GPU, the layers it chose (empty unless status is ``layers``).
    """

    status: FitStatus
    n_ctx: int
    rv: Resolved
    notes: tuple[str, ...]
    layers: tuple[DeviceLayers, ...] = ()


class _GiveUp(Exception):
    """fit.cpp's ``common_params_fit_exception``: the server starts with what it has."""


@dataclass(frozen=True)
class _Measured:
    """One no_alloc load: per GPU (model order) used and model bytes; the host's total."""

    used: tuple[int, ...]
    model: tuple[int, ...]
    host: int


@dataclass
class _Solver:
    """The state common_params_fit_impl keeps while it tries placements."""

    model: ModelInfo
    config: ServerConfig
    rv: Resolved
    lay: Layout
    n_ctx: int
    hp_ngl: int
    layers: tuple[DeviceLayers, ...] = ()

    def measure(self, rv: Resolved | None = None) -> _Measured:
        rv = rv or self.rv
        alloc: Alloc = allocate(self.model, self.config, rv, self.lay, self.n_ctx)
        return _Measured(
            used=tuple(alloc.device_total(g) for g in rv.gpu_names),
            model=tuple(alloc.weights.get(g, 0) for g in rv.gpu_names),
            host=alloc.device_total("Host"),  # the output buffer is outside the breakdown
        )

    def placed(self, layers: Sequence[DeviceLayers], overflow_bufts: Sequence[str]) -> Resolved:
        """fit.cpp's ``set_ngl_tensor_split_tbo``: -ngl, -ts and the overrides of ``layers``."""
        nd = len(layers)
        ngl = sum(d.n_layer for d in layers)
        il0 = self.hp_ngl + 1 - ngl
        overrides: list[tuple[str, str]] = []
        for dev, buft in zip(layers, overflow_bufts, strict=True):
            il0 += dev.n_full
            for il in range(il0, il0 + dev.n_part):
                fraction: Fraction = dev.overflow if il == il0 else "moe"
                overrides.append((_OVERFLOW_PATTERNS[fraction].format(il=il), buft if il == il0 else "CPU"))
            il0 += dev.n_part
        splits = tuple(float(d.n_layer) for d in layers) if nd > 1 else ()
        return dataclasses.replace(self.rv, n_gpu_layers=ngl, splits=splits, fit_overrides=tuple(overrides))

    def used_for(self, layers: Sequence[DeviceLayers], overflow_bufts: Sequence[str]) -> tuple[int, ...]:
        return self.measure(self.placed(layers, overflow_bufts)).used


def _margins(config: ServerConfig, n_dev: int) -> list[int]:
    """``-fitt`` per device in bytes: one value is broadcast; a list sets the first devices
    and leaves the others at the default 1024 MiB (common/arg.cpp)."""
    targets = config.fit_target_mib or (_DEFAULT_MARGIN_MIB,)
    n = max(1, n_dev)
    if len(targets) == 1:
        return [targets[0] * MiB] * n
    return [t * MiB for t in (list(targets) + [_DEFAULT_MARGIN_MIB] * n)[:n]]


def _is_default_ngl(config: ServerConfig) -> bool:
    return config.n_gpu_layers is None or config.n_gpu_layers == -1


def fit(
    model: ModelInfo,
    config: ServerConfig,
    rv: Resolved,
    lay: Layout,
    n_ctx_req: int,
    host_bytes: int | None,
) -> FitResult:
    """Run common_params_fit_impl for one configuration.

    Args:
        model: the GGUF header.
        config: the parsed command line.
        rv: the resolved configuration, refusals applied (``rv.device_free`` is the free
            memory of each GPU as llama.cpp reads it).
        lay: the model's layout.
        n_ctx_req: the context the command asks for (0 = not given or ``-c 0``).
        host_bytes: without GPUs, the host's total RAM (what fit.cpp compares against).

    Returns:
        The context and placement llama-server loads with. ``failed`` means llama-server
        logs "failed to fit params" and loads what it has (a context fit.cpp shrank on
        the way stays shrunk).
    """
    n_streams = rv.n_stream
    n_ctx_auto = n_ctx_req == 0
    n_ctx_max = model.n_ctx_train * n_streams
    gpus = rv.gpu_names
    if (not gpus and host_bytes is None) or (gpus and len(rv.device_free) != len(gpus)):
        return _not_simulated(model, config, rv, n_ctx_req)
    hp_ngl = model.n_layer + (model.n_layer_nextn if "draft-mtp" in (config.spec_type or "") else 0)
    solver = _Solver(model, config, rv, lay, n_ctx_max if n_ctx_auto else n_ctx_req, hp_ngl)
    notes: list[str] = []
    try:
        status = _fit_steps(solver, host_bytes, n_ctx_auto, notes)
    except _GiveUp as exc:
        notes.append(f"--fit gives up ({exc}); llama-server starts with the command's own placement")
        status = "failed"
    return FitResult(status, solver.n_ctx, solver.rv, tuple(notes), solver.layers)


def _not_simulated(model: ModelInfo, config: ServerConfig, rv: Resolved, n_ctx_req: int) -> FitResult:
    n_max = model.n_ctx_train * rv.n_stream
    if n_ctx_req == 0 and config.n_ctx == 0:
        note = (
            f"-c 0: the full trained context ({model.n_ctx_train} per stream) is used; "
            "--fit does not shrink it"
        )
    elif n_ctx_req == 0:
        note = (
            f"-c not given: --fit would pick the context from free memory; assumed the full "
            f"trained context fits ({model.n_ctx_train} cells"
            + (f" x {rv.n_stream} streams" if rv.n_stream > 1 else "")
            + ")"
        )
    else:
        return FitResult("not_simulated", n_ctx_req, rv, ())
    return FitResult("not_simulated", n_max, rv, (note,))


def _fit_steps(s: _Solver, host_bytes: int | None, n_ctx_auto: bool, notes: list[str]) -> FitStatus:
    """Steps 1 to 4; raises :class:`_GiveUp` where fit.cpp throws."""
    nd = len(s.rv.gpu_names)
    margins = _margins(s.config, nd)
    full = s.measure()
    if nd == 0:
        assert host_bytes is not None
        free = [host_bytes]
        used = [full.host]
    else:
        free = list(s.rv.device_free)
        used = list(full.used)
    if all(f - u >= m for f, u, m in zip(free, used, margins, strict=False)):
        note = _unchanged_note(s, free, used, nd)
        if note:
            notes.append(note)
        return "unchanged"
    shrunk = _shrink_context(s, full, free, used, margins, n_ctx_auto, notes)
    if shrunk and nd <= 1:
        return "context"
    if nd == 0:
        raise _GiveUp("the model does not fit into system memory by reducing the context")
    _check_layer_fit_allowed(s.config, nd)
    targets = [f - m for f, m in zip(free, margins, strict=True)]
    _fill_layers(s, targets)
    notes.append("--fit: " + placement_summary(s.model, s.config, s.rv, s.n_ctx))
    return "layers"


def _unchanged_note(s: _Solver, free: Sequence[int], used: Sequence[int], nd: int) -> str | None:
    where = "GPU memory" if nd else "host memory"
    left = f"{format_whole_mib(sum(free) - sum(used))} of {format_whole_mib(sum(free))} {where} free"
    if s.config.n_ctx is None:
        return f"-c not given: --fit keeps the full trained context ({s.n_ctx} cells): it leaves {left}"
    return f"--fit changes nothing: the command leaves {left}" if nd else None


def _shrink_context(
    s: _Solver,
    full: _Measured,
    free: Sequence[int],
    used: Sequence[int],
    margins: Sequence[int],
    n_ctx_auto: bool,
    notes: list[str],
) -> bool:
    """Step 2: a smaller context when ``-c`` is not given; True when it is enough."""
    nd = len(s.rv.gpu_names)
    surplus = sum(free) - sum(used) - sum(margins[: max(nd, 1)])
    if surplus >= 0 or not n_ctx_auto:
        return False
    n_streams = s.rv.n_stream
    n_ctx_max = s.model.n_ctx_train * n_streams
    if s.config.n_ctx == 0:
        return False  # -c 0: the user asked for the full context (fit.cpp's UINT32_MAX minimum)
    n_ctx_min = s.config.fit_ctx * n_streams
    if n_ctx_max <= n_ctx_min:
        return False
    target = sum(free) - sum(margins[: max(nd, 1)])
    if nd > 1:
        ngl = s.hp_ngl if _is_default_ngl(s.config) else min(s.rv.n_gpu_layers, s.hp_ngl)
        per_layer = sum(full.model) // max(1, ngl)
        target -= (nd + 1) * per_layer // (6 if s.model.n_expert else 2)
    s.n_ctx = n_ctx_min
    low = s.measure()
    used_min = low.host if nd == 0 else sum(low.used)
    used_max = sum(used)
    if target <= used_min:
        notes.append(
            f"-c not given: even the --fit minimum ({n_ctx_min} cells) does not leave "
            f"{format_whole_mib(sum(margins[: max(nd, 1)]))} free"
        )
        return False
    n_ctx = n_ctx_min + (n_ctx_max - n_ctx_min) * (target - used_min) // (used_max - used_min)
    align = 256 * n_streams
    s.n_ctx = max(n_ctx - n_ctx % align, n_ctx_min)
    where = "GPU memory" if nd else "host memory"
    notes.append(
        f"-c not given: --fit shrinks the context from {n_ctx_max} to {s.n_ctx} cells to keep "
        f"{format_whole_mib(sum(margins[: max(nd, 1)]))} of {format_whole_mib(sum(free))} {where} free"
    )
    return True


def _check_layer_fit_allowed(config: ServerConfig, nd: int) -> None:
    """fit.cpp only moves what the user left at its default."""
    if not _is_default_ngl(config):
        raise _GiveUp(f"-ngl is set by the user ({config.n_gpu_layers})")
    if nd > 1 and any(config.tensor_split):
        raise _GiveUp("-ts is set by the user")
    if nd > 1 and config.split_mode == "row":
        raise _GiveUp("-sm row: changing the weight allocation is not implemented")
    if user_overrides(config):
        raise _GiveUp("tensor overrides (-ot, --cpu-moe, --n-cpu-moe) are set by the user")


def _fill_layers(s: _Solver, targets: Sequence[int]) -> None:
    """Steps 3 and 4: layers per device, back to front, then experts front to back."""
    nd = len(targets)
    has_experts = s.model.n_expert > 0
    surplus_cpu_moe = 0
    if has_experts:
        moe_rv = dataclasses.replace(s.rv, fit_overrides=((_MOE_ALL, "CPU"),))
        moe = s.measure(moe_rv)
        free = s.rv.device_free
        surplus_cpu_moe = sum(free[i] - moe.used[i] - (free[i] - targets[i]) for i in range(nd))
    bufts = ["CPU"] * nd
    layers = [DeviceLayers() for _ in range(nd)]
    mem = list(s.used_for(layers, bufts))
    for i in range(nd - 1, -1, -1):
        layers, mem = _fill_device(s, i, layers, mem, bufts, targets, has_experts)
    if has_experts and surplus_cpu_moe > 0:
        layers, bufts = _convert_experts(s, layers, mem, bufts, targets)
    s.rv = s.placed(layers, bufts)
    s.layers = tuple(layers)


def _fill_device(
    s: _Solver,
    i: int,
    layers: list[DeviceLayers],
    mem: list[int],
    bufts: Sequence[str],
    targets: Sequence[int],
    has_experts: bool,
) -> tuple[list[DeviceLayers], list[int]]:
    """Step 3 for device ``i``: as many (dense) layers as fit, by false position."""
    nd = len(layers)
    unassigned = s.hp_ngl + 1 - sum(layers[j].n_layer for j in range(i + 1, nd))
    high = list(layers)
    n_part = (unassigned if i < nd - 1 else unassigned - 1) if has_experts else 0
    high[i] = DeviceLayers(unassigned, n_part)
    if high[i].n_layer == 0:
        return layers, mem
    mem_high = list(s.used_for(high, bufts))
    if mem_high[i] <= targets[i]:
        return high, mem_high
    delta = high[i].n_layer - layers[i].n_layer
    while delta > 1:
        step = delta * (targets[i] - mem[i]) // (mem_high[i] - mem[i])
        step = min(max(step, 1), delta - 1)
        test = list(layers)
        cur = test[i]
        part = cur.n_part
        if has_experts:
            part += step - 1 if i == nd - 1 and cur.n_part == 0 else step
        test[i] = DeviceLayers(cur.n_layer + step, part, cur.overflow)
        mem_test = list(s.used_for(test, bufts))
        if mem_test[i] <= targets[i]:
            layers, mem = test, mem_test
        else:
            high, mem_high = test, mem_test
        delta = high[i].n_layer - layers[i].n_layer
    return layers, mem


def _convert_experts(
    s: _Solver,
    layers: list[DeviceLayers],
    mem: list[int],
    bufts: list[str],
    targets: Sequence[int],
) -> tuple[list[DeviceLayers], list[str]]:
    """Step 4: turn dense-only layers back into full ones, front to back."""
    nd = len(layers)
    dense_start = nd
    for i in range(nd - 1, -1, -1):
        if layers[i].n_layer > 0:
            dense_start = i
            continue
        break
    i = 0
    while i <= dense_start < nd:
        layers, mem, dense_start = _convert_into(s, i, layers, mem, bufts, targets, dense_start)
        layers, mem, bufts, dense_start = _one_more_layer(s, i, layers, mem, bufts, targets, dense_start)
        i += 1
    return layers, bufts


def _convert_into(
    s: _Solver,
    i: int,
    layers: list[DeviceLayers],
    mem: list[int],
    bufts: Sequence[str],
    targets: Sequence[int],
    dense_start: int,
) -> tuple[list[DeviceLayers], list[int], int]:
    """Step 4 for device ``i``: as many full layers as fit, taken from the dense-only ones."""
    nd = len(layers)
    high = list(layers)
    for j in range(dense_start, nd):
        move = high[j].n_layer if j < nd - 1 else high[j].n_layer - 1
        high[i] = DeviceLayers(high[i].n_layer + move, high[i].n_part, high[i].overflow)
        high[j] = DeviceLayers(high[j].n_layer - move, 0, high[j].overflow)
    mem_high = list(s.used_for(high, bufts))
    if mem_high[i] <= targets[i]:
        return high, mem_high, nd - 1
    delta = high[i].n_full - layers[i].n_full
    while delta > 1:
        step = delta * (targets[i] - mem[i]) // (mem_high[i] - mem[i])
        step = min(max(step, 1), delta - 1)
        test = list(layers)
        start_test = dense_start
        converted = 0
        while start_test < nd:
            n = min(step - converted, test[start_test].n_part)
            src = test[start_test]
            test[start_test] = DeviceLayers(src.n_layer - n, src.n_part - n, src.overflow)
            test[i] = DeviceLayers(test[i].n_layer + n, test[i].n_part, test[i].overflow)
            converted += n
            if test[start_test].n_part > 0:
                break
            start_test += 1
        mem_test = list(s.used_for(test, bufts))
        if mem_test[i] <= targets[i]:
            layers, mem, dense_start = test, mem_test, start_test
        else:
            high, mem_high = test, mem_test
        delta = high[i].n_full - layers[i].n_full
    return layers, mem, dense_start


def _one_more_layer(
    s: _Solver,
    i: int,
    layers: list[DeviceLayers],
    mem: list[int],
    bufts: list[str],
    targets: Sequence[int],
    dense_start: int,
) -> tuple[list[DeviceLayers], list[int], list[str], int]:
    """Step 4's "fit at least part of one more layer": its attention, up and gate tensors."""
    nd = len(layers)
    if layers[dense_start].n_layer <= (0 if i < nd - 1 else 1):
        return layers, mem, bufts, dense_start
    test = list(layers)
    src = test[dense_start]
    test[dense_start] = DeviceLayers(src.n_layer - 1, src.n_part - 1, src.overflow)
    start_test = dense_start + 1 if test[dense_start].n_part == 0 else dense_start
    bufts_test = list(bufts)
    if i < nd - 1:
        bufts_test[i] = s.rv.gpu_names[i + 1]

    def fits(fraction: Fraction) -> tuple[list[DeviceLayers], list[int]] | None:
        cand = list(test)
        cand[i] = DeviceLayers(test[i].n_layer + 1, test[i].n_part + 1, fraction)
        used = list(s.used_for(cand, bufts_test))
        if used[i] < targets[i] and (i + 1 == nd or used[i + 1] < targets[i + 1]):
            return cand, used
        return None

    up = fits("up")
    if up is not None:
        layers, mem, bufts, dense_start = up[0], up[1], bufts_test, start_test
        gate = fits("gate")
        if gate is not None:
            layers, mem = gate
        return layers, mem, bufts, dense_start
    attn = fits("attn")
    if attn is not None:
        return attn[0], attn[1], bufts_test, start_test
    return layers, mem, bufts, dense_start


def placement_summary(model: ModelInfo, config: ServerConfig, rv: Resolved, n_ctx: int) -> str:
    """"llama-server will start with N layers on Vulkan0, M on the CPU, the experts of
    layers a..b on the CPU, -c X"."""
    counts = dict(layers_per_device(rv, model))
    parts = [f"{n} layers on {dev}" for dev, n in counts.items() if dev != "Host"]
    if "Host" in counts:
        parts.append(f"{counts['Host']} on the CPU")
    cpu_experts = cpu_expert_layers(model, placed_groups(model, config, rv), rv)
    if cpu_experts:
        parts.append(f"the experts of {_ranges(cpu_experts)} on the CPU")
    return f"llama-server will start with {', '.join(parts) or 'everything on the CPU'}, -c {n_ctx}"


def _ranges(layers: Sequence[int]) -> str:
    spans: list[tuple[int, int]] = []
    for il in layers:
        if spans and spans[-1][1] == il - 1:
            spans[-1] = (spans[-1][0], il)
        else:
            spans.append((il, il))
    text = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in spans)
    return ("layer " if len(layers) == 1 else "layers ") + text
