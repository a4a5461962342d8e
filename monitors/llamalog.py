"""Pure parser of llama-server's load log (stderr at ``-lv 4``): what it really allocated.

``parse_load_log(text) -> LoadLog``. The server prints every buffer it allocates (model
weights, KV cache, recurrent state, compute, output) as MiB with two decimals; this module
collects them, with the context parameters llama.cpp resolved (``n_ctx`` after padding,
``n_ctx_seq``, slots, flash attention as requested and as resolved) and the error lines of
configurations it refused. It never raises on odd input: unknown lines are ignored and
fields it did not find stay ``None`` / empty.

Line prefixes (``M.SS.mmm.uuu I ``), ANSI colours, the router's ``[port]`` prefix and the
server's ``srv    `` / ``slot`` tags are stripped before matching.

When ``--fit`` probes the model first (dummy allocations, same log lines), or a server
reloads, only the last load counts: every section restarts at
``llama_model_loader: loaded meta data`` / ``load_tensors: loading model tensors``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "KVCacheLine",
    "RecurrentLine",
    "BreakdownRow",
    "LoadLog",
    "parse_load_log",
    "strip_line",
]

MIB = 1024 * 1024

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# "0.00.123.456 I " (minutes.seconds.ms.us, level letter); some builds print "M:SS..."
_PREFIX = re.compile(r"^\s*\d+[.:]\d{2}\.\d{3}\.\d{3}\s+([DIWE])\s")
_ROUTER = re.compile(r"^\[\d+\]\s?")
# the server's and common's module tags: "srv    load_model: ...", "slot launch_slot_: ...",
# "cmn  common_init_: ..." (function names are cut to 12 characters there)
_TAG = re.compile(r"^(?:srv|slot|cmn|spec|que|res|mtmd)\s+(?=\S)")


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
        k_mib, v_mib: per-tensor totals in MiB, as printed.
        role: ``"swa"`` / ``"non-swa"`` when preceded by the iSWA ``creating ... KV cache``
            line, else ``""``.
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
        size_mib: R + S (+ P rollback snapshots) in MiB, as printed.
        cells: recurrent cells (one per sequence).
        layers: layer count the state is sized for.
        n_seq: sequences.
        n_rs_seq: rollback snapshots per sequence (0 when absent in older builds).
        type_r, type_s: ggml types of the conv (R) and SSM (S) states.
        r_mib, s_mib, p_mib: state sizes in MiB as printed.
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
    """One row of the exit memory-breakdown table (integer MiB).

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


def _frozen(d: Mapping[str, float] | None = None) -> Mapping[str, float]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class LoadLog:
    """What one llama-server load printed. MiB values are as printed (0.01 MiB resolution).

    Attributes:
        n_ctx: total KV cells after padding (``llama_context: n_ctx``).
        n_ctx_seq: cells one sequence may use.
        n_seq_max: sequences (slots) of the context.
        n_batch, n_ubatch: logical / physical batch sizes.
        n_ctx_train: the model's training context (``print_info``).
        flash_attn: the requested mode: ``"auto"``, ``"enabled"`` or ``"disabled"``.
        flash_attn_resolved: True if ``resolve_fused_ops`` enabled Flash Attention, False if
            it disabled it, None when the log does not say (e.g. explicit ``-fa off``).
        kv_unified: ``kv_unified`` of the context.
        kv_caches: every KV size line (iSWA: non-SWA first, then SWA).
        recurrent: every recurrent-state size line.
        model_buffers_mib: ``load_tensors: <buf> model buffer size`` by buffer name.
        kv_buffers_mib: ``KV buffer size`` by buffer name (summed over caches).
        rs_buffers_mib: ``RS buffer size`` by buffer name.
        compute_buffers_mib: ``sched_reserve: <buf> compute buffer size`` by buffer name.
        output_buffers_mib: ``llama_context: <buf> output buffer size`` by buffer name.
        n_slots, n_ctx_slot: from the server's ``load_model: initializing`` line.
        offloaded_layers, offloadable_layers: ``load_tensors: offloaded a/b layers to GPU``.
        errors: ERROR-level lines and known refusal messages, prefix stripped.
        warnings: WARN-level lines, prefix stripped.
        memory_breakdown: rows of the last memory-breakdown table (exit or fit probe).
        n_loads: how many load sections the text held (fit probes count); fields describe
            the last one.
    """

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
    def refused(self) -> bool:
        """True when the log holds an error and no KV/recurrent memory was created."""
        return bool(self.errors) and not self.kv_caches and not self.recurrent

    @property
    def loaded(self) -> bool:
        """True when the server reached ``load_model: initializing`` (slots ready)."""
        return self.n_slots is not None


# ---------------------------------------------------------------------------- patterns

_NUM = r"([0-9]+(?:\.[0-9]+)?)"

_RE_CTX_PARAM = re.compile(
    r"^llama_context:\s+(n_ctx|n_ctx_seq|n_seq_max|n_batch|n_ubatch|flash_attn|kv_unified)\s+=\s+(\S+)\s*$"
)
_RE_CTX_TRAIN = re.compile(r"^print_info:\s+n_ctx_train\s+=\s+(\d+)")
_RE_FA_RESOLVED = re.compile(r"^\w+:\s+Flash Attention (enabled|not supported, set to disabled)")
_RE_MODEL_BUF = re.compile(r"^load_tensors:\s+(\S.*?)\s+model buffer size\s+=\s+" + _NUM + r" MiB")
_RE_KV_BUF = re.compile(r"^llama_kv_cache\w*:\s+(\S.*?)\s+KV buffer size\s+=\s+" + _NUM + r" MiB")
_RE_RS_BUF = re.compile(
    r"^llama_memory_recurrent\w*:\s+(\S.*?)\s+RS buffer size\s+=\s+" + _NUM + r" MiB"
)
_RE_COMPUTE_BUF = re.compile(r"^\w+:\s+(\S.*?)\s+compute buffer size\s+=\s+" + _NUM + r" MiB")
_RE_OUTPUT_BUF = re.compile(
    r"^llama_context:\s+(\S.*?)\s+output buffer size\s+=\s+" + _NUM + r" MiB"
)
_RE_KV_SIZE = re.compile(
    r"^llama_kv_cache\w*:\s+size\s+=\s+"
    + _NUM
    + r" MiB \(\s*(\d+) cells,\s+(\d+) layers,\s+(\d+)/(\d+) seqs\),"
    r"\s+K \((\w+)\):\s+" + _NUM + r" MiB,\s+V \((\w+)\):\s+" + _NUM + r" MiB"
)
_RE_RS_SIZE = re.compile(
    r"^llama_memory_recurrent\w*:\s+size\s+=\s+"
    + _NUM
    + r" MiB \(\s*(\d+) cells,\s+(\d+) layers,\s+(\d+) seqs"
    r"(?:\s+(\d+) rs_seq)?\),\s+R \((\w+)\):\s+"
    + _NUM
    + r" MiB,\s+S \((\w+)\):\s+"
    + _NUM
    + r" MiB"
    r"(?:,\s+P \((\w+)\):\s+" + _NUM + r" MiB)?"
)
_RE_ISWA = re.compile(
    r"^llama_kv_cache_iswa:\s+creating\s+(non-SWA|SWA) KV cache, size = (\d+) cells"
)
_RE_SLOTS = re.compile(r"load_model: initializing,? n_slots = (\d+), n_ctx_slot = (\d+)")
_RE_OFFLOADED = re.compile(r"^load_tensors:\s+offloaded (\d+)/(\d+) layers to GPU")
_RE_BREAKDOWN = re.compile(r"^\w+:\s+\|\s+(.*?)\s+\|\s+(.*?)\s+\|\s*$")
_RE_LOAD_START = re.compile(r"^llama_model_loader: loaded meta data with")

# refusals that are not printed at ERROR level (exceptions caught and printed by callers)
_KNOWN_ERRORS = (
    "quantized V cache requires flash_attn",
    "quantized V cache was requested, but this requires Flash Attention",
    "does not divide n_embd_head",
    "Unsupported cache type",
    "does not support different K",
    "failed to create context",
    "failed to load model",
    "error while handling argument",
    "failed to allocate",
    "error loading model",
)


def strip_line(line: str) -> tuple[str, str]:
    """Remove ANSI colours, the router's ``[port]`` and the ``M.SS.mmm.uuu L`` prefix.

    Args:
        line: one raw log line.

    Returns:
        ``(level, text)``: level is ``"D"``, ``"I"``, ``"W"``, ``"E"`` or ``""`` when the
        line has no prefix; text has no prefix, no server tag and no trailing whitespace.
    """
    line = _ANSI.sub("", line).rstrip("\r\n").rstrip()
    line = _ROUTER.sub("", line)
    level = ""
    m = _PREFIX.match(line)
    if m:
        level = m.group(1)
        line = line[m.end() :]
    line = _TAG.sub("", line.lstrip(), count=1)
    return level, line


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _parse_breakdown_row(left: str, right: str) -> BreakdownRow | None:
    name = left.strip()
    if name.startswith("- "):
        name = name[2:].strip()
    nums = [int(x) for x in re.findall(r"-?\d+", right)]
    if "(" in right and len(nums) == 7:  # device: total = free + (self = m + c + k) + unacc
        total, free, self_, model, ctx, comp, unacc = nums
        return BreakdownRow(name, total, free, self_, model, ctx, comp, unacc)
    if len(nums) == 4:  # host / other: self = m + c + k
        self_, model, ctx, comp = nums
        return BreakdownRow(name, None, None, self_, model, ctx, comp, None)
    return None


def _add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = round(d.get(key, 0.0) + value, 2)


def parse_load_log(text: str | Iterable[str]) -> LoadLog:
    """Parse a llama-server log (``-lv 4`` for the memory lines) into a ``LoadLog``.

    Args:
        text: the whole log as one string, or an iterable of lines.

    Returns:
        The last load's figures. Never raises on unexpected content.
    """
    lines = text.splitlines() if isinstance(text, str) else list(text)

    st = _State()
    for raw in lines:
        level, line = strip_line(raw)
        if not line:
            continue
        st.feed(level, line)
    return st.result()


class _State:
    """Accumulates one load section; a new section resets what belongs to a load."""

    def __init__(self) -> None:
        self.n_loads = 0
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.breakdown: list[BreakdownRow] = []
        self._in_breakdown = False
        self.n_slots: int | None = None
        self.n_ctx_slot: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.params: dict[str, str] = {}
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
        self._iswa_role = ""
        self._iswa_cells: int | None = None

    def feed(self, level: str, line: str) -> None:  # noqa: C901 - a flat dispatch table
        if _RE_LOAD_START.match(line):
            self.n_loads += 1
            self._reset()
            return

        m = _RE_BREAKDOWN.match(line)
        if m and "memory breakdown [MiB]" in m.group(1):
            self.breakdown = []
            self._in_breakdown = True
            return
        if m and self._in_breakdown:
            row = _parse_breakdown_row(m.group(1), m.group(2))
            if row is not None:
                self.breakdown.append(row)
            return
        self._in_breakdown = False

        if level == "E" or any(k in line for k in _KNOWN_ERRORS):
            if line not in self.errors:
                self.errors.append(line)
        elif level == "W":
            self.warnings.append(line)

        if (m := _RE_CTX_PARAM.match(line)) is not None:
            self.params[m.group(1)] = m.group(2)
        elif (m := _RE_CTX_TRAIN.match(line)) is not None:
            self.n_ctx_train = int(m.group(1))
        elif (m := _RE_FA_RESOLVED.match(line)) is not None:
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
            self._iswa_role = m.group(1).lower()
            self._iswa_cells = int(m.group(2))
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
                    role=self._iswa_role,
                    announced_cells=self._iswa_cells,
                )
            )
            self._iswa_role, self._iswa_cells = "", None
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
        elif (m := _RE_SLOTS.search(line)) is not None:
            self.n_slots, self.n_ctx_slot = int(m.group(1)), int(m.group(2))

    def result(self) -> LoadLog:
        p = self.params
        kv_unified = p.get("kv_unified")
        return LoadLog(
            n_ctx=_int(p["n_ctx"]) if "n_ctx" in p else None,
            n_ctx_seq=_int(p["n_ctx_seq"]) if "n_ctx_seq" in p else None,
            n_seq_max=_int(p["n_seq_max"]) if "n_seq_max" in p else None,
            n_batch=_int(p["n_batch"]) if "n_batch" in p else None,
            n_ubatch=_int(p["n_ubatch"]) if "n_ubatch" in p else None,
            n_ctx_train=self.n_ctx_train,
            flash_attn=p.get("flash_attn"),
            flash_attn_resolved=self.fa_resolved,
            kv_unified=None if kv_unified is None else kv_unified == "true",
            kv_caches=tuple(self.kv),
            recurrent=tuple(self.rs),
            model_buffers_mib=_frozen(self.model_bufs),
            kv_buffers_mib=_frozen(self.kv_bufs),
            rs_buffers_mib=_frozen(self.rs_bufs),
            compute_buffers_mib=_frozen(self.compute_bufs),
            output_buffers_mib=_frozen(self.output_bufs),
            n_slots=self.n_slots,
            n_ctx_slot=self.n_ctx_slot,
            offloaded_layers=self.offloaded[0] if self.offloaded else None,
            offloadable_layers=self.offloaded[1] if self.offloaded else None,
            errors=tuple(self.errors),
            warnings=tuple(self.warnings),
            memory_breakdown=tuple(self.breakdown),
            n_loads=self.n_loads,
        )
