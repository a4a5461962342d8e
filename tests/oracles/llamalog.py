"""Pure parser of llama-server's load log (stderr at ``-lv 4``): what it really allocated.

``parse_load_log(text) -> LoadLog``. The server prints every buffer it allocates (model
weights, KV cache, recurrent state, compute, output) as MiB with two decimals; this module
collects them, with the context parameters llama.cpp resolved (``n_ctx`` after padding,
``n_ctx_seq``, slots, flash attention as requested and as resolved) and the error lines of
configurations it refused. It never raises on odd input: unknown lines are ignored and
fields it did not find stay ``None`` / empty.

On a GPU build every buffer is keyed by the buffer name llama.cpp prints: ``Vulkan0``,
``CUDA0`` (device memory), ``Vulkan_Host``, ``CUDA_Host`` (pinned host memory),
``CPU_Mapped``, ``CPU_REPACK``, ``CPU`` (host). The devices the model was loaded on
(``using device ...``), which device each layer went to (``layer N assigned to device``,
printed at ``-lv 5`` only) and what ``--fit`` decided (``FitLog``) come with them.

Line prefixes (``M.SS.mmm.uuu I ``), ANSI colours, the router's ``[port]`` prefix, the
server's ``srv  ``/``slot ``/``cmn  `` tags and ``--log-jsonl`` wrapping are removed before
matching.

Sections: every model load starts at ``llama_model_loader: loaded meta data``. The first
one is the served model and fills the ``LoadLog``; later ones (a draft model for
speculative decoding) become ``extra_loads``. Lines before the first load (argument
errors) only contribute errors, warnings and the fit breakdown table. At ``-lv 5`` the
``--fit`` solver's trial loads are printed too; every load printed before ``--fit`` says
how long it took is one of those and is dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "HOST",
    "MIB",
    "BreakdownRow",
    "DeviceBuffers",
    "DeviceLine",
    "FitDeviceLine",
    "FitLog",
    "FitOutcome",
    "FitProjection",
    "KVCacheLine",
    "LoadLog",
    "RecurrentLine",
    "buffer_device",
    "parse_load_log",
    "strip_line",
]

MIB = 1024 * 1024
"""Bytes in the MiB llama.cpp prints."""

HOST = "Host"
"""The memory-breakdown name of everything in host memory (CPU and pinned buffers)."""

# host buffer types besides CPU* and *_Host (ggml-cpu's extra buffer types)
_HOST_BUFFERS = frozenset({"AMX", "KLEIDIAI"})


def buffer_device(buffer: str) -> str:
    """The memory a buffer of this name is in: the device (``Vulkan0``, ``CUDA1``), or
    ``HOST`` for host buffers (``CPU``, ``CPU_Mapped``, ``CPU_REPACK``, pinned
    ``Vulkan_Host`` / ``CUDA_Host``), as llama.cpp's memory breakdown groups them."""
    if buffer.startswith("CPU") or buffer.endswith("_Host") or buffer in _HOST_BUFFERS:
        return HOST
    return buffer


@dataclass(frozen=True)
class DeviceBuffers:
    """What one device (or the host) holds, in MiB as printed (sums of 0.01 MiB lines).

    Attributes:
        model_mib: weights.
        kv_mib: KV cache.
        rs_mib: recurrent state.
        compute_mib: compute buffers.
        output_mib: the logits / embeddings output buffer.
    """

    model_mib: float = 0.0
    kv_mib: float = 0.0
    rs_mib: float = 0.0
    compute_mib: float = 0.0
    output_mib: float = 0.0

    @property
    def context_mib(self) -> float:
        """KV + recurrent state + output: the memory breakdown's ``context`` column."""
        return round(self.kv_mib + self.rs_mib + self.output_mib, 2)

    @property
    def total_mib(self) -> float:
        """Everything on it."""
        return round(self.model_mib + self.context_mib + self.compute_mib, 2)


@dataclass(frozen=True)
class KVCacheLine:
    """One ``llama_kv_cache: size = ...`` line (iSWA models print two).

    Attributes:
        size_mib: K + V in MiB, as printed (two decimals).
        cells: KV cells per stream (``kv_size``).
        layers: layers holding KV in this cache.
        n_seq_max: sequences (slots) this cache serves.
        n_stream: KV streams (1 when unified, else n_seq_max).
        type_k, type_v: ggml type names (``f16``, ``q8_0``...).
        k_mib, v_mib: K and V totals in MiB, as printed (V is 0.00 for MLA).
        role: ``"swa"`` / ``"non-swa"`` after the iSWA ``creating ... KV cache`` line,
            else ``""``.
        announced_cells: the cell count of that ``creating ...`` line (None without it).
    """

    size_mib: float
    cells: int
    layers: int
    n_seq_max: int
    n_stream: int
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float
    role: str = ""
    announced_cells: int | None = None

    @property
    def total_cells(self) -> int:
        """Cells over all streams (``cells * n_stream``)."""
        return self.cells * self.n_stream


@dataclass(frozen=True)
class RecurrentLine:
    """One ``llama_memory_recurrent: size = ...`` line (recurrent / hybrid state).

    Attributes:
        size_mib: R + S + P in MiB, as printed.
        cells: recurrent cells (one per sequence).
        layers: the model's layer count (all layers, not only the recurrent ones).
        n_seq: sequences.
        n_rs_seq: rollback snapshots per sequence (0 when the build does not print it).
        type_r, type_s: ggml types of the conv (R) and SSM (S) states.
        r_mib, s_mib, p_mib: R, S and rollback-snapshot (P) sizes in MiB, as printed.
    """

    size_mib: float
    cells: int
    layers: int
    n_seq: int
    n_rs_seq: int
    type_r: str
    r_mib: float
    type_s: str
    s_mib: float
    p_mib: float = 0.0


@dataclass(frozen=True)
class BreakdownRow:
    """One row of a memory-breakdown table (integer MiB, rounded down by llama.cpp).

    Attributes:
        name: ``CUDA0 (H100 80GB HBM3)``, ``Host``, or a buffer type name.
        total_mib, free_mib, unaccounted_mib: device rows only (None on Host/other rows).
        self_mib: model + context + compute.
        model_mib, context_mib, compute_mib: the parts.
    """

    name: str
    total_mib: int | None
    free_mib: int | None
    self_mib: int
    model_mib: int
    context_mib: int
    compute_mib: int
    unaccounted_mib: int | None


@dataclass(frozen=True)
class DeviceLine:
    """One ``llama_model_load_from_file_impl: using device ...`` line.

    Attributes:
        name: the backend device, ``Vulkan0``, ``CUDA1``.
        description: ``llvmpipe (LLVM 15.0.6, 256 bits)``, ``NVIDIA H100 80GB HBM3``.
        free_mib: free memory the device reported when the model was loaded (integer MiB,
            rounded down).
    """

    name: str
    description: str
    free_mib: int


FitOutcome = Literal["success", "failure", "error"]
"""``common_fit_params``'s verdict: it fit (possibly changing nothing), it gave up
(``failed to fit params``: the server starts with its arguments as given), or it hit an
error."""


@dataclass(frozen=True)
class FitProjection:
    """One device row of ``projected memory use with initial parameters [MiB]`` (several
    devices only): what the command as given would use. Integer MiB, rounded down."""

    name: str
    description: str
    total_mib: int
    used_mib: int
    free_mib: int
    target_mib: int


@dataclass(frozen=True)
class FitDeviceLine:
    """One ``- <device>: N layers[ (M overflowing)], U MiB used, F MiB free`` line of the
    ``--fit`` layer solver. The last one printed for a device is its decision.

    Attributes:
        name, description: as in ``DeviceLine``.
        n_layer: layers on the device (``ngl_per_device[id].n_layer``; the output layer
            counts as one).
        n_part: of those, layers whose MoE tensors overflow to the CPU (0 on dense lines).
        used_mib, free_mib: projected use, and the free memory it leaves (can be < 0).
    """

    name: str
    description: str
    n_layer: int
    n_part: int
    used_mib: int
    free_mib: int


@dataclass(frozen=True)
class FitLog:
    """What ``--fit`` (``common_params_fit_impl`` / ``common_fit_params``) printed.

    Attributes:
        ran: ``fitting params to device memory ...`` was printed (``-fit on``).
        outcome: ``"success"``, ``"failure"`` or ``"error"``; None when not printed.
        message: why it failed or erred (``n_gpu_layers already set by user to 99, abort``).
        no_changes: the command fits as given (``... no changes needed``).
        on_host: it planned host memory only (no device: ``MiB of host memory``).
        projected_used_mib, free_mib: ``projected to use U MiB of device (host) memory vs.
            F MiB of free device (total host) memory``, for the command as given.
        initial: per-device rows of that projection (several devices only).
        deficit_mib: ``need to reduce device memory by N MiB`` / ``need to use N MiB less
            in total``.
        n_ctx_user: ``context size set by user to N -> no change``.
        n_ctx_from, n_ctx_to: ``context size reduced from A to B``: B is the context the
            server is started with (``n_ctx`` of all sequences).
        fit_by_context: ``entire model can be fit by reducing context`` (no layer moved).
        targets_mib: ``id=N, target=T MiB`` per device, in device order: memory the
            layers may use on it.
        dense_only_surplus_mib: MoE models: memory left (> 0) or missing (< 0) over all
            devices with every expert tensor on the CPU.
        devices: the final layer-solver line of each device, in device order.
        overflow_types: device index -> what of its first partial MoE layer stays on it
            (``UP``, ``GATE``, ``ATTN``: ``set ngl_per_device[i].(..., overflow_type)``);
            a device not named overflows whole expert tensors.
        seconds: ``fitting params to free memory took S seconds``.
    """

    ran: bool = False
    outcome: FitOutcome | None = None
    message: str | None = None
    no_changes: bool = False
    on_host: bool = False
    projected_used_mib: int | None = None
    free_mib: int | None = None
    initial: tuple[FitProjection, ...] = ()
    deficit_mib: int | None = None
    n_ctx_user: int | None = None
    n_ctx_from: int | None = None
    n_ctx_to: int | None = None
    fit_by_context: bool = False
    targets_mib: tuple[int, ...] = ()
    dense_only_surplus_mib: int | None = None
    devices: tuple[FitDeviceLine, ...] = ()
    overflow_types: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    seconds: float | None = None

    @property
    def n_gpu_layers(self) -> int | None:
        """The ``-ngl`` it set: the layers of every device together (None when the layer
        solver did not run)."""
        return sum(d.n_layer for d in self.devices) if self.devices else None

    @property
    def layers_per_device(self) -> Mapping[str, int]:
        """``{"Vulkan0": 3, "Vulkan1": 2}``: the layers it put on each device."""
        return MappingProxyType({d.name: d.n_layer for d in self.devices})


def _frozen(d: Mapping[str, float] | None = None) -> Mapping[str, float]:
    return MappingProxyType(dict(d or {}))


# the error lines that say *why* a configuration was refused, most specific first
_REFUSAL_REASONS = (
    "Unsupported cache type",
    "does not support different K",
    "quantized V cache requires flash_attn",
    "quantized V cache was requested, but this requires Flash Attention",
    "does not divide n_embd_head",
    "failed to allocate",
    "error loading model",
    "failed to load model",
)


@dataclass(frozen=True)
class LoadLog:
    """What one llama-server start printed. MiB values as printed (0.01 MiB resolution).

    Attributes:
        model_path: the file of ``llama_model_loader: loaded meta data ... from PATH``.
        n_ctx: total KV cells after padding (``llama_context: n_ctx``).
        n_ctx_seq: cells one sequence may use.
        n_seq_max: sequences (slots) of the context.
        n_batch, n_ubatch: logical / physical batch sizes.
        n_ctx_train: the model's training context (``print_info: n_ctx_train``).
        flash_attn: the mode the context was created with: ``"auto"``, ``"enabled"`` or
            ``"disabled"`` (a quantized V cache turns ``auto`` into ``enabled`` first).
        flash_attn_resolved: whether Flash Attention is really used: the
            ``resolve_fused_ops`` verdict for ``auto``; True/False for an explicit
            ``enabled``/``disabled``; None when the log does not say.
        kv_unified: ``kv_unified`` of the context.
        kv_caches: every KV size line of the model's contexts (iSWA: non-SWA first).
        recurrent: every recurrent-state size line.
        model_buffers_mib: ``load_tensors: <buf> model buffer size`` by buffer name.
        kv_buffers_mib: ``KV buffer size`` by buffer name (summed over caches).
        rs_buffers_mib: ``RS buffer size`` by buffer name.
        compute_buffers_mib: ``<buf> compute buffer size`` by buffer name.
        output_buffers_mib: ``llama_context: <buf> output buffer size`` by buffer name.
        n_slots, n_ctx_slot: from the server's ``load_model: initializing`` line.
        offloaded_layers, offloadable_layers: ``load_tensors: offloaded a/b layers to GPU``
            (absent on CPU-only builds).
        errors: ERROR-level lines and known refusal messages (prefix stripped), in order,
            without repeats.
        warnings: WARN-level lines, prefix stripped.
        memory_breakdown: the breakdown table printed after the model loaded (at exit).
        fit_breakdown: the last table printed by ``--fit`` probing before the load.
        devices: the devices the model was loaded on (``using device`` lines), in order.
        layer_devices: layer index -> the device it was assigned to (``-lv 5`` only);
            index ``n_layer`` is the output layer.
        fit: what ``--fit`` printed before the load.
        extra_loads: later model loads in the same log (a ``-md`` draft model).
        n_loads: number of model loads in the log (1 + len(extra_loads), or 0).
    """

    model_path: str | None = None
    n_ctx: int | None = None
    n_ctx_seq: int | None = None
    n_seq_max: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    n_ctx_train: int | None = None
    flash_attn: str | None = None
    flash_attn_resolved: bool | None = None
    kv_unified: bool | None = None
    kv_caches: tuple[KVCacheLine, ...] = ()
    recurrent: tuple[RecurrentLine, ...] = ()
    model_buffers_mib: Mapping[str, float] = field(default_factory=_frozen)
    kv_buffers_mib: Mapping[str, float] = field(default_factory=_frozen)
    rs_buffers_mib: Mapping[str, float] = field(default_factory=_frozen)
    compute_buffers_mib: Mapping[str, float] = field(default_factory=_frozen)
    output_buffers_mib: Mapping[str, float] = field(default_factory=_frozen)
    n_slots: int | None = None
    n_ctx_slot: int | None = None
    offloaded_layers: int | None = None
    offloadable_layers: int | None = None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    memory_breakdown: tuple[BreakdownRow, ...] = ()
    fit_breakdown: tuple[BreakdownRow, ...] = ()
    devices: tuple[DeviceLine, ...] = ()
    layer_devices: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    fit: FitLog = field(default_factory=FitLog)
    extra_loads: tuple[LoadLog, ...] = ()
    n_loads: int = 0

    @property
    def kv_total_mib(self) -> float:
        """Sum of the ``llama_kv_cache: size =`` lines (K + V of every cache)."""
        return round(sum(c.size_mib for c in self.kv_caches), 2)

    @property
    def kv_k_mib(self) -> float:
        """Sum of the K parts of every KV cache."""
        return round(sum(c.k_mib for c in self.kv_caches), 2)

    @property
    def kv_v_mib(self) -> float:
        """Sum of the V parts of every KV cache."""
        return round(sum(c.v_mib for c in self.kv_caches), 2)

    @property
    def recurrent_total_mib(self) -> float:
        """Sum of the recurrent-state size lines."""
        return round(sum(r.size_mib for r in self.recurrent), 2)

    @property
    def model_total_mib(self) -> float:
        """Sum of the model buffers (weights on every device and the host)."""
        return round(sum(self.model_buffers_mib.values()), 2)

    @property
    def compute_total_mib(self) -> float:
        """Sum of the compute buffers."""
        return round(sum(self.compute_buffers_mib.values()), 2)

    @property
    def output_buffer_type(self) -> str | None:
        """The buffer the logits are written to (``Vulkan_Host``, ``CUDA_Host``, ``CPU``)."""
        return next(iter(self.output_buffers_mib), None)

    @property
    def by_device(self) -> Mapping[str, DeviceBuffers]:
        """Every buffer grouped by the memory it is in (``buffer_device``): ``{"Vulkan0":
        ..., "Host": ...}``, devices in name order, the host last."""
        kinds = (
            ("model_mib", self.model_buffers_mib),
            ("kv_mib", self.kv_buffers_mib),
            ("rs_mib", self.rs_buffers_mib),
            ("compute_mib", self.compute_buffers_mib),
            ("output_mib", self.output_buffers_mib),
        )
        sums: dict[str, dict[str, float]] = {}
        for kind, bufs in kinds:
            for name, mib in bufs.items():
                _add(sums.setdefault(buffer_device(name), {}), kind, mib)
        order = sorted(sums, key=lambda d: (d == HOST, _device_order(d)))
        return MappingProxyType({d: DeviceBuffers(**sums[d]) for d in order})

    @property
    def buffer_names(self) -> tuple[str, ...]:
        """Every buffer name of the load (weights, KV, state, compute, output), sorted."""
        names: set[str] = set()
        for bufs in (
            self.model_buffers_mib,
            self.kv_buffers_mib,
            self.rs_buffers_mib,
            self.compute_buffers_mib,
            self.output_buffers_mib,
        ):
            names.update(bufs)
        return tuple(sorted(names))

    @property
    def loaded(self) -> bool:
        """True when the server reached ``load_model: initializing`` (slots ready)."""
        return self.n_slots is not None

    @property
    def refused(self) -> bool:
        """True when the server logged errors and never got its slots ready."""
        return bool(self.errors) and not self.loaded

    @property
    def refusal_reason(self) -> str | None:
        """The error line that says why llama.cpp refused, e.g. ``llama_init_from_model:
        quantized V cache requires flash_attn to be enabled``; the first error when none
        is recognised; None when nothing was refused."""
        if not self.refused:
            return None
        for reason in _REFUSAL_REASONS:
            for line in self.errors:
                if reason in line:
                    return line
        return self.errors[0]


# ---------------------------------------------------------------------------- lines

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# "0.00.123.456 I " (minutes.seconds.ms.us, level letter)
_PREFIX = re.compile(r"^\s*\d+[.:]\d{2}\.\d{3}\.\d{3}\s+([DIWE])\s")
_ROUTER = re.compile(r"^\[\d+\]\s?")
# the server's and common's module tags: "srv    load_model: ...", "slot launch_slot_: ...",
# "cmn  common_init_: ..." (function names are cut to 12 characters there)
_TAG = re.compile(r"^(?:srv|slot|cmn|spec|que|res|mtmd)\s+(?=\S)")
_JSONL_LEVEL = {"info": "I", "warn": "W", "error": "E", "debug": "D"}


def _json_object(line: str) -> dict | None:
    """The ``--log-jsonl`` object on this line, or None."""
    if not line.startswith("{") or '"type"' not in line:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _json_breakdown(obj: dict) -> list[BreakdownRow] | None:
    """Rows of a ``{"type":"fit_memory_breakdown"}`` event, or None for other objects."""
    if obj.get("type") != "fit_memory_breakdown":
        return None
    data = obj.get("data")
    rows = data.get("rows") if isinstance(data, dict) else None
    out: list[BreakdownRow] = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict):
            continue
        try:
            name = str(r.get("name", ""))
            if r.get("kind") == "device" and r.get("description"):
                name = f"{name} ({r['description']})"

            def opt(key: str, r: dict = r) -> int | None:
                return int(r[key]) if key in r else None

            out.append(
                BreakdownRow(
                    name,
                    opt("total"),
                    opt("free"),
                    int(r["self"]),
                    int(r["model"]),
                    int(r["context"]),
                    int(r["compute"]),
                    opt("unaccounted"),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def strip_line(line: str) -> tuple[str, str]:
    """Remove ANSI colours, the router's ``[port]``, the ``M.SS.mmm.uuu L`` prefix and
    the server's module tag from one log line.

    Args:
        line: one raw log line (a ``--log-jsonl`` ``{"type":"log"...}`` object works too).

    Returns:
        ``(level, text)``: level is ``"D"``, ``"I"``, ``"W"``, ``"E"`` or ``""`` when the
        line carries none; text has no prefix, no tag and no trailing whitespace.
    """
    line = _ANSI.sub("", line).rstrip()
    line = _ROUTER.sub("", line)
    level = ""
    obj = _json_object(line)
    if obj is not None and obj.get("type") == "log":
        level = _JSONL_LEVEL.get(str(obj.get("level")), "")
        line = str(obj.get("msg", "")).rstrip()
    m = _PREFIX.match(line)
    if m:
        level = m.group(1)
        line = line[m.end() :]
    line = _TAG.sub("", line.lstrip(), count=1)
    return level, line


_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_MIB = r"\s+=\s+" + _NUM + r" MiB"

_RE_LOAD_START = re.compile(r"^llama_model_loader: loaded meta data with .* from (.+?) \(version")
_RE_CTX_PARAM = re.compile(
    r"^llama_context:\s+(n_ctx|n_ctx_seq|n_ctx_per_seq|n_seq_max|n_batch|n_ubatch|flash_attn|kv_unified)"
    r"\s+=\s+(\S+)$"
)
_RE_CTX_START = re.compile(r"^llama_context: constructing llama_context")
_RE_CTX_TRAIN = re.compile(r"^print_info:\s+n_ctx_train\s+=\s+(\d+)")
_RE_FA_RESOLVED = re.compile(r"^\w+: Flash Attention (enabled|not supported, set to disabled)")
_RE_MODEL_BUF = re.compile(r"^load_tensors:\s+(\S.*?)\s+model buffer size" + _MIB)
_RE_KV_BUF = re.compile(r"^llama_kv_cache\w*:\s+(\S.*?)\s+KV buffer size" + _MIB)
_RE_RS_BUF = re.compile(r"^llama_memory_recurrent\w*:\s+(\S.*?)\s+RS buffer size" + _MIB)
_RE_COMPUTE_BUF = re.compile(r"^\w+:\s+(\S.*?)\s+compute buffer size" + _MIB)
_RE_OUTPUT_BUF = re.compile(r"^llama_context:\s+(\S.*?)\s+output buffer size" + _MIB)
_RE_KV_SIZE = re.compile(
    r"^llama_kv_cache\w*: size"
    + _MIB
    + r" \(\s*(\d+) cells,\s+(\d+) layers,\s+(\d+)/\s*(\d+) seqs\),"
    r"\s+K \((\w+)\):\s+" + _NUM + r" MiB,\s+V \((\w+)\):\s+" + _NUM + r" MiB"
)
_RE_RS_SIZE = re.compile(
    r"^llama_memory_recurrent\w*: size" + _MIB + r" \(\s*(\d+) cells,\s+(\d+) layers,\s+(\d+) seqs"
    r"(?:\s+(\d+) rs_seq)?\),\s+R \((\w+)\):\s+" + _NUM + r" MiB,"
    r"\s+S \((\w+)\):\s+" + _NUM + r" MiB(?:,\s+P \((\w+)\):\s+" + _NUM + r" MiB)?"
)
_RE_ISWA = re.compile(
    r"^llama_kv_cache_iswa: creating\s+(non-SWA|SWA) KV cache, size = (\d+) cells"
)
_RE_SLOTS = re.compile(r"^load_model: initializing,? n_slots = (\d+), n_ctx_slot = (\d+)")
_RE_OFFLOADED = re.compile(r"^load_tensors: offloaded (\d+)/(\d+) layers to GPU")
_RE_BREAKDOWN = re.compile(r"^\w+: \|\s*(.*?)\s*\|\s*(.*?)\s*\|$")
_RE_LAYER_DEVICE = re.compile(r"^load_tensors: layer\s+(\d+) assigned to device (\S+?),")
# "using device Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits)) (unknown id) - 2048 MiB free";
# builds before the device id was printed lack "(unknown id)"
_RE_USING_DEVICE = re.compile(r"^\w+: using device (\S+) \((.*)\) \([^()]*\) - (\d+) MiB free$")
_RE_USING_DEVICE_OLD = re.compile(r"^\w+: using device (\S+) \((.*)\) - (\d+) MiB free$")

# refusals printed without an ERROR prefix (exceptions printed by callers, usage errors)
_UNPREFIXED_ERRORS = (
    "error while handling argument",
    "Unsupported cache type",
    "error loading model",
    "failed to load model",
)


# ---------------------------------------------------------------------------- --fit

_FIT_START = "fitting params to device memory ..."
# common_params_fit_impl / common_fit_params (b10434, b11434); llama_params_fit* before
_RE_FIT = re.compile(r"^(?:common_params_fit_impl|common_fit_params|llama_params_fit\w*): (.*)$")
_RE_FIT_PROJECTED = re.compile(
    r"^projected to use (-?\d+) MiB of (device|host) memory vs\. (-?\d+) MiB of"
)
_RE_FIT_DEFICIT = re.compile(r"need to (?:reduce device memory by|use) (-?\d+) MiB")
_RE_FIT_REDUCED = re.compile(r"^context size reduced from (\d+) to (\d+)")
_RE_FIT_USER_CTX = re.compile(r"^context size set by user to (\d+)")
_RE_FIT_TARGET = re.compile(r"^id=(\d+), target=(-?\d+) MiB$")
_RE_FIT_SURPLUS = re.compile(
    r"^with only dense weights in device memory there is (?:a total surplus|still a total "
    r"(deficit)) of (-?\d+) MiB"
)
_RE_FIT_DEVICE = re.compile(
    r"^\s*- (\S+) \((.*)\)\s*:\s+(\d+) layers(?: \(\s*(\d+) overflowing\))?,"
    r"\s+(-?\d+) MiB used,\s+(-?\d+) MiB free$"
)
_RE_FIT_INITIAL = re.compile(
    r"^\s*- (\S+) \((.*)\)\s*:\s+(-?\d+) total,\s+(-?\d+) used,\s+(-?\d+) free vs\. "
    r"target of\s+(-?\d+)$"
)
_RE_FIT_FAILED = re.compile(
    r"^(failed to fit params to free device memory|encountered an error while trying to fit "
    r"params to free device memory): (.*)$"
)
_RE_FIT_OVERFLOW = re.compile(
    r"^set ngl_per_device\[(\d+)\]\.\(n_layer, n_part, overflow_type\)=\(\d+, \d+, (\w+)\)"
)
_RE_FIT_TOOK = re.compile(r"^fitting params to free memory took (\d+(?:\.\d+)?) seconds")


def _device_order(name: str) -> tuple[str, int]:
    """``Vulkan10`` after ``Vulkan9``."""
    m = re.match(r"^(.*?)(\d*)$", name)
    stem, num = (m.group(1), m.group(2)) if m else (name, "")
    return stem, int(num) if num else -1


class _Fit:
    """What ``--fit`` printed, line by line."""

    def __init__(self) -> None:
        self.f: dict[str, object] = {}
        self.initial: list[FitProjection] = []
        self.targets: dict[int, int] = {}
        self.devices: dict[str, FitDeviceLine] = {}
        self.overflow: dict[int, str] = {}
        self.finished = False  # "fitting params to free memory took": its trial loads are over

    @property
    def running(self) -> bool:
        """Between ``fitting params to device memory ...`` and the time it took."""
        return bool(self.f.get("ran")) and not self.finished

    def feed(self, line: str) -> bool:
        """Take a ``--fit`` line; True when taken."""
        if line.endswith(_FIT_START):
            self.f["ran"] = True
            return True
        m = _RE_FIT.match(line)
        if m is None:
            return False
        self._message(m.group(1))
        return True

    def _message(self, msg: str) -> None:  # a flat dispatch table
        f = self.f
        if (m := _RE_FIT_DEVICE.match(msg)) is not None:
            g = m.groups()
            self.devices[g[0]] = FitDeviceLine(
                g[0], g[1], int(g[2]), int(g[3] or 0), int(g[4]), int(g[5])
            )
        elif (m := _RE_FIT_INITIAL.match(msg)) is not None:
            g = m.groups()
            self.initial.append(FitProjection(g[0], g[1], *(int(x) for x in g[2:])))
        elif (m := _RE_FIT_OVERFLOW.match(msg)) is not None:
            self.overflow[int(m.group(1))] = m.group(2)
        elif (m := _RE_FIT_TARGET.match(msg)) is not None:
            self.targets[int(m.group(1))] = int(m.group(2))
        elif (m := _RE_FIT_PROJECTED.match(msg)) is not None:
            f["projected_used_mib"], f["free_mib"] = int(m.group(1)), int(m.group(3))
            f["on_host"] = m.group(2) == "host"
        elif (m := _RE_FIT_REDUCED.match(msg)) is not None:
            f["n_ctx_from"], f["n_ctx_to"] = int(m.group(1)), int(m.group(2))
        elif (m := _RE_FIT_USER_CTX.match(msg)) is not None:
            f["n_ctx_user"] = int(m.group(1))
        elif (m := _RE_FIT_SURPLUS.match(msg)) is not None:
            f["dense_only_surplus_mib"] = -int(m.group(2)) if m.group(1) else int(m.group(2))
        elif (m := _RE_FIT_FAILED.match(msg)) is not None:
            f["outcome"] = "failure" if m.group(1).startswith("failed") else "error"
            f["message"] = m.group(2)
        elif (m := _RE_FIT_TOOK.match(msg)) is not None:
            f["seconds"] = float(m.group(1))
            self.finished = True
        elif msg.startswith("successfully fit params"):
            f["outcome"] = "success"
        elif msg.endswith("no changes needed"):
            f["no_changes"] = True
        elif msg.startswith("entire model can be fit by reducing context"):
            f["fit_by_context"] = True
        if (m := _RE_FIT_DEFICIT.search(msg)) is not None:
            f["deficit_mib"] = int(m.group(1))

    def to_log(self) -> FitLog:
        devices = sorted(self.devices.values(), key=lambda d: _device_order(d.name))
        return FitLog(
            initial=tuple(self.initial),
            targets_mib=tuple(t for _, t in sorted(self.targets.items())),
            devices=tuple(devices),
            overflow_types=MappingProxyType(dict(self.overflow)),
            **self.f,  # type: ignore[arg-type]
        )


def _parse_breakdown_row(left: str, right: str) -> BreakdownRow | None:
    name = left[2:].strip() if left.startswith("- ") else left
    nums = [int(x) for x in re.findall(r"-?\d+", right)]
    if "(" in right and len(nums) == 7:  # device: total = free + (self = m + c + k) + unacc
        total, free, self_, model, ctx, comp, unacc = nums
        return BreakdownRow(name, total, free, self_, model, ctx, comp, unacc)
    if "(" not in right and len(nums) == 4:  # host / other buffer type: self = m + c + k
        self_, model, ctx, comp = nums
        return BreakdownRow(name, None, None, self_, model, ctx, comp, None)
    return None


def _add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = round(d.get(key, 0.0) + value, 2)


class _Section:
    """What one model load printed."""

    def __init__(self, model_path: str | None, devices: list[DeviceLine]) -> None:
        self.model_path = model_path
        self.devices = tuple(devices)
        self.layer_devices: dict[int, str] = {}
        self.params: dict[str, str] = {}
        self.n_contexts = 0
        self.n_ctx_train: int | None = None
        self.fa_resolved: bool | None = None
        self.kv: list[KVCacheLine] = []
        self.rs: list[RecurrentLine] = []
        self.model_bufs: dict[str, float] = {}
        self.kv_bufs: dict[str, float] = {}
        self.rs_bufs: dict[str, float] = {}
        self.compute_bufs: dict[str, float] = {}
        self.output_bufs: dict[str, float] = {}
        self.offloaded: tuple[int, int] | None = None
        self.iswa_role = ""
        self.iswa_cells: int | None = None

    @property
    def tensors_loaded(self) -> bool:
        """``load_tensors`` printed its buffers or offload count: the devices are set."""
        return bool(self.model_bufs) or self.offloaded is not None

    def feed(self, line: str) -> bool:  # a flat dispatch table
        """Take the line if it belongs to a load; True when taken."""
        if _RE_CTX_START.match(line):
            self.n_contexts += 1
            return True
        if (m := _RE_CTX_PARAM.match(line)) is not None:
            # a second context of the same model (MTP) must not overwrite the first's
            if self.n_contexts <= 1:
                key = "n_ctx_seq" if m.group(1) == "n_ctx_per_seq" else m.group(1)  # older builds
                self.params.setdefault(key, m.group(2))
            return True
        if (m := _RE_CTX_TRAIN.match(line)) is not None:
            self.n_ctx_train = int(m.group(1))
        elif (m := _RE_FA_RESOLVED.match(line)) is not None:
            if self.fa_resolved is None:
                self.fa_resolved = m.group(1) == "enabled"
        elif (m := _RE_MODEL_BUF.match(line)) is not None:
            _add(self.model_bufs, m.group(1), float(m.group(2)))
        elif (m := _RE_KV_BUF.match(line)) is not None:
            _add(self.kv_bufs, m.group(1), float(m.group(2)))
        elif (m := _RE_RS_BUF.match(line)) is not None:
            _add(self.rs_bufs, m.group(1), float(m.group(2)))
        elif (m := _RE_OUTPUT_BUF.match(line)) is not None:
            _add(self.output_bufs, m.group(1), float(m.group(2)))
        elif (m := _RE_COMPUTE_BUF.match(line)) is not None:
            _add(self.compute_bufs, m.group(1), float(m.group(2)))
        elif (m := _RE_ISWA.match(line)) is not None:
            self.iswa_role = m.group(1).lower()
            self.iswa_cells = int(m.group(2))
        elif (m := _RE_KV_SIZE.match(line)) is not None:
            g = m.groups()
            self.kv.append(
                KVCacheLine(
                    size_mib=float(g[0]),
                    cells=int(g[1]),
                    layers=int(g[2]),
                    n_seq_max=int(g[3]),
                    n_stream=int(g[4]),
                    type_k=g[5],
                    k_mib=float(g[6]),
                    type_v=g[7],
                    v_mib=float(g[8]),
                    role=self.iswa_role,
                    announced_cells=self.iswa_cells,
                )
            )
            self.iswa_role, self.iswa_cells = "", None
        elif (m := _RE_RS_SIZE.match(line)) is not None:
            g = m.groups()
            self.rs.append(
                RecurrentLine(
                    size_mib=float(g[0]),
                    cells=int(g[1]),
                    layers=int(g[2]),
                    n_seq=int(g[3]),
                    n_rs_seq=int(g[4]) if g[4] else 0,
                    type_r=g[5],
                    r_mib=float(g[6]),
                    type_s=g[7],
                    s_mib=float(g[8]),
                    p_mib=float(g[10]) if g[10] else 0.0,
                )
            )
        elif (m := _RE_OFFLOADED.match(line)) is not None:
            self.offloaded = (int(m.group(1)), int(m.group(2)))
        elif (m := _RE_LAYER_DEVICE.match(line)) is not None:
            self.layer_devices[int(m.group(1))] = m.group(2)
        else:
            return False
        return True

    def to_log(self, **extra: object) -> LoadLog:
        p = self.params

        def num(key: str) -> int | None:
            try:
                return int(p[key])
            except (KeyError, ValueError):
                return None

        fa = p.get("flash_attn")
        fa_resolved = self.fa_resolved
        if fa_resolved is None and fa in ("enabled", "disabled"):
            fa_resolved = fa == "enabled"
        kvu = p.get("kv_unified")
        return LoadLog(
            model_path=self.model_path,
            n_ctx=num("n_ctx"),
            n_ctx_seq=num("n_ctx_seq"),
            n_seq_max=num("n_seq_max"),
            n_batch=num("n_batch"),
            n_ubatch=num("n_ubatch"),
            n_ctx_train=self.n_ctx_train,
            flash_attn=fa,
            flash_attn_resolved=fa_resolved,
            kv_unified=None if kvu is None else kvu == "true",
            kv_caches=tuple(self.kv),
            recurrent=tuple(self.rs),
            model_buffers_mib=_frozen(self.model_bufs),
            kv_buffers_mib=_frozen(self.kv_bufs),
            rs_buffers_mib=_frozen(self.rs_bufs),
            compute_buffers_mib=_frozen(self.compute_bufs),
            output_buffers_mib=_frozen(self.output_bufs),
            offloaded_layers=self.offloaded[0] if self.offloaded else None,
            offloadable_layers=self.offloaded[1] if self.offloaded else None,
            devices=self.devices,
            layer_devices=MappingProxyType(dict(self.layer_devices)),
            **extra,  # type: ignore[arg-type]
        )


class _Parser:
    """The whole log, line by line: model loads, slots, errors, tables and ``--fit``."""

    def __init__(self) -> None:
        self.sections: list[_Section] = []
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.tables: list[tuple[int, list[BreakdownRow]]] = []  # (sections seen, rows)
        self.table: list[BreakdownRow] | None = None
        self.slots: tuple[int, int] | None = None
        self.devices: list[DeviceLine] = []  # "using device" lines of the next load
        self.fit = _Fit()

    def feed(self, raw: str) -> None:
        obj = _json_object(raw.strip())
        if obj is not None and (rows := _json_breakdown(obj)) is not None:
            self.tables.append((self._loads_seen(), rows))
            self.table = None
            return
        level, line = strip_line(raw)
        if line and not self._table_line(line):
            self._line(level, line)

    def _loads_seen(self) -> int:
        """Model loads so far, not counting ``--fit``'s trial loads (0 while it runs)."""
        return 0 if self.fit.running else len(self.sections)

    def _table_line(self, line: str) -> bool:
        """Take a memory-breakdown row; True when taken."""
        m = _RE_BREAKDOWN.match(line)
        if m is not None and m.group(1) == "memory breakdown [MiB]":
            self.table = []
            self.tables.append((self._loads_seen(), self.table))
            return True
        if m is not None and self.table is not None:
            row = _parse_breakdown_row(m.group(1), m.group(2))
            if row is not None:
                self.table.append(row)
            return True
        self.table = None
        return False

    def _line(self, level: str, line: str) -> None:
        if self.fit.feed(line) and self.fit.finished and self.sections and not self.slots:
            self.sections.clear()  # -lv 5: the loads printed so far were the solver's trials
        if level == "E" or (level == "" and any(k in line for k in _UNPREFIXED_ERRORS)):
            if line not in self.errors:
                self.errors.append(line)
            return
        if level == "W":
            self.warnings.append(line)
        if (m := _RE_USING_DEVICE.match(line) or _RE_USING_DEVICE_OLD.match(line)) is not None:
            self._device(DeviceLine(m.group(1), m.group(2), int(m.group(3))))
        elif (m := _RE_LOAD_START.match(line)) is not None:
            self.sections.append(_Section(m.group(1), self.devices))
            self.devices = []
        elif (m := _RE_SLOTS.match(line)) is not None:
            self.slots = (int(m.group(1)), int(m.group(2)))
        elif self.sections:
            self.sections[-1].feed(line)

    def _device(self, device: DeviceLine) -> None:
        """b11434 prints ``using device`` after the model's metadata, older builds before
        it: the line belongs to the load whose tensors are not loaded yet."""
        last = self.sections[-1] if self.sections else None
        if last is not None and not last.tensors_loaded:
            last.devices += (device,)
        else:
            self.devices.append(device)

    def result(self) -> LoadLog:
        exit_rows: tuple[BreakdownRow, ...] = ()
        fit_rows: tuple[BreakdownRow, ...] = ()
        for n_seen, rows in self.tables:
            if n_seen == 0:
                fit_rows = tuple(rows)
            else:
                exit_rows = tuple(rows)
        n_slots, n_ctx_slot = self.slots or (None, None)
        common = {
            "n_slots": n_slots,
            "n_ctx_slot": n_ctx_slot,
            "errors": tuple(self.errors),
            "warnings": tuple(self.warnings),
            "memory_breakdown": exit_rows,
            "fit_breakdown": fit_rows,
            "fit": self.fit.to_log(),
            "n_loads": len(self.sections),
        }
        if not self.sections:
            return LoadLog(**common)  # type: ignore[arg-type]
        extra = tuple(s.to_log() for s in self.sections[1:])
        return self.sections[0].to_log(extra_loads=extra, **common)


def parse_load_log(text: str | Iterable[str]) -> LoadLog:
    """Parse a llama-server log (``-lv 4`` for the memory lines) into a ``LoadLog``.

    Args:
        text: the whole log as one string, or an iterable of lines.

    Returns:
        The served model's figures (the first model load after ``--fit``), with later
        loads in ``extra_loads``. Never raises on unexpected content; missing figures are
        None or empty.
    """
    parser = _Parser()
    for raw in text.splitlines() if isinstance(text, str) else text:
        parser.feed(raw)
    return parser.result()
