"""GGUF header reader: model metadata and the tensor table, never tensor data.

``read_model(path)`` parses the GGUF header of a model (every shard of a split model) with
a lean ``struct`` parser over a read-only memory map, and resolves the hyper-parameters
the way llama.cpp's ``llama_model_base::load_hparams`` and the per-architecture
``load_arch_hparams`` (``src/models/*.cpp``) do. Long string arrays (the vocabulary and
the merges) are skipped without decoding a single token: a vectorised scan finds the
length prefixes and verifies the chain exactly (falling back to a plain loop on odd data).

Architecture rules implemented exactly (checked against llama.cpp b11434's sources):

- sliding window: gemma2 (window 4096 unless set, pattern 2), gemma3 (pattern 6 when a
  window is set), gemma3n (pattern 5, KV only in the first 20 layers), gemma4 and
  gemma4-assistant (bool pattern array, ``shared_kv_layers``), gemma-embedding (6,
  symmetric), cohere2 (4), cohere2moe (4, dense first), gpt-oss (2), llama4 (chunked 8192,
  pattern 4, unless ``sliding_window`` is present and 0), afmoe / mellum / olmo2 /
  muse-glimmer (4), exaone4 (4 and window 4096 for the 64-layer model), exaone-moe (4),
  plamo3 (8), smallthinker (4, dense first, window 4096), laguna (4, dense first),
  modern-bert (3, dense first, symmetric), lfm2 (every attention layer when a window is
  set), granite_swa / maple / mimo2 / spark2_5 / step35 / dots3note / dflash (pattern
  array), phi3 (SWA disabled by llama.cpp). Every other architecture has no SWA layer,
  even when its GGUF carries ``sliding_window`` (llama.cpp ignores it there, e.g.
  mistral/qwen2).
- recurrent layers: mamba, mamba2, rwkv6, rwkv6qwen2, rwkv7, arwkv7 (every layer); jamba,
  granitehybrid, lfm2, lfm2moe, plamo2, kimi-linear, kimi-k3, bailingmoe3 (``head_count_kv
  == 0`` among the main layers), glm5-next (``head_count_kv == 0``, every layer),
  nemotron_h / nemotron_h_moe (``head_count_kv == 0`` and ``feed_forward_length == 0``),
  falcon-h1 (every layer, which also keeps its attention KV), qwen3next / qwen35 /
  qwen35moe / qwen4exp / clef (``attention.recurrent_layers`` or ``full_attention_interval``,
  default 4), minimax-01 (same, default 8).
- MLA: any architecture whose GGUF has non-zero ``key_length_mla`` and ``value_length_mla``
  (deepseek2, deepseek32, glm-dsa, kimi-linear, kimi-k3, bailingmoe3, hy_v4, glm5-next,
  dots3note...); kimi-k3 and glm5-next use ``kv_lora_rank`` as the V head size.

Best effort (not modelled): deepseek4 compressed caches, DSA/MSA indexer caches, nanbeige
loops, graniteswitch's router layer, PLE caches.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


def _load_gguf_constants():
    """gguf-py's ``constants`` module, without importing the whole ``gguf`` package.

    ``import gguf`` pulls in numpy, yaml and the reader/writer (about 100 ms), while the
    constants (type sizes, key names, value types) need only the standard library. Loading
    that one file keeps ``kvwall plan`` and ``kvwall status`` quick to start
    (benchmarks/bench_plan.py). Falls back to the package when the file cannot be found.
    """
    import importlib.util

    loaded = sys.modules.get("gguf.constants")
    if loaded is not None:
        return loaded
    try:
        spec = importlib.util.find_spec("gguf")
        origin = Path(next(iter(spec.submodule_search_locations))) / "constants.py"
        file_spec = importlib.util.spec_from_file_location("kvwall.monitors._gguf_constants", origin)
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        return module
    except (ImportError, AttributeError, OSError, StopIteration, TypeError):
        import gguf.constants

        return gguf.constants


gguf = _load_gguf_constants()


class GGUFError(ValueError):
    """A GGUF file that cannot be read: the message names the file and what is wrong."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the table.

    Attributes:
        name: GGUF tensor name, e.g. ``blk.0.attn_k.weight``.
        type_name: ggml type name as llama.cpp prints it, lower case (``f16``, ``q4_K``...
            exactly ``gguf.GGMLQuantizationType[...]``'s name lower-cased: ``q4_k``).
        ggml_type: the numeric ``GGMLQuantizationType`` value.
        shape: ggml order (ne0 first), as stored in the file.
        n_bytes: bytes of tensor data (blocks * type size).
        shard: index of the file (0-based) in ``ModelInfo.paths`` holding the data.
    """

    name: str
    type_name: str
    ggml_type: int
    shape: tuple[int, ...]
    n_bytes: int
    shard: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """What llama.cpp will need from a GGUF model, resolved per layer.

    Per-layer tuples always have ``n_layer_all`` entries (scalar keys are broadcast,
    arch defaults applied the way llama.cpp's ``load_hparams`` does for the supported
    architectures).

    Attributes:
        path: the path the user gave (first shard for split models).
        paths: every shard, in order.
        architecture: ``general.architecture`` (``llama``, ``qwen3``, ``gemma3``, ``deepseek2``...).
        name: ``general.name`` or the file stem.
        file_type: ``general.file_type`` name when present (e.g. ``MOSTLY_Q4_K_M``), else None.
        n_layer_all: ``{arch}.block_count`` (includes NextN/MTP layers).
        n_layer_nextn: ``{arch}.nextn_predict_layers`` (0 if absent).
        n_ctx_train: ``{arch}.context_length``.
        n_embd: ``{arch}.embedding_length``.
        n_vocab: vocabulary size (token array length, or ``{arch}.vocab_size``).
        n_head: per layer attention heads.
        n_head_kv: per layer KV heads (defaults to n_head per layer; 0 = no KV).
        head_k, head_v: key/value head sizes of full-attention layers (``key_length`` /
            ``value_length``, default ``n_embd // n_head[0]``).
        head_k_swa, head_v_swa: head sizes of SWA layers (default: head_k / head_v).
        is_mla: True when both ``key_length_mla`` and ``value_length_mla`` are non-zero.
        head_k_mla, head_v_mla: the "decompressed" MLA head sizes (0 if absent).
        kv_lora_rank: MLA latent rank (0 if absent).
        n_swa: sliding window size (0 = no SWA).
        swa_layers: per layer, True for sliding-window layers.
        n_layer_kv_from_start: -1, or the number of leading layers owning KV (Gemma-3n/4).
        recurrent_layers: per layer, True for recurrent (SSM/RWKV/...) layers.
        ssm_d_conv, ssm_d_inner, ssm_d_state, ssm_dt_rank, ssm_n_group: SSM sizes (0 if absent).
        wkv_head_size, token_shift_count, shortconv_l_cache: RWKV/LFM2 state sizes.
        n_expert, n_expert_used: MoE experts (0 if dense).
        n_ff: per layer feed-forward length (0 where absent).
        n_rot: rope dimension count.
        tensors: the full tensor table, every shard.
        metadata: remaining scalar/short metadata by key (arrays over 64 entries omitted).
        weights_bytes: sum of tensor data bytes over all shards.
        swa_type: llama.cpp's ``swa_type``: ``none``, ``standard``, ``chunked`` (Llama-4)
            or ``symmetric`` (embedding models).
        gguf_version: GGUF format version of the (first) file: 2 or 3.
        big_endian: True for a big-endian GGUF (llama.cpp on a little-endian host refuses
            to load it: "is there a mismatch between the host and model endianness?").
    """

    path: str
    paths: tuple[str, ...]
    architecture: str
    name: str
    file_type: str | None
    n_layer_all: int
    n_layer_nextn: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    head_k: int
    head_v: int
    head_k_swa: int
    head_v_swa: int
    is_mla: bool
    head_k_mla: int
    head_v_mla: int
    kv_lora_rank: int
    n_swa: int
    swa_layers: tuple[bool, ...]
    n_layer_kv_from_start: int
    recurrent_layers: tuple[bool, ...]
    ssm_d_conv: int
    ssm_d_inner: int
    ssm_d_state: int
    ssm_dt_rank: int
    ssm_n_group: int
    wkv_head_size: int
    token_shift_count: int
    shortconv_l_cache: int
    n_expert: int
    n_expert_used: int
    n_ff: tuple[int, ...]
    n_rot: int
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    metadata: Mapping[str, Any] = field(repr=False)
    swa_type: str = "none"
    gguf_version: int = 3
    big_endian: bool = False

    @property
    def weights_bytes(self) -> int:
        """Tensor data bytes over every shard (what llama.cpp loads as weights)."""
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_layer(self) -> int:
        """Layers of the main model (excludes NextN/MTP layers)."""
        return self.n_layer_all - self.n_layer_nextn

    @property
    def is_recurrent(self) -> bool:
        """Any layer keeps recurrent state (pure recurrent or hybrid)."""
        return any(self.recurrent_layers)


# ---------------------------------------------------------------------------------------
# Limits (llama.cpp's where it has one)

_MAGIC = b"GGUF"
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 64  # GGML_MAX_NAME: tensor names must be shorter
_MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
_MAX_STRING = 1 << 30  # GGUF_MAX_STRING_LENGTH
_MAX_KEY = 1 << 16  # metadata key and tensor name lengths beyond this are garbage
_DECODE_STRING_MAX = 1 << 26  # string values up to 64 MiB are decoded, longer ones skipped
# llama.cpp allows 2**30 array elements; real vocabularies and merge lists have < 600k
# strings. 4M keeps the worst case (a crafted file of 4M empty strings) near one second.
_MAX_STRING_ARRAY = 1 << 22
_MAX_ARRAY = 1 << 30  # GGUF_MAX_ARRAY_ELEMENTS
_DECODE_NUMERIC_MAX = 4096  # numeric arrays up to this length are decoded (per-layer keys)
_DECODE_STRINGS_MAX = 64  # string arrays up to this length are decoded
_METADATA_ARRAY_MAX = 64  # arrays longer than this are left out of ModelInfo.metadata
_DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
_INT64_MAX = (1 << 63) - 1

_VT = gguf.GGUFValueType
# struct format per scalar GGUF value type (gguf-py's GGUFWriter packs with the same codes).
_SCALAR_FORMATS: dict[int, str] = {
    _VT.UINT8: "B",
    _VT.INT8: "b",
    _VT.UINT16: "H",
    _VT.INT16: "h",
    _VT.UINT32: "I",
    _VT.INT32: "i",
    _VT.FLOAT32: "f",
    _VT.BOOL: "?",
    _VT.UINT64: "Q",
    _VT.INT64: "q",
    _VT.FLOAT64: "d",
}
_INT_TYPES = frozenset(
    {_VT.UINT8, _VT.INT8, _VT.UINT16, _VT.INT16, _VT.UINT32, _VT.INT32, _VT.UINT64, _VT.INT64}
)


def _key(cls: type, attr: str, literal: str) -> str:
    """A gguf-py key name, with the literal for gguf versions that predate it."""
    return getattr(cls, attr, literal)


_K_ARCH = gguf.Keys.General.ARCHITECTURE
_K_NAME = gguf.Keys.General.NAME
_K_FILE_TYPE = gguf.Keys.General.FILE_TYPE
_K_ALIGNMENT = gguf.Keys.General.ALIGNMENT
_K_TOKENS = gguf.Keys.Tokenizer.LIST
_K_SPLIT_NO = "split.no"
_K_SPLIT_COUNT = "split.count"
_K_SPLIT_TENSORS = "split.tensors.count"

_L = gguf.Keys.LLM
_A = gguf.Keys.Attention
_R = gguf.Keys.Rope
_S = gguf.Keys.SSM
_K_CONTEXT = _L.CONTEXT_LENGTH
_K_EMBD = _L.EMBEDDING_LENGTH
_K_BLOCKS = _L.BLOCK_COUNT
_K_NEXTN = _key(_L, "NEXTN_PREDICT_LAYERS", "{arch}.nextn_predict_layers")
_K_VOCAB_SIZE = _key(_L, "VOCAB_SIZE", "{arch}.vocab_size")
_K_FF = _L.FEED_FORWARD_LENGTH
_K_EXPERTS = _L.EXPERT_COUNT
_K_EXPERTS_USED = _L.EXPERT_USED_COUNT
_K_TOKEN_SHIFT = _key(_L, "TOKEN_SHIFT_COUNT", "{arch}.token_shift_count")
_K_FULL_ATTN_INTERVAL = _key(_L, "FULL_ATTENTION_INTERVAL", "{arch}.full_attention_interval")
_K_HEADS = _A.HEAD_COUNT
_K_HEADS_KV = _A.HEAD_COUNT_KV
_K_KEY_LEN = _A.KEY_LENGTH
_K_VALUE_LEN = _A.VALUE_LENGTH
_K_KEY_LEN_SWA = _key(_A, "KEY_LENGTH_SWA", "{arch}.attention.key_length_swa")
_K_VALUE_LEN_SWA = _key(_A, "VALUE_LENGTH_SWA", "{arch}.attention.value_length_swa")
_K_KEY_LEN_MLA = _key(_A, "KEY_LENGTH_MLA", "{arch}.attention.key_length_mla")
_K_VALUE_LEN_MLA = _key(_A, "VALUE_LENGTH_MLA", "{arch}.attention.value_length_mla")
_K_KV_LORA = _A.KV_LORA_RANK
_K_SWA = _A.SLIDING_WINDOW
_K_SWA_PATTERN = _key(_A, "SLIDING_WINDOW_PATTERN", "{arch}.attention.sliding_window_pattern")
_K_SHARED_KV = _key(_A, "SHARED_KV_LAYERS", "{arch}.attention.shared_kv_layers")
_K_RECURRENT = _key(_A, "RECURRENT_LAYERS", "{arch}.attention.recurrent_layers")
_K_ROT = _R.DIMENSION_COUNT
_K_SSM_CONV = _S.CONV_KERNEL
_K_SSM_INNER = _S.INNER_SIZE
_K_SSM_STATE = _S.STATE_SIZE
_K_SSM_DT = _S.TIME_STEP_RANK
_K_SSM_GROUP = _key(_S, "GROUP_COUNT", "{arch}.ssm.group_count")
_K_WKV = gguf.Keys.WKV.HEAD_SIZE
_K_SHORTCONV = _key(getattr(gguf.Keys, "ShortConv", object), "L_CACHE", "{arch}.shortconv.l_cache")


# ---------------------------------------------------------------------------------------
# Raw file parsing


@dataclass(frozen=True)
class _SkippedArray:
    """An array whose elements were not decoded (too long to be useful)."""

    element_type: int
    count: int


@dataclass(frozen=True)
class _SkippedString:
    """A string value too long to be worth decoding (its length in bytes)."""

    n_bytes: int


@dataclass
class _RawGGUF:
    path: str
    version: int
    big_endian: bool
    kv: dict[str, Any]
    kv_types: dict[str, int]
    tensors: list[tuple[str, int, tuple[int, ...], int]]  # name, type, shape, n_bytes


def _err(path: str | os.PathLike[str], msg: str) -> GGUFError:
    # key and tensor names of a damaged file can hold any bytes: keep the message one
    # printable line (control characters escaped, e.g. '\x00')
    msg = "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)
    return GGUFError(f"{os.fspath(path)}: {msg}")


class _Parser:
    """Sequential reader over a memory-mapped GGUF file; every read is bounds-checked."""

    def __init__(self, path: str, buf: mmap.mmap, size: int) -> None:
        self.path = path
        self.buf = buf
        self.size = size
        self.pos = 0
        self.endian = "<"
        self._u32 = struct.Struct("<I")
        self._u64 = struct.Struct("<Q")

    def fail(self, msg: str) -> GGUFError:
        return _err(self.path, msg)

    def set_endian(self, endian: str) -> None:
        self.endian = endian
        self._u32 = struct.Struct(endian + "I")
        self._u64 = struct.Struct(endian + "Q")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"file is truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {self.size} bytes"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = self._u32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = self._u64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str, limit: int = _MAX_STRING) -> str:
        """A length-prefixed UTF-8 string; one longer than ``limit`` is an error."""
        n = self.u64(f"length of {what}")
        if n > limit:
            raise self.fail(f"absurd length {n} for {what} (limit {limit})")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value_string(self, what: str) -> str | _SkippedString:
        """A string value: decoded up to 64 MiB, longer ones (legal up to 1 GiB) skipped."""
        self.need(8, f"length of {what}")
        (n,) = self._u64.unpack_from(self.buf, self.pos)
        if n <= _DECODE_STRING_MAX:
            return self.string(what)
        self.pos += 8
        if n > _MAX_STRING:
            raise self.fail(f"absurd length {n} for {what} (limit {_MAX_STRING})")
        self.need(n, what)
        self.pos += n
        return _SkippedString(n)

    def scalar(self, vtype: int, what: str) -> Any:
        if vtype == _VT.STRING:
            return self.value_string(what)
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise self.fail(f"{what} has an invalid value type {vtype}")
        s = struct.Struct(self.endian + fmt)
        self.need(s.size, what)
        (v,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return v

    def array(self, key: str) -> tuple[Any, int]:
        etype = self.u32(f"element type of array '{key}'")
        count = self.u64(f"length of array '{key}'")
        if etype == _VT.ARRAY:
            raise self.fail(f"key '{key}' is an array of arrays, which GGUF readers reject")
        if etype == _VT.STRING:
            if count > _MAX_STRING_ARRAY or count * 8 > self.size - self.pos:
                raise self.fail(
                    f"absurd length {count} for string array '{key}' "
                    f"({self.size - self.pos} bytes left in the file)"
                )
            if count <= _DECODE_STRINGS_MAX:
                return tuple(self.string(f"element of '{key}'") for _ in range(count)), etype
            self.pos = _skip_strings(self, count, key)
            return _SkippedArray(etype, count), etype
        fmt = _SCALAR_FORMATS.get(etype)
        if fmt is None:
            raise self.fail(f"array '{key}' has an invalid element type {etype}")
        itemsize = struct.calcsize(fmt)
        if count > _MAX_ARRAY or count * itemsize > self.size - self.pos:
            raise self.fail(
                f"absurd length {count} for array '{key}' "
                f"({self.size - self.pos} bytes left in the file)"
            )
        nbytes = count * itemsize
        if count <= _DECODE_NUMERIC_MAX:
            values = struct.unpack_from(f"{self.endian}{count}{fmt}", self.buf, self.pos)
            self.pos += nbytes
            return values, etype
        self.pos += nbytes
        return _SkippedArray(etype, count), etype


def _skip_strings(p: _Parser, count: int, key: str) -> int:
    """Position after ``count`` length-prefixed strings starting at ``p.pos``.

    Vectorised: in a window of the file, every byte offset whose 8-byte value is < 256 is a
    candidate length prefix, and each candidate's "next" offset (itself + 8 + length) is
    computed at once. From a known prefix, a run of candidates whose "next" is exactly the
    following candidate is a proven walk (every prefix in it is read in full). Where a run
    breaks (a string of 256 bytes or more, or a candidate that is really text), the walk
    resumes at the proven next offset; a window of mostly odd data goes to a plain loop.
    """
    np = sys.modules.get("numpy")
    if np is None:
        # A cold CLI (kvwall plan/status) would spend ~55 ms importing numpy to save ~30 ms
        # of walking; the plain walk is quicker there. Long-running processes (the GUI)
        # have numpy loaded already and get the vectorised scan (benchmarks/bench_gguf.py).
        return _walk_strings(p, p.pos, count, key)

    buf, size, pos = p.buf, p.size, p.pos
    dtype = np.dtype(p.endian + "u8")
    unpack = p._u64.unpack_from
    left = count
    misses = 0
    while left > 32 and misses <= 64 + (count - left) // 8:
        window = min(size - pos, max(1 << 12, min(left * 24 + 64, 1 << 24)))
        if window < 16:
            break
        chunk = buf[pos : pos + window]  # a copy: no buffer export outlives the mmap
        values = np.ndarray((window - 7,), dtype=dtype, buffer=chunk, strides=(1,))
        cand = np.flatnonzero(values < 256)
        if cand.size == 0:
            break
        nxt = cand + 8 + values[cand].astype(np.int64)
        breaks = np.flatnonzero(nxt[:-1] != cand[1:])  # run ends: cand[b] -> not cand[b+1]
        last = int(cand.size) - 1
        rel = 0  # proven prefix offset, relative to pos
        while left > 0 and rel < window - 7 and misses <= 64 + (count - left) // 8:
            k = int(np.searchsorted(cand, rel))
            if k <= last and cand[k] == rel:
                b = int(np.searchsorted(breaks, k))
                end = int(breaks[b]) if b < breaks.size else last
                run = min(end - k + 1, left)
                rel = int(nxt[k + run - 1])
                left -= run
                if end < last:
                    misses += 1  # the run broke inside the window
            else:
                # a prefix of 256+ bytes: one step the slow way
                misses += 1
                rel += 8 + unpack(chunk, rel)[0]
                left -= 1
        pos += rel
        if pos > size:
            raise p.fail(f"file is truncated inside string array '{key}'")
    if left:
        pos = _walk_strings(p, pos, left, key)
    return pos


def _walk_strings(p: _Parser, pos: int, count: int, key: str) -> int:
    unpack = p._u64.unpack_from
    buf = p.buf
    try:
        for _ in range(count):
            pos += 8 + unpack(buf, pos)[0]
    except (struct.error, OverflowError):  # a length past the end of the file
        raise p.fail(f"file is truncated inside string array '{key}'") from None
    if pos > p.size:
        raise p.fail(f"file is truncated inside string array '{key}'")
    return pos


_TYPE_INFO: dict[int, tuple[str, int, int] | None] = {}


def _type_info(t: int) -> tuple[str, int, int] | None:
    """(lower-case name, block size, type size) of a ggml type, or None if unknown."""
    try:
        return _TYPE_INFO[t]
    except KeyError:
        pass
    try:
        qt = gguf.GGMLQuantizationType(t)
    except ValueError:
        info = None
    else:
        sizes = gguf.GGML_QUANT_SIZES.get(qt)
        info = None if sizes is None else (qt.name.lower(), sizes[0], sizes[1])
    if len(_TYPE_INFO) < 256:
        _TYPE_INFO[t] = info
    return info


def _parse_file(path: str) -> _RawGGUF:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise _err(path, "no such file") from None
    except IsADirectoryError:
        raise _err(path, "is a directory, not a GGUF file") from None
    except OSError as e:
        raise _err(path, f"cannot open: {e.strerror or e}") from None
    try:
        try:
            size = os.fstat(fd).st_size
        except OSError as e:
            raise _err(path, f"cannot stat: {e.strerror or e}") from None
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise _err(path, "is a directory, not a GGUF file")
        if not stat.S_ISREG(mode):
            raise _err(path, "is not a regular file")
        if size == 0:
            raise _err(path, "file is empty, not a GGUF model")
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise _err(path, f"cannot map the file: {e}") from None
        try:
            return _parse_header(_Parser(path, mm, size))
        finally:
            mm.close()
    finally:
        os.close(fd)


def _parse_header(p: _Parser) -> _RawGGUF:
    p.need(4, "the GGUF magic")
    magic = bytes(p.buf[0:4])
    if magic != _MAGIC:
        shown = "".join(chr(c) if 32 <= c < 127 else "?" for c in magic)
        raise p.fail(f"not a GGUF file (magic '{shown}', expected 'GGUF')")
    p.pos = 4
    version = p.u32("the GGUF version")
    big_endian = False
    if version & 0xFFFF == 0 and version != 0:
        big_endian = True
        p.set_endian(">")
        version = int.from_bytes(version.to_bytes(4, "little"), "big")
    if version == 1:
        raise p.fail("GGUF version 1 is no longer supported by llama.cpp (re-convert the model)")
    if version not in (2, 3):
        raise p.fail(f"unsupported GGUF version {version} (supported: 2 and 3)")
    n_tensors = p.u64("the tensor count")
    n_kv = p.u64("the metadata key count")
    left = p.size - p.pos
    # Smallest possible entries: a key is 8 + 1 + 4 (+1 value) bytes, a tensor 8+1+4+4+8.
    if n_kv * 14 > left:
        raise p.fail(f"absurd metadata key count {n_kv} for a {p.size}-byte file")
    if n_tensors * 25 > left:
        raise p.fail(f"absurd tensor count {n_tensors} for a {p.size}-byte file")

    kv: dict[str, Any] = {}
    kv_types: dict[str, int] = {}
    for i in range(n_kv):
        key = p.string(f"metadata key #{i}", _MAX_KEY)
        if not key:
            raise p.fail(f"metadata key #{i} is empty")
        if key in kv:
            raise p.fail(f"duplicate metadata key '{key}'")
        vtype = p.u32(f"value type of '{key}'")
        if vtype == _VT.ARRAY:
            kv[key], etype = p.array(key)
            kv_types[key] = _VT.ARRAY
        else:
            kv[key] = p.scalar(vtype, f"value of '{key}'")
            kv_types[key] = vtype

    alignment = _DEFAULT_ALIGNMENT
    if _K_ALIGNMENT in kv:
        if kv_types[_K_ALIGNMENT] != _VT.UINT32:
            raise p.fail(f"'{_K_ALIGNMENT}' must be a uint32")
        alignment = kv[_K_ALIGNMENT]
        if alignment == 0 or alignment & (alignment - 1):
            raise p.fail(f"alignment {alignment} is not a power of 2")

    infos: list[tuple[str, int, tuple[int, ...], int, int]] = []
    seen: set[str] = set()
    type_i32 = struct.Struct(p.endian + "i")
    for i in range(n_tensors):
        name = p.string(f"name of tensor #{i}", _MAX_KEY)
        if len(name.encode("utf-8", errors="replace")) >= _MAX_NAME:
            raise p.fail(f"tensor #{i} name is too long ({len(name)} >= {_MAX_NAME})")
        if name in seen:
            raise p.fail(f"duplicate tensor name '{name}'")
        seen.add(name)
        n_dims = p.u32(f"dimension count of tensor '{name}'")
        if n_dims > _MAX_DIMS:
            raise p.fail(f"tensor '{name}' has {n_dims} dimensions (at most {_MAX_DIMS})")
        p.need(8 * n_dims + 12, f"shape of tensor '{name}'")
        shape = struct.unpack_from(f"{p.endian}{n_dims}q", p.buf, p.pos)
        p.pos += 8 * n_dims
        n_elements = 1
        for d in shape:
            if d < 0:
                raise p.fail(f"tensor '{name}' has a negative dimension {d}")
            n_elements *= d
        if n_elements > _INT64_MAX:
            raise p.fail(f"tensor '{name}' shape {shape} overflows 64-bit element counts")
        (ttype,) = type_i32.unpack_from(p.buf, p.pos)
        p.pos += 4
        info = _type_info(ttype)
        if info is None:
            raise p.fail(
                f"tensor '{name}' has unknown ggml type {ttype} "
                "(not in the installed gguf package's GGMLQuantizationType)"
            )
        type_name, block, type_size = info
        ne0 = shape[0] if shape else 1
        if ne0 % block:
            raise p.fail(
                f"tensor '{name}' of type {type_name} has {ne0} elements per row, "
                f"not a multiple of its block size {block}"
            )
        (offset,) = p._u64.unpack_from(p.buf, p.pos)
        p.pos += 8
        infos.append((name, ttype, tuple(shape), n_elements // block * type_size, offset))

    data_start = p.pos + (-p.pos % alignment) if n_tensors else p.pos
    expected = 0
    for name, _t, _shape, n_bytes, offset in infos:
        if offset != expected:
            raise p.fail(f"tensor '{name}' has data offset {offset}, expected {expected}")
        end = data_start + offset + n_bytes
        if end > p.size:
            raise p.fail(
                f"file is truncated: tensor '{name}' data ends at byte {end}, "
                f"but the file has {p.size} bytes"
            )
        expected += n_bytes + (-n_bytes % alignment)
    return _RawGGUF(
        path=p.path,
        version=version,
        big_endian=big_endian,
        kv=kv,
        kv_types=kv_types,
        tensors=[(n, t, s, b) for n, t, s, b, _o in infos],
    )


# ---------------------------------------------------------------------------------------
# Hyper-parameter resolution (llama.cpp load_hparams + load_arch_hparams)

_PURE_RECURRENT = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
_RECR_IF_NO_KV = frozenset(
    {"jamba", "granitehybrid", "lfm2", "lfm2moe", "plamo2", "kimi-linear", "kimi-k3", "bailingmoe3"}
)
_RECR_BY_INTERVAL = {
    "qwen3next": 4,
    "qwen35": 4,
    "qwen35moe": 4,
    "qwen4exp": 4,
    "clef": 4,
    "minimax-01": 8,
}
_SWA_ARRAY_ONLY = frozenset(
    {
        "gemma4",
        "gemma4-assistant",
        "granite_swa",
        "maple",
        "mimo2",
        "spark2_5",
        "step35",
        "dots3note",
    }
)
# Keys llama.cpp requires for an architecture beyond the general ones (load fails without).
_ARCH_REQUIRED: dict[str, tuple[str, ...]] = {
    "mamba": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT),
    "mamba2": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT, _K_SSM_GROUP),
    "jamba": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT),
    "granitehybrid": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT, _K_SSM_GROUP),
    "nemotron_h": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT, _K_SSM_GROUP),
    "nemotron_h_moe": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT, _K_SSM_GROUP),
    "falcon-h1": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT, _K_SSM_GROUP),
    "plamo2": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT, _K_SSM_GROUP),
    "qwen3next": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT, _K_SSM_GROUP),
    "qwen35": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT, _K_SSM_GROUP),
    "qwen35moe": (_K_SSM_CONV, _K_SSM_INNER, _K_SSM_STATE, _K_SSM_DT, _K_SSM_GROUP),
    "rwkv6": (_K_WKV,),
    "rwkv6qwen2": (_K_WKV,),
    "rwkv7": (_K_WKV,),
    "arwkv7": (_K_WKV,),
    "lfm2": (_K_SHORTCONV,),
    "lfm2moe": (_K_SHORTCONV,),
    "deepseek2": (_K_KV_LORA,),
    "cohere2": (_K_SWA,),
    "cohere2moe": (_K_SWA,),
    "gemma3n": (_K_SWA,),
    "gemma4": (_K_SWA, _K_SWA_PATTERN, _K_KEY_LEN_SWA, _K_VALUE_LEN_SWA),
    "gemma4-assistant": (_K_SWA, _K_SWA_PATTERN, _K_KEY_LEN_SWA, _K_VALUE_LEN_SWA),
    "gemma-embedding": (_K_SWA,),
    "gpt-oss": (_K_SWA,),
    "exaone-moe": (_K_SWA,),
    "muse-glimmer": (_K_SWA,),
    "granite_swa": (_K_SWA, _K_SWA_PATTERN),
    "maple": (_K_SWA, _K_SWA_PATTERN),
    "mimo2": (_K_SWA, _K_SWA_PATTERN),
    "spark2_5": (_K_SWA, _K_SWA_PATTERN),
    "step35": (_K_SWA, _K_SWA_PATTERN),
    "dots3note": (_K_SWA, _K_SWA_PATTERN),
}


class _Meta:
    """Typed access to one model's metadata, mirroring llama_model_loader's getters."""

    def __init__(self, raw: _RawGGUF, arch: str) -> None:
        self.raw = raw
        self.arch = arch

    def fail(self, msg: str) -> GGUFError:
        return _err(self.raw.path, msg)

    def name(self, fmt: str) -> str:
        return fmt.format(arch=self.arch)

    def has(self, fmt: str) -> bool:
        return self.name(fmt) in self.raw.kv

    def is_array(self, fmt: str) -> bool:
        return self.raw.kv_types.get(self.name(fmt)) == _VT.ARRAY

    def int(self, fmt: str, default: int | None = None) -> int:
        key = self.name(fmt)
        if key not in self.raw.kv:
            if default is None:
                raise self.fail(f"missing required key '{key}'")
            return default
        vtype = self.raw.kv_types[key]
        value = self.raw.kv[key]
        if vtype == _VT.BOOL:
            return int(value)
        if vtype not in _INT_TYPES:
            raise self.fail(f"key '{key}' must be an integer, not {_type_name(vtype)}")
        return int(value)

    def per_layer(self, fmt: str, n: int, default: tuple[int, ...]) -> tuple[int, ...]:
        """llama_model_loader::get_key_or_arr: a scalar broadcast, or exactly n entries."""
        key = self.name(fmt)
        if key not in self.raw.kv:
            return default
        if self.raw.kv_types[key] != _VT.ARRAY:
            return (self.int(fmt),) * n
        value = self.raw.kv[key]
        length = value.count if isinstance(value, _SkippedArray) else len(value)
        if length != n:
            raise self.fail(f"key '{key}' has {length} entries, expected {n} (one per layer)")
        if isinstance(value, _SkippedArray) or (value and not _all_ints(value)):
            raise self.fail(f"key '{key}' must hold integers")
        return tuple(int(v) for v in value)

    def bool_array(self, fmt: str) -> tuple[bool, ...] | None:
        key = self.name(fmt)
        if self.raw.kv_types.get(key) != _VT.ARRAY:
            return None
        value = self.raw.kv[key]
        if isinstance(value, _SkippedArray):
            raise self.fail(f"key '{key}' has {value.count} entries (at most {_MAX_LAYERS})")
        if len(value) > _MAX_LAYERS:
            raise self.fail(f"key '{key}' has {len(value)} entries (at most {_MAX_LAYERS})")
        if value and not _all_ints(value):
            raise self.fail(f"key '{key}' must hold booleans or integers")
        return tuple(bool(v) for v in value)


def _all_ints(values: tuple[Any, ...]) -> bool:
    return all(isinstance(v, (int, bool)) for v in values)


def _type_name(vtype: int) -> str:
    try:
        return _VT(vtype).name.lower()
    except ValueError:
        return f"type {vtype}"


def _swa_pattern(
    m: _Meta, n_layer: int, n_layer_all: int, period: int, dense_first: bool = False
) -> list[bool]:
    """llama_model_base::load_swa_pattern + llama_hparams::set_swa_pattern."""
    arr = m.bool_array(_K_SWA_PATTERN)
    layers = [False] * n_layer_all
    if arr is not None:
        for il, v in enumerate(arr[:n_layer_all]):
            layers[il] = v
        return layers
    if m.has(_K_SWA_PATTERN):
        period = m.int(_K_SWA_PATTERN)
    for il in range(n_layer):
        if dense_first:
            layers[il] = period == 0 or il % period != 0
        else:
            layers[il] = period == 0 or il % period < period - 1
    return layers


def _resolve_swa(
    m: _Meta, n_layer: int, n_layer_all: int, recurrent: list[bool]
) -> tuple[str, int, list[bool]]:
    """(swa_type, n_swa, per-layer SWA flags) as the arch's load_arch_hparams sets them."""
    arch = m.arch
    none: tuple[str, int, list[bool]] = ("none", 0, [False] * n_layer_all)
    window = m.int(_K_SWA, 0)
    if arch == "gemma2":
        return "standard", m.int(_K_SWA, 4096), _swa_pattern(m, n_layer, n_layer_all, 2)
    if arch in ("gemma3", "olmo2", "afmoe", "mellum", "plamo3"):
        if window <= 0:
            return none
        period = {"gemma3": 6, "plamo3": 8}.get(arch, 4)
        return "standard", window, _swa_pattern(m, n_layer, n_layer_all, period)
    if arch == "gemma3n":
        return "standard", window, _swa_pattern(m, n_layer, n_layer_all, 5)
    if arch == "gemma-embedding":
        return "symmetric", window, _swa_pattern(m, n_layer, n_layer_all, 6)
    if arch in ("cohere2", "exaone-moe", "muse-glimmer"):
        return "standard", window, _swa_pattern(m, n_layer, n_layer_all, 4)
    if arch == "cohere2moe":
        return "standard", window, _swa_pattern(m, n_layer, n_layer_all, 4, dense_first=True)
    if arch == "gpt-oss":
        return "standard", window, _swa_pattern(m, n_layer, n_layer_all, 2)
    if arch == "llama4":
        if m.has(_K_SWA) and window == 0:
            return none
        return "chunked", 8192, _swa_pattern(m, n_layer, n_layer_all, 4)
    if arch == "exaone4":
        if n_layer == 64:
            return "standard", m.int(_K_SWA, 4096), _swa_pattern(m, n_layer, n_layer_all, 4)
        return none
    if arch == "smallthinker":
        if window <= 0:
            return none
        return "standard", 4096, _swa_pattern(m, n_layer, n_layer_all, 4, dense_first=True)
    if arch == "laguna":
        if window <= 0:
            return none
        return "standard", window, _swa_pattern(m, n_layer, n_layer_all, 4, dense_first=True)
    if arch == "modern-bert":
        if window <= 0:
            return none
        return "symmetric", window, _swa_pattern(m, n_layer, n_layer_all, 3, dense_first=True)
    if arch == "lfm2":
        if window <= 0:
            return none
        return "standard", window, [il < n_layer and not recurrent[il] for il in range(n_layer_all)]
    if arch in _SWA_ARRAY_ONLY or (arch == "dflash" and window > 0):
        arr = m.bool_array(_K_SWA_PATTERN) or ()
        layers = [il < len(arr) and arr[il] for il in range(n_layer_all)]
        return "standard", window, layers
    return none


def _resolve_recurrent(
    m: _Meta, n_layer: int, n_layer_all: int, n_head_kv: tuple[int, ...], n_ff: tuple[int, ...]
) -> list[bool]:
    arch = m.arch
    if arch in _PURE_RECURRENT or arch == "falcon-h1":
        return [True] * n_layer_all
    if arch in _RECR_IF_NO_KV:
        return [il < n_layer and n_head_kv[il] == 0 for il in range(n_layer_all)]
    if arch == "glm5-next":
        return [n_head_kv[il] == 0 for il in range(n_layer_all)]
    if arch in ("nemotron_h", "nemotron_h_moe"):
        return [il < n_layer and n_head_kv[il] == 0 and n_ff[il] == 0 for il in range(n_layer_all)]
    if arch in _RECR_BY_INTERVAL:
        if m.has(_K_RECURRENT):
            return [bool(v) for v in m.per_layer(_K_RECURRENT, n_layer_all, ())]
        interval = m.int(_K_FULL_ATTN_INTERVAL, _RECR_BY_INTERVAL[arch])
        if interval <= 0:
            raise m.fail(f"'{m.name(_K_FULL_ATTN_INTERVAL)}' must be positive, not {interval}")
        return [il < n_layer and (il + 1) % interval != 0 for il in range(n_layer_all)]
    return [False] * n_layer_all


def _file_type_name(value: int) -> str:
    try:
        return gguf.LlamaFileType(value).name
    except ValueError:
        return f"FILE_TYPE_{value}"


def _resolve(raw: _RawGGUF, paths: tuple[str, ...], tensors: tuple[TensorInfo, ...]) -> ModelInfo:
    kv = raw.kv
    arch = kv.get(_K_ARCH)
    if arch is None:
        raise _err(raw.path, f"missing required key '{_K_ARCH}'")
    if not isinstance(arch, str) or not arch:
        raise _err(raw.path, f"'{_K_ARCH}' must be a non-empty string")
    m = _Meta(raw, arch)
    for fmt in _ARCH_REQUIRED.get(arch, ()):
        if not m.has(fmt):
            raise m.fail(f"missing required key '{m.name(fmt)}' for architecture {arch}")

    n_ctx_train = m.int(_K_CONTEXT)
    n_embd = m.int(_K_EMBD)
    n_layer_all = m.int(_K_BLOCKS)
    if not 0 < n_layer_all <= _MAX_LAYERS:
        raise m.fail(f"'{m.name(_K_BLOCKS)}' is {n_layer_all}, expected 1..{_MAX_LAYERS}")
    n_layer_nextn = m.int(_K_NEXTN, 0)
    if not 0 <= n_layer_nextn <= n_layer_all:
        raise m.fail(f"'{m.name(_K_NEXTN)}' is {n_layer_nextn}, more than the {n_layer_all} blocks")
    n_layer = n_layer_all - n_layer_nextn
    zeros = (0,) * n_layer_all

    n_expert = m.int(_K_EXPERTS, 0)
    n_expert_used = max(m.per_layer(_K_EXPERTS_USED, n_layer_all, zeros), default=0)
    n_ff = m.per_layer(_K_FF, n_layer_all, zeros)
    n_head = m.per_layer(_K_HEADS, n_layer_all, zeros)
    n_head_kv = m.per_layer(_K_HEADS_KV, n_layer_all, n_head)

    if n_head[0] > 0:
        head_k = m.int(_K_KEY_LEN, n_embd // n_head[0])
        head_v = m.int(_K_VALUE_LEN, n_embd // n_head[0])
        n_rot = m.int(_K_ROT, head_k)
    else:
        head_k = head_v = n_rot = 0
    head_k_swa = m.int(_K_KEY_LEN_SWA, head_k)
    head_v_swa = m.int(_K_VALUE_LEN_SWA, head_v)
    head_k_mla = m.int(_K_KEY_LEN_MLA, 0)
    head_v_mla = m.int(_K_VALUE_LEN_MLA, 0)
    kv_lora_rank = m.int(_K_KV_LORA, 0)
    if arch in ("kimi-k3", "glm5-next"):
        head_v = kv_lora_rank  # "the MLA cache holds the compressed latent"
    if arch == "step35":
        n_rot //= 2

    recurrent = _resolve_recurrent(m, n_layer, n_layer_all, n_head_kv, n_ff)
    swa_type, n_swa, swa_layers = _resolve_swa(m, n_layer, n_layer_all, recurrent)

    n_layer_kv_from_start = -1
    if arch == "gemma3n":
        n_layer_kv_from_start = 20
    elif arch == "gemma4":
        shared = m.int(_K_SHARED_KV, 0)
        n_layer_kv_from_start = n_layer_all - shared

    tokens = kv.get(_K_TOKENS)
    if raw.kv_types.get(_K_TOKENS) == _VT.ARRAY:
        n_vocab = tokens.count if isinstance(tokens, _SkippedArray) else len(tokens)
    else:
        n_vocab = m.int(_K_VOCAB_SIZE, 0)

    name = kv.get(_K_NAME)
    if not isinstance(name, str) or not name:
        name = _split_stem(paths[0])
    ft = kv.get(_K_FILE_TYPE)
    file_type = _file_type_name(int(ft)) if raw.kv_types.get(_K_FILE_TYPE) in _INT_TYPES else None

    metadata = {
        k: v
        for k, v in kv.items()
        if not isinstance(v, (_SkippedArray, _SkippedString))
        and not (isinstance(v, tuple) and len(v) > _METADATA_ARRAY_MAX)
    }
    return ModelInfo(
        path=paths[0],
        paths=paths,
        architecture=arch,
        name=name,
        file_type=file_type,
        n_layer_all=n_layer_all,
        n_layer_nextn=n_layer_nextn,
        n_ctx_train=n_ctx_train,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_k=head_k,
        head_v=head_v,
        head_k_swa=head_k_swa,
        head_v_swa=head_v_swa,
        is_mla=head_k_mla != 0 and head_v_mla != 0,
        head_k_mla=head_k_mla,
        head_v_mla=head_v_mla,
        kv_lora_rank=kv_lora_rank,
        n_swa=n_swa,
        swa_layers=tuple(swa_layers),
        n_layer_kv_from_start=n_layer_kv_from_start,
        recurrent_layers=tuple(recurrent),
        ssm_d_conv=m.int(_K_SSM_CONV, 0),
        ssm_d_inner=m.int(_K_SSM_INNER, 0),
        ssm_d_state=m.int(_K_SSM_STATE, 0),
        ssm_dt_rank=m.int(_K_SSM_DT, 0),
        ssm_n_group=m.int(_K_SSM_GROUP, 0),
        wkv_head_size=m.int(_K_WKV, 0),
        token_shift_count=m.int(_K_TOKEN_SHIFT, 2),
        shortconv_l_cache=m.int(_K_SHORTCONV, 0),
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        n_ff=n_ff,
        n_rot=n_rot,
        tensors=tensors,
        metadata=MappingProxyType(metadata),
        swa_type=swa_type,
        gguf_version=raw.version,
        big_endian=raw.big_endian,
    )


# ---------------------------------------------------------------------------------------
# Split models and the public entry point

_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def _split_stem(path: str) -> str:
    name = Path(path).name
    m = _SPLIT_RE.match(name)
    if m:
        return m.group("prefix")
    return Path(path).stem


def _tensor_table(raw: _RawGGUF, shard: int) -> list[TensorInfo]:
    out = []
    for name, ttype, shape, n_bytes in raw.tensors:
        info = _type_info(ttype)
        assert info is not None  # checked while parsing
        out.append(TensorInfo(name, info[0], ttype, shape, n_bytes, shard))
    return out


def _split_keys(raw: _RawGGUF) -> tuple[int, int]:
    """(split.no, split.count) of a file; (0, 1) for a single-file model."""

    def get(key: str) -> int | None:
        if key not in raw.kv:
            return None
        if raw.kv_types[key] not in _INT_TYPES:
            raise _err(raw.path, f"'{key}' must be an integer")
        return int(raw.kv[key])

    count = get(_K_SPLIT_COUNT)
    if count is None or count <= 1:
        return 0, 1
    if count > 99999:  # llama.cpp names shards with 5 digits
        raise _err(raw.path, f"absurd '{_K_SPLIT_COUNT}' {count}")
    no = get(_K_SPLIT_NO)
    if no is None:
        raise _err(raw.path, f"split model without '{_K_SPLIT_NO}'")
    if not 0 <= no < count:
        raise _err(raw.path, f"'{_K_SPLIT_NO}' is {no}, but '{_K_SPLIT_COUNT}' is {count}")
    return no, count


def read_model(path: str) -> ModelInfo:
    """Read a GGUF model's header (all shards of a split model).

    Args:
        path: a ``.gguf`` file; for split models any shard's path
            (``name-00001-of-00003.gguf``); the other shards are found beside it.

    Returns:
        The model description.

    Raises:
        GGUFError: the file is missing, truncated, not GGUF, of an unsupported
            version, has absurd counts, or lacks a required key. The message names the file.
    """
    given = os.fspath(path)
    raw = _parse_file(given)
    no, count = _split_keys(raw)
    if count == 1:
        return _resolve(raw, (given,), tuple(_tensor_table(raw, 0)))

    postfix = f"-{no + 1:05d}-of-{count:05d}.gguf"
    if not given.endswith(postfix) or len(given) <= len(postfix):
        raise _err(
            given,
            f"shard {no + 1} of a {count}-file split model must be named '*{postfix}' "
            "so that the other shards can be found",
        )
    prefix = given[: -len(postfix)]
    paths = tuple(f"{prefix}-{i + 1:05d}-of-{count:05d}.gguf" for i in range(count))
    raws: list[_RawGGUF] = []
    for i, shard_path in enumerate(paths):
        if i == no:
            shard = raw
        else:
            if not os.path.exists(shard_path):
                raise _err(shard_path, f"missing shard {i + 1} of {count} (needed by {given})")
            shard = _parse_file(shard_path)
        s_no, s_count = _split_keys(shard)
        if (s_no, s_count) != (i, count):
            raise _err(
                shard_path,
                f"is shard {s_no + 1} of {s_count} by its metadata, expected {i + 1} of {count}",
            )
        raws.append(shard)
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for i, shard in enumerate(raws):
        for t in _tensor_table(shard, i):
            if t.name in seen:
                raise _err(shard.path, f"tensor '{t.name}' is duplicated across shards")
            seen.add(t.name)
            tensors.append(t)
    first = raws[0]
    if _K_SPLIT_TENSORS in first.kv and first.kv_types[_K_SPLIT_TENSORS] in _INT_TYPES:
        expected = int(first.kv[_K_SPLIT_TENSORS])
        if expected != len(tensors):
            raise _err(
                first.path,
                f"corrupted split model: {expected} tensors expected but {len(tensors)} found",
            )
    return _resolve(first, paths, tuple(tensors))
