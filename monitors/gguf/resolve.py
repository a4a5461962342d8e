"""Header -> :class:`ModelInfo`: hyper-parameters resolved as llama.cpp's ``load_hparams`` does.

``read_model(path)`` is the entry point: it parses the header of every shard and applies
the general rules of ``llama_model_base::load_hparams`` and the per-architecture rules of
:mod:`kvwall.monitors.gguf.arch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType

from kvwall.monitors.gguf import arch as rules
from kvwall.monitors.gguf.keys import (
    K_ARCH,
    K_BLOCKS,
    K_CONTEXT,
    K_EMBD,
    K_EXPERTS,
    K_EXPERTS_USED,
    K_FF,
    K_FILE_TYPE,
    K_HEADS,
    K_HEADS_KV,
    K_KEY_LEN,
    K_KEY_LEN_MLA,
    K_KEY_LEN_SWA,
    K_KV_LORA,
    K_NAME,
    K_NEXTN,
    K_ROT,
    K_SHORTCONV,
    K_SSM_CONV,
    K_SSM_DT,
    K_SSM_GROUP,
    K_SSM_INNER,
    K_SSM_STATE,
    K_TOKEN_SHIFT,
    K_TOKENS,
    K_VALUE_LEN,
    K_VALUE_LEN_MLA,
    K_VALUE_LEN_SWA,
    K_VOCAB_SIZE,
    K_WKV,
    VT,
    LlamaFileType,
)
from kvwall.monitors.gguf.model import MetadataValue, ModelInfo, TensorInfo, gguf_error
from kvwall.monitors.gguf.reader import (
    INT_TYPES,
    MAX_LAYERS,
    METADATA_ARRAY_MAX,
    Meta,
    RawGGUF,
    SkippedArray,
    SkippedString,
)
from kvwall.monitors.gguf.split import read_shards, split_stem


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
    shards = read_shards(os.fspath(path))
    return resolve(shards.first, shards.paths, shards.tensors)


@dataclass(frozen=True)
class _Layers:
    """Block counts: all blocks, the NextN/MTP ones among them, and the main model's."""

    n_layer_all: int
    n_layer_nextn: int
    n_layer: int


@dataclass(frozen=True)
class _Attention:
    """Per-layer head counts and the head sizes of full, SWA and MLA attention."""

    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    head_k: int
    head_v: int
    head_k_swa: int
    head_v_swa: int
    head_k_mla: int
    head_v_mla: int
    kv_lora_rank: int
    n_rot: int


def resolve(raw: RawGGUF, paths: tuple[str, ...], tensors: tuple[TensorInfo, ...]) -> ModelInfo:
    """The model description from the first shard's header and every shard's tensors.

    Raises:
        GGUFError: a required key is missing or of the wrong type, or counts are absurd.
    """
    m = Meta(raw, _architecture(raw))
    for fmt in rules.REQUIRED_KEYS.get(m.arch, ()):
        if not m.has(fmt):
            raise m.fail(f"missing required key '{m.name(fmt)}' for architecture {m.arch}")
    n_ctx_train = m.integer(K_CONTEXT)
    n_embd = m.integer(K_EMBD)
    layers = _layers(m)
    zeros = (0,) * layers.n_layer_all
    n_expert = m.integer(K_EXPERTS, 0)
    n_expert_used = max(m.per_layer(K_EXPERTS_USED, layers.n_layer_all, zeros), default=0)
    n_ff = m.per_layer(K_FF, layers.n_layer_all, zeros)
    att = _attention(m, layers, n_embd)
    recurrent = rules.resolve_recurrent(
        m, layers.n_layer, layers.n_layer_all, att.n_head_kv, n_ff
    )
    swa = rules.resolve_swa(m, layers.n_layer, layers.n_layer_all, recurrent)
    return ModelInfo(
        path=paths[0],
        paths=paths,
        architecture=m.arch,
        name=_model_name(raw, paths),
        file_type=_file_type(raw),
        n_layer_all=layers.n_layer_all,
        n_layer_nextn=layers.n_layer_nextn,
        n_ctx_train=n_ctx_train,
        n_embd=n_embd,
        n_vocab=_n_vocab(m),
        n_head=att.n_head,
        n_head_kv=att.n_head_kv,
        head_k=att.head_k,
        head_v=att.head_v,
        head_k_swa=att.head_k_swa,
        head_v_swa=att.head_v_swa,
        is_mla=att.head_k_mla != 0 and att.head_v_mla != 0,
        head_k_mla=att.head_k_mla,
        head_v_mla=att.head_v_mla,
        kv_lora_rank=att.kv_lora_rank,
        n_swa=swa.n_swa,
        swa_layers=tuple(swa.layers),
        n_layer_kv_from_start=rules.n_layer_kv_from_start(m, layers.n_layer_all),
        recurrent_layers=tuple(recurrent),
        ssm_d_conv=m.integer(K_SSM_CONV, 0),
        ssm_d_inner=m.integer(K_SSM_INNER, 0),
        ssm_d_state=m.integer(K_SSM_STATE, 0),
        ssm_dt_rank=m.integer(K_SSM_DT, 0),
        ssm_n_group=m.integer(K_SSM_GROUP, 0),
        wkv_head_size=m.integer(K_WKV, 0),
        token_shift_count=m.integer(K_TOKEN_SHIFT, 2),
        shortconv_l_cache=m.integer(K_SHORTCONV, 0),
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        n_ff=n_ff,
        n_rot=att.n_rot,
        tensors=tensors,
        metadata=MappingProxyType(_metadata(raw)),
        swa_type=swa.swa_type,
        gguf_version=raw.version,
        big_endian=raw.big_endian,
    )


def _architecture(raw: RawGGUF) -> str:
    arch = raw.kv.get(K_ARCH)
    if arch is None:
        raise gguf_error(raw.path, f"missing required key '{K_ARCH}'")
    if not isinstance(arch, str) or not arch:
        raise gguf_error(raw.path, f"'{K_ARCH}' must be a non-empty string")
    return arch


def _layers(m: Meta) -> _Layers:
    n_layer_all = m.integer(K_BLOCKS)
    if not 0 < n_layer_all <= MAX_LAYERS:
        raise m.fail(f"'{m.name(K_BLOCKS)}' is {n_layer_all}, expected 1..{MAX_LAYERS}")
    n_layer_nextn = m.integer(K_NEXTN, 0)
    if not 0 <= n_layer_nextn <= n_layer_all:
        raise m.fail(f"'{m.name(K_NEXTN)}' is {n_layer_nextn}, more than the {n_layer_all} blocks")
    return _Layers(n_layer_all, n_layer_nextn, n_layer_all - n_layer_nextn)


def _attention(m: Meta, layers: _Layers, n_embd: int) -> _Attention:
    n_head = m.per_layer(K_HEADS, layers.n_layer_all, (0,) * layers.n_layer_all)
    n_head_kv = m.per_layer(K_HEADS_KV, layers.n_layer_all, n_head)
    if n_head[0] > 0:
        head_k = m.integer(K_KEY_LEN, n_embd // n_head[0])
        head_v = m.integer(K_VALUE_LEN, n_embd // n_head[0])
        n_rot = m.integer(K_ROT, head_k)
    else:
        head_k = head_v = n_rot = 0
    head_k_swa = m.integer(K_KEY_LEN_SWA, head_k)
    head_v_swa = m.integer(K_VALUE_LEN_SWA, head_v)
    head_k_mla = m.integer(K_KEY_LEN_MLA, 0)
    head_v_mla = m.integer(K_VALUE_LEN_MLA, 0)
    kv_lora_rank = m.integer(K_KV_LORA, 0)
    if m.arch in rules.MLA_LATENT_V_ARCHS:
        head_v = kv_lora_rank  # "the MLA cache holds the compressed latent"
    if m.arch == "step35":
        n_rot //= 2
    return _Attention(
        n_head, n_head_kv, head_k, head_v, head_k_swa, head_v_swa, head_k_mla, head_v_mla,
        kv_lora_rank, n_rot,
    )  # fmt: skip


def _n_vocab(m: Meta) -> int:
    """The token array's length, else ``{arch}.vocab_size``."""
    tokens = m.raw.kv.get(K_TOKENS)
    if m.raw.kv_types.get(K_TOKENS) == VT.ARRAY:
        if isinstance(tokens, SkippedArray):
            return tokens.count
        if isinstance(tokens, tuple):
            return len(tokens)
    return m.integer(K_VOCAB_SIZE, 0)


def _model_name(raw: RawGGUF, paths: tuple[str, ...]) -> str:
    name = raw.kv.get(K_NAME)
    if not isinstance(name, str) or not name:
        return split_stem(paths[0])
    return name


def _file_type(raw: RawGGUF) -> str | None:
    """``general.file_type`` by name (``MOSTLY_Q4_K_M``), None when absent or not an int."""
    ft = raw.kv.get(K_FILE_TYPE)
    if raw.kv_types.get(K_FILE_TYPE) not in INT_TYPES or not isinstance(ft, int):
        return None
    try:
        return LlamaFileType(int(ft)).name
    except ValueError:
        return f"FILE_TYPE_{int(ft)}"


def _metadata(raw: RawGGUF) -> dict[str, MetadataValue]:
    """Decoded values, leaving out skipped ones and arrays over ``METADATA_ARRAY_MAX``."""
    out: dict[str, MetadataValue] = {}
    for k, v in raw.kv.items():
        if isinstance(v, tuple):
            if len(v) <= METADATA_ARRAY_MAX:
                out[k] = v
        elif not isinstance(v, (SkippedArray, SkippedString)):
            out[k] = v
    return out
