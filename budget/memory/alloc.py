"""Allocation: which device holds which weights, KV cells, recurrent state and outputs."""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from kvwall.budget.cachetypes import row_bytes
from kvwall.budget.config import ServerConfig
from kvwall.budget.memory.compute import GpuOffload, compute_buffers
from kvwall.budget.memory.layout import Layout, pad
from kvwall.budget.memory.resolve import Context, Resolved, context
from kvwall.budget.memory.tensors import (
    INPUT,
    LLM_FFN_EXPS_REGEX,
    Group,
    TensorGroups,
    tensor_groups,
)
from kvwall.monitors.gguf import ModelInfo


@dataclass(frozen=True)
class Alloc:
    """Bytes per buffer kind and device for one context size."""

    ctx: Context
    kv_cells_swa: int
    kv_k: int
    kv_v: int
    kv_swa: int
    recurrent: int
    weights: dict[str, int]
    kv: dict[str, int]
    rs: dict[str, int]
    compute: dict[str, int]
    output: int
    kv_per_cell: float

    def device_total(self, name: str) -> int:
        """Weights, KV, recurrent state and compute on device ``name``."""
        return (
            self.weights.get(name, 0)
            + self.kv.get(name, 0)
            + self.rs.get(name, 0)
            + self.compute.get(name, 0)
        )


@dataclass(frozen=True)
class _KvCache:
    cells_swa: int
    k: int
    v: int
    swa: int
    per_cell: int
    by_device: dict[str, int]
    host_layer: int  # K + V of the largest layer cached on the host (0: none)


@dataclass(frozen=True)
class _RecurrentState:
    total: int
    by_device: dict[str, int]


def _f32(x: float) -> float:
    """``x`` rounded to a C ``float``, as llama.cpp computes the split points."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


@lru_cache(maxsize=256)
def _split_points(shares: tuple[float, ...]) -> tuple[float, ...]:
    """llama_model::load_tensors' cumulative, normalised split points (in ``float``)."""
    acc = 0.0
    points = []
    for share in shares:
        acc = _f32(acc + _f32(share))
        points.append(acc)
    return tuple(_f32(p / acc) if acc else 0.0 for p in points)


def _shares(rv: Resolved) -> tuple[float, ...]:
    """-ts (or --fit's layer counts), else the free memory of each device, else equal."""
    return _shares_of(rv.splits, rv.device_free, len(rv.gpu_names))


@lru_cache(maxsize=1024)
def _shares_of(splits: tuple[float, ...], free: tuple[int, ...], n_gpus: int) -> tuple[float, ...]:
    if splits and any(splits):
        return splits
    if free and len(free) == n_gpus:
        return tuple(float(f) for f in free)
    return (1.0,) * n_gpus


def layer_device(rv: Resolved, model: ModelInfo, il: int) -> str:
    """llama_model::load_tensors' layer -> device rule (il == n_layer_all is the output)."""
    return layer_devices(rv, model)[il]


def layer_devices(rv: Resolved, model: ModelInfo) -> tuple[str, ...]:
    """The device of every layer, the output layer (index ``n_layer_all``) last."""
    n_all = model.n_layer_all
    if not rv.gpu_names or rv.n_gpu_layers <= 0:
        return ("Host",) * (n_all + 1)
    return _layer_devices(rv.gpu_names, rv.n_gpu_layers, _shares(rv), n_all)


def layers_per_device(rv: Resolved, model: ModelInfo) -> tuple[tuple[str, int], ...]:
    """(device, layers) for the GPUs in llama.cpp's order, then ``Host``; the output layer
    counts; devices without a layer are left out."""
    devs = layer_devices(rv, model)
    return tuple((d, devs.count(d)) for d in (*rv.gpu_names, "Host") if d in devs)


@lru_cache(maxsize=1024)
def _layer_devices(gpus: tuple[str, ...], n_gpu_layers: int, shares: tuple[float, ...], n_all: int
                   ) -> tuple[str, ...]:
    start = max(n_all + 1 - n_gpu_layers, 0)
    act = min(n_gpu_layers, n_all + 1)
    points = _split_points(shares)
    out = []
    for il in range(n_all + 1):
        if il < start or il - start >= act:
            out.append("Host")
            continue
        # std::upper_bound: the first device whose split point exceeds the layer's position
        index = bisect.bisect_right(points, _f32((il - start) / act))
        out.append(gpus[min(index, len(gpus) - 1)])
    return tuple(out)


def user_overrides(config: ServerConfig) -> tuple[tuple[str, str], ...]:
    """The tensor overrides of the command line: ``-ot`` patterns, then ``-cmoe``, then
    ``-ncmoe``. common/arg.cpp appends them in command-line order, which the parsed
    configuration does not keep; that matters only when an ``-ot`` sends experts to a GPU."""
    out: list[tuple[str, str]] = []
    for item in config.override_tensor:
        pattern, _, buft = item.partition("=")
        out.append((pattern, buft))
    if config.cpu_moe:
        out.append((LLM_FFN_EXPS_REGEX, "CPU"))
    for i in range(config.n_cpu_moe):
        out.append((rf"blk\.{i}{LLM_FFN_EXPS_REGEX}", "CPU"))
    return tuple(out)


def _buft_device(buft: str, rv: Resolved) -> str | None:
    upper = buft.upper()
    if upper.startswith("CPU") or upper.endswith("_HOST"):
        return "Host"
    for name in rv.gpu_names:
        if buft == name or buft.startswith(name + "_"):
            return name
    return None


def placed_groups(model: ModelInfo, config: ServerConfig, rv: Resolved) -> tuple[tuple[Group, str], ...]:
    """Each group of tensors llama-server loads and the device that holds it (``Host`` for
    CPU buffers): its layer's device, unless an override (``-ot``, ``-cmoe``, ``-ncmoe``, or
    ``--fit``'s own) sends it elsewhere. ``token_embd`` stays on the host; tensors outside
    the layers go with the output layer."""
    overrides: Sequence[tuple[str, str]] = ()
    if rv.gpu_names:
        overrides = rv.fit_overrides if rv.fit_overrides is not None else user_overrides(config)
    load_mtp = "draft-mtp" in (config.spec_type or "")
    devs = layer_devices(rv, model)
    groups = tensor_groups(model, overrides, load_mtp)
    key = (id(groups), id(devs), rv.gpu_names)
    hit = _placed.get(key)
    if hit is not None and hit[0] is groups and hit[1] is devs:
        return hit[2]  # the same groups on the same layer devices: the context search's probes
    placed = []
    for g in groups.groups:
        dev = "Host" if g.slot == INPUT else devs[g.slot]
        if g.target is not None:
            dev = _buft_device(g.target, rv) or dev
        placed.append((g, dev))
    out = tuple(placed)
    if len(_placed) >= _PLACED_CACHE:
        _placed.clear()
    _placed[key] = (groups, devs, out)
    return out


_PLACED_CACHE = 256
_placed: dict[tuple[int, int, tuple[str, ...]], tuple[TensorGroups, tuple[str, ...], tuple[tuple[Group, str], ...]]] = {}


def cpu_expert_layers(model: ModelInfo, placed: Sequence[tuple[Group, str]], rv: Resolved) -> list[int]:
    """Layers on a GPU whose expert tensors are on the host."""
    n_all = model.n_layer_all
    return sorted({
        g.slot for g, dev in placed
        if g.experts and dev == "Host" and 0 <= g.slot < n_all and layer_device(rv, model, g.slot) != "Host"
    })  # fmt: skip


_MMAP_MODES = (None, "auto", "mmap", "mmap+mlock")


def _weights(model: ModelInfo, config: ServerConfig, rv: Resolved,
             placed: Sequence[tuple[Group, str]]) -> dict[str, int]:
    """Model buffer bytes per device. With mmap (the default) the host's buffer of each
    file is the mapped range from its first to its last host tensor, gaps included
    (llama_model_loader::get_mapping_range), as llama.cpp reports it."""
    out: dict[str, int] = {}
    spans: dict[int, tuple[int, int]] = {}
    mmap = config.load_mode in _MMAP_MODES
    for g, dev in placed:
        if dev == "Host" and mmap:
            for shard, first, end in g.spans:
                a, b = spans.get(shard, (first, end))
                spans[shard] = (min(a, first), max(b, end))
        else:
            out[dev] = out.get(dev, 0) + g.n_bytes
    if spans:
        out["Host"] = out.get("Host", 0) + sum(end - first for first, end in spans.values())
    groups = tensor_groups(model, (), "draft-mtp" in (config.spec_type or ""))
    output_dev = layer_device(rv, model, model.n_layer_all)
    if not groups.has_output and output_dev != "Host" and groups.embd_bytes:
        # tied embeddings: llama.cpp duplicates token_embd onto the output device
        out[output_dev] = out.get(output_dev, 0) + groups.embd_bytes
    return out


def _swa_cells(model: ModelInfo, config: ServerConfig, rv: Resolved, lay: Layout, ctx: Context) -> int:
    """Cells per stream of the SWA cache (0 without SWA layers)."""
    if not lay.has_swa_cache:
        return 0
    if config.swa_full:
        return ctx.n_ctx_seq
    n_seq_for_swa = rv.n_seq if rv.unified else 1
    return pad(min(ctx.n_ctx_seq, model.n_swa * n_seq_for_swa + ctx.n_ubatch))


def _kv_cache(model: ModelInfo, config: ServerConfig, rv: Resolved, lay: Layout, ctx: Context) -> _KvCache:
    """The K and V tensors of every attention layer, and where they live."""
    tk, tv = config.cache_type_k, config.cache_type_v
    v_trans = rv.fa == "off"  # decided before the auto probe
    cells_swa = _swa_cells(model, config, rv, lay, ctx)
    by_device: dict[str, int] = {}
    kv_k = kv_v = kv_swa = 0
    per_cell = host_layer = 0
    for il, swa, kw, vw in zip(lay.kv_layers, lay.swa, lay.k_width, lay.v_width, strict=True):
        cells = cells_swa if swa else ctx.n_ctx_seq
        k_row = row_bytes(tk, kw)
        v_row = 0 if lay.is_mla else row_bytes(tv, lay.v_width_max if v_trans else vw)
        k = rv.n_stream * cells * k_row
        v = rv.n_stream * cells * v_row
        if not swa:
            per_cell += rv.n_stream * (k_row + v_row)
        kv_k += k
        kv_v += v
        if swa:
            kv_swa += k + v
        dev = layer_device(rv, model, il) if config.kv_offload else "Host"
        by_device[dev] = by_device.get(dev, 0) + k + v
        if dev == "Host":
            host_layer = max(host_layer, k + v)
    return _KvCache(cells_swa, kv_k, kv_v, kv_swa, per_cell, by_device, host_layer)


def _recurrent_state(model: ModelInfo, config: ServerConfig, rv: Resolved, lay: Layout) -> _RecurrentState:
    """The f32 R and S rows of every recurrent layer (one per sequence and rollback step)."""
    by_device: dict[str, int] = {}
    total = 0
    rows = max(1, rv.n_seq) * (1 + rv.n_rs_seq)
    for il in lay.recurrent_layers:
        b = (lay.n_embd_r + lay.n_embd_s) * rows * 4
        total += b
        dev = layer_device(rv, model, il) if config.kv_offload else "Host"
        by_device[dev] = by_device.get(dev, 0) + b
    return _RecurrentState(total, by_device)


def _gpu_offload(model: ModelInfo, config: ServerConfig, rv: Resolved, host_kv: int,
                 placed: Sequence[tuple[Group, str]]) -> GpuOffload:
    """Which GPUs run layers, the largest host weight the first GPU runs, pipelining."""
    if not rv.gpu_names:
        return GpuOffload(frozenset(), 0, pipeline=False)
    devices = set(layer_devices(rv, model)[:-1])  # the output alone computes ~0
    host_weights = max((g.largest for g, dev in placed if dev == "Host" and g.slot != INPUT), default=0)
    overrides = rv.fit_overrides if rv.fit_overrides is not None else user_overrides(config)
    pipeline = (
        len(rv.gpu_names) > 1
        and rv.n_gpu_layers >= model.n_layer_all + 1
        and config.split_mode in (None, "layer")
        and config.kv_offload
        and not overrides
    )
    return GpuOffload(frozenset(devices - {"Host"}), host_weights, pipeline, host_kv)


def allocate(model: ModelInfo, config: ServerConfig, rv: Resolved, lay: Layout, n_ctx_req: int) -> Alloc:
    """Every buffer llama-server allocates for a requested context of ``n_ctx_req`` cells."""
    ctx = context(model, config, rv, n_ctx_req)
    kv = _kv_cache(model, config, rv, lay, ctx)
    rs = _recurrent_state(model, config, rv, lay)
    placed = placed_groups(model, config, rv)
    offload = _gpu_offload(model, config, rv, kv.host_layer, placed)
    compute = compute_buffers(model, rv, lay, ctx, kv.cells_swa, offload)
    # llama_context::output_reserve(n_seq_max): logits (and embeddings) for n_seq_max rows
    n_out = rv.n_seq
    output = model.n_vocab * n_out * 4
    if config.embedding:
        output += model.n_embd * n_out * 4
    return Alloc(
        ctx=ctx,
        kv_cells_swa=kv.cells_swa,
        kv_k=kv.k,
        kv_v=kv.v,
        kv_swa=kv.swa,
        recurrent=rs.total,
        weights=_weights(model, config, rv, placed),
        kv=kv.by_device,
        rs=rs.by_device,
        compute=compute,
        output=output,
        kv_per_cell=float(kv.per_cell),
    )
