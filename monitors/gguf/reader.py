"""GGUF header parser: the format's limits and a bounds-checked ``struct`` reader.

The header of one file is read with positional reads (``os.pread``) through a small
buffered window, never mapped: a file truncated or rewritten while it is read gives a
:class:`GGUFError`, never a SIGBUS. The file is checked to be a regular file before a
byte is read (a FIFO never blocks), and the work is bounded: key, tensor and string counts
are capped (each error names its cap), and so are the bytes read and the time taken.
Tensor data is never read. Long string arrays (the vocabulary and the merges) are skipped without decoding a
single token: a vectorised scan finds the length prefixes and verifies the chain exactly
(falling back to a plain loop on odd data). :class:`Meta` then gives typed access to the
metadata, mirroring ``llama_model_loader``'s getters.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from kvwall.monitors.files import OPEN_FLAGS, file_kind
from kvwall.monitors.gguf.keys import GGML_QUANT_SIZES, K_ALIGNMENT, VT, GGMLQuantizationType
from kvwall.monitors.gguf.model import GGUFError, Scalar, gguf_error

# ---------------------------------------------------------------------------------------
# Limits (llama.cpp's where it has one)

MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: tensor names must be shorter
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
MAX_STRING = 1 << 30  # GGUF_MAX_STRING_LENGTH
MAX_KEY = 1 << 16  # metadata key and tensor name lengths beyond this are garbage
# kvwall's own caps, far above what a real model needs (llama.cpp has none below memory):
# a real header has under 100 keys and under 2,000 tensors per file.
MAX_KV = 1 << 14  # metadata keys per file
MAX_TENSORS = 1 << 14  # tensor-table entries per file (a full table costs ~0.25 s)
DECODE_STRING_MAX = 1 << 20  # string values up to 1 MiB are decoded, longer ones skipped
DECODED_BYTES_MAX = 1 << 24  # string bytes decoded over a file (names, templates...)
# llama.cpp allows 2**30 array elements; real vocabularies and merge lists have under
# 300k strings each. Every string is walked, so the total over a file is capped too: a
# crafted file of 1.5M tiny strings costs about half a second on a loaded machine.
MAX_STRING_ARRAY = 1 << 20
MAX_STRINGS_TOTAL = 3 << 19  # 1,572,864
# Numbers decoded (arrays up to DECODE_NUMERIC_MAX long) over a file: per-layer keys need
# a few thousand.
MAX_DECODED_NUMBERS = 1 << 18
MAX_HEADER_READ = 1 << 27  # bytes read from one file's header (a real one: under 20 MB)
READ_BUDGET_S = 10.0  # seconds to read one file's header (a real one: tens of ms)
WINDOW = 1 << 20  # bytes per positional read while walking a string array
READ_AHEAD = 1 << 16  # bytes read ahead for keys and tensor records (a table: ~60 KB)
MAX_ARRAY = 1 << 30  # GGUF_MAX_ARRAY_ELEMENTS
DECODE_NUMERIC_MAX = 4096  # numeric arrays up to this length are decoded (per-layer keys)
DECODE_STRINGS_MAX = 64  # string arrays up to this length are decoded
METADATA_ARRAY_MAX = 64  # arrays longer than this are left out of ModelInfo.metadata
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
INT64_MAX = (1 << 63) - 1
# Smallest possible entries: a key is 8 + 1 + 4 (+1 value) bytes, a tensor 8+1+4+4+8.
_MIN_KV_BYTES = 14
_MIN_TENSOR_BYTES = 25

# struct format per scalar GGUF value type (gguf-py's GGUFWriter packs with the same codes).
_SCALAR_FORMATS: dict[int, str] = {
    VT.UINT8: "B",
    VT.INT8: "b",
    VT.UINT16: "H",
    VT.INT16: "h",
    VT.UINT32: "I",
    VT.INT32: "i",
    VT.FLOAT32: "f",
    VT.BOOL: "?",
    VT.UINT64: "Q",
    VT.INT64: "q",
    VT.FLOAT64: "d",
}
INT_TYPES = frozenset(
    {VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64}
)


# ---------------------------------------------------------------------------------------
# Raw file parsing


@dataclass(frozen=True)
class SkippedArray:
    """An array whose elements were not decoded (too long to be useful)."""

    element_type: int
    count: int


@dataclass(frozen=True)
class SkippedString:
    """A string value too long to be worth decoding (its length in bytes)."""

    n_bytes: int


RawValue: TypeAlias = Scalar | tuple[Scalar, ...] | SkippedArray | SkippedString
"""A metadata value as parsed: decoded, or skipped (too long to be worth decoding)."""


class RawTensor(NamedTuple):
    """One tensor-table entry as parsed: name, ggml type, ggml-order shape, data bytes, and
    the data offset (from the start of the file's data section)."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    n_bytes: int
    offset: int = 0


@dataclass
class RawGGUF:
    """One file's parsed header: metadata by key (with its value types) and tensors."""

    path: str
    version: int
    big_endian: bool
    kv: dict[str, RawValue]
    kv_types: dict[str, int]
    tensors: list[RawTensor]
    element_types: dict[str, int] = field(default_factory=dict)
    """Each array key's element type."""


PRead = Callable[[int, int, int], bytes]
"""``os.pread``'s signature: (fd, length, offset) -> the bytes read (fewer at the end)."""


class Parser:
    """Sequential reader over one GGUF file by positional reads; every read is bounded.

    Reads go through a window of :data:`READ_AHEAD` bytes refilled with ``pread``: the file is
    never mapped, so a file that shrinks while it is read gives a :class:`GGUFError`.
    """

    def __init__(
        self, path: str, fd: int, size: int, *, pread: PRead = os.pread,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.pos = 0
        self.endian = "<"
        self._u32 = struct.Struct("<I")
        self._u64 = struct.Struct("<Q")
        self._pread = pread
        self._clock = clock
        self._deadline = clock() + READ_BUDGET_S
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.bytes_read = 0
        self.strings_left = MAX_STRINGS_TOTAL
        self.numbers_left = MAX_DECODED_NUMBERS
        self.decoded_bytes_left = DECODED_BYTES_MAX

    def fail(self, msg: str) -> GGUFError:
        """An error naming this file."""
        return gguf_error(self.path, msg)

    def set_endian(self, endian: str) -> None:
        """Read what follows as ``<`` (little) or ``>`` (big) endian."""
        self.endian = endian
        self._u32 = struct.Struct(endian + "I")
        self._u64 = struct.Struct(endian + "Q")

    def need(self, n: int, what: str) -> None:
        """Fail unless ``n`` more bytes (for ``what``) are in the file."""
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"file is truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {self.size} bytes"
            )

    def check_time(self) -> None:
        """Fail once the header has taken longer than :data:`READ_BUDGET_S`."""
        if self._clock() > self._deadline:
            raise self.fail(f"reading the header took over {READ_BUDGET_S:g} s (kvwall's limit)")

    def read_at(self, offset: int, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes at ``offset`` (inside the file's size), by one ``pread``."""
        self.check_time()
        self.bytes_read += n
        if self.bytes_read > MAX_HEADER_READ:
            raise self.fail(f"the header needs more than {MAX_HEADER_READ} bytes read "
                            "(kvwall's limit)")
        try:
            data = self._pread(self.fd, n, offset)
        except OSError as e:
            raise self.fail(f"cannot read {what}: {e.strerror or e}") from None
        if len(data) < n:
            raise self.fail(
                f"the file changed while it was read: {what} at offset {offset} is past "
                f"its end (it had {self.size} bytes)"
            )
        return data

    def view(self, n: int, what: str) -> tuple[bytes, int]:
        """The window holding the next ``n`` bytes, and their offset in it."""
        self.need(n, what)
        off = self.pos - self.base
        if off < 0 or off + n > len(self.buf):
            length = min(max(n, READ_AHEAD), self.size - self.pos)
            self.buf = self.read_at(self.pos, length, what)
            self.base = self.pos
            off = 0
        return self.buf, off

    def u32(self, what: str) -> int:
        """The next uint32."""
        buf, off = self.view(4, what)
        v: int
        (v,) = self._u32.unpack_from(buf, off)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        """The next uint64."""
        buf, off = self.view(8, what)
        v: int
        (v,) = self._u64.unpack_from(buf, off)
        self.pos += 8
        return v

    def unpack(self, fmt: struct.Struct, what: str) -> tuple[int, ...]:
        """The next values of the (endian-prefixed) struct ``fmt``."""
        buf, off = self.view(fmt.size, what)
        values: tuple[int, ...] = fmt.unpack_from(buf, off)
        self.pos += fmt.size
        return values

    def string(self, what: str, limit: int = MAX_STRING) -> str:
        """A length-prefixed UTF-8 string; one longer than ``limit`` is an error."""
        n = self.u64(f"length of {what}")
        if n > limit:
            raise self.fail(f"absurd length {n} for {what} (limit {limit})")
        self.decoded_bytes_left -= n
        if self.decoded_bytes_left < 0:
            raise self.fail(f"{what}: the metadata's strings decode to more than "
                            f"{DECODED_BYTES_MAX} bytes (kvwall's limit)")
        buf, off = self.view(n, what)
        self.pos += n
        return buf[off : off + n].decode("utf-8", errors="replace")

    def value_string(self, what: str) -> str | SkippedString:
        """A string value: decoded up to 1 MiB, longer ones (legal up to 1 GiB) skipped."""
        buf, off = self.view(8, f"length of {what}")
        n: int
        (n,) = self._u64.unpack_from(buf, off)
        if n <= min(DECODE_STRING_MAX, self.decoded_bytes_left):
            return self.string(what)
        self.pos += 8
        if n > MAX_STRING:
            raise self.fail(f"absurd length {n} for {what} (limit {MAX_STRING})")
        self.need(n, what)
        self.pos += n
        return SkippedString(n)

    def scalar(self, vtype: int, what: str) -> Scalar | SkippedString:
        """One scalar value of type ``vtype``."""
        if vtype == VT.STRING:
            return self.value_string(what)
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise self.fail(f"{what} has an invalid value type {vtype}")
        v: Scalar
        (v,) = self.unpack(struct.Struct(self.endian + fmt), what)
        return v

    def array(self, key: str) -> tuple[int, tuple[Scalar, ...] | SkippedArray]:
        """An array's element type and value: decoded when short, skipped when long."""
        etype = self.u32(f"element type of array '{key}'")
        count = self.u64(f"length of array '{key}'")
        if etype == VT.ARRAY:
            raise self.fail(f"key '{key}' is an array of arrays, which GGUF readers reject")
        return etype, self._array_value(key, etype, count)

    def _array_value(self, key: str, etype: int, count: int) -> tuple[Scalar, ...] | SkippedArray:
        if etype == VT.STRING:
            return self._string_array(key, count)
        fmt = _SCALAR_FORMATS.get(etype)
        if fmt is None:
            raise self.fail(f"array '{key}' has an invalid element type {etype}")
        itemsize = struct.calcsize(fmt)
        if count > MAX_ARRAY or count * itemsize > self.size - self.pos:
            raise self.fail(
                f"absurd length {count} for array '{key}' "
                f"({self.size - self.pos} bytes left in the file)"
            )
        nbytes = count * itemsize
        if count <= DECODE_NUMERIC_MAX:
            self.numbers_left -= count
            if self.numbers_left < 0:
                raise self.fail(f"array '{key}': the metadata holds more than "
                                f"{MAX_DECODED_NUMBERS} short-array numbers (kvwall's limit)")
            buf, off = self.view(nbytes, f"array '{key}'")
            values = struct.unpack_from(f"{self.endian}{count}{fmt}", buf, off)
            self.pos += nbytes
            return values
        self.pos += nbytes
        return SkippedArray(etype, count)

    def _string_array(self, key: str, count: int) -> tuple[Scalar, ...] | SkippedArray:
        """A string array: decoded when short, walked (every length checked) when long."""
        if count * 8 > self.size - self.pos:
            raise self.fail(
                f"absurd length {count} for string array '{key}' "
                f"({self.size - self.pos} bytes left in the file)"
            )
        if count > MAX_STRING_ARRAY:
            raise self.fail(f"string array '{key}' has {count} strings; kvwall reads at most "
                            f"{MAX_STRING_ARRAY} (a real vocabulary has under 300,000)")
        self.strings_left -= count
        if self.strings_left < 0:
            raise self.fail(f"string array '{key}': the file holds more than "
                            f"{MAX_STRINGS_TOTAL} strings in arrays (kvwall's limit)")
        if count <= DECODE_STRINGS_MAX:
            what = f"element of '{key}'"
            return tuple(self.string(what, DECODE_STRING_MAX) for _ in range(count))
        self.pos = _skip_strings(self, count, key)
        return SkippedArray(VT.STRING, count)


def _skip_strings(p: Parser, count: int, key: str) -> int:
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

    size, pos = p.size, p.pos
    dtype = np.dtype(p.endian + "u8")
    unpack = p._u64.unpack_from
    left = count
    misses = 0
    while left > 32 and misses <= 64 + (count - left) // 8:
        window = min(size - pos, max(1 << 12, min(left * 24 + 64, WINDOW)))
        if window < 16:
            break
        chunk = p.read_at(pos, window, f"string array '{key}'")
        if chunk.startswith(_EMPTY_STRING):  # a run of empty strings (a hole): at C speed
            hit = _NONZERO.search(chunk)
            run = min((hit.start() if hit else len(chunk)) // 8, left)
            left -= run
            pos += 8 * run
            continue
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


_EMPTY_STRING = bytes(8)  # the length prefix of an empty string
_NONZERO = re.compile(rb"[^\x00]")


def _walk_strings(p: Parser, pos: int, count: int, key: str) -> int:
    """The plain walk: one length prefix at a time, a window of the file at a time."""
    unpack = p._u64.unpack_from
    left = count
    while left:
        if pos + 8 > p.size:
            raise p.fail(f"file is truncated inside string array '{key}'")
        chunk = p.read_at(pos, min(p.size - pos, WINDOW), f"string array '{key}'")
        if chunk.startswith(_EMPTY_STRING):
            # A run of empty strings (a sparse file's hole): skipped at C speed.
            hit = _NONZERO.search(chunk)
            run = min((hit.start() if hit else len(chunk)) // 8, left)
            left -= run
            pos += 8 * run
            continue
        # Each string takes 8 bytes at least: no more steps than that fit in the chunk.
        steps = min(left, len(chunk) // 8)
        off = taken = 0
        try:
            for taken in range(steps):  # noqa: B007 - taken counts the steps done
                off += 8 + unpack(chunk, off)[0]
            taken = steps
        except struct.error:  # the next length prefix runs past the chunk: read on from it
            pass
        left -= taken
        pos += off
    if pos > p.size:
        raise p.fail(f"file is truncated inside string array '{key}'")
    return pos


_TYPE_INFO: dict[int, tuple[str, int, int] | None] = {}


def type_info(t: int) -> tuple[str, int, int] | None:
    """(lower-case name, block size, type size) of a ggml type, or None if unknown."""
    try:
        return _TYPE_INFO[t]
    except KeyError:
        pass
    try:
        qt = GGMLQuantizationType(t)
    except ValueError:
        info = None
    else:
        sizes = GGML_QUANT_SIZES.get(qt)
        info = None if sizes is None else (qt.name.lower(), sizes[0], sizes[1])
    if len(_TYPE_INFO) < 256:
        _TYPE_INFO[t] = info
    return info


def parse_file(
    path: str, *, pread: PRead = os.pread, clock: Callable[[], float] = time.monotonic
) -> RawGGUF:
    """Parse the header of one GGUF file (one shard of a split model).

    The file is opened without blocking and checked to be a regular file before a byte is
    read: a FIFO, a device or a socket is refused at once.

    Args:
        path: the file.
        pread: positional reads (``os.pread``; tests inject one that changes the file).
        clock: monotonic seconds, for the :data:`READ_BUDGET_S` time budget.

    Raises:
        GGUFError: the file cannot be opened or read, is not a regular file, changed while
            it was read, its header is malformed, or it exceeds one of kvwall's caps.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, OPEN_FLAGS)
    except FileNotFoundError:
        raise gguf_error(path, "no such file") from None
    except IsADirectoryError:
        raise gguf_error(path, "is a directory, not a GGUF file") from None
    except OSError as e:
        raise gguf_error(path, f"cannot open: {e.strerror or e}") from None
    try:
        size = _regular_file_size(path, fd)
        return _parse_header(Parser(path, fd, size, pread=pread, clock=clock))
    finally:
        os.close(fd)


def _regular_file_size(path: str, fd: int) -> int:
    """The size of an open, non-empty regular file."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise gguf_error(path, f"cannot stat: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise gguf_error(path, "is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        raise gguf_error(path, f"is not a regular file (a {file_kind(st.st_mode)})")
    if st.st_size == 0:
        raise gguf_error(path, "file is empty, not a GGUF model")
    return st.st_size



@dataclass(frozen=True)
class _Preamble:
    """The fixed-size start of a GGUF header."""

    version: int
    big_endian: bool
    n_tensors: int
    n_kv: int


class _TensorEntry(NamedTuple):
    """A tensor-table entry with the data offset it claims (checked against the layout)."""

    tensor: RawTensor
    offset: int


def _parse_header(p: Parser) -> RawGGUF:
    pre = _read_preamble(p)
    meta = _read_metadata(p, pre.n_kv)
    alignment = _alignment(p, meta.kv, meta.kv_types)
    entries = _read_tensor_table(p, pre.n_tensors)
    _check_data_layout(p, entries, alignment)
    return RawGGUF(
        path=p.path,
        version=pre.version,
        big_endian=pre.big_endian,
        kv=meta.kv,
        kv_types=meta.kv_types,
        tensors=[e.tensor for e in entries],
        element_types=meta.element_types,
    )


def _read_preamble(p: Parser) -> _Preamble:
    """Magic, version (which also tells the byte order) and the two counts."""
    buf, off = p.view(4, "the GGUF magic")
    magic = buf[off : off + 4]
    if magic != MAGIC:
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
    if n_kv * _MIN_KV_BYTES > left:
        raise p.fail(f"absurd metadata key count {n_kv} for a {p.size}-byte file")
    if n_tensors * _MIN_TENSOR_BYTES > left:
        raise p.fail(f"absurd tensor count {n_tensors} for a {p.size}-byte file")
    if n_kv > MAX_KV:
        raise p.fail(f"metadata key count {n_kv} is over kvwall's limit of {MAX_KV} "
                     "(a real model has under 100)")
    if n_tensors > MAX_TENSORS:
        raise p.fail(f"tensor count {n_tensors} is over kvwall's limit of {MAX_TENSORS} "
                     "(a real model file has under 2,000)")
    return _Preamble(version, big_endian, n_tensors, n_kv)


@dataclass(frozen=True)
class _Metadata:
    """The key/value section: values, value types, and array keys' element types."""

    kv: dict[str, RawValue]
    kv_types: dict[str, int]
    element_types: dict[str, int]


def _read_metadata(p: Parser, n_kv: int) -> _Metadata:
    """The key/value section: values by key, and each key's GGUF value type."""
    kv: dict[str, RawValue] = {}
    kv_types: dict[str, int] = {}
    element_types: dict[str, int] = {}
    for i in range(n_kv):
        key = p.string(f"metadata key #{i}", MAX_KEY)
        if not key:
            raise p.fail(f"metadata key #{i} is empty")
        if key in kv:
            raise p.fail(f"duplicate metadata key '{key}'")
        vtype = p.u32(f"value type of '{key}'")
        if vtype == VT.ARRAY:
            element_types[key], kv[key] = p.array(key)
        else:
            kv[key] = p.scalar(vtype, f"value of '{key}'")
        kv_types[key] = vtype
    return _Metadata(kv, kv_types, element_types)


def _alignment(p: Parser, kv: dict[str, RawValue], kv_types: dict[str, int]) -> int:
    """``general.alignment`` (a power of 2), or GGUF's default."""
    if K_ALIGNMENT not in kv:
        return DEFAULT_ALIGNMENT
    alignment = kv[K_ALIGNMENT]
    if kv_types[K_ALIGNMENT] != VT.UINT32 or not isinstance(alignment, int):
        raise p.fail(f"'{K_ALIGNMENT}' must be a uint32")
    if alignment == 0 or alignment & (alignment - 1):
        raise p.fail(f"alignment {alignment} is not a power of 2")
    return alignment


def _read_tensor_table(p: Parser, n_tensors: int) -> list[_TensorEntry]:
    """Every tensor-info record: names unique and short, shapes sane, types known."""
    entries: list[_TensorEntry] = []
    seen: set[str] = set()
    type_i32 = struct.Struct(p.endian + "i")
    offset_u64 = struct.Struct(p.endian + "Q")
    for i in range(n_tensors):
        name = p.string(f"name of tensor #{i}", MAX_KEY)
        if len(name.encode("utf-8", errors="replace")) >= MAX_NAME:
            raise p.fail(f"tensor #{i} name is too long ({len(name)} >= {MAX_NAME})")
        if name in seen:
            raise p.fail(f"duplicate tensor name '{name}'")
        seen.add(name)
        shape, n_elements = _read_shape(p, name)
        (ttype,) = p.unpack(type_i32, f"type of tensor '{name}'")
        n_bytes = _data_bytes(p, name, ttype, shape, n_elements)
        (offset,) = p.unpack(offset_u64, f"data offset of tensor '{name}'")
        entries.append(_TensorEntry(RawTensor(name, ttype, shape, n_bytes, offset), offset))
    return entries


def _read_shape(p: Parser, name: str) -> tuple[tuple[int, ...], int]:
    """A tensor's ggml-order shape and its element count (bounds for the rest checked)."""
    n_dims = p.u32(f"dimension count of tensor '{name}'")
    if n_dims > MAX_DIMS:
        raise p.fail(f"tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})")
    p.need(8 * n_dims + 12, f"shape of tensor '{name}'")
    shape = p.unpack(struct.Struct(f"{p.endian}{n_dims}q"), f"shape of tensor '{name}'")
    n_elements = 1
    for d in shape:
        if d < 0:
            raise p.fail(f"tensor '{name}' has a negative dimension {d}")
        n_elements *= d
    if n_elements > INT64_MAX:
        raise p.fail(f"tensor '{name}' shape {shape} overflows 64-bit element counts")
    return shape, n_elements


def _data_bytes(p: Parser, name: str, ttype: int, shape: tuple[int, ...], n_elements: int) -> int:
    """Bytes of a tensor's data: whole blocks of its (known) ggml type."""
    info = type_info(ttype)
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
    return n_elements // block * type_size


def _check_data_layout(p: Parser, entries: list[_TensorEntry], alignment: int) -> None:
    """Tensor data must be packed in table order, aligned, and inside the file."""
    data_start = p.pos + (-p.pos % alignment) if entries else p.pos
    expected = 0
    for e in entries:
        name, n_bytes = e.tensor.name, e.tensor.n_bytes
        if e.offset != expected:
            raise p.fail(f"tensor '{name}' has data offset {e.offset}, expected {expected}")
        end = data_start + e.offset + n_bytes
        if end > p.size:
            raise p.fail(
                f"file is truncated: tensor '{name}' data ends at byte {end}, "
                f"but the file has {p.size} bytes"
            )
        expected += n_bytes + (-n_bytes % alignment)


# ---------------------------------------------------------------------------------------
# Typed access to the metadata


class Meta:
    """Typed access to one model's metadata, mirroring llama_model_loader's getters.

    Key arguments are gguf-py key formats; ``{arch}`` is filled with the architecture.
    """

    def __init__(self, raw: RawGGUF, arch: str) -> None:
        self.raw = raw
        self.arch = arch

    def fail(self, msg: str) -> GGUFError:
        """An error naming this model's file."""
        return gguf_error(self.raw.path, msg)

    def name(self, fmt: str) -> str:
        """The key name for this architecture."""
        return fmt.format(arch=self.arch)

    def has(self, fmt: str) -> bool:
        """The key is present."""
        return self.name(fmt) in self.raw.kv

    def is_array(self, fmt: str) -> bool:
        """The key holds an array."""
        return self.raw.kv_types.get(self.name(fmt)) == VT.ARRAY

    def integer(self, fmt: str, default: int | None = None) -> int:
        """A uint32 key (llama.cpp's ``get_key<uint32_t>``, which accepts that type only).

        ``default`` when absent, an error if none is given.
        """
        key = self.name(fmt)
        if key not in self.raw.kv:
            if default is None:
                raise self.fail(f"missing required key '{key}'")
            return default
        vtype = self.raw.kv_types[key]
        value = self.raw.kv[key]
        if (vtype != VT.BOOL and vtype not in INT_TYPES) or not isinstance(value, int):
            raise self.fail(f"key '{key}' must be an integer, not {_type_name(vtype)}")
        if vtype != VT.UINT32:
            raise self.fail(
                f"key '{key}' has type {_type_name(vtype)} (value {int(value)}), but llama.cpp "
                "reads it as a uint32 and refuses any other type"
            )
        return int(value)

    def per_layer(self, fmt: str, n: int, default: tuple[int, ...]) -> tuple[int, ...]:
        """llama_model_loader::get_key_or_arr: a scalar broadcast, or exactly n entries."""
        key = self.name(fmt)
        if key not in self.raw.kv:
            return default
        if self.raw.kv_types[key] != VT.ARRAY:
            return (self.integer(fmt),) * n
        value = self.raw.kv[key]
        if not isinstance(value, (tuple, SkippedArray)):
            raise self.fail(f"key '{key}' must hold integers")
        length = value.count if isinstance(value, SkippedArray) else len(value)
        if length != n:
            raise self.fail(f"key '{key}' has {length} entries, expected {n} (one per layer)")
        if isinstance(value, SkippedArray) or not _all_ints(value):
            raise self.fail(f"key '{key}' must hold integers")
        self._check_layer_array(key, value)
        return tuple(int(v) for v in value)

    def _check_layer_array(self, key: str, value: tuple[Scalar, ...]) -> None:
        """llama.cpp's ``get_arr`` into a per-layer array: bool, int32 or uint32 elements.

        llama.cpp copies an int32 array's bits into its uint32 fields, so a negative entry
        would read as about 4 billion there: kvwall refuses it rather than compute with it.
        """
        etype = self.raw.element_types.get(key)
        if etype not in _LAYER_ARRAY_TYPES:
            raise self.fail(
                f"key '{key}' is an array of {_type_name(etype or -1)}; llama.cpp reads "
                "per-layer arrays of bool, int32 or uint32 only"
            )
        negative = next((i for i, v in enumerate(value) if int(v) < 0), None)
        if negative is not None:
            raise self.fail(f"key '{key}' has a negative entry {value[negative]} "
                            f"(layer {negative})")

    def bool_array(self, fmt: str) -> tuple[bool, ...] | None:
        """A per-layer flag array (booleans or integers); None when the key is no array."""
        key = self.name(fmt)
        if self.raw.kv_types.get(key) != VT.ARRAY:
            return None
        value = self.raw.kv[key]
        if isinstance(value, SkippedArray):
            raise self.fail(f"key '{key}' has {value.count} entries (at most {MAX_LAYERS})")
        if not isinstance(value, tuple):
            raise self.fail(f"key '{key}' must hold booleans or integers")
        if len(value) > MAX_LAYERS:
            raise self.fail(f"key '{key}' has {len(value)} entries (at most {MAX_LAYERS})")
        if not _all_ints(value):
            raise self.fail(f"key '{key}' must hold booleans or integers")
        self._check_layer_array(key, value)
        return tuple(bool(v) for v in value)


_LAYER_ARRAY_TYPES = frozenset({VT.BOOL, VT.INT32, VT.UINT32})


def _all_ints(values: tuple[Scalar, ...]) -> bool:
    return all(isinstance(v, (int, bool)) for v in values)


def _type_name(vtype: int) -> str:
    try:
        return VT(vtype).name.lower()
    except ValueError:
        return f"type {vtype}"
