"""Test helpers that write small, odd or huge-but-sparse GGUF headers with gguf-py's GGUFWriter.

kvwall writes every test GGUF with gguf-py's ``GGUFWriter``: loadable models with
weights through :func:`kvwall.app.demo.tinymodels.write_model`, headers whose tensor data
is a sparse hole through :func:`write_gguf` here. The hand-packed bytes at the end are
only for the malformed files GGUFWriter refuses to write (bad magic or version, absurd
counts, truncated records), which the reader must reject.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

GT = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType


@dataclass(frozen=True)
class Tensor:
    """A tensor of the table: name, ggml-order shape (ne0 first) and type; data is a hole."""

    name: str
    shape: tuple[int, ...]
    qtype: GT = GT.F16

    @property
    def n_bytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


def llama_tensors(
    n_layer: int, n_embd: int, n_ff: int, n_vocab: int, n_kv: int, qtype: GT = GT.F16
) -> list[Tensor]:
    """A llama-like tensor table (names as llama.cpp expects them)."""
    out = [Tensor("token_embd.weight", (n_embd, n_vocab), qtype)]
    for il in range(n_layer):
        out += [
            Tensor(f"blk.{il}.attn_norm.weight", (n_embd,), GT.F32),
            Tensor(f"blk.{il}.attn_q.weight", (n_embd, n_embd), qtype),
            Tensor(f"blk.{il}.attn_k.weight", (n_embd, n_kv), qtype),
            Tensor(f"blk.{il}.attn_v.weight", (n_embd, n_kv), qtype),
            Tensor(f"blk.{il}.attn_output.weight", (n_embd, n_embd), qtype),
            Tensor(f"blk.{il}.ffn_norm.weight", (n_embd,), GT.F32),
            Tensor(f"blk.{il}.ffn_gate.weight", (n_embd, n_ff), qtype),
            Tensor(f"blk.{il}.ffn_up.weight", (n_embd, n_ff), qtype),
            Tensor(f"blk.{il}.ffn_down.weight", (n_ff, n_embd), qtype),
        ]
    out += [
        Tensor("output_norm.weight", (n_embd,), GT.F32),
        Tensor("output.weight", (n_embd, n_vocab), qtype),
    ]
    return out


def _add_kv(w: gguf.GGUFWriter, key: str, value: Any) -> None:
    """Add one KV; (value, GGUFValueType) or (list, GGUFValueType.ARRAY, subtype) force a type."""
    if isinstance(value, tuple) and len(value) >= 2 and isinstance(value[1], VT):
        if value[1] == VT.ARRAY:
            w.add_key_value(key, list(value[0]), VT.ARRAY, sub_type=value[2])
        else:
            w.add_key_value(key, value[0], value[1])
        return
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if 0 <= value < 2**32 else w.add_int64(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        w.add_array(key, list(value))
    else:
        raise TypeError(f"cannot write {key}={value!r}")


def write_gguf(
    path: str | os.PathLike[str],
    arch: str | None = "llama",
    kv: Mapping[str, Any] | None = None,
    tensors: Sequence[Tensor] | None = None,
    *,
    tokens: Sequence[str] | None = None,
    merges: Sequence[str] | None = None,
    endian: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
    split_max_tensors: int = 0,
) -> list[Path]:
    """Write a GGUF header with GGUFWriter; tensor data is a sparse hole of the right size.

    ``kv`` keys may use ``{arch}``. ``arch=None`` writes no ``general.architecture``.
    Returns the written paths (several for a split model, in shard order).
    """
    path = Path(path)
    w = gguf.GGUFWriter(path, arch or "x", endianess=endian, split_max_tensors=split_max_tensors)
    if arch is None:
        w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE)
    for key, value in (kv or {}).items():
        _add_kv(w, key.format(arch=arch), value)
    if tokens is not None:
        w.add_token_list(list(tokens))
    if merges is not None:
        w.add_token_merges(list(merges))
    for t in tensors if tensors is not None else []:
        w.add_tensor_info(
            t.name, tuple(reversed(t.shape)), np.float32, t.n_bytes, raw_dtype=t.qtype
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    written = []
    for fout, shard in zip(w.fout, w.tensors, strict=True):
        start = fout.tell()
        data_start = start + (-start % w.data_alignment) if shard else start
        total = sum(ti.nbytes + (-ti.nbytes % w.data_alignment) for ti in shard.values())
        fout.truncate(data_start + total)  # a hole: claims the bytes, costs nothing
        written.append(Path(fout.name))
    w.close()
    return written


def minimal_kv(n_layer: int = 2, n_embd: int = 64, n_head: int = 4, **extra: Any) -> dict[str, Any]:
    """The keys llama.cpp requires, plus ``extra`` (keys may use ``{arch}``)."""
    kv: dict[str, Any] = {
        "{arch}.context_length": 4096,
        "{arch}.embedding_length": n_embd,
        "{arch}.block_count": n_layer,
        "{arch}.attention.head_count": n_head,
    }
    kv.update(extra)
    return kv


# ---------------------------------------------------------------------------------------
# Hand-made bytes (for what GGUFWriter refuses to write)


def pack_string(s: bytes | str, endian: str = "<") -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack(endian + "Q", len(raw)) + raw


def raw_gguf(
    kvs: Iterable[bytes] = (),
    tensor_infos: Iterable[bytes] = (),
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    magic: bytes = b"GGUF",
    tail: bytes = b"",
) -> bytes:
    """Assemble a GGUF header from pre-packed KV and tensor-info records."""
    kvs, tensor_infos = list(kvs), list(tensor_infos)
    head = magic + struct.pack(
        "<IQQ",
        version,
        len(tensor_infos) if n_tensors is None else n_tensors,
        len(kvs) if n_kv is None else n_kv,
    )
    return head + b"".join(kvs) + b"".join(tensor_infos) + tail


def kv_u32(key: str, value: int) -> bytes:
    return pack_string(key) + struct.pack("<II", VT.UINT32, value)


def kv_str(key: str, value: str) -> bytes:
    return pack_string(key) + struct.pack("<I", VT.STRING) + pack_string(value)


def kv_array(key: str, etype: int, count: int, payload: bytes = b"") -> bytes:
    return pack_string(key) + struct.pack("<IIQ", VT.ARRAY, etype, count) + payload


def tensor_info(name: str, shape: Sequence[int], ggml_type: int, offset: int) -> bytes:
    return (
        pack_string(name)
        + struct.pack("<I", len(shape))
        + struct.pack(f"<{len(shape)}q", *shape)
        + struct.pack("<IQ", ggml_type, offset)
    )
