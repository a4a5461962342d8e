"""Pure parser of llama-server's load log (stderr at ``-lv 4``): what it really allocated.

``parse_load_log(text) -> LoadLog``. The server prints every buffer it allocates (model
weights, KV cache, recurrent state, compute, output) as MiB with two decimals; this module
collects them, with the context parameters llama.cpp resolved (``n_ctx`` after padding,
``n_ctx_seq``, slots, flash attention as requested and as resolved) and the error lines of
configurations it refused. It never raises on odd input: unknown lines are ignored and
fields it did not find stay ``None`` / empty.

Line prefixes (``M.SS.mmm.uuu I ``), ANSI colours, the router's ``[port]`` prefix, the
server's ``srv  ``/``slot ``/``cmn  `` tags and ``--log-jsonl`` wrapping are removed before
matching.

Sections: every model load starts at ``llama_model_loader: loaded meta data``. The first
one is the served model and fills the ``LoadLog``; later ones (a draft model for
speculative decoding) become ``extra_loads``. Lines before the first load (``--fit``
probes, argument errors) only contribute errors, warnings and the fit breakdown table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "MIB",
    "BreakdownRow",
    "KVCacheLine",
    "LoadLog",
    "RecurrentLine",
    "parse_load_log",
    "strip_line",
]

MIB = 1024 * 1024
"""Bytes in the MiB llama.cpp prints."""


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

# refusals printed without an ERROR prefix (exceptions printed by callers, usage errors)
_UNPREFIXED_ERRORS = (
    "error while handling argument",
    "Unsupported cache type",
    "error loading model",
    "failed to load model",
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

    def __init__(self, model_path: str | None) -> None:
        self.model_path = model_path
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
            **extra,  # type: ignore[arg-type]
        )


def parse_load_log(text: str | Iterable[str]) -> LoadLog:
    """Parse a llama-server log (``-lv 4`` for the memory lines) into a ``LoadLog``.

    Args:
        text: the whole log as one string, or an iterable of lines.

    Returns:
        The served model's figures (the first model load), with later loads in
        ``extra_loads``. Never raises on unexpected content; missing figures are None or
        empty.
    """
    lines = text.splitlines() if isinstance(text, str) else text
    sections: list[_Section] = []
    errors: list[str] = []
    warnings: list[str] = []
    tables: list[tuple[int, list[BreakdownRow]]] = []  # (sections seen when printed, rows)
    table: list[BreakdownRow] | None = None
    n_slots: int | None = None
    n_ctx_slot: int | None = None

    for raw in lines:
        obj = _json_object(raw.strip())
        if obj is not None and (rows := _json_breakdown(obj)) is not None:
            tables.append((len(sections), rows))
            table = None
            continue
        level, line = strip_line(raw)
        if not line:
            continue

        m = _RE_BREAKDOWN.match(line)
        if m is not None and m.group(1) == "memory breakdown [MiB]":
            table = []
            tables.append((len(sections), table))
            continue
        if m is not None and table is not None:
            row = _parse_breakdown_row(m.group(1), m.group(2))
            if row is not None:
                table.append(row)
            continue
        table = None

        if level == "E" or (level == "" and any(k in line for k in _UNPREFIXED_ERRORS)):
            if line not in errors:
                errors.append(line)
            continue
        if level == "W":
            warnings.append(line)

        if (m := _RE_LOAD_START.match(line)) is not None:
            sections.append(_Section(m.group(1)))
            continue
        if (m := _RE_SLOTS.match(line)) is not None:
            n_slots, n_ctx_slot = int(m.group(1)), int(m.group(2))
            continue
        if sections:
            sections[-1].feed(line)

    exit_rows: tuple[BreakdownRow, ...] = ()
    fit_rows: tuple[BreakdownRow, ...] = ()
    for n_seen, rows in tables:
        if n_seen == 0:
            fit_rows = tuple(rows)
        else:
            exit_rows = tuple(rows)

    common = {
        "errors": tuple(errors),
        "warnings": tuple(warnings),
        "memory_breakdown": exit_rows,
        "fit_breakdown": fit_rows,
        "n_loads": len(sections),
    }
    if not sections:
        return LoadLog(n_slots=n_slots, n_ctx_slot=n_ctx_slot, **common)  # type: ignore[arg-type]
    extra = tuple(s.to_log() for s in sections[1:])
    return sections[0].to_log(n_slots=n_slots, n_ctx_slot=n_ctx_slot, extra_loads=extra, **common)
