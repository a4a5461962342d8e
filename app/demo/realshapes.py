"""Header-only GGUF files of real models' shapes: the metadata and tensor table, no weights.

kvwall reads only GGUF headers, so a file holding the header of Llama-3.1-70B at Q4_K_M
(80 layers, 724 tensors, 42.5 GB of tensor data claimed) plans exactly like the real
download. The tensor data is a sparse hole: the file's size is right (kvwall's reader
checks that every tensor's data lies inside the file) and it costs a few hundred
kilobytes on disk. llama.cpp could not run such a file.

Each shape is the public ``config.json`` of its model, converted as llama.cpp's
conversion/*.py writes it (b11434), with the tensor types ``llama-quantize Q4_K_M`` picks
(:mod:`kvwall.app.demo.q4_k_m`). Left out: the tokenizer arrays (``{arch}.vocab_size``
carries the vocabulary size), chat templates, rope-scaling details and the multimodal
projector; none of them changes what llama-server allocates.

Usage::

    from kvwall.app.demo.realshapes import SHAPES, write_header
    path = write_header("llama-3.1-70b", tmp_path / "llama-70b.gguf")

Used by benchmarks/seed_numbers.py (the README's table) and its test.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import gguf
import numpy as np
from kvwall.app.demo.q4_k_m import QuantTarget, q4_k_m_types, weight_order

__all__ = ["SHAPES", "Header", "RealShape", "header", "write_header"]

QT = gguf.GGMLQuantizationType
KvValue = int | float | bool | str | tuple[int, ...] | tuple[bool, ...]


@dataclass(frozen=True)
class Header:
    """One model's header: metadata (keys with ``{arch}``), tensors (ggml-order shapes),
    and what the quantizer reads beyond the table."""

    arch: str
    target: QuantTarget
    kv: dict[str, KvValue] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def t(self, name: str, *shape: int) -> None:
        self.tensors[name] = tuple(shape)


@dataclass(frozen=True)
class RealShape:
    """A real model's shape, as the README's table names it.

    Attributes:
        key: the name :func:`write_header` takes (``"llama-3.1-70b"``).
        name: ``general.name`` of the file written.
        source: where the hyper-parameters come from, in a few words.
        build: the function that builds the header.
    """

    key: str
    name: str
    source: str
    build: Callable[[], Header]


# ---------------------------------------------------------------------------------------
# Llama-3.1-70B (meta-llama/Llama-3.1-70B-Instruct config.json)


def _llama_3_1_70b() -> Header:
    n_layer, n_embd, n_head, n_head_kv, head = 80, 8192, 64, 8, 128
    n_ff, n_vocab = 28672, 128256
    h = Header("llama", QuantTarget(n_layer, llama_70b=True))
    h.kv.update({
        "{arch}.context_length": 131072, "{arch}.embedding_length": n_embd,
        "{arch}.block_count": n_layer, "{arch}.feed_forward_length": n_ff,
        "{arch}.rope.dimension_count": head, "{arch}.attention.head_count": n_head,
        "{arch}.attention.head_count_kv": n_head_kv, "{arch}.rope.freq_base": 500000.0,
        "{arch}.attention.layer_norm_rms_epsilon": 1e-5, "{arch}.vocab_size": n_vocab,
    })  # fmt: skip
    h.t("token_embd.weight", n_embd, n_vocab)
    h.t("rope_freqs.weight", head // 2)  # the llama3 rope-scaling factors
    for il in range(n_layer):
        b = f"blk.{il}"
        h.t(f"{b}.attn_norm.weight", n_embd)
        h.t(f"{b}.attn_q.weight", n_embd, n_head * head)
        h.t(f"{b}.attn_k.weight", n_embd, n_head_kv * head)
        h.t(f"{b}.attn_v.weight", n_embd, n_head_kv * head)
        h.t(f"{b}.attn_output.weight", n_head * head, n_embd)
        h.t(f"{b}.ffn_norm.weight", n_embd)
        h.t(f"{b}.ffn_gate.weight", n_embd, n_ff)
        h.t(f"{b}.ffn_up.weight", n_embd, n_ff)
        h.t(f"{b}.ffn_down.weight", n_ff, n_embd)
    h.t("output_norm.weight", n_embd)
    h.t("output.weight", n_embd, n_vocab)
    return h


# ---------------------------------------------------------------------------------------
# Qwen3.6-35B-A3B: the Qwen3.5-35B-A3B topology (qwen35moe): 3 Gated-DeltaNet layers, then
# one gated full-attention layer, ten times; 256 experts (8 used) plus one shared expert


@dataclass(frozen=True)
class _Qwen35Moe:
    n_layer: int = 40
    n_embd: int = 2048
    n_head: int = 16
    n_head_kv: int = 2
    head: int = 256
    n_expert: int = 256
    n_expert_used: int = 8
    n_ff_exp: int = 512
    n_ff_shexp: int = 512
    n_vocab: int = 248320
    n_k_heads: int = 16  # linear attention: key heads (ssm.group_count)
    n_v_heads: int = 32  # value heads (ssm.time_step_rank)
    head_linear: int = 128  # key and value head size (ssm.state_size)
    d_conv: int = 4
    interval: int = 4  # full_attention_interval


def _qwen35moe_kv(q: _Qwen35Moe) -> dict[str, KvValue]:
    recurrent = tuple((il + 1) % q.interval != 0 for il in range(q.n_layer))
    return {
        "{arch}.context_length": 262144, "{arch}.embedding_length": q.n_embd,
        "{arch}.block_count": q.n_layer, "{arch}.attention.head_count": q.n_head,
        "{arch}.attention.head_count_kv": q.n_head_kv, "{arch}.attention.key_length": q.head,
        "{arch}.attention.value_length": q.head, "{arch}.rope.dimension_count": q.head // 4,
        "{arch}.rope.dimension_sections": (11, 11, 10, 0), "{arch}.rope.freq_base": 1e7,
        "{arch}.attention.layer_norm_rms_epsilon": 1e-6, "{arch}.expert_count": q.n_expert,
        "{arch}.expert_used_count": q.n_expert_used,
        "{arch}.expert_feed_forward_length": q.n_ff_exp,
        "{arch}.expert_shared_feed_forward_length": q.n_ff_shexp,
        "{arch}.ssm.conv_kernel": q.d_conv, "{arch}.ssm.state_size": q.head_linear,
        "{arch}.ssm.group_count": q.n_k_heads, "{arch}.ssm.time_step_rank": q.n_v_heads,
        "{arch}.ssm.inner_size": q.head_linear * q.n_v_heads,
        "{arch}.attention.recurrent_layers": recurrent,
        "{arch}.full_attention_interval": q.interval, "{arch}.vocab_size": q.n_vocab,
    }  # fmt: skip


def _qwen35moe_attention(h: Header, q: _Qwen35Moe, b: str) -> None:
    h.t(f"{b}.attn_q.weight", q.n_embd, q.head * q.n_head * 2)  # queries and their gate
    h.t(f"{b}.attn_k.weight", q.n_embd, q.head * q.n_head_kv)
    h.t(f"{b}.attn_v.weight", q.n_embd, q.head * q.n_head_kv)
    h.t(f"{b}.attn_output.weight", q.head * q.n_head, q.n_embd)
    h.t(f"{b}.attn_q_norm.weight", q.head)
    h.t(f"{b}.attn_k_norm.weight", q.head)


def _qwen35moe_delta_net(h: Header, q: _Qwen35Moe, b: str) -> None:
    key_dim, value_dim = q.head_linear * q.n_k_heads, q.head_linear * q.n_v_heads
    h.t(f"{b}.attn_qkv.weight", q.n_embd, 2 * key_dim + value_dim)
    h.t(f"{b}.attn_gate.weight", q.n_embd, value_dim)
    h.t(f"{b}.ssm_conv1d.weight", q.d_conv, 2 * key_dim + value_dim)
    h.t(f"{b}.ssm_dt.bias", q.n_v_heads)
    h.t(f"{b}.ssm_a", q.n_v_heads)
    h.t(f"{b}.ssm_beta.weight", q.n_embd, q.n_v_heads)
    h.t(f"{b}.ssm_alpha.weight", q.n_embd, q.n_v_heads)
    h.t(f"{b}.ssm_norm.weight", q.head_linear)
    h.t(f"{b}.ssm_out.weight", value_dim, q.n_embd)


def _moe(h: Header, b: str, n_embd: int, n_ff_exp: int, n_expert: int, n_ff_shexp: int) -> None:
    """Routed experts (gate, up, down) and one shared expert."""
    h.t(f"{b}.ffn_gate_inp.weight", n_embd, n_expert)
    h.t(f"{b}.ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert)
    h.t(f"{b}.ffn_up_exps.weight", n_embd, n_ff_exp, n_expert)
    h.t(f"{b}.ffn_down_exps.weight", n_ff_exp, n_embd, n_expert)
    h.t(f"{b}.ffn_gate_shexp.weight", n_embd, n_ff_shexp)
    h.t(f"{b}.ffn_up_shexp.weight", n_embd, n_ff_shexp)
    h.t(f"{b}.ffn_down_shexp.weight", n_ff_shexp, n_embd)


def _qwen3_6_35b_a3b() -> Header:
    q = _Qwen35Moe()
    h = Header("qwen35moe", QuantTarget(q.n_layer, q.n_expert), _qwen35moe_kv(q))
    h.t("token_embd.weight", q.n_embd, q.n_vocab)
    for il in range(q.n_layer):
        b = f"blk.{il}"
        h.t(f"{b}.attn_norm.weight", q.n_embd)
        h.t(f"{b}.post_attention_norm.weight", q.n_embd)
        if (il + 1) % q.interval == 0:
            _qwen35moe_attention(h, q, b)
        else:
            _qwen35moe_delta_net(h, q, b)
        _moe(h, b, q.n_embd, q.n_ff_exp, q.n_expert, q.n_ff_shexp)
        h.t(f"{b}.ffn_gate_inp_shexp.weight", q.n_embd)
    h.t("output_norm.weight", q.n_embd)
    h.t("output.weight", q.n_embd, q.n_vocab)
    return h


# ---------------------------------------------------------------------------------------
# DeepSeek-V3 / R1 (deepseek-ai/DeepSeek-V3 config.json): MLA attention, 3 dense layers,
# then 58 MoE layers of 256 experts (8 used) plus one shared expert; the MTP block is
# skipped by the converter


@dataclass(frozen=True)
class _DeepSeekV3:
    n_layer: int = 61
    n_dense: int = 3
    n_embd: int = 7168
    n_head: int = 128
    q_lora_rank: int = 1536
    kv_lora_rank: int = 512
    qk_nope: int = 128
    qk_rope: int = 64
    v_head: int = 128
    n_ff: int = 18432
    n_ff_exp: int = 2048
    n_expert: int = 256
    n_expert_used: int = 8
    n_vocab: int = 129280


def _deepseek_v3_kv(d: _DeepSeekV3) -> dict[str, KvValue]:
    return {
        "{arch}.context_length": 163840, "{arch}.embedding_length": d.n_embd,
        "{arch}.block_count": d.n_layer, "{arch}.feed_forward_length": d.n_ff,
        "{arch}.attention.head_count": d.n_head, "{arch}.attention.head_count_kv": 1,
        "{arch}.attention.key_length": d.kv_lora_rank + d.qk_rope,
        "{arch}.attention.value_length": d.kv_lora_rank,
        "{arch}.attention.key_length_mla": d.qk_nope + d.qk_rope,
        "{arch}.attention.value_length_mla": d.v_head,
        "{arch}.attention.q_lora_rank": d.q_lora_rank,
        "{arch}.attention.kv_lora_rank": d.kv_lora_rank,
        "{arch}.rope.dimension_count": d.qk_rope, "{arch}.rope.freq_base": 10000.0,
        "{arch}.attention.layer_norm_rms_epsilon": 1e-6,
        "{arch}.leading_dense_block_count": d.n_dense, "{arch}.expert_count": d.n_expert,
        "{arch}.expert_used_count": d.n_expert_used, "{arch}.expert_shared_count": 1,
        "{arch}.expert_feed_forward_length": d.n_ff_exp, "{arch}.expert_weights_scale": 2.5,
        "{arch}.expert_weights_norm": True, "{arch}.expert_gating_func": 2,  # sigmoid
        "{arch}.vocab_size": d.n_vocab,
    }  # fmt: skip


def _deepseek_v3_attention(h: Header, d: _DeepSeekV3, b: str) -> None:
    h.t(f"{b}.attn_norm.weight", d.n_embd)
    h.t(f"{b}.attn_q_a_norm.weight", d.q_lora_rank)
    h.t(f"{b}.attn_q_a.weight", d.n_embd, d.q_lora_rank)
    h.t(f"{b}.attn_q_b.weight", d.q_lora_rank, d.n_head * (d.qk_nope + d.qk_rope))
    h.t(f"{b}.attn_kv_a_norm.weight", d.kv_lora_rank)
    h.t(f"{b}.attn_kv_a_mqa.weight", d.n_embd, d.kv_lora_rank + d.qk_rope)
    h.t(f"{b}.attn_k_b.weight", d.qk_nope, d.kv_lora_rank, d.n_head)
    h.t(f"{b}.attn_v_b.weight", d.kv_lora_rank, d.v_head, d.n_head)
    h.t(f"{b}.attn_output.weight", d.n_head * d.v_head, d.n_embd)


def _deepseek_v3() -> Header:
    d = _DeepSeekV3()
    h = Header("deepseek2", QuantTarget(d.n_layer, d.n_expert), _deepseek_v3_kv(d))
    h.t("token_embd.weight", d.n_embd, d.n_vocab)
    for il in range(d.n_layer):
        b = f"blk.{il}"
        _deepseek_v3_attention(h, d, b)
        h.t(f"{b}.ffn_norm.weight", d.n_embd)
        if il < d.n_dense:
            h.t(f"{b}.ffn_gate.weight", d.n_embd, d.n_ff)
            h.t(f"{b}.ffn_up.weight", d.n_embd, d.n_ff)
            h.t(f"{b}.ffn_down.weight", d.n_ff, d.n_embd)
        else:
            _moe(h, b, d.n_embd, d.n_ff_exp, d.n_expert, d.n_ff_exp)
            h.t(f"{b}.exp_probs_b.bias", d.n_expert)
    h.t("output_norm.weight", d.n_embd)
    h.t("output.weight", d.n_embd, d.n_vocab)
    return h


SHAPES: Mapping[str, RealShape] = MappingProxyType({
    s.key: s
    for s in (
        RealShape("llama-3.1-70b", "Llama-3.1-70B-Instruct Q4_K_M (header only)",
                  "meta-llama/Llama-3.1-70B-Instruct", _llama_3_1_70b),
        RealShape("qwen3.6-35b-a3b", "Qwen3.6-35B-A3B Q4_K_M (header only)",
                  "Qwen/Qwen3.5-35B-A3B topology, which Qwen3.6-35B-A3B keeps", _qwen3_6_35b_a3b),
        RealShape("deepseek-v3", "DeepSeek-V3 Q4_K_M (header only)",
                  "deepseek-ai/DeepSeek-V3 (R1 has the same shape)", _deepseek_v3),
    )
})  # fmt: skip
"""The shapes :func:`write_header` writes, by key."""


def header(key: str) -> Header:
    """The header of shape ``key``, tensor types not yet chosen.

    Raises:
        KeyError: not a key of :data:`SHAPES`.
    """
    return SHAPES[key].build()


# ---------------------------------------------------------------------------------------
# Writing


def _add_kv(writer: gguf.GGUFWriter, key: str, value: KvValue) -> None:
    if isinstance(value, tuple):
        sub = gguf.GGUFValueType.BOOL if all(isinstance(v, bool) for v in value) else gguf.GGUFValueType.INT32
        writer.add_key_value(key, list(value), gguf.GGUFValueType.ARRAY, sub_type=sub)
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, value)


def _n_bytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def write_header(key: str, path: str | pathlib.Path) -> pathlib.Path:
    """Write the header-only GGUF of shape ``key`` at Q4_K_M.

    Args:
        key: one of :data:`SHAPES`.
        path: the file to write; its folder is created.

    Returns:
        The path written. The file's apparent size is the real model's (tensor data is a
        sparse hole).

    Raises:
        KeyError: not a key of :data:`SHAPES`.
        OSError: the file cannot be written.
    """
    shape = SHAPES[key]
    h = shape.build()
    types = q4_k_m_types(h.tensors, h.target)
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, h.arch)
    writer.add_name(shape.name)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_K_M))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for k, value in h.kv.items():
        _add_kv(writer, k.format(arch=h.arch), value)
    for name in weight_order(h.tensors):  # the order llama-quantize writes
        dims = h.tensors[name]
        qtype = types[name] or QT.F32  # what the converter leaves unquantized is F32
        nbytes = _n_bytes(dims, qtype)
        writer.add_tensor_info(name, tuple(reversed(dims)), np.dtype(np.float32), nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    _punch_data_hole(writer)
    writer.close()
    return out


def _punch_data_hole(writer: gguf.GGUFWriter) -> None:
    """Extend the file over its (aligned) tensor data without writing it: a sparse hole."""
    assert writer.fout is not None
    (fout,) = writer.fout
    (tensors,) = writer.tensors
    start = fout.tell()
    data_start = start + (-start % writer.data_alignment) if tensors else start
    total = sum(ti.nbytes + (-ti.nbytes % writer.data_alignment) for ti in tensors.values())
    fout.truncate(data_start + total)
