"""What a GGUF header tells: the model description, its tensor table and the reader's error."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

Scalar: TypeAlias = bool | int | float | str
"""A decoded scalar metadata value (GGUF's numeric types, bool and string)."""
MetadataValue: TypeAlias = Scalar | tuple[Scalar, ...]
"""A metadata value kept in :attr:`ModelInfo.metadata`: a scalar or a short array."""
SwaType = Literal["none", "standard", "chunked", "symmetric"]
"""llama.cpp's ``llama_swa_type`` names."""


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
        offset: where the data starts in that file's data section (mmap'd CPU buffers
            span from a file's first to its last tensor on the host).
    """

    name: str
    type_name: str
    ggml_type: int
    shape: tuple[int, ...]
    n_bytes: int
    shard: int = 0
    offset: int = 0


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
    metadata: Mapping[str, MetadataValue] = field(repr=False)
    swa_type: SwaType = "none"
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


def gguf_error(path: str | os.PathLike[str], msg: str) -> GGUFError:
    """A :class:`GGUFError` naming ``path``, with the message kept on one printable line."""
    # key and tensor names of a damaged file can hold any bytes: keep the message one
    # printable line (control characters escaped, e.g. '\x00')
    msg = "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)
    return GGUFError(f"{os.fspath(path)}: {msg}")
